"""Load the base model the book fine-tunes.

By default that is the small GPT-2 bundled in `minilora/lab/base_model/` (pretrained by `scripts/pretrain_base.py`
on the King James Bible; see its README.md), so everything runs offline. Readers who can reach the Hugging Face Hub
switch to the real GPT-2 with one line, `load_base("gpt2")`, or with the environment variable `MINILORA_BASE=gpt2`.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

BASE_MODEL_DIR = Path(__file__).resolve().parent / "base_model"
BUNDLED = "minilora-kjv-gpt2"  # the bundled model's name; also what load_base(None) loads


class BaseModelUnavailable(OSError):
    """The requested base model cannot be loaded here (not cached, and the Hub is unreachable or offline mode is on)."""


def load_base(name: str | os.PathLike | None = None):
    """Return `(model, tokenizer)`: a causal LM in eval mode (fp32, CPU) and its fast tokenizer with a pad token.

    `name` picks the model; without it, the environment variable `MINILORA_BASE`; without that, the bundled one:
      - None or "minilora-kjv-gpt2": the small GPT-2 shipped in `minilora/lab/base_model/` (works offline);
      - a local folder in Hugging Face format (config.json, weights, tokenizer files);
      - a Hub id such as "gpt2" or "openai-community/gpt2", loaded with `from_pretrained` (from the local cache when
        it is there; downloaded otherwise).
    Raises `BaseModelUnavailable` at once, with instructions, when the model cannot be had: a missing folder, or a
    Hub id that is not cached while `HF_HUB_OFFLINE=1` is set or the Hub cannot be reached. It never falls back to
    another model silently.

    The tokenizer's pad token is its eos token when it has none (GPT-2 has none) and it pads on the right, as
    `minilora.lab.train` expects.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    name = name if name is not None else os.environ.get("MINILORA_BASE") or None
    source = _resolve(name)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the notebooks' outputs
    try:
        if isinstance(source, Path):
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
        else:
            model, tokenizer = _from_hub(source, AutoModelForCausalLM, AutoTokenizer)
    except BaseModelUnavailable:
        raise
    except (OSError, ValueError) as err:
        raise BaseModelUnavailable(f"Could not load base model {str(name)!r} from {source}: {err}") from err
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model.eval(), tokenizer


def _resolve(name) -> Path | str:
    """The folder to load from, or a Hub id."""
    if name is None or str(name) == BUNDLED:
        if not (BASE_MODEL_DIR / "model.safetensors").is_file():
            raise BaseModelUnavailable(
                f"The bundled base model is missing from {BASE_MODEL_DIR}; reinstall minilora, or rebuild it with "
                "`python scripts/pretrain_base.py` (needs Debian's bible-kjv package)."
            )
        return BASE_MODEL_DIR
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if isinstance(name, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text:
        raise BaseModelUnavailable(
            f"No model folder at {path}. Pass an existing folder in Hugging Face format, a Hub id such as 'gpt2', "
            "or nothing for the bundled model."
        )
    return text  # a Hub id, "gpt2" or "owner/name"


def _from_hub(repo_id: str, model_cls, tokenizer_cls):
    """Load a Hub model from the local cache, or download it if the Hub can be reached; fail fast otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    how = (
        f"To use {repo_id!r}, download it once on a machine with internet access (for example "
        f"`hf download {repo_id}`, or `load_base({repo_id!r})` there) so that it is in the Hugging Face cache, "
        f"or save it with save_pretrained and pass that folder. Or leave the name out (and unset MINILORA_BASE) "
        f"to use the bundled base model, which works offline."
    )
    try:
        # The cached copy, found without any network request. (from_pretrained(repo_id, local_files_only=True)
        # still asks the Hub for an adapter_config.json, retrying for a minute when there is no network.)
        folder = snapshot_download(repo_id, local_files_only=True)
    except LocalEntryNotFoundError:
        folder = None
    if folder is not None:
        return model_cls.from_pretrained(folder, dtype=torch.float32), tokenizer_cls.from_pretrained(folder)
    if _offline_mode():
        raise BaseModelUnavailable(f"{repo_id!r} is not in the local cache and HF_HUB_OFFLINE is set. {how}")
    endpoint = _hub_endpoint()
    if not _reachable(endpoint):
        # huggingface_hub would retry for about a minute before giving up; say it now instead.
        raise BaseModelUnavailable(f"{repo_id!r} is not in the local cache and {endpoint} cannot be reached. {how}")
    try:
        return model_cls.from_pretrained(repo_id, dtype=torch.float32), tokenizer_cls.from_pretrained(repo_id)
    except OSError as err:
        raise BaseModelUnavailable(f"Could not download {repo_id!r} from {endpoint}: {err}. {how}") from err


def _offline_mode() -> bool:
    """HF_HUB_OFFLINE (or the older TRANSFORMERS_OFFLINE) as set now, not only when huggingface_hub was imported."""
    from huggingface_hub import constants

    flags = (os.environ.get(v, "").upper() for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f in {"1", "ON", "YES", "TRUE"} for f in flags)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the URL's host opens within `timeout` seconds (DNS lookup included)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # a thread, because DNS lookups ignore socket timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])
