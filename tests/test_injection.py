import copy

import torch
from core_helpers import lora_gpt2, logits, tiny_gpt2, token_ids
from transformers import GPT2Config, GPT2LMHeadModel

import minilora
from minilora import LoRALinear
from minilora.layer import lora_layers


def adapted(model):
    return [name for name, _ in lora_layers(model)]


def test_inject_wraps_in_place_and_freezes_the_rest():
    model = tiny_gpt2()
    assert minilora.inject(model, ["c_attn"], r=4, alpha=8) is model
    assert adapted(model) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"}


def test_a_fresh_adapter_does_not_change_the_outputs():
    base = tiny_gpt2()
    model = minilora.inject(copy.deepcopy(base), ["c_attn", "c_proj", "c_fc"], r=4, alpha=8)
    assert torch.equal(logits(model, token_ids()), logits(base, token_ids()))


def test_names_match_as_in_peft():
    model = tiny_gpt2()
    # last dotted parts: "c_proj" alone is in attn and mlp, "attn.c_proj" only in attention
    assert adapted(minilora.inject(copy.deepcopy(model), ["attn.c_proj"])) == [
        "transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    assert len(adapted(minilora.inject(copy.deepcopy(model), ["c_proj"]))) == 4
    assert adapted(minilora.inject(copy.deepcopy(model), ["transformer.h.1.mlp.c_fc"])) == ["transformer.h.1.mlp.c_fc"]
    # a string is a regular expression over the whole name
    assert adapted(minilora.inject(copy.deepcopy(model), r".*\.0\.attn\.c_(attn|proj)")) == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]


def test_nn_linear_targets_work_too():
    model = minilora.inject(tiny_gpt2(), ["lm_head"], r=2, alpha=2)
    assert isinstance(model.lm_head, LoRALinear) and not model.lm_head.fan_in_fan_out


def test_model_mode_is_kept():
    model = minilora.inject(tiny_gpt2(), ["c_attn"])  # tiny_gpt2 is in eval mode
    assert not any(module.training for module in model.modules())


def test_a_second_inject_keeps_earlier_layers_trainable():
    model = minilora.inject(tiny_gpt2(), ["c_attn"], r=2, alpha=2)
    minilora.inject(model, ["c_fc"], r=4, alpha=4)
    assert len(adapted(model)) == 4
    assert all(layer.lora_A.weight.requires_grad for _, layer in lora_layers(model))


def test_rslora_and_dropout_reach_every_layer():
    _, model = lora_gpt2(["c_attn"], r=4, alpha=8, dropout=0.1, use_rslora=True)
    assert all(layer.scaling == 4 and layer.lora_dropout.p == 0.1 for _, layer in lora_layers(model))


def test_counts_of_gpt2_small_on_the_meta_device():
    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())  # the real GPT-2 small architecture, nothing allocated
    assert minilora.count_parameters(model) == (124_439_808, 124_439_808)
    minilora.inject(model, ["c_attn"], r=8, alpha=8)
    assert minilora.count_parameters(model) == (294_912, 124_734_720)  # 12 * 8 * (768 + 2304) trainable


def test_print_trainable_parameters(capsys):
    model = minilora.inject(tiny_gpt2(), ["c_attn"], r=4)
    minilora.print_trainable_parameters(model)
    trainable, total = minilora.count_parameters(model)
    assert capsys.readouterr().out == (
        f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}\n")
