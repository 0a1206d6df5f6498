"""Every misuse raises an error that names the problem and the offending value, and a failed call changes nothing."""

import copy
import json

import pytest
import torch
from core_helpers import assert_unchanged, lora_gpt2, snapshot, tiny_gpt2
from safetensors.torch import load_file, save_file
from torch import nn

import minilora

BAD_HYPERPARAMETERS = [
    ({"r": 0}, "r must be a positive int, got 0"),
    ({"r": -2}, "r must be a positive int, got -2"),
    ({"r": 2.0}, "r must be a positive int, got 2.0"),
    ({"r": True}, "r must be a positive int, got True"),
    ({"alpha": 0}, "alpha must be a positive number, got 0"),
    ({"alpha": -1.5}, "alpha must be a positive number, got -1.5"),
    ({"alpha": float("nan")}, "alpha must be a positive number, got nan"),
    ({"alpha": "8"}, "alpha must be a positive number, got '8'"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, r"dropout must be a number in \[0, 1\), got -0.1"),
    ({"use_rslora": "yes"}, "use_rslora must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("bad, message", BAD_HYPERPARAMETERS)
def test_bad_hyperparameters(bad, message):
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        minilora.inject(model, ["c_attn"], **{"r": 4, "alpha": 8, **bad})
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match=message):
        minilora.LoRALinear(nn.Linear(4, 4), **{"r": 2, "alpha": 2, **bad})


@pytest.mark.parametrize("targets, message", [
    (["c_atn"], r"'c_atn' matches no module of GPT2LMHeadModel; did you mean 'c_attn'"),
    (["c_attn", "q_proj"], r"'q_proj' matches no module .* named c_attn, c_fc, c_proj, lm_head"),
    ("c_attn", r"'c_attn' matches no module"),  # a regex must match the whole name
    ([], "target_modules must be a non-empty list"),
    ([""], "target_modules must be a non-empty list"),
    (None, "target_modules must be a non-empty list of module names or a regex string, got None"),
])
def test_targets_that_match_nothing(targets, message):
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        minilora.inject(model, targets)
    assert_unchanged(model, before)


def test_unsupported_module_type():
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"'transformer.h.0.attn' is a GPT2Attention; LoRA wraps nn.Linear or Conv1D"):
        minilora.inject(model, r"transformer\.h\.\d\.(attn|mlp\.c_fc)")
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="LoRA wraps nn.Linear or GPT-2's Conv1D, not Embedding"):
        minilora.LoRALinear(nn.Embedding(4, 4), 2, 2)


def test_injecting_twice_into_a_layer():
    model = minilora.inject(tiny_gpt2(), ["c_attn"])
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"module 'transformer.h.0.attn.c_attn' already has LoRA"):
        minilora.inject(model, ["c_fc", "c_attn"])
    assert_unchanged(model, before)
    with pytest.raises(TypeError, match="not LoRALinear"):
        minilora.LoRALinear(model.transformer.h[0].attn.c_attn, 2, 2)


@pytest.mark.parametrize("matrix, r, message", [
    (torch.randn(3, 5), 4, r"r=4 exceeds the largest possible rank 3 of a \(3, 5\) matrix"),
    (torch.randn(3, 5), 0, "r must be a positive int, got 0"),
    (torch.randn(2, 3, 4), 1, r"decompose needs a 2-D tensor, got \(2, 3, 4\)"),
    ([[1.0, 2.0]], 1, "decompose needs a 2-D tensor, got list"),
])
def test_bad_decompose(matrix, r, message):
    with pytest.raises(ValueError, match=message):
        minilora.decompose(matrix, r)


# ---- adapter files ------------------------------------------------------------------------------------------------

@pytest.fixture
def adapter(tmp_path):
    """(base model, directory of a valid adapter on c_attn with r = 4)."""
    base, model = lora_gpt2(["c_attn"], r=4)
    minilora.save_adapter(model, tmp_path / "adapter")
    return base, tmp_path / "adapter"


def edit_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def edit_tensors(directory, edit):
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def assert_load_fails(model, directory, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        minilora.load_adapter(model, directory)
    assert_unchanged(model, before)


def test_missing_directory_and_files(adapter, tmp_path):
    base, directory = adapter
    assert_load_fails(base, tmp_path / "nowhere", FileNotFoundError, r"adapter directory '.*nowhere' does not exist")
    (directory / "adapter_model.safetensors").unlink()
    assert_load_fails(base, directory, FileNotFoundError, r"adapter_model.safetensors' not found")
    (directory / "adapter_config.json").unlink()
    assert_load_fails(base, directory, FileNotFoundError, r"adapter_config.json' not found")


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, "sets use_dora=True, which minilora does not implement"),
    ({"bias": "all"}, "sets bias='all'"),
    ({"modules_to_save": ["lm_head"]}, r"sets modules_to_save=\['lm_head'\]"),
    ({"rank_pattern": {"c_attn": 2}}, "sets rank_pattern="),
    ({"alpha_pattern": {"c_attn": 2}}, "sets alpha_pattern="),
    ({"layers_to_transform": [0]}, r"sets layers_to_transform=\[0\]"),
    ({"init_lora_weights": "pissa"}, "sets init_lora_weights='pissa'"),
    ({"peft_type": "IA3"}, "peft_type='IA3'; minilora reads only 'LORA' adapters"),
    ({"r": 0}, "r must be a positive int, got 0"),
    ({"lora_alpha": None}, "alpha must be a positive number, got None"),
    ({"target_modules": ["q_proj"]}, "'q_proj' matches no module"),
])
def test_unsupported_or_invalid_config(adapter, changes, message):
    base, directory = adapter
    edit_config(directory, **changes)
    assert_load_fails(base, directory, ValueError, message)


def test_shapes_that_do_not_fit(adapter):
    base, directory = adapter
    key = "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"
    edit_tensors(directory, lambda tensors: tensors.update({key: torch.zeros(95, 4)}))
    assert_load_fails(base, directory, ValueError, rf"tensor '{key}' has shape \(95, 4\), the model needs \(96, 4\)")


def test_keys_that_match_nothing(adapter):
    base, directory = adapter
    edit_tensors(directory, lambda tensors: tensors.update({"base_model.model.encoder.q.lora_A.weight": torch.zeros(4, 32)}))
    assert_load_fails(base, directory, ValueError, r"key 'base_model.model.encoder.q.lora_A.weight' matches no LoRA layer")


def test_missing_keys(adapter):
    base, directory = adapter
    key = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
    edit_tensors(directory, lambda tensors: tensors.pop(key))
    assert_load_fails(base, directory, ValueError, rf"has no tensor '{key}'")


def test_swap_refused_while_merged(adapter):
    base, directory = adapter
    model = minilora.merge(minilora.load_adapter(copy.deepcopy(base), directory))
    assert_load_fails(model, directory, ValueError, r"merged into its weights; call minilora.unmerge\(model\) before")


def test_swap_with_another_rank_or_other_targets(adapter, tmp_path):
    base, directory = adapter
    assert_load_fails(minilora.inject(copy.deepcopy(base), ["c_attn"], r=2), directory, ValueError,
                      r"the adapter has r=4 but the model's LoRA layers have \{'transformer.h.0.attn.c_attn': 2")
    assert_load_fails(minilora.inject(copy.deepcopy(base), ["c_fc"], r=4), directory, ValueError,
                      r"the model carries LoRA on \['transformer.h.0.mlp.c_fc', 'transformer.h.1.mlp.c_fc'\] but the "
                      r"adapter's target_modules=\['c_attn'\] select \['transformer.h.0.attn.c_attn'")


def test_merge_save_on_models_without_lora(tmp_path):
    with pytest.raises(ValueError, match="GPT2LMHeadModel has no LoRA layers to save"):
        minilora.save_adapter(tiny_gpt2(), tmp_path)


def test_suggestions_leave_out_the_parts_of_lora_layers():
    model = minilora.inject(tiny_gpt2(), ["c_attn"])
    with pytest.raises(ValueError, match=r"named c_attn, c_fc, c_proj, lm_head$"):
        minilora.inject(model, ["lora"])
