"""The held-out KJV verses and the corpus loss of the bundled base model."""

import pytest
import torch

from minilora import lab
from minilora.lab import corpus


def test_heldout_file_holds_every_80th_verse():
    verses = lab.heldout_verses()
    assert len(verses) == 31102 // corpus.HELDOUT_EVERY  # verses 80, 160, ..., 31040 of 31,102
    assert all(v.strip() == v and v for v in verses)
    assert lab.heldout_verses(limit=5) == verses[:5]


def test_heldout_bad_limit_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="limit"):
        lab.heldout_verses(limit=0)
    with pytest.raises(FileNotFoundError, match="held-out"):
        lab.heldout_verses(path=tmp_path / "none.txt")


def test_corpus_ids_end_every_verse_with_a_newline():
    _, tokenizer = lab.load_base()
    ids = corpus.corpus_ids(tokenizer, ["In the beginning", "And God said"])
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "In the beginning\nAnd God said\n"
    assert ids[-len(newline):].tolist() == newline


def test_base_model_loss_on_heldout_is_its_pretraining_validation_loss():
    """The card reports 4.313 on all 1,555 held-out verses; our quarter of them gives nearly the same, and far less
    than a random model's 9.06: the base model has not seen these verses but knows their language."""
    model, tokenizer = lab.load_base()
    loss = lab.corpus_loss(model, tokenizer, lab.heldout_verses()[:120])
    assert 4.0 < loss < 4.6
    assert not model.training


def test_corpus_loss_counts_every_window_position():
    """A model whose logits are all equal has loss log V on every token: the mean is exactly log V."""
    _, tokenizer = lab.load_base()

    class Uniform(torch.nn.Module):
        vocab = len(tokenizer)

        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()

    loss = lab.corpus_loss(Uniform(), tokenizer, lab.heldout_verses(limit=10), context=16)
    assert loss == pytest.approx(torch.log(torch.tensor(float(Uniform.vocab))).item(), rel=1e-6)


def test_corpus_loss_bad_input():
    model, tokenizer = lab.load_base()
    with pytest.raises(ValueError, match="context"):
        lab.corpus_loss(model, tokenizer, ["a"], context=0)
    with pytest.raises(ValueError, match="no window"):
        lab.corpus_loss(model, tokenizer, ["a"], context=128)
