"""The seven faults a differential fuzz against PEFT found in the core (issue 14): each test fails without its fix."""

import copy
import json
import os
from pathlib import Path

import pytest
import torch
from core_helpers import assert_unchanged, lora_gpt2, peft_twin, snapshot, token_ids, tiny_gpt2
from safetensors.torch import load_file, save_file
from torch import nn

import minilora
from minilora.layer import lora_layers


@pytest.fixture
def adapter(tmp_path):
    base, model = lora_gpt2(["c_attn"], r=4)
    minilora.save_adapter(model, tmp_path / "adapter")
    return base, tmp_path / "adapter"


def assert_load_fails(model, directory, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        minilora.load_adapter(model, directory)
    assert_unchanged(model, before)


# 1. float64 models compute ΔW and merge in float64, not through float32.
def test_float64_delta_merge_and_unmerge():
    base, model = lora_gpt2(["c_attn", "c_fc"], r=4)
    base, model = base.double(), model.double()
    ids = token_ids()
    for _, layer in lora_layers(model):
        expected = layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)
        assert layer.delta_weight().dtype == torch.float64
        torch.testing.assert_close(layer.delta_weight(), expected.t(), rtol=0, atol=0)
    twin = peft_twin(model, base, r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"]).double()
    weights = {name: layer.base_layer.weight.detach().clone() for name, layer in lora_layers(model)}
    minilora.merge(model)
    twin.merge_adapter()
    with torch.no_grad():
        difference = (model(ids).logits - twin(ids).logits).abs().max().item()
    assert difference < 1e-12, difference  # through float32 it was about 8e-8
    minilora.unmerge(model)
    for name, layer in lora_layers(model):
        drift = (layer.base_layer.weight - weights[name]).abs().max().item()
        assert drift < 1e-14, (name, drift)  # through float32 it was about 3e-8


# 2. A config that is not a JSON object names the file and the problem.
@pytest.mark.parametrize("text, message", [
    ("[1, 2]", r"adapter_config.json' holds a JSON list, not an object"),
    ("null", r"adapter_config.json' holds a JSON NoneType, not an object"),
    ("", r"adapter_config.json' is not valid JSON"),
    ("peft_type: LORA", r"adapter_config.json' is not valid JSON"),
])
def test_config_that_is_not_an_object(adapter, text, message):
    base, directory = adapter
    (directory / "adapter_config.json").write_text(text)
    assert_load_fails(base, directory, ValueError, message)


# 3. Integer and complex tensors are refused by name.
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.complex64])
def test_tensors_that_are_not_floating_point(adapter, dtype):
    base, directory = adapter
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, path)
    assert_load_fails(base, directory, ValueError, rf"tensor '{key}' has dtype {dtype}; LoRA factors must be floating")


# 4. inject checks every target's dtype before wrapping any, and names the module.
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_inject_refuses_a_weight_that_cannot_take_lora(dtype):
    model = tiny_gpt2()
    layer = model.transformer.h[1].attn.c_attn
    layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    before = snapshot(model)
    with pytest.raises(TypeError, match=rf"'transformer.h.1.attn.c_attn' has a {dtype} weight; LoRA needs one of"):
        minilora.inject(model, ["c_attn"], r=2)
    assert_unchanged(model, before)


# 5. A float16 merge whose rounded W0 + ΔW overflows is refused, changing nothing.
def test_float16_merge_that_overflows():
    _, model = lora_gpt2(["c_attn"], r=2)
    model = model.half()
    layer = model.transformer.h[1].attn.c_attn
    layer.base_layer.weight.data[0, 0] = 65000.0
    layer.lora_A.weight.data.zero_()
    layer.lora_B.weight.data.zero_()
    layer.lora_A.weight.data[0, 0] = 1.0
    layer.lora_B.weight.data[0, 0] = 1000.0 / layer.scaling  # ΔW[0, 0] = 1000: finite, but 66000 > 65504 is not
    assert torch.isfinite(layer.delta_weight()).all()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"W0 \+ ΔW of 'transformer.h.1.attn.c_attn' overflows torch.float16"):
        minilora.merge(model)
    assert_unchanged(model, before)
    assert not any(layer.merged for _, layer in lora_layers(model))


# 6. What is true: an unreadable file is unreadable, a file given as directory is a file.
def test_unreadable_weights_file(adapter, monkeypatch):
    base, directory = adapter
    weights = directory / "adapter_model.safetensors"
    if os.geteuid() == 0:  # root reads any file: have the operating system's refusal come from Path.open instead
        real_open = Path.open

        def refusing_open(self, *args, **kwargs):
            if self == weights:
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *args, **kwargs)
        monkeypatch.setattr(Path, "open", refusing_open)
    else:
        weights.chmod(0)
    assert_load_fails(base, directory, PermissionError, r"adapter_model.safetensors' exists but cannot be read")


def test_file_given_as_adapter_directory(adapter):
    base, directory = adapter
    assert_load_fails(base, directory / "adapter_config.json", NotADirectoryError,
                      r"adapter_config.json' is a file; an adapter is a directory")


# 7. A failed save over an existing adapter leaves the old adapter whole (never new weights beside the old config).
def test_failed_save_leaves_the_old_adapter(adapter, monkeypatch):
    base, directory = adapter
    old = {file: (directory / file).read_bytes() for file in ("adapter_config.json", "adapter_model.safetensors")}
    _, other = lora_gpt2(["c_attn"], r=4, alpha=16, seed=5)

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        minilora.save_adapter(other, directory)
    monkeypatch.undo()
    assert {file: (directory / file).read_bytes() for file in old} == old
    assert sorted(p.name for p in directory.iterdir()) == sorted(old)  # no temporary file left behind
    loaded = minilora.load_adapter(copy.deepcopy(base), directory)
    assert json.loads(old["adapter_config.json"])["lora_alpha"] == 8
    assert {layer.alpha for _, layer in lora_layers(loaded)} == {8}
