"""minilora against Hugging Face PEFT: same counts, same initial A, same outputs, same files, both ways."""

import copy

import pytest
import torch
from core_helpers import logits, lora_gpt2, peft, peft_twin, tiny_gpt2, token_ids
from transformers import GPT2Config, GPT2LMHeadModel

import minilora
from minilora.layer import lora_layers

# PEFT calls a transformers method that transformers 5 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TARGET_SETS = [["c_attn"], ["c_attn", "c_proj", "c_fc"], r".*\.1\.(attn|mlp)\.c_proj"]


def gpt2_small_pair():
    """GPT-2 small (the real architecture, on the meta device: nothing allocated) with r = 8 on c_attn, both ways."""
    with torch.device("meta"):
        ours = minilora.inject(GPT2LMHeadModel(GPT2Config()), ["c_attn"], r=8, alpha=8)
        theirs = peft.get_peft_model(GPT2LMHeadModel(GPT2Config()),
                                     peft.LoraConfig(r=8, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))
    return ours, theirs


def test_counts_of_gpt2_small_equal_peft():
    ours, theirs = gpt2_small_pair()
    assert minilora.count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters()) == (294_912, 124_734_720)


def test_printed_line_equals_peft(capsys):
    ours, theirs = gpt2_small_pair()
    minilora.print_trainable_parameters(ours)
    mine = capsys.readouterr().out
    theirs.print_trainable_parameters()
    assert mine == capsys.readouterr().out
    assert mine == "trainable params: 294,912 || all params: 124,734,720 || trainable%: 0.2364\n"


def test_initial_a_equals_peft_for_the_same_seed():
    base = tiny_gpt2()
    torch.manual_seed(5)
    ours = minilora.inject(copy.deepcopy(base), ["c_attn", "c_fc"], r=4)
    torch.manual_seed(5)
    theirs = peft.get_peft_model(copy.deepcopy(base),
                                 peft.LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True))
    for name, layer in lora_layers(ours):
        assert torch.equal(layer.lora_A.weight, theirs.base_model.model.get_submodule(name).lora_A["default"].weight)


@pytest.mark.parametrize("targets", TARGET_SETS)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_outputs_equal_peft(targets, use_rslora):
    base, ours = lora_gpt2(targets, r=4, alpha=8, use_rslora=use_rslora)
    theirs = peft_twin(ours, base, r=4, lora_alpha=8, target_modules=targets, use_rslora=use_rslora)
    ids = token_ids()
    expected = logits(theirs, ids)
    assert not torch.allclose(expected, logits(base, ids), atol=1e-3)  # the adapters do something
    torch.testing.assert_close(logits(ours, ids), expected, rtol=0, atol=1e-5)  # fused path (no_grad)
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-5)  # plain path (grad on)


def test_minilora_files_load_in_peft(tmp_path):
    base, ours = lora_gpt2(["c_attn", "c_fc"], r=4, alpha=16, use_rslora=True)
    minilora.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(logits(theirs, token_ids()), logits(ours, token_ids()), rtol=0, atol=1e-5)


@pytest.mark.parametrize("targets", TARGET_SETS)
def test_peft_files_load_in_minilora(tmp_path, targets):
    base, reference = lora_gpt2(targets, r=4, alpha=8, use_rslora=True)
    theirs = peft_twin(reference, base, r=4, lora_alpha=8, target_modules=targets, use_rslora=True)
    theirs.save_pretrained(tmp_path)
    ours = minilora.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(logits(ours, token_ids()), logits(theirs, token_ids()), rtol=0, atol=1e-5)


def test_merged_and_unloaded_equal_peft_merge_and_unload():
    targets = ["c_attn", "c_proj", "c_fc"]
    base, ours = lora_gpt2(targets, r=4, alpha=8)
    theirs = peft_twin(ours, base, r=4, lora_alpha=8, target_modules=targets)
    ids = token_ids()
    unmerged = logits(theirs, ids)
    torch.testing.assert_close(logits(minilora.merge(ours), ids), unmerged, rtol=0, atol=1e-5)
    plain_ours = minilora.unload(ours, merge=True)
    plain_theirs = theirs.merge_and_unload()
    assert type(plain_ours) is type(plain_theirs)
    assert [name for name, _ in plain_ours.named_modules()] == [name for name, _ in plain_theirs.named_modules()]
    ours_state, theirs_state = plain_ours.state_dict(), plain_theirs.state_dict()
    assert ours_state.keys() == theirs_state.keys()
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], theirs_state[key], rtol=0, atol=1e-6, msg=key)
