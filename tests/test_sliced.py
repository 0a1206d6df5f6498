"""SlicedLoRALinear: LoRA on slices of a fused layer's outputs (q and v of GPT-2's c_attn)."""

import copy

import pytest
import torch
from torch import nn

import minilora
from core_helpers import assert_unchanged, logits, snapshot, tiny_gpt2, token_ids
from minilora import SlicedLoRALinear
from minilora.layer import LoRALinear, lora_layers


def random_factors(layer, seed=1):
    """Nonzero A and B_i (B starts at zero, which would hide any mistake in the branch)."""
    generator = torch.Generator().manual_seed(seed)
    for p in [layer.lora_A.weight, *layer.lora_B]:
        p.data.copy_(0.2 * torch.randn(p.shape, generator=generator))
    return layer


def padded_twin(layer):
    """The equivalent full LoRALinear: rank k r, A stacked, B zero-padded, alpha scaled to keep alpha / r."""
    k = len(layer.slices)
    twin = LoRALinear(copy.deepcopy(layer.base_layer), r=k * layer.r, alpha=k * layer.alpha)
    twin.lora_A.weight.data.copy_(layer.lora_A.weight)
    twin.lora_B.weight.data.copy_(layer.padded_B())
    return twin


def sliced_gpt2(parts=(0, 2), r=3, alpha=6):
    base = tiny_gpt2()
    d = base.config.n_embd
    model = minilora.inject_sliced(copy.deepcopy(base), ["c_attn"], minilora.fused_slices(3 * d, 3, list(parts)),
                                   r=r, alpha=alpha)
    for _, layer in lora_layers(model):
        random_factors(layer)
    return base, model


@pytest.mark.parametrize("slices", [[(0, 16)], [(0, 16), (32, 48)], [(5, 9), (20, 47), (47, 48)]])
@pytest.mark.parametrize("base_layer", ["linear", "conv1d"])
def test_outputs_equal_a_zero_padded_full_adapter(slices, base_layer):
    torch.manual_seed(0)
    base = nn.Linear(24, 48) if base_layer == "linear" else tiny_gpt2().transformer.h[0].mlp.c_fc
    out = 48 if base_layer == "linear" else base.nf
    slices = [(a * out // 48, b * out // 48) for a, b in slices]
    layer = random_factors(SlicedLoRALinear(base, slices, r=2, alpha=5))
    twin = padded_twin(layer)
    x = torch.randn(3, 7, layer.in_features)
    torch.testing.assert_close(layer(x), twin(x))
    torch.testing.assert_close(layer.delta_weight(), twin.delta_weight())
    outside = torch.ones(layer.out_features, dtype=torch.bool)
    for start, stop in layer.slices:
        outside[start:stop] = False
    torch.testing.assert_close(layer(x)[..., outside], base(x)[..., outside], rtol=0, atol=0)


def test_gradients_equal_the_padded_adapters():
    layer = random_factors(SlicedLoRALinear(nn.Linear(16, 30), [(0, 10), (20, 30)], r=2, alpha=4))
    twin = padded_twin(layer)
    x = torch.randn(5, 16)
    layer(x).square().sum().backward()
    twin(x).square().sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, twin.lora_A.weight.grad)
    for i, ((start, stop), b) in enumerate(zip(layer.slices, layer.lora_B)):
        torch.testing.assert_close(b.grad, twin.lora_B.weight.grad[start:stop, 2 * i:2 * i + 2])


def test_parameter_count_is_the_slices_not_a_padded_B():
    d_in, r = 24, 4
    layer = SlicedLoRALinear(nn.Linear(d_in, 48), [(0, 16), (32, 48)], r=r, alpha=4)
    lora = sum(p.numel() for name, p in layer.named_parameters() if "lora_" in name)
    assert lora == 2 * r * (d_in + 16)  # r (d_in + d_slice) per slice
    base, model = sliced_gpt2(parts=(0, 2), r=r)
    d, blocks = base.config.n_embd, base.config.n_layer
    trainable, total = minilora.count_parameters(model)
    assert trainable == blocks * 2 * r * (d + d)
    assert total == minilora.count_parameters(base)[1] + trainable
    assert all(p.requires_grad == ("lora_" in name) for name, p in model.named_parameters())


def test_starts_as_the_base_layer():
    base = nn.Linear(8, 12)
    layer = SlicedLoRALinear(base, [(4, 8)], r=2, alpha=2)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)


def test_merge_and_unmerge_are_exact_to_one_rounding():
    base, model = sliced_gpt2()
    ids = token_ids()
    before = logits(model, ids)
    minilora.merge(model)
    assert all(layer.merged for _, layer in lora_layers(model))
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)
    minilora.unmerge(model)
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)
    eps = torch.finfo(torch.float32).eps
    for name, layer in lora_layers(model):
        w0 = base.get_submodule(name).weight
        bound = eps * (w0.abs() + layer.delta_weight().abs()) + eps * torch.finfo(torch.float32).tiny
        assert ((layer.base_layer.weight - w0).abs() <= bound).all()


def test_unload_folds_the_slices_into_a_plain_model():
    _, model = sliced_gpt2()
    ids = token_ids()
    before = logits(model, ids)
    minilora.unload(model)
    assert not lora_layers(model)
    torch.testing.assert_close(logits(model, ids), before, atol=1e-5, rtol=1e-5)


def test_plain_inject_after_slices_keeps_them_trainable():
    _, model = sliced_gpt2()
    minilora.inject(model, ["c_fc"], r=2, alpha=2)
    kinds = {type(layer).__name__ for _, layer in lora_layers(model)}
    assert kinds == {"SlicedLoRALinear", "LoRALinear"}
    assert all(p.requires_grad == ("lora_" in name) for name, p in model.named_parameters())


def test_save_adapter_refuses_it(tmp_path):
    _, model = sliced_gpt2()
    with pytest.raises(ValueError, match="slices of its outputs, which PEFT's adapter format cannot express"):
        minilora.save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_save_adapter_refuses_it_next_to_plain_layers(tmp_path):
    _, model = sliced_gpt2()
    minilora.inject(model, ["c_fc"], r=3, alpha=6)
    with pytest.raises(ValueError, match="PEFT's adapter format cannot express"):
        minilora.save_adapter(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("slices, message", [
    ([], "non-empty list"),
    ((0, 4), "not a pair of integers"),
    ([(0, 4.0)], "not a pair of integers"),
    ([(True, 4)], "not a pair of integers"),
    ([(4, 4)], "empty or outside"),
    ([(-1, 4)], "empty or outside"),
    ([(0, 97)], "outside the layer's 96 outputs"),
    ([(0, 10), (5, 20)], "overlaps or precedes"),
    ([(20, 30), (0, 10)], "overlaps or precedes"),
])
def test_bad_slices_are_refused_and_change_nothing(slices, message):
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        minilora.inject_sliced(model, ["c_attn"], slices)
    assert_unchanged(model, before)


@pytest.mark.parametrize("args, message", [
    ((96, 5, [0]), "do not split into 5 equal parts"),
    ((96, 3, [3]), "distinct part indices in 0..2"),
    ((96, 3, [2, 0]), "increasing order"),
    ((96, 3, []), "distinct part indices"),
])
def test_bad_fused_parts_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        minilora.fused_slices(*args)


def test_fused_slices_of_c_attn():
    assert minilora.fused_slices(3 * 8, 3, [0, 2]) == ((0, 8), (16, 24))


def test_bad_hyperparameters_and_targets_change_nothing():
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match="r must"):
        minilora.inject_sliced(model, ["c_attn"], [(0, 4)], r=0)
    with pytest.raises(ValueError, match="matches no module"):
        minilora.inject_sliced(model, ["c_atn"], [(0, 4)])
    with pytest.raises(TypeError, match="LoRA wraps"):
        SlicedLoRALinear(nn.LayerNorm(4), [(0, 2)], r=1, alpha=1)
    assert_unchanged(model, before)


def test_load_adapter_into_a_sliced_model_is_refused_and_changes_nothing(tmp_path):
    base = tiny_gpt2()
    minilora.save_adapter(minilora.inject(copy.deepcopy(base), ["c_attn"], r=2, alpha=2), tmp_path)
    model = minilora.inject_sliced(copy.deepcopy(base), ["c_attn"], [(0, base.config.n_embd)], r=2, alpha=2)
    before = snapshot(model)
    with pytest.raises(ValueError, match="slices"):
        minilora.load_adapter(model, tmp_path)
    assert_unchanged(model, before)


def test_merge_is_one_rounding_and_leaves_the_other_outputs_bit_for_bit():
    base, model = sliced_gpt2(parts=(0, 2))  # q and v; k stays
    expected = {name: layer.base_layer.weight.detach() + layer.delta_weight() for name, layer in lora_layers(model)}
    minilora.merge(model)
    d = base.config.n_embd
    for name, layer in lora_layers(model):
        merged, w0 = layer.base_layer.weight, base.get_submodule(name).weight  # Conv1D: (in, out)
        assert torch.equal(merged, expected[name])  # W0 + ΔW in fp32, rounded once
        assert torch.equal(merged[:, d:2 * d], w0[:, d:2 * d])  # k's columns: ΔW is zero there
        assert not torch.equal(merged[:, :d], w0[:, :d])
