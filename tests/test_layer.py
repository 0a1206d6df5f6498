import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers.pytorch_utils import Conv1D

from minilora import LoRALinear
from minilora.lab import timing


def conv1d_like(linear):
    """The GPT-2 Conv1D computing the same map as ``linear``: its weight is stored transposed, (in, out)."""
    conv = Conv1D(linear.out_features, linear.in_features)
    conv.weight.data.copy_(linear.weight.t())
    conv.bias.data.copy_(linear.bias)
    return conv


def random_layer(base, r=3, alpha=6, seed=0, **kwargs):
    layer = LoRALinear(base, r, alpha, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    layer.lora_B.weight.data.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator))
    return layer


def test_shapes_names_and_init():
    layer = LoRALinear(nn.Linear(10, 7), r=3, alpha=6)
    assert layer.lora_A.weight.shape == (3, 10) and layer.lora_B.weight.shape == (7, 3)
    assert layer.lora_A.bias is None and layer.lora_B.bias is None
    assert {name for name, _ in layer.named_parameters() if "lora_" in name} == {"lora_A.weight", "lora_B.weight"}
    assert layer.scaling == 2 and layer.r == 3 and layer.alpha == 6 and not layer.merged
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    # Kaiming-uniform with a = sqrt(5): bound = sqrt(6 / ((1 + a^2) * fan_in)) = 1 / sqrt(fan_in)
    assert layer.lora_A.weight.abs().max() <= 1 / math.sqrt(10)
    assert layer.lora_A.weight.std() > 0.5 / math.sqrt(3 * 10)  # spread over the range, not all tiny


@pytest.mark.parametrize("make", [lambda: nn.Linear(10, 7), lambda: conv1d_like(nn.Linear(10, 7))])
def test_starts_as_the_base_layer(make):
    base = make()
    x = torch.randn(2, 5, 10)
    assert torch.equal(LoRALinear(base, 4, 8)(x), base(x))


def test_equation_and_delta_weight_for_linear():
    layer = random_layer(nn.Linear(10, 7))
    x = torch.randn(4, 10)
    expected = x @ layer.base_layer.weight.T + layer.base_layer.bias + 2 * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert layer.delta_weight().shape == (7, 10) and layer.delta_weight().dtype == torch.float32
    assert torch.allclose(layer.delta_weight(), 2 * layer.lora_B.weight @ layer.lora_A.weight)


def test_conv1d_gives_the_same_map_as_linear():
    linear = nn.Linear(10, 7)
    a, b = random_layer(linear), random_layer(conv1d_like(linear))
    b.lora_A.weight.data.copy_(a.lora_A.weight)
    x = torch.randn(3, 4, 10)
    assert torch.allclose(a(x), b(x), atol=1e-5)
    assert b.fan_in_fan_out and b.delta_weight().shape == (10, 7)  # laid out like Conv1D's weight
    assert torch.allclose(b.delta_weight(), a.delta_weight().T)


@pytest.mark.parametrize("make", [lambda: nn.Linear(10, 7), lambda: conv1d_like(nn.Linear(10, 7))])
@pytest.mark.parametrize("shape", [(10,), (1, 10), (2, 5, 10)])
def test_fused_path_equals_teaching_path(make, shape):
    layer = random_layer(make(), seed=3).eval()
    x = torch.randn(shape)
    teaching = layer(x)  # eval mode, gradients enabled: the plain form
    with torch.no_grad():
        fused = layer(x)
    with torch.inference_mode():
        fused_inference = layer(x)
    assert teaching.grad_fn is not None and fused.grad_fn is None
    assert fused.shape == teaching.shape == shape[:-1] + (7,)
    assert torch.allclose(fused, teaching, atol=1e-6) and torch.allclose(fused_inference, teaching, atol=1e-6)


def test_autocast_takes_the_plain_path():
    layer = random_layer(nn.Linear(10, 7)).eval()
    x = torch.randn(4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = layer(x)
        with torch.no_grad():
            assert torch.equal(layer(x), plain)


def test_fused_path_on_non_contiguous_input():
    layer = random_layer(nn.Linear(10, 7)).eval()
    x = torch.randn(10, 4).T  # (4, 10), transposed view
    with torch.no_grad():
        assert torch.allclose(layer(x), layer(x.contiguous()), atol=1e-6)


def test_fused_path_without_bias():
    layer = random_layer(nn.Linear(10, 7, bias=False)).eval()
    x = torch.randn(2, 3, 10)
    teaching = layer(x)
    with torch.inference_mode():
        assert layer.can_fuse(x)
        assert torch.allclose(layer(x), teaching, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: nn.Linear(10, 7), lambda: conv1d_like(nn.Linear(10, 7))])
def test_fused_path_runs_three_operations(make):
    """A thin product (mm), an addmm from the bias, the base product added in place; nothing else that computes."""
    layer = random_layer(make()).eval()
    x = torch.randn(2, 3, 10)
    with torch.inference_mode():
        counts = timing.count_operations(lambda: layer(x))
    assert {op: n for op, n in counts.items() if op not in timing.NO_KERNEL_OPS} == {"mm": 1, "addmm": 1, "addmm_": 1}


def test_base_layer_with_a_hook_is_called_not_bypassed():
    layer = random_layer(nn.Linear(10, 7)).eval()
    calls = []
    layer.base_layer.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    x = torch.randn(4, 10)
    with torch.no_grad():
        assert not layer.can_fuse(x)
        layer(x)
    assert calls == [(4, 7)]


def test_subclass_with_its_own_forward_is_called():
    class Doubling(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = random_layer(Doubling(10, 7)).eval()
    x = torch.randn(4, 10)
    with torch.no_grad():
        base = layer.base_layer
        expected = 2 * (x @ base.weight.T + base.bias) + layer.scaling * x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
        assert not layer.can_fuse(x)
        assert torch.allclose(layer(x), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_path_in_half_precision_rounds_like_the_equation(dtype, seed):
    """Both forms round in their own order; against fp32, each must stay within two units of the dtype's precision
    at the size of the largest output (over 200 seeds, both stayed within 1.4 such units)."""
    torch.manual_seed(seed)  # A's initialisation
    exact = random_layer(conv1d_like(nn.Linear(64, 48)), r=8, seed=seed).eval()
    half = copy.deepcopy(exact).to(dtype)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = exact.train()(x)  # fp32, the plain form
        plain = half.train()(x.to(dtype))
        half.eval()
        assert half.can_fuse(x)
        fused = half(x.to(dtype))
    assert fused.dtype == dtype
    unit = torch.finfo(dtype).eps * reference.abs().max()
    for name, output in (("plain", plain), ("fused", fused)):
        error = (output.float() - reference).abs().max()
        assert error <= 2 * unit, f"{name}: error {error} over {unit} per unit"


def test_dropout_only_on_the_lora_branch():
    base = nn.Linear(10, 7)
    layer = LoRALinear(base, 4, 8, dropout=0.9).train()
    x = torch.randn(50, 10)
    assert torch.equal(layer(x), base(x))  # B = 0: whatever dropout does to x, the base path sees all of x
    layer.lora_B.weight.data.normal_()
    assert not torch.allclose(layer(x), layer(x))  # training: dropout is active
    layer.eval()
    assert torch.equal(layer(x), layer(x))  # evaluation: no dropout


def test_new_layer_takes_the_mode_of_the_layer_it_wraps():
    assert not LoRALinear(nn.Linear(4, 4).eval(), 2, 2).training
    assert LoRALinear(nn.Linear(4, 4), 2, 2).training


def test_rslora_scaling():
    assert LoRALinear(nn.Linear(4, 4), 4, 8, use_rslora=True).scaling == 8 / 2


def test_meta_device_and_dtype_follow_the_base_weight():
    layer = LoRALinear(nn.Linear(768, 2304, device="meta"), 8, 8)
    assert layer.lora_A.weight.is_meta and layer.lora_B.weight.is_meta
    half = LoRALinear(nn.Linear(6, 4).half(), 2, 2)
    assert half.lora_A.weight.dtype == half.lora_B.weight.dtype == torch.float16


def test_repr_shows_the_settings():
    assert "r=2, alpha=4, scaling=2, merged=False" in repr(LoRALinear(nn.Linear(3, 3), 2, 4))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4),
       st.lists(st.integers(1, 3), min_size=0, max_size=2), st.booleans())
def test_output_shapes(in_features, out_features, r, batch, conv):
    base = nn.Linear(in_features, out_features)
    layer = random_layer(conv1d_like(base) if conv else base, r=r)
    x = torch.randn(*batch, in_features)
    assert layer(x).shape == (*batch, out_features)
    with torch.no_grad():
        assert torch.allclose(layer(x), layer.train()(x), atol=1e-5)  # fused (no_grad) == plain (training, p = 0)
    assert layer.delta_weight().shape == tuple(layer.base_layer.weight.shape)


def test_gradients_reach_only_a_and_b_when_the_base_is_frozen():
    base = nn.Linear(5, 3).requires_grad_(False)
    layer = random_layer(copy.deepcopy(base))
    layer(torch.randn(2, 5)).sum().backward()
    assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad is not None
    assert layer.base_layer.weight.grad is None


@pytest.mark.parametrize("make", [lambda: nn.Linear(10, 7), lambda: nn.Linear(10, 7, bias=False),
                                  lambda: conv1d_like(nn.Linear(10, 7))])
def test_fused_path_differentiates_like_the_equation(make):
    """The fused path's in-place ops (``xa.mul_``, ``h.addmm_``) act on outputs autograd does not save, so called
    under autograd it gives the equation's gradients. ``forward`` still never takes it while autograd records
    (``can_fuse`` is False), so training runs the equation as written."""
    fused = random_layer(make(), seed=5).eval()
    plain = copy.deepcopy(fused)
    for layer in (fused, plain):
        layer.base_layer.requires_grad_(True)
    x = torch.randn(2, 3, 10)
    x_fused, x_plain = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    assert not fused.can_fuse(x_fused)  # gradients enabled: forward would take the plain path
    out_fused = fused.fused_forward(x_fused)
    out_plain = plain(x_plain)
    weights = torch.randn(out_plain.shape, generator=torch.Generator().manual_seed(1))
    (out_fused * weights).sum().backward()
    (out_plain * weights).sum().backward()
    assert torch.allclose(out_fused, out_plain, atol=1e-6)
    assert torch.allclose(x_fused.grad, x_plain.grad, atol=1e-5)
    pairs = list(zip(fused.named_parameters(), plain.named_parameters()))
    assert {name for (name, _), _ in pairs} >= {"lora_A.weight", "lora_B.weight", "base_layer.weight"}
    for (name, p_fused), (_, p_plain) in pairs:
        assert p_fused.grad is not None, name
        assert torch.allclose(p_fused.grad, p_plain.grad, atol=1e-5), name
