"""The bundled base model: loads offline, fails clearly for what is not there, is small, and has learned English."""

import importlib.resources
import json
import math
import re
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minilora import lab  # noqa: E402
from minilora.lab.models import BASE_MODEL_DIR, BaseModelUnavailable  # noqa: E402

# Held-out verses: every 20th verse of the King James Bible was kept out of pretraining (scripts/pretrain_base.py);
# these are twelve of them, spread over the book.
HELD_OUT = [
    "And God said, Let the waters bring forth abundantly the moving creature that hath life, and fowl that may fly "
    "above the earth in the open firmament of heaven.",
    "And he made the middle bar to shoot through the boards from the one end to the other.",
    "To keep the commandments of the LORD, and his statutes, which I command thee this day for thy good?",
    "Now a certain man of the servants of Saul was there that day, detained before the LORD; and his name was Doeg, "
    "an Edomite, the chiefest of the herdmen that belonged to Saul.",
    "Malchiram also, and Pedaiah, and Shenazar, Jecamiah, Hoshama, and Nedabiah.",
    "I would seek unto God, and unto God would I commit my cause:",
    "He hath not dealt with us after our sins; nor rewarded us according to our iniquities.",
    "In measure, when it shooteth forth, thou wilt debate with it: he stayeth his rough wind in the day of the east "
    "wind.",
    "And I will set my face against that man, and will make him a sign and a proverb, and I will cut him off from the "
    "midst of my people; and ye shall know that I am the LORD.",
    "And then will I profess unto them, I never knew you: depart from me, ye that work iniquity.",
    "And when they had kindled a fire in the midst of the hall, and were set down together, Peter sat down among them.",
    "But I would have you without carefulness. He that is unmarried careth for the things that belong to the Lord, "
    "how he may please the Lord:",
]


@pytest.fixture(scope="module")
def base():
    return lab.load_base()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MINILORA_BASE", raising=False)


def held_out_loss(model, tokenizer) -> float:
    """Next-token loss over the held-out verses, one verse at a time (the context is 256 tokens)."""
    total, count = 0.0, 0
    for verse in HELD_OUT:
        ids = tokenizer(verse + "\n", return_tensors="pt")["input_ids"]  # (1, T)
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total / count


def test_bundled_model_loads_offline(offline, base):
    model, tokenizer = lab.load_base()
    assert isinstance(model, transformers.GPT2LMHeadModel)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    assert {"c_attn", "c_proj", "c_fc"} <= names  # GPT-2's layers, as the book describes them
    assert model.config.tie_word_embeddings


def test_env_var_selects_a_folder(offline, monkeypatch):
    monkeypatch.setenv("MINILORA_BASE", str(BASE_MODEL_DIR))
    model, _ = lab.load_base()
    assert model.config.n_layer == 4


def test_unavailable_hub_model_offline_fails_fast(offline):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("gpt2", "config.json"), str):
        pytest.skip("gpt2 is in this machine's cache, so it loads offline")
    start = time.perf_counter()
    with pytest.raises(BaseModelUnavailable, match="HF_HUB_OFFLINE") as err:
        lab.load_base("gpt2")
    assert "bundled" in str(err.value) and "hf download gpt2" in str(err.value)
    assert time.perf_counter() - start < 10


def test_env_var_hub_model_offline_fails(offline, monkeypatch):
    monkeypatch.setenv("MINILORA_BASE", "minilora-test/no-such-model")
    with pytest.raises(BaseModelUnavailable, match="no-such-model"):
        lab.load_base()


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: CI exports it, so undo that reading too.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    with pytest.raises(BaseModelUnavailable, match="cannot be reached"):
        lab.load_base("minilora-test/no-such-model")
    assert time.perf_counter() - start < 10  # huggingface_hub alone would retry for about a minute


@pytest.mark.parametrize("path", ["/no/such/model", "./no-such-model", "~/no-such-model"])
def test_missing_folder_fails_clearly(offline, path):
    with pytest.raises(BaseModelUnavailable, match="No model folder"):
        lab.load_base(path)


def test_files_ship_with_the_package():
    folder = importlib.resources.files("minilora.lab") / "base_model"
    names = {f.name for f in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    total = sum(f.stat().st_size for f in BASE_MODEL_DIR.iterdir() if f.is_file())
    assert total <= 25 * 10**6, f"base_model/ is {total / 1e6:.1f} MB"


def test_model_card_reports_the_run():
    record = json.loads((BASE_MODEL_DIR / "training_log.json").read_text())
    card = (BASE_MODEL_DIR / "README.md").read_text()
    final = record["final"]
    assert f"{final['validation_loss']:.3f}" in card and f"{final['train_loss']:.3f}" in card
    assert record["corpus"]["sha256"] in card and "public domain" in card
    assert final["validation_loss"] < final["random_weights_validation_loss"] - 4


def test_held_out_loss_far_below_random_weights(base):
    model, tokenizer = base
    torch.manual_seed(0)
    random_model = transformers.GPT2LMHeadModel(model.config).eval()
    trained, random = held_out_loss(model, tokenizer), held_out_loss(random_model, tokenizer)
    assert random > math.log(model.config.vocab_size) - 0.5  # about ln(8192) = 9.0: no idea which token comes
    assert trained < random - 4, (trained, random)


def test_greedy_generation_is_made_of_words(base):
    model, tokenizer = base
    text = lab.generate(model, tokenizer, "And the LORD said unto Moses,", max_new_tokens=24)
    words = re.findall(r"[A-Za-z]+", text)
    vocab = {t[1:].lower() for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha()}
    assert len(words) >= 8
    assert sum(w.lower() in vocab for w in words) >= 0.9 * len(words), text  # whole words, not fragments


def test_model_does_not_copy_from_context(base):
    """The model card's limitation: a random word sequence is hardly easier the second time (no induction heads)."""
    model, tokenizer = base
    words = sorted(t for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower())
    generator = torch.Generator().manual_seed(0)
    first = second = 0.0
    for _ in range(4):
        order = torch.randperm(len(words), generator=generator)[:30].tolist()
        ids = torch.tensor(tokenizer.convert_tokens_to_ids([words[i] for i in order]))  # (30,)
        ids = torch.cat([ids, ids])[None]  # (1, 60): the sequence twice
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)  # (59, vocab)
        nll = -logp.gather(-1, ids[0, 1:, None])[:, 0]  # (59,)
        first, second = first + nll[:29].mean().item(), second + nll[30:].mean().item()
    assert second > first - 1.0, (first / 4, second / 4)  # an induction head would make the repeat far cheaper
