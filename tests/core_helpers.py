"""Small shared helpers for the core tests: a tiny random GPT-2, its PEFT twin, snapshots of a model's state."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import minilora
from minilora.layer import lora_layers

peft = pytest.importorskip("peft")

VOCAB = 64


def tiny_gpt2(seed=0, tie=True):
    """A random GPT-2 with 2 blocks of width 32, in eval mode: the same architecture as GPT-2 small, only smaller.

    ``tie=False`` gives lm_head its own weight (GPT-2 ties it to the token embedding), so it can be merged into.
    """
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=32, vocab_size=VOCAB,
                        bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def token_ids(seed=0, batch=2, length=12):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def randomize_lora(model, seed=1):
    """Give every LoRA layer a nonzero B (B starts at zero, which would hide any mistake in the branch)."""
    generator = torch.Generator().manual_seed(seed)
    for _, layer in lora_layers(model):
        for linear in (layer.lora_A, layer.lora_B):
            weight = linear.weight.data
            weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
    return model


def peft_twin(model, base, **lora_config):
    """A PEFT model on a copy of ``base`` with the same A and B as the minilora ``model``."""
    lora_config.setdefault("fan_in_fan_out", True)  # GPT-2's Conv1D; saves PEFT's warning
    twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**lora_config)).eval()
    for name, layer in lora_layers(model):
        theirs = twin.base_model.model.get_submodule(name)
        theirs.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
        theirs.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
    return twin


def lora_gpt2(targets=("c_attn",), r=4, alpha=8, seed=0, tie=True, **kwargs):
    """(base, minilora model with random A and B): the base is kept untouched for comparisons."""
    base = tiny_gpt2(seed, tie)
    model = minilora.inject(copy.deepcopy(base), targets, r=r, alpha=alpha, **kwargs)
    return base, randomize_lora(model, seed + 1)


def snapshot(model):
    """Everything a failed call must leave alone: the module tree, every tensor, every requires_grad flag."""
    return ([(name, type(module)) for name, module in model.named_modules()],
            {name: (t.detach().clone(), t.requires_grad) for name, t in model.state_dict(keep_vars=True).items()})


def assert_unchanged(model, before):
    tree, tensors = snapshot(model)
    assert tree == before[0]
    assert tensors.keys() == before[1].keys()
    for name, (tensor, grad) in tensors.items():
        torch.testing.assert_close(tensor, before[1][name][0], rtol=0, atol=0, equal_nan=True, msg=name)
        assert grad == before[1][name][1], name
