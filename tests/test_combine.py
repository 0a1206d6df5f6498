"""minilora.combine (issue 14): one adapter from several, the same ΔW as PEFT's add_weighted_adapter, files PEFT loads.

The adapters differ in r, alpha, rsLoRA and targets (c_fc is targeted by one of them only), all with random nonzero B.
"""

import copy
import json

import pytest
import torch
from core_helpers import logits, peft, tiny_gpt2, token_ids
from test_multi_adapter import write_adapters

import minilora
from minilora.layer import lora_layers

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
from peft.tuners.lora import LoraLayer  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-5}
SPECS = {"attn": (["c_attn"], 4, 8, False), "wide": (["c_attn", "c_fc"], 2, 3, True),
         "both": (["c_attn", "c_proj"], 8, 16, False)}
WEIGHTS = {"attn": 0.7, "wide": -1.3, "both": 0.4}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tiny_gpt2()
    return base, write_adapters(base, tmp_path_factory.mktemp("adapters"), SPECS)


def peft_combined(base, paths, weights, method, r, extra=None):
    """PEFT's model with the adapters, their add_weighted_adapter "theirs", and ``extra`` loaded as "ours"."""
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), paths[next(iter(paths))], adapter_name="first")
    names = ["first"]
    for name in list(paths)[1:]:
        model.load_adapter(paths[name], adapter_name=name)
        names.append(name)
    model.add_weighted_adapter(names, list(weights.values()), "theirs", combination_type=method, svd_rank=r)
    if extra is not None:
        model.load_adapter(extra, adapter_name="ours")
    return model


def deltas(model, adapter):
    """layer name -> ΔW (out, in) of one adapter of a PEFT model (its delta_weight is laid out like Conv1D's weight)."""
    return {name.removeprefix("base_model.model."): module.get_delta_weight(adapter).t()
            for name, module in model.named_modules() if isinstance(module, LoraLayer) and adapter in module.lora_A}


def minilora_deltas(base, path):
    model = minilora.load_adapter(copy.deepcopy(base), path)
    return {name: layer.delta_weight().t() for name, layer in lora_layers(model)}


@pytest.mark.parametrize("method,r", [("cat", None), ("svd", 6), ("svd", None), ("svd", 14)])
def test_delta_w_equals_peft_and_peft_loads_the_file(tiny, tmp_path, method, r):
    base, paths = tiny
    out = minilora.combine(paths, weights=WEIGHTS, method=method, r=r, out=tmp_path / "combined")
    config = json.loads((out / "adapter_config.json").read_text())
    expected_rank = {"cat": 14, "svd": r or 8}[method]
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (expected_rank, expected_rank, False)
    model = peft_combined(base, paths, WEIGHTS, method, r, extra=out)  # PEFT loads our file
    theirs, ours = deltas(model, "theirs"), deltas(model, "ours")
    assert sorted(ours) == sorted(theirs) and any(name.endswith("c_fc") for name in ours)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], **TOL, msg=name)
        assert model.get_submodule(f"base_model.model.{name}").r["ours"] == expected_rank
    torch.testing.assert_close(minilora_deltas(base, out), ours, **TOL)  # minilora reads the same ΔW
    ids = token_ids()
    model.set_adapter("ours")
    with torch.no_grad():
        peft_out = model(ids).logits
    torch.testing.assert_close(logits(minilora.load_adapter(copy.deepcopy(base), out), ids), peft_out, **TOL)


def test_cat_and_full_rank_svd_are_the_weighted_sum_of_the_updates(tiny, tmp_path):
    base, paths = tiny
    each = {name: minilora_deltas(base, path) for name, path in paths.items()}
    expected = {}
    for name, layers in each.items():
        for layer, delta in layers.items():
            expected[layer] = expected.get(layer, 0) + WEIGHTS[name] * delta
    for method, r in (("cat", None), ("svd", 14)):  # 14 = 4 + 2 + 8 reaches the rank of every layer's sum
        out = minilora.combine(paths, weights=WEIGHTS, method=method, r=r, out=tmp_path / method)
        torch.testing.assert_close(minilora_deltas(base, out), expected, **TOL)
    cut = minilora_deltas(base, minilora.combine(paths, weights=WEIGHTS, r=2, out=tmp_path / "r2"))
    layer = "transformer.h.0.attn.c_attn"
    singular = torch.linalg.svdvals(expected[layer])
    error = torch.linalg.matrix_norm(cut[layer] - expected[layer])  # Eckart-Young: the discarded singular values
    torch.testing.assert_close(error, singular[2:].square().sum().sqrt(), rtol=1e-4, atol=1e-5)


def test_peft_scales_by_root_r_when_the_first_adapter_uses_rslora(tiny, tmp_path):
    """The docstring's one difference: PEFT copies use_rslora from the first adapter into the combined one."""
    base, paths = tiny
    first_rslora = {"wide": paths["wide"], "attn": paths["attn"]}
    weights = {"wide": 1.0, "attn": 1.0}
    out = minilora.combine(first_rslora, weights=weights, method="cat", out=tmp_path / "c")
    model = peft_combined(base, first_rslora, weights, "cat", None, extra=out)
    theirs, ours = deltas(model, "theirs"), deltas(model, "ours")
    for name in theirs:
        torch.testing.assert_close(theirs[name], 6 ** 0.5 * ours[name], **TOL)  # r = 2 + 4


def test_errors_name_the_problem_and_write_nothing(tiny, tmp_path):
    base, paths = tiny
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="one number per adapter"):
        minilora.combine(paths, weights={"attn": 1.0}, out=out)
    with pytest.raises(ValueError, match="finite number"):
        minilora.combine(paths, weights={**WEIGHTS, "attn": float("nan")}, out=out)
    with pytest.raises(ValueError, match="method must be"):
        minilora.combine(paths, weights=WEIGHTS, method="ties", out=out)
    with pytest.raises(ValueError, match=r"rank 14 \(the sum of \[4, 2, 8\]\)"):
        minilora.combine(paths, weights=WEIGHTS, method="cat", r=8, out=out)
    with pytest.raises(ValueError, match="exceeds the largest possible rank"):
        minilora.combine(paths, weights=WEIGHTS, r=base.config.n_embd + 1, out=out)
    with pytest.raises(FileNotFoundError, match="adapter 'gone'"):
        minilora.combine({**paths, "gone": tmp_path / "nowhere"}, weights={**WEIGHTS, "gone": 1.0}, out=out)
    other = write_adapters(tiny_gpt2(), tmp_path / "other", {"x": (["c_attn"], 4, 8, False)})
    small = tmp_path / "small"  # the same layer names with another width
    from transformers import GPT2Config, GPT2LMHeadModel

    narrow = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64, n_positions=32)).eval()
    write_adapters(narrow, small, {"y": (["c_attn"], 4, 8, False)})
    with pytest.raises(ValueError, match="disagree on the shape"):
        minilora.combine({"x": other["x"], "y": small / "y"}, weights={"x": 1.0, "y": 1.0}, out=out)
    assert not out.exists()
