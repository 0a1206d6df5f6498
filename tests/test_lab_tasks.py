"""The lab's tasks: deterministic, disjoint splits of the promised sizes, correct targets; and the metric."""

import random

import pytest

pytest.importorskip("transformers")

from minilora import lab  # noqa: E402
from minilora.lab import tasks  # noqa: E402

MAKERS = {"largest": tasks.make_largest, "smallest": tasks.make_smallest, "antonyms": tasks.make_antonyms}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_split_sizes_disjoint_deterministic(name):
    task = lab.get_task(name)
    assert task.name == name and task.description
    assert (len(task.train), len(task.validation)) == (tasks.N_TRAIN, tasks.N_VALIDATION)
    train_prompts = {e.prompt for e in task.train}
    assert len(train_prompts) == len(task.train)  # no duplicates
    assert train_prompts.isdisjoint(e.prompt for e in task.validation)
    assert MAKERS[name](seed=0) == task  # rebuilt identically
    assert MAKERS[name](seed=1).train != task.train
    assert all(e.target.startswith(" ") and not e.prompt.endswith(" ") for e in task.train + task.validation)


def test_tasks_leave_global_random_state_alone():
    state = random.getstate()
    for make in MAKERS.values():
        make(seed=3)
    assert random.getstate() == state


def test_largest_and_smallest_share_prompts_not_targets():
    largest, smallest = lab.get_task("largest"), lab.get_task("smallest")
    for split in ("train", "validation"):
        a, b = getattr(largest, split), getattr(smallest, split)
        assert [e.prompt for e in a] == [e.prompt for e in b]
        assert all(x.target != y.target for x, y in zip(a, b))


def words(prompt: str) -> list[str]:
    assert prompt.startswith("in: ") and prompt.endswith(" out:")
    return prompt[len("in: ") : -len(" out:")].split()


def test_targets_are_right():
    for name, pick in [("largest", max), ("smallest", min)]:
        task = lab.get_task(name)
        lengths = {len(words(e.prompt)) for e in task.train}
        assert lengths == {3, 4, 5}
        for e in task.validation:
            assert e.target == " " + pick(words(e.prompt), key=tasks.NUMBERS.index)
    for e in lab.get_task("antonyms").validation:
        assert [tasks.OPPOSITE[w] for w in words(e.prompt)] == e.target.split()
    assert all(tasks.OPPOSITE[tasks.OPPOSITE[w]] == w for w in tasks.OPPOSITE)  # pairs are consistent
    assert len(tasks.OPPOSITE) == 88  # as the module docstring says


def test_antonyms_validation_uses_only_words_seen_in_training():
    task = lab.get_task("antonyms")
    seen = {w for e in task.train for w in words(e.prompt)}
    assert seen == set(tasks.OPPOSITE)


def test_every_word_is_one_token_of_the_base_model():
    _, tokenizer = lab.load_base()
    words = set(tasks.NUMBERS) | set(tasks.OPPOSITE)
    multi = [w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    assert not multi


def test_get_task_unknown_name():
    with pytest.raises(KeyError, match="largest"):
        lab.get_task("translate")


def test_exact_match():
    assert lab.exact_match([" two one", "one two "], [" two one", " one two"]) == 1.0
    assert lab.exact_match([" one two", ""], [" two one", " one"]) == 0.0
    assert lab.exact_match([" two one", " one"], [" two one", " two"]) == 0.5
    with pytest.raises(ValueError):
        lab.exact_match(["a"], ["a", "b"])


def test_evaluate_scores_the_predictions(monkeypatch):
    """evaluate() is 1.0 for a model that answers every target and 0.0 for one that answers wrongly."""
    task = lab.get_task("smallest")
    answers = {e.prompt: e.target for e in task.validation}
    _, tokenizer = lab.load_base()
    monkeypatch.setattr(lab.training, "predict", lambda model, tok, prompts, *a, **k: [answers[p] for p in prompts])
    assert lab.evaluate(None, tokenizer, task) == 1.0
    monkeypatch.setattr(lab.training, "predict", lambda model, tok, prompts, *a, **k: [" amen"] * len(prompts))
    assert lab.evaluate(None, tokenizer, task) == 0.0
