import copy

import pytest
import torch
from core_helpers import lora_gpt2, logits, snapshot, token_ids, assert_unchanged
from torch import nn

import minilora
from minilora import LoRALinear
from minilora.layer import lora_layers

TARGETS = ["c_attn", "c_proj", "c_fc", "lm_head"]  # Conv1D and nn.Linear layers; lm_head untied (tie=False)


def test_merged_outputs_equal_unmerged():
    _, model = lora_gpt2(TARGETS, tie=False)
    ids = token_ids()
    before = logits(model, ids)
    minilora.merge(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    assert torch.allclose(logits(model, ids), before, atol=1e-5)


def test_merge_twice_changes_nothing():
    _, model = lora_gpt2(TARGETS, tie=False)
    minilora.merge(model)
    once = snapshot(model)
    minilora.merge(model)
    assert_unchanged(model, once)


def test_unmerge_restores_the_weights_and_outputs():
    base, model = lora_gpt2(TARGETS, tie=False)
    ids = token_ids()
    before = logits(model, ids)
    minilora.unmerge(minilora.merge(model))
    assert not any(layer.merged for _, layer in lora_layers(model))
    assert torch.allclose(logits(model, ids), before, atol=1e-5)
    for name, layer in lora_layers(model):
        assert torch.allclose(layer.base_layer.weight, base.get_submodule(name).weight, atol=1e-6)


def test_unmerge_without_merge_changes_nothing():
    _, model = lora_gpt2()
    before = snapshot(model)
    minilora.unmerge(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_drift_is_bounded_by_the_dtype(dtype):
    # merge rounds W0 + ΔW to the dtype once, unmerge rounds (W0 + ΔW) - ΔW once. Rounding to nearest moves a value
    # v by at most u|v|, u = eps / 2 (plus half the subnormal spacing, eps * tiny / 2, for tiny values), and the
    # fp32 arithmetic before each rounding is exact enough to ignore next to it (for fp32 itself it is the rounding).
    # So |W' - W0| <= u|W0 + ΔW| + u|W0 + e1| <= eps (|W0| + |ΔW|) + eps * tiny elementwise.
    generator = torch.Generator().manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 48).to(dtype), r=8, alpha=16)
    layer.lora_B.weight.data.copy_(torch.randn(48, 8, generator=generator))
    original = layer.base_layer.weight.detach().clone()
    delta = layer.delta_weight()
    wrapper = nn.Sequential(layer)
    minilora.unmerge(minilora.merge(wrapper))
    finfo = torch.finfo(dtype)
    drift = (layer.base_layer.weight.float() - original.float()).abs()
    bound = finfo.eps * (original.float().abs() + delta.abs()) + finfo.eps * finfo.tiny
    assert (drift <= bound).all()
    assert layer.base_layer.weight.dtype == dtype


def test_merge_computes_in_float32_and_rounds_once():
    layer = LoRALinear(nn.Linear(16, 16).to(torch.bfloat16), r=4, alpha=4)
    layer.lora_B.weight.data.normal_()
    expected = (layer.base_layer.weight.float() + layer.delta_weight()).to(torch.bfloat16)
    minilora.merge(nn.Sequential(layer))
    assert torch.equal(layer.base_layer.weight, expected)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_delta_refuses_to_merge(bad):
    _, model = lora_gpt2(["c_attn", "c_fc"])
    model.transformer.h[1].mlp.c_fc.lora_B.weight.data[0, 0] = bad
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'transformer\.h\.1\.mlp\.c_fc' has inf or nan"):
        minilora.merge(model)
    assert_unchanged(model, before)  # not even the finite layers were merged


def test_unload_with_merge_gives_a_plain_model_with_the_same_outputs():
    _, model = lora_gpt2(TARGETS, tie=False)
    ids = token_ids()
    before = logits(model, ids)
    plain = minilora.unload(model, merge=True)
    assert not lora_layers(plain) and not any("lora_" in name for name, _ in plain.named_parameters())
    assert torch.allclose(logits(plain, ids), before, atol=1e-5)


@pytest.mark.parametrize("merge_first", [False, True])
def test_unload_without_merge_gives_the_base_model_back(merge_first):
    base, model = lora_gpt2(TARGETS, tie=False)
    if merge_first:
        minilora.merge(model)
    plain = minilora.unload(model, merge=False)
    assert not lora_layers(plain)
    assert torch.allclose(logits(plain, token_ids()), logits(base, token_ids()), atol=1e-5)


@pytest.mark.parametrize("call", [minilora.merge, minilora.unmerge, minilora.unload])
def test_model_without_lora_is_refused(call):
    with pytest.raises(ValueError, match="Linear has no LoRA layers"):
        call(copy.deepcopy(nn.Linear(2, 2)))


def test_tied_weight_is_not_merged():
    _, model = lora_gpt2(["c_attn", "lm_head"])  # GPT-2 ties lm_head to the token embedding
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"weight of 'lm_head' is shared with another module"):
        minilora.merge(model)
    assert_unchanged(model, before)
