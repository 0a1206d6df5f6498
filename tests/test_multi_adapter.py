"""Mixed-adapter batches (issue 14): minilora.load_adapters, per_row and unload, against single adapters and PEFT.

Every adapter has a random, nonzero B (B starts at zero, which would hide any mistake in the branch). They differ in
r, alpha, rsLoRA and target modules, so that a layer holds some of them and not others and ranks are zero-padded.
One is written by PEFT's own save_pretrained, the others by minilora.save_adapter.
"""

import copy
import json

import pytest
import torch
from core_helpers import assert_unchanged, logits, peft, randomize_lora, snapshot, tiny_gpt2, token_ids

import minilora
from minilora.multi import MultiLoRALinear, multi_layers

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TOL = {"rtol": 1e-5, "atol": 1e-5}  # fp32; the products run in another order than a single adapter's
SPECS = {  # name -> (target_modules, r, alpha, use_rslora)
    "attn": (["c_attn"], 4, 8, False),
    "wide": (["c_attn", "c_fc", "q_proj"], 2, 3, True),  # q_proj matches nothing in GPT-2: PEFT's rule allows it
    "mlp": (["c_proj"], 8, 16, False),  # both attn.c_proj and mlp.c_proj
}
MIX = ["attn", None, "wide", "mlp", "attn", "wide"]


def write_adapters(base, directory, specs=SPECS, seed=10):
    """Save one random adapter per spec under ``directory``; the last one with PEFT's save_pretrained."""
    paths = {}
    for i, (name, (targets, r, alpha, rslora)) in enumerate(specs.items()):
        model = minilora.inject(copy.deepcopy(base), [t for t in targets if t != "q_proj"], r=r, alpha=alpha,
                                use_rslora=rslora)
        randomize_lora(model, seed + i)
        paths[name] = directory / name
        if i < len(specs) - 1:
            minilora.save_adapter(model, paths[name])
            config_path = paths[name] / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["target_modules"] = targets  # as published configs do: names for several architectures
            config_path.write_text(json.dumps(config))
        else:  # the same factors through PEFT
            twin = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
                r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=targets, fan_in_fan_out=True))
            for layer_name, layer in minilora.layer.lora_layers(model):
                theirs = twin.base_model.model.get_submodule(layer_name)
                theirs.lora_A["default"].weight.data.copy_(layer.lora_A.weight)
                theirs.lora_B["default"].weight.data.copy_(layer.lora_B.weight)
            twin.save_pretrained(paths[name])
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tiny_gpt2()
    return base, write_adapters(base, tmp_path_factory.mktemp("adapters"))


def alone(base, path):
    """The base model with only this adapter (or none), loaded by the single-adapter path."""
    model = copy.deepcopy(base)
    return minilora.load_adapter(model, path) if path else model


def peft_mixed(base, paths):
    names = list(paths)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base), paths[names[0]], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(paths[name], adapter_name=name)
    return model.eval()


def check_rows_and_peft(base, paths, names, ids):
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    with minilora.per_row(model, names):
        mixed = logits(model, ids)
    for row, name in enumerate(names):
        expected = logits(alone(base, paths.get(name)), ids[row:row + 1])[0]
        torch.testing.assert_close(mixed[row], expected, **TOL, msg=f"row {row} ({name})")
    with torch.no_grad():
        theirs = peft_mixed(base, paths)(ids, adapter_names=[name or "__base__" for name in names]).logits
    torch.testing.assert_close(mixed, theirs, **TOL)
    adapted = [row for row, name in enumerate(names) if name]
    if adapted:  # the adapters do something
        assert not torch.allclose(mixed[adapted], logits(base, ids[adapted]), atol=1e-3)
    return mixed


def test_layers_hold_the_adapters_that_target_them(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    held = {name: layer.names for name, layer in multi_layers(model)}
    assert held["transformer.h.0.attn.c_attn"] == ("attn", "wide")
    assert held["transformer.h.0.mlp.c_fc"] == ("wide",)
    assert held["transformer.h.1.attn.c_proj"] == held["transformer.h.1.mlp.c_proj"] == ("mlp",)
    assert model.get_submodule("transformer.h.0.attn.c_attn").lora_A.shape == (3, 4, base.config.n_embd)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("names", [MIX, ["mlp", "mlp"], [None, None, None], ["wide"]])
def test_each_row_equals_that_row_alone_and_the_batch_equals_peft(tiny, names):
    base, paths = tiny
    check_rows_and_peft(base, paths, names, token_ids(batch=len(names), length=10))


def test_the_bundled_base_model(tmp_path):
    from minilora import lab

    base, _ = lab.load_base()
    paths = write_adapters(base, tmp_path, seed=20)
    ids = torch.randint(0, base.config.vocab_size, (len(MIX), 16), generator=torch.Generator().manual_seed(3))
    check_rows_and_peft(base, paths, MIX, ids)


def test_rows_without_an_adapter_get_the_base_output_exactly(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    layer = model.get_submodule("transformer.h.0.mlp.c_fc")  # held by "wide" only
    x = torch.randn(3, 5, base.config.n_embd)
    with minilora.per_row(model, ["attn", "wide", None]), torch.no_grad():
        h = layer(x)
        fused_base = layer.base_layer(x)
    assert torch.equal(h[[0, 2]], fused_base[[0, 2]])  # not targeted by "attn"; None
    with minilora.per_row(model, ["attn", "wide", None]):  # autograd on: the unfused path
        assert torch.equal(layer(x)[[0, 2]], layer.base_layer(x)[[0, 2]])
        # Zero padding: "wide" has r = 2 in a layer padded to r = 4; its padded columns of X Aᵀ are exactly zero.
        c_attn = model.get_submodule("transformer.h.0.attn.c_attn")
        xa = torch.bmm(x, c_attn.lora_A[c_attn.rows].mT)
        assert c_attn.ranks == (4, 2) and torch.equal(xa[1, :, 2:], torch.zeros_like(xa[1, :, 2:]))


def generate(model, ids, **kwargs):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, pad_token_id=0,
                              **kwargs)


def test_greedy_generation_keeps_each_rows_adapter(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    ids = token_ids(seed=4, batch=len(MIX), length=6)
    with minilora.per_row(model, MIX):
        out = generate(model, ids, do_sample=False)
    for row, name in enumerate(MIX):
        assert torch.equal(out[row], generate(alone(base, paths.get(name)), ids[row:row + 1], do_sample=False)[0])
    assert len({tuple(row[6:].tolist()) for row in out}) > 2  # the adapters lead to different continuations


def test_sampling_keeps_each_rows_adapter(tiny):
    """Sampled rows cannot be compared with rows sampled alone (the random stream is drawn for the whole batch), so:
    the same seed gives PEFT's tokens, and every step's logits of each row equal its own adapter's, alone, on the
    same tokens."""
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    ids = token_ids(seed=5, batch=len(MIX), length=6)
    sample = {"do_sample": True, "top_k": 0, "return_dict_in_generate": True, "output_logits": True}
    torch.manual_seed(0)
    with minilora.per_row(model, MIX):
        ours = generate(model, ids, **sample)
    twin = peft_mixed(base, paths)  # before seeding: building it draws random initial factors
    torch.manual_seed(0)
    theirs = generate(twin, ids, adapter_names=[n or "__base__" for n in MIX], **sample)
    assert torch.equal(ours.sequences, theirs.sequences)
    steps = torch.stack(ours.logits, dim=1)  # (batch, new tokens, vocab)
    for row, name in enumerate(MIX):
        expected = logits(alone(base, paths.get(name)), ours.sequences[row:row + 1, :-1])[0, ids.shape[1] - 1:]
        torch.testing.assert_close(steps[row], expected, **TOL, msg=f"row {row} ({name})")


def test_nested_blocks_restore_the_outer_rows(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    ids = token_ids(batch=1).repeat(2, 1)  # the same tokens in both rows
    with minilora.per_row(model, ["attn", "mlp"]):
        outer = logits(model, ids)
        with minilora.per_row(model, ["mlp", "attn"]):
            inner = logits(model, ids)
        torch.testing.assert_close(logits(model, ids), outer, rtol=0, atol=0)
    torch.testing.assert_close(inner, outer.flip(0), **TOL)
    assert all(layer.rows is None for _, layer in multi_layers(model))


def test_clear_errors(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    ids = token_ids(batch=3)
    with pytest.raises(ValueError, match=r"row 1 asks for adapter 'atn', which is not loaded; loaded: \['attn'"):
        with minilora.per_row(model, ["attn", "atn", None]):
            pass
    with pytest.raises(ValueError, match="given 2 names but the batch has 3 rows"):
        with minilora.per_row(model, ["attn", "mlp"]):
            logits(model, ids)
    with pytest.raises(RuntimeError, match="say which one each row uses"):
        logits(model, ids)
    with pytest.raises(ValueError, match="one adapter name"):
        with minilora.per_row(model, "attn"):
            pass
    with pytest.raises(ValueError, match="holds no adapters"):
        with minilora.per_row(copy.deepcopy(base), ["attn"]):
            pass
    with pytest.raises(ValueError, match="already carries LoRA"):
        minilora.load_adapters(model, {"attn": paths["attn"]})
    with pytest.raises(ValueError, match="non-empty dict"):
        minilora.load_adapters(copy.deepcopy(base), {})
    with pytest.raises(ValueError, match="already has LoRA"):
        minilora.load_adapter(model, paths["attn"])


def test_a_failed_call_changes_nothing(tiny, tmp_path):
    """Each bad adapter comes after good ones that were already read: the model must still be untouched."""
    base, paths = tiny
    model = copy.deepcopy(base)
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match="adapter 'missing'"):
        minilora.load_adapters(model, {**paths, "missing": tmp_path / "nowhere"})
    assert_unchanged(model, before)
    bad = write_adapters(base, tmp_path, {"x": (["c_attn"], 4, 8, False), "y": (["c_attn"], 4, 8, False)})
    config = json.loads((bad["x"] / "adapter_config.json").read_text())
    (bad["x"] / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj"]}))
    with pytest.raises(ValueError, match="adapter 'bad'.*q_proj"):
        minilora.load_adapters(model, {**paths, "bad": bad["x"]})
    assert_unchanged(model, before)
    (bad["y"] / "adapter_config.json").write_text(json.dumps({**config, "r": 2}))  # the tensors have r = 4
    with pytest.raises(ValueError, match="adapter 'bad'.*shape"):
        minilora.load_adapters(model, {**paths, "bad": bad["y"]})
    assert_unchanged(model, before)


def test_unload_returns_the_plain_base(tiny):
    base, paths = tiny
    model = minilora.load_adapters(copy.deepcopy(base), paths)
    assert minilora.unload(model) is model
    assert not multi_layers(model) and not any(isinstance(m, MultiLoRALinear) for m in model.modules())
    ids = token_ids()
    torch.testing.assert_close(logits(model, ids), logits(base, ids), rtol=0, atol=0)
    minilora.load_adapter(model, paths["attn"])  # a plain model again: the single-adapter path works
    torch.testing.assert_close(logits(model, ids), logits(alone(base, paths["attn"]), ids), rtol=0, atol=0)
