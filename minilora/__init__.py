"""minilora: LoRA (low-rank adaptation, Hu et al. 2021) from scratch, compatible with Hugging Face PEFT's files.

    decomposition.py   decompose: the best rank-r factors of a matrix (truncated SVD)
    layer.py           LoRALinear: h = W0 x + (alpha / r) B A x around an nn.Linear or GPT-2 Conv1D
    injection.py       inject: wrap the target layers of a model and freeze the rest; count parameters
    merging.py         merge, unmerge, unload: fold B A into W0 and back
    sliced.py          SlicedLoRALinear, inject_sliced: LoRA on slices of a fused layer's outputs (q and v of c_attn)
    adapter_io.py      save_adapter, load_adapter: PEFT's adapter_config.json and adapter_model.safetensors
    multi.py           load_adapters, per_row: many adapters in one model, each row of a batch its own (BGMV)
    combining.py       combine: one adapter from a weighted sum of several (factors concatenated, or SVD to rank r)
"""

from .adapter_io import load_adapter, save_adapter
from .combining import combine
from .decomposition import decompose
from .injection import count_parameters, inject, print_trainable_parameters
from .layer import LoRALinear
from .merging import merge, unload, unmerge
from .multi import MultiLoRALinear, load_adapters, per_row
from .sliced import SlicedLoRALinear, fused_slices, inject_sliced

__version__ = "0.1.0"
__all__ = ["LoRALinear", "count_parameters", "decompose", "inject", "load_adapter", "merge",
           "print_trainable_parameters", "save_adapter", "unload", "unmerge",
           "SlicedLoRALinear", "fused_slices", "inject_sliced", "MultiLoRALinear", "load_adapters", "per_row",
           "combine"]
