"""Pretrain the small GPT-2 that `minilora.lab` ships as the book's base model.

The book fine-tunes a causal language model, but readers (and CI) are often offline, so the project bundles its own:
a 4-layer GPT-2 (transformers' `GPT2LMHeadModel`, the same `c_attn` / `c_proj` / `c_fc` modules as the real GPT-2)
pretrained from scratch on the King James Bible.

Corpus: the KJV text of Debian's `bible-kjv` package (`apt-get install -y bible-kjv`), read with its `bible` program.
The translation dates from 1611; its copyright has expired (see /usr/share/doc/bible-kjv-text/copyright), so the text
is in the public domain. Every 20th verse is held out for validation; the tokenizer (byte-level BPE, trained with
`tokenizers`) and the model see only the other 19.

Reproducible: seeded, CPU, fixed step count; the corpus sha256 and every setting are recorded in the model card and in
`training_log.json` next to the weights.

    python scripts/pretrain_base.py                       # writes minilora/lab/base_model/
    python scripts/pretrain_base.py --steps 20 --out /tmp/base_smoke   # a quick smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"  # GPT-2's only special token; we use it as eos, bos and pad, as GPT-2 does
VERSE_SPEC = "Ge1:1-Re22:21"  # the whole Bible, Genesis 1:1 to Revelation 22:21
REFERENCE = re.compile(r"^(?:[1-3])?[A-Za-z]+\d+:\d+ ")  # "Ge1:1 ", "1Co13:4 ", "Rev22:21 "
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "minilora" / "lab" / "base_model"


def read_corpus() -> list[str]:
    """Return the KJV verses, in order, without their references ("Ge1:1 In the beginning ..." -> "In the ...")."""
    if shutil.which("bible") is None:
        raise SystemExit("The corpus comes from Debian's bible-kjv package: run `apt-get install -y bible-kjv`.")
    # -f formats one verse per line; a huge COLUMNS keeps long verses on one line.
    env = dict(os.environ, COLUMNS="100000")
    out = subprocess.run(["bible", "-f", VERSE_SPEC], check=True, capture_output=True, text=True, env=env).stdout
    verses = []
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        if REFERENCE.match(line):
            verses.append(REFERENCE.sub("", line))
        else:  # a wrapped continuation line (only if the formatter wrapped after all)
            verses[-1] += " " + line
    return verses


def split(verses: list[str], every: int = 20) -> tuple[list[str], list[str]]:
    """Hold out every `every`-th verse (the 20th, 40th, ...) for validation."""
    train = [v for i, v in enumerate(verses) if (i + 1) % every != 0]
    valid = [v for i, v in enumerate(verses) if (i + 1) % every == 0]
    return train, valid


def train_tokenizer(verses: list[str], vocab_size: int) -> ByteLevelBPETokenizer:
    tok = ByteLevelBPETokenizer()  # GPT-2's scheme: bytes -> printable chars, spaces glued to the next word ("Ġword")
    tok.train_from_iterator(verses, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return tok


def encode(tok: ByteLevelBPETokenizer, verses: list[str]) -> torch.Tensor:
    """One long token stream: verses separated by newlines, as they are printed."""
    ids = []
    for enc in tok.encode_batch([v + "\n" for v in verses]):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def stream_loss(model: GPT2LMHeadModel, ids: torch.Tensor, ctx: int, max_windows: int | None = None) -> float:
    """Mean next-token loss over non-overlapping windows of ctx+1 tokens (all of them, or the first max_windows)."""
    model.eval()
    n = (len(ids) - 1) // ctx
    if max_windows is not None:
        n = min(n, max_windows)
    windows = torch.stack([ids[i * ctx : i * ctx + ctx + 1] for i in range(n)])  # (n, ctx+1)
    total, count = 0.0, 0
    for chunk in windows.split(64):
        logits = model(chunk[:, :-1]).logits  # (b, ctx, vocab)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + chunk[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to lr/10."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--card-only", action="store_true", help="rewrite README.md from the folder's training_log.json")
    args = p.parse_args()
    if args.card_only:
        record = json.loads((args.out / "training_log.json").read_text())
        write_card(args.out, record, GPT2Config.from_pretrained(args.out))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    verses = read_corpus()
    text = "\n".join(verses)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    train_verses, valid_verses = split(verses)
    print(f"corpus: {len(verses)} verses, {len(text):,} characters, sha256 {sha}", flush=True)

    tok = train_tokenizer(train_verses, args.vocab_size)
    eos_id = tok.token_to_id(EOS)
    train_ids, valid_ids = encode(tok, train_verses), encode(tok, valid_verses)
    print(f"tokens: train {len(train_ids):,}, validation {len(valid_ids):,}", flush=True)

    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        # No dropout: the run sees the corpus about twice, too little to overfit, and fine-tuning stays deterministic.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    random_valid = stream_loss(model, valid_ids, args.context)
    print(f"model: {n_params:,} parameters; random-weights validation loss {random_valid:.3f}", flush=True)

    # Weight decay on matrices only, not on biases or LayerNorm gains (nanoGPT's rule: dim >= 2).
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(args.seed)
    log = {"step": [], "loss": [], "eval": []}
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        starts = torch.randint(0, len(train_ids) - args.context - 1, (args.batch_size,), generator=gen)
        batch = torch.stack([train_ids[s : s + args.context + 1] for s in starts.tolist()])  # (B, ctx+1)
        logits = model(batch[:, :-1]).logits  # (B, ctx, vocab)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log["step"].append(step)
        log["loss"].append(round(loss.item(), 4))
        if step % 10 == 0 or step == args.steps - 1:
            elapsed = time.time() - t0
            tps = (step + 1) * args.batch_size * args.context / elapsed
            print(f"step {step:5d}  loss {loss.item():.3f}  {tps:,.0f} tok/s  {elapsed / 60:.1f} min", flush=True)
        if (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            v = stream_loss(model, valid_ids, args.context, max_windows=64)
            log["eval"].append({"step": step + 1, "validation_loss_subset": round(v, 4)})
            print(f"  eval: validation loss (64 windows) {v:.3f}", flush=True)
    train_minutes = (time.time() - t0) / 60

    model.eval()
    final_valid = stream_loss(model, valid_ids, args.context)
    n_valid_windows = (len(valid_ids) - 1) // args.context
    final_train = stream_loss(model, train_ids, args.context, max_windows=n_valid_windows)
    print(f"final: train {final_train:.3f}  validation {final_valid:.3f}  (random {random_valid:.3f})", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok._tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    hf_tok.model_max_length = args.n_positions
    hf_tok.save_pretrained(args.out)

    prompts = ["In the beginning", "And the LORD said unto Moses,", "Blessed are the"]
    samples = {}
    for prompt in prompts:
        enc = hf_tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=eos_id)
        samples[prompt] = hf_tok.decode(out[0], skip_special_tokens=True)
        print(f"sample: {samples[prompt]!r}", flush=True)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    record = {
        "corpus": {
            "name": "King James Bible (1611), Debian package bible-kjv",
            "command": f"bible -f {VERSE_SPEC}",
            "processing": "verse references stripped, verses joined by newlines",
            "sha256": sha,
            "verses": len(verses),
            "characters": len(text),
            "split": "every 20th verse held out for validation",
            "train_tokens": len(train_ids),
            "validation_tokens": len(valid_ids),
        },
        "settings": settings,
        "parameters": n_params,
        "torch": torch.__version__,
        "train_minutes": round(train_minutes, 2),
        "total_minutes": round((time.time() - t_start) / 60, 2),
        "final": {
            "train_loss": round(final_train, 4),
            "validation_loss": round(final_valid, 4),
            "random_weights_validation_loss": round(random_valid, 4),
        },
        "samples": samples,
        "eval": log["eval"],
        "loss": log["loss"],
    }
    (args.out / "training_log.json").write_text(json.dumps(record) + "\n")
    write_card(args.out, record, config)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.1f} MB) in {record['total_minutes']:.1f} min", flush=True)


def write_card(out: Path, r: dict, config: GPT2Config) -> None:
    s, f, c = r["settings"], r["final"], r["corpus"]
    samples = "\n".join(f"- `{p}` -> {t!r}" for p, t in r["samples"].items())
    card = f"""# minilora-kjv-gpt2: the book's bundled base model

A small GPT-2 (transformers' `GPT2LMHeadModel`, so it has GPT-2's `c_attn`, `c_proj` and `c_fc` layers) pretrained
from scratch by `scripts/pretrain_base.py`, so that the book and its tests run offline. Load it with
`minilora.lab.load_base()`. It is a toy for learning LoRA, not a useful language model.

## Size
- {config.n_layer} layers, {config.n_head} heads, n_embd {config.n_embd}, context {config.n_positions},
  vocabulary {config.vocab_size} (byte-level BPE), tied input/output embeddings
- {r['parameters']:,} parameters, fp32 safetensors

## Corpus and licence
- {c['name']}: the output of `{c['command']}`, {c['processing']}.
- The King James Version was translated in 1611; its copyright has expired and the text is in the public domain
  (see `/usr/share/doc/bible-kjv-text/copyright` in the Debian package).
- {c['verses']:,} verses, {c['characters']:,} characters, sha256 of the text `{c['sha256']}`.
- Split: {c['split']}; {c['train_tokens']:,} training and {c['validation_tokens']:,} validation tokens.
  The tokenizer was trained on the training verses only.

## Training
- Seed {s['seed']}, {s['steps']} steps of AdamW (lr {s['lr']}, betas (0.9, 0.95), weight decay {s['weight_decay']}),
  {s['warmup']} warmup steps then cosine decay to lr/10, gradient clipping 1.0, batch {s['batch_size']} random
  windows of {s['context']} tokens, no dropout, {s['threads']} CPU threads, torch {r['torch']}.
- Wall time: {r['train_minutes']:.1f} min of training ({r['total_minutes']:.1f} min in all).

## Results (next-token cross-entropy, nats per token)
| | loss |
|---|---|
| training verses (same number of windows as validation) | {f['train_loss']:.3f} |
| held-out validation verses | {f['validation_loss']:.3f} |
| held-out, same architecture with random weights | {f['random_weights_validation_loss']:.3f} |

Greedy continuations:
{samples}

## Limitations
Trained for minutes on one old book, it writes English words in the Bible's style but repeats itself, and it has
not learned to copy from its context (no induction heads: a random word sequence is no easier to predict the second
time it appears), so the lab's tasks ask for no copying by position.

`training_log.json` holds the per-step training loss and every setting.
"""
    (out / "README.md").write_text(card)


if __name__ == "__main__":
    main()
