import copy
import json

import pytest
import torch
from core_helpers import lora_gpt2, logits, randomize_lora, tiny_gpt2, token_ids
from safetensors.torch import load_file

import minilora
from minilora.layer import lora_layers


def test_files_are_peft_files(tmp_path):
    _, model = lora_gpt2(["c_attn", "c_fc"], r=4, alpha=8)
    minilora.save_adapter(model, tmp_path, base_model_name_or_path="tiny-gpt2")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["c_attn", "c_fc"] and config["fan_in_fan_out"] is True
    assert config["base_model_name_or_path"] == "tiny-gpt2" and config["bias"] == "none"
    assert config["use_rslora"] is False and config["use_dora"] is False and config["lora_dropout"] == 0.0
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight"].shape == (128, 4)
    assert len(tensors) == 2 * 2 * 2  # 2 blocks, 2 targets, A and B


def test_round_trip_gives_the_same_outputs(tmp_path):
    base, model = lora_gpt2(["c_attn", "c_proj"], r=4, alpha=16, dropout=0.1, use_rslora=True)
    minilora.save_adapter(model, tmp_path)
    loaded = minilora.load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(logits(loaded, token_ids()), logits(model, token_ids()))
    assert all(layer.scaling == 8 and layer.lora_dropout.p == 0.1 for _, layer in lora_layers(loaded))
    trainable = {name for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in loaded.named_parameters() if "lora_" in name}


def test_partial_targets_are_saved_by_full_name(tmp_path):
    base, model = lora_gpt2(r".*\.1\.attn\.c_attn")
    minilora.save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["transformer.h.1.attn.c_attn"]
    loaded = minilora.load_adapter(copy.deepcopy(base), tmp_path)
    assert [name for name, _ in lora_layers(loaded)] == ["transformer.h.1.attn.c_attn"]


def test_adapters_swap_in_place(tmp_path):
    base, first = lora_gpt2(["c_attn"], r=4, alpha=8, seed=0)
    second = randomize_lora(copy.deepcopy(first), seed=7)
    for layer in (layer for _, layer in lora_layers(second)):
        layer.alpha = 2  # a different alpha travels with the file
    minilora.save_adapter(first, tmp_path / "first")
    minilora.save_adapter(second, tmp_path / "second")
    model = minilora.load_adapter(copy.deepcopy(base), tmp_path / "first")
    layers_before = [layer for _, layer in lora_layers(model)]
    minilora.load_adapter(model, tmp_path / "second")
    assert [layer for _, layer in lora_layers(model)] == layers_before  # same modules, new weights
    assert torch.equal(logits(model, token_ids()), logits(second, token_ids()))
    minilora.load_adapter(model, tmp_path / "first")
    assert torch.equal(logits(model, token_ids()), logits(first, token_ids()))


def test_loading_into_half_precision_casts_the_weights(tmp_path):
    base, model = lora_gpt2()
    minilora.save_adapter(model, tmp_path)
    loaded = minilora.load_adapter(copy.deepcopy(base).half(), tmp_path)
    assert all(layer.lora_A.weight.dtype == torch.float16 for _, layer in lora_layers(loaded))


def test_saving_a_merged_model_saves_the_same_adapter(tmp_path):
    base, model = lora_gpt2()
    minilora.save_adapter(model, tmp_path / "unmerged")
    minilora.save_adapter(minilora.merge(model), tmp_path / "merged")
    for a, b in zip(*(load_file(tmp_path / d / "adapter_model.safetensors").values() for d in ("unmerged", "merged"))):
        assert torch.equal(a, b)


def test_mixed_settings_cannot_be_saved(tmp_path):
    model = minilora.inject(tiny_gpt2(), ["c_attn"], r=4)
    minilora.inject(model, ["c_fc"], r=2)
    with pytest.raises(ValueError, match=r"one \(r, alpha, dropout, use_rslora\) for all layers; this model mixes"):
        minilora.save_adapter(model, tmp_path)
    assert not tmp_path.joinpath("adapter_config.json").exists()
