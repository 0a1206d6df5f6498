"""The lab's training loop and evaluation helpers, on the bundled base model."""

import copy

import pytest
import torch

pytest.importorskip("transformers")

from minilora import lab  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return lab.load_base()


def fresh(base):
    model, tokenizer = base
    return copy.deepcopy(model), tokenizer


def inject_lora(model, kind: str, r: int = 8):
    """The model with rank-r LoRA on c_attn, built with minilora or with PEFT."""
    if kind == "minilora":
        minilora = pytest.importorskip("minilora")
        if not hasattr(minilora, "inject"):
            pytest.skip("minilora.inject is not written yet")
        return minilora.inject(model, target_modules=["c_attn"], r=r, alpha=r)
    peft = pytest.importorskip("peft")
    return peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=r, target_modules=["c_attn"]))


@pytest.mark.parametrize("kind", ["minilora", "peft"])
def test_short_lora_run_improves_the_task(base, kind):
    model, tokenizer = fresh(base)
    task = lab.get_task("largest")
    before = lab.evaluate(model, tokenizer, task, limit=100)
    loss_before = lab.validation_loss(model, tokenizer, task, limit=100)
    torch.manual_seed(0)
    model = inject_lora(model, kind, r=16)
    history = lab.train(model, tokenizer, task, steps=60, progress=False)
    assert len(history) == 60 and all(isinstance(x, float) for x in history)
    assert not model.training
    loss_after = lab.validation_loss(model, tokenizer, task, limit=100)
    after = lab.evaluate(model, tokenizer, task, limit=100)
    print(f"{kind}: accuracy {before:.2f} -> {after:.2f}, validation loss {loss_before:.2f} -> {loss_after:.2f}")
    assert before == 0.0
    assert loss_after < 0.4 * loss_before, (loss_before, loss_after)
    assert after > before


def test_full_fine_tuning_trains_every_weight(base):
    model, tokenizer = fresh(base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.requires_grad_(True)
    history = lab.train(model, tokenizer, lab.get_task("smallest"), steps=3, batch_size=4, progress=False)
    assert len(history) == 3 and not model.training
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_only_parameters_that_require_grad_change(base):
    model, tokenizer = fresh(base)
    model.requires_grad_(False)
    model.transformer.h[0].attn.c_attn.weight.requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lab.train(model, tokenizer, lab.get_task("smallest"), steps=2, batch_size=4, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"transformer.h.0.attn.c_attn.weight"}


def test_nothing_to_train_is_an_error(base):
    model, tokenizer = fresh(base)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires grad"):
        lab.train(model, tokenizer, lab.get_task("smallest"), steps=1)


def test_training_is_repeatable(base):
    histories = []
    for _ in range(2):
        model, tokenizer = fresh(base)
        model.requires_grad_(False)
        model.lm_head.weight.requires_grad_(True)  # tied: the token embedding
        histories.append(lab.train(model, tokenizer, lab.get_task("antonyms"), steps=3, batch_size=4, seed=7,
                                   progress=False))
    assert histories[0] == histories[1]


def test_batched_greedy_decoding_matches_one_by_one(base):
    model, tokenizer = base
    prompts = [e.prompt for e in lab.get_task("largest").validation[:6]] + ["In the beginning"]
    batched = lab.predict(model, tokenizer, prompts, max_new_tokens=6, batch_size=len(prompts))
    single = [lab.generate(model, tokenizer, p, max_new_tokens=6) for p in prompts]
    assert batched == single


def test_validation_loss_is_the_target_cross_entropy(base):
    model, tokenizer = base
    example = lab.get_task("smallest").validation[0]
    prompt = tokenizer(example.prompt)["input_ids"]
    target = tokenizer(example.target + "\n")["input_ids"]  # every answer ends with a newline
    ids = torch.tensor([prompt + target])
    labels = torch.tensor([[-100] * len(prompt) + target])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss.item()
    assert lab.validation_loss(model, tokenizer, [example]) == pytest.approx(expected, rel=1e-5)


def test_plot_losses_draws_one_line_per_history():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from minilora.lab import plots

    ax = plots.plot_losses({"r=1": [3.0, 2.0, 1.0], "r=8": [3.0, 1.0, 0.5]}, smoothing=2)
    assert len(ax.lines) == 2 and list(ax.lines[1].get_ydata()) == [3.0, 2.0, 0.75]
    assert plots.smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]


def test_answers_end_at_a_newline(base):
    """Targets are followed by a newline (the token that ended every verse in pretraining); decoding stops there."""
    model, tokenizer = base
    (newline,) = tokenizer("\n")["input_ids"]
    [(_, target)] = lab.training._encode(tokenizer, [lab.Example("in: one two three out:", " three")])
    assert target == tokenizer(" three")["input_ids"] + [newline]
    verse = "And the evening and the morning were the third day."
    prompt = tokenizer(verse, return_tensors="pt")
    raw = model.generate(**prompt, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    raw = tokenizer.decode(raw[0, prompt["input_ids"].shape[1] :])
    assert "\n" in raw  # the base model ends the verse, and starts another
    assert lab.generate(model, tokenizer, verse, max_new_tokens=40) == raw.split("\n")[0]


def test_train_uses_a_given_optimizer():
    """A caller's optimizer (parameter groups with their own learning rates) replaces the default AdamW."""
    import minilora
    from minilora import lab

    model, tokenizer = lab.load_base()
    minilora.inject(model, ["c_attn"], r=2, alpha=4)
    a = [p for n, p in model.named_parameters() if "lora_A" in n]
    b = [p for n, p in model.named_parameters() if "lora_B" in n]
    optimizer = torch.optim.AdamW([{"params": a, "lr": 0.0}, {"params": b, "lr": 1e-2}])
    before = [p.detach().clone() for p in a]
    lab.train(model, tokenizer, lab.get_task("largest"), steps=2, batch_size=4, optimizer=optimizer, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a, before))  # lr 0 for A: unchanged
    assert any(p.abs().sum() > 0 for p in b)  # B starts at zero and moved
