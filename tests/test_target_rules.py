"""Which modules an adapter targets: minilora.load_adapter follows PEFT's rules (issue 14).

PEFT (``peft.tuners.tuners_utils.check_target_module_exists``): a list entry matches a module whose full dotted name
equals it or ends with ``"." + entry``; a string is a regex that must match the whole name. A list may hold entries
that match nothing, as long as one matches. ``inject`` keeps refusing such an entry (a typo guard); ``load_adapter``
and ``find_targets(..., each_entry=False)`` accept it. Each case is checked against PEFT's own function.
"""

import copy
import json

import pytest
import torch
from core_helpers import assert_unchanged, logits, lora_gpt2, snapshot, tiny_gpt2, token_ids
from safetensors.torch import load_file, save_file
from torch import nn

import minilora
from minilora.injection import find_targets

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import check_target_module_exists  # noqa: E402


def tree(*keys):
    """A module whose named_modules() are exactly the given dotted keys and their parents."""
    root = nn.Module()
    for key in keys:
        node = root
        for part in key.split("."):
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
    return root


def peft_selects(model, target_modules):
    config = peft.LoraConfig(target_modules=target_modules)
    return [name for name, _ in model.named_modules() if name and check_target_module_exists(config, name)]


# (module keys, target_modules), in the spirit of PEFT's own table in tests/test_tuners_utils.py (suffix and regex).
CASES = [
    (["foo"], ["foo"]),
    (["foo"], ["foo", "bar"]),
    (["foo.bar"], ["bar"]),
    (["foo.bar"], ["foo"]),
    (["foo.bar"], ["foo.bar"]),
    (["foo.bar"], ["oo.bar"]),  # a suffix must start at a dot
    (["model.layers.1.self_attn.q_proj"], ["q_proj", "v_proj"]),
    (["model.layers.1.self_attn.q_proj"], ["self_attn.q_proj", "k_proj"]),
    (["transformer.h.1.attn.c_attn", "transformer.h.1.mlp.c_fc"], ["q_proj", "v_proj", "c_attn", "query_key_value"]),
    (["foo.bar.q_proj"], "q_proj"),  # a regex matches the whole name only
    (["foo.bar.q_proj"], ".*q_proj"),
    (["foo.bar.q_proj", "foo.bar.v_proj"], r".*\.(q|v)_proj"),
    (["model.layers.1.self_attn.q_proj", "model.layers.12.self_attn.q_proj"], r".*layers\.1\..*q_proj"),
    (["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"], r"transformer\.h\.\d+\.attn\.c_(attn|proj)"),
]


@pytest.mark.parametrize("keys, target_modules", CASES)
def test_same_modules_as_peft(keys, target_modules):
    model = tree(*keys)
    expected = peft_selects(model, target_modules)
    if expected:
        assert find_targets(model, target_modules, each_entry=False) == expected
    else:
        with pytest.raises(ValueError, match="match"):
            find_targets(model, target_modules, each_entry=False)


def test_same_modules_as_peft_on_gpt2():
    model = tiny_gpt2()
    for targets in (["c_attn", "q_proj"], ["attn.c_proj"], ["c_proj"], r".*\.1\.mlp\.c_(fc|proj)", ["lm_head", "x"]):
        assert find_targets(model, targets, each_entry=False) == peft_selects(model, targets), targets


def test_inject_still_refuses_an_entry_that_matches_nothing():
    model = tiny_gpt2()
    before = snapshot(model)
    with pytest.raises(ValueError, match="target_modules entry 'q_proj' matches no module"):
        minilora.inject(model, ["c_attn", "q_proj"])
    assert_unchanged(model, before)


def write_config(directory, **changes):
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def adapter(tmp_path):
    base, model = lora_gpt2(["c_attn", "c_fc"], r=4)
    minilora.save_adapter(model, tmp_path / "adapter")
    return base, model, tmp_path / "adapter"


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "c_attn", "c_fc", "query_key_value"],
                                     r".*\.(c_attn|c_fc)", ["attn.c_attn", "mlp.c_fc", "gate_proj"]])
def test_load_adapter_with_entries_for_other_architectures(adapter, targets):
    base, model, directory = adapter
    write_config(directory, target_modules=targets)
    ids = token_ids()
    ours = minilora.load_adapter(copy.deepcopy(base), directory)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), directory).eval()
    torch.testing.assert_close(logits(ours, ids), logits(model, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(ours, ids), logits(theirs, ids), rtol=1e-5, atol=1e-5)


def test_load_refuses_when_nothing_matches(adapter):
    base, _, directory = adapter
    write_config(directory, target_modules=["q_proj", "v_proj"])
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"no entry of target_modules=\['q_proj', 'v_proj'\] matches a module"):
        minilora.load_adapter(base, directory)
    assert_unchanged(base, before)


def test_load_refuses_a_weight_key_without_its_module(adapter):
    base, _, directory = adapter
    write_config(directory, target_modules=["c_attn", "c_fc", "q_proj"])
    path = directory / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors["base_model.model.transformer.h.0.attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, path)
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"key 'base_model.model.transformer.h.0.attn.q_proj.lora_A.weight' matches "
                                         r"no LoRA layer"):
        minilora.load_adapter(base, directory)
    assert_unchanged(base, before)
