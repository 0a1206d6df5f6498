"""Timing harness for the benchmark scripts and chapter 7 (merged versus unmerged inference).

How we time, and why:

- **Interleave.** Every round runs each variant once: ``A B C B C A C A B ...``, each round starting one variant later.
  A shared machine drifts (another job starts, a clock slows down); interleaving spreads the drift over every variant
  alike, so a ratio of two medians taken in one run is fair even when the absolute figures move between runs.
- **Warm up.** The first calls pay once for memory allocation, lazy initialisation and library heuristics (cuBLAS
  picks its kernels then); they are run and thrown away.
- **Synchronise.** A GPU runs kernels asynchronously: without ``torch.cuda.synchronize()`` before reading the clock we
  would time the launch of the work, not the work.
- **Median with 10th and 90th percentiles.** A busy machine adds rare long outliers; the median ignores them, a mean
  (and its standard deviation) does not.

This module imports only torch and the standard library at the top; ``build_variants`` imports transformers, peft and
minilora when it is called. ``scripts/benchmark_*.py`` load this file by its path, so they run on a machine that has
only torch, transformers and peft installed.
"""

import copy
import datetime
import gc
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

VARIANTS = ("base", "merged", "minilora_unmerged", "peft_unmerged", "peft_merged")
TARGET_MODULES = ("c_attn", "c_proj", "c_fc")
TOP_KEYS = ("device", "torch", "transformers", "peft", "dtype", "rows")
ROW_KEYS = ("model", "batch", "seq_len", "variant", "median_ms", "p10_ms", "p90_ms", "n")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# GPT-2 small and medium (Radford et al. 2019); transformers' GPT2Config defaults are GPT-2 small. "tiny" is a toy of
# the same architecture, for tests and quick demonstrations.
MODEL_SHAPES = {
    "gpt2": {},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "tiny": {"n_embd": 64, "n_layer": 2, "n_head": 2, "vocab_size": 512, "n_positions": 512, "bos_token_id": 0,
             "eos_token_id": 0},
}


# ---------------------------------------------------------------------------------------------------------------------
# Statistics and the interleaved schedule


def interleaved_schedule(names, rounds):
    """The order in which the variants run: ``rounds`` rounds of every name once, each round starting one name later.

    For three names and three rounds: A B C, B C A, C A B. Every variant runs once per round, so drift hits all alike;
    and every variant takes every place in the round equally often, so an effect of the place itself (the variant
    that runs after the largest model, say, or first after a pause) is not charged to one variant.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct, got {names}")
    return [names[(start + i) % len(names)] for start in range(rounds) for i in range(len(names))]


def quantile(values, q):
    """The ``q``-quantile (0 <= q <= 1) by linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (position - below) * (ordered[above] - ordered[below])


def summarize(times_ms, cpu_ms=None):
    """``{"median_ms", "p10_ms", "p90_ms", "n"}`` of a list of timings in milliseconds.

    With ``cpu_ms`` (CPU times of the same calls) the same statistics of those are added as ``cpu_median_ms``,
    ``cpu_p10_ms`` and ``cpu_p90_ms``.
    """
    stats = {
        "median_ms": statistics.median(times_ms),
        "p10_ms": quantile(times_ms, 0.1),
        "p90_ms": quantile(times_ms, 0.9),
        "n": len(times_ms),
    }
    if cpu_ms is not None:
        stats |= {"cpu_median_ms": statistics.median(cpu_ms), "cpu_p10_ms": quantile(cpu_ms, 0.1),
                  "cpu_p90_ms": quantile(cpu_ms, 0.9)}
    return stats


def overhead(variant_ms, base_ms):
    """Extra time of a variant relative to the base model: ``(variant - base) / base``."""
    return (variant_ms - base_ms) / base_ms


def paired_overheads(times_ms, baseline="base"):
    """Per round, each variant's overhead over the baseline timed in the same round: name -> list of fractions.

    Calls of one round run seconds apart at most, so a load that changes more slowly than that cancels out of each
    of these; their median is a check on the overhead computed from the two medians.
    """
    base = times_ms[baseline]
    return {name: [overhead(t, b) for t, b in zip(times, base)] for name, times in times_ms.items()
            if name != baseline}


# ---------------------------------------------------------------------------------------------------------------------
# The timer


def synchronize(device):
    """Wait until the device has finished the work queued so far (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_interleaved(fns, *, device="cpu", warmup=2, rounds=None, budget_s=10.0, min_rounds=10, max_rounds=200,
                     cpu_ms=None):
    """Time the callables of the dict ``fns`` (name -> callable) interleaved; return name -> list of ms.

    ``warmup`` rounds run first and are discarded. Then ``rounds`` rounds are timed; if ``rounds`` is None it is
    chosen so that the timed rounds take about ``budget_s`` seconds (from the last warm-up round), clamped to
    ``[min_rounds, max_rounds]``. Each call is timed on its own: synchronise, read the clock, call, synchronise, read
    the clock. Python's garbage collector is paused while timing, as ``timeit`` does.

    The clock is wall time (``time.perf_counter``): latency as a user sees it. If ``cpu_ms`` is a dict, it also
    receives name -> list of the process's CPU time per call (``time.process_time``, all threads), which on a shared
    CPU counts only our own work, not the time other programs held the cores.
    """
    names = list(fns)
    round_s = None
    for _ in range(max(warmup, 1 if rounds is None else 0)):
        start = time.perf_counter()
        for name in names:
            fns[name]()
        synchronize(device)
        round_s = time.perf_counter() - start
    if rounds is None:
        rounds = min(max(math.ceil(budget_s / max(round_s, 1e-9)), min_rounds), max_rounds)
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for name in interleaved_schedule(names, rounds):
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            synchronize(device)
            stop_cpu, stop = time.process_time(), time.perf_counter()
            times[name].append((stop - start) * 1e3)
            cpu[name].append((stop_cpu - start_cpu) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    if cpu_ms is not None:
        cpu_ms.update(cpu)
    return times


# Operations that only reinterpret a tensor's memory (or return their input unchanged): they launch no kernel.
NO_KERNEL_OPS = frozenset({"view", "_unsafe_view", "reshape", "t", "transpose", "alias", "unsqueeze", "squeeze",
                           "slice", "select", "split", "expand", "as_strided", "detach", "to", "dropout"})


def count_operations(fn):
    """Call ``fn()`` once and return a Counter of the PyTorch operators it ran, by name (``"addmm"``, ``"mul"``...).

    Uses ``TorchDispatchMode``, the hook PyTorch gives to code that wants to see every operator call (it lives in a
    private module, ``torch.utils._python_dispatch``, but is what torch's own tools use). ``NO_KERNEL_OPS`` lists the
    names that do no arithmetic; ``dropout`` and ``to`` are among them because in eval mode, and to the same dtype,
    they return their input.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Counting() as mode:
        fn()
    return mode.counts


# ---------------------------------------------------------------------------------------------------------------------
# Models: five copies of one GPT-2 with identical weights


def gpt2_config(model):
    """A ``GPT2Config`` for a name of ``MODEL_SHAPES`` (built locally, no download); a GPT2Config is returned as is."""
    from transformers import GPT2Config

    if isinstance(model, GPT2Config):
        return model
    if model not in MODEL_SHAPES:
        raise ValueError(f"model must be one of {sorted(MODEL_SHAPES)}, got {model!r}")
    return GPT2Config(**MODEL_SHAPES[model])


def random_adapter(model, target_modules=TARGET_MODULES, r=8, seed=0, b_std=0.02):
    """Draw ``(A, B)`` for every targeted layer of ``model``: name -> (A (r, in), B (out, r)).

    ``B`` is random, not zero, so that the unmerged branch really changes the output and no variant can skip it.
    Drawing the factors once and loading them into every copy makes all adapted variants compute the same function.
    """
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in target_modules:
            continue
        weight = module.weight
        d_in, d_out = weight.shape if hasattr(module, "nf") else weight.shape[::-1]  # Conv1D stores (in, out)
        a = torch.randn(r, d_in, generator=generator) / math.sqrt(d_in)
        b = torch.randn(d_out, r, generator=generator) * b_std
        factors[name] = (a, b)
    return factors


def _with_minilora(model, factors, r, alpha, target_modules):
    import minilora

    minilora.inject(model, target_modules=list(target_modules), r=r, alpha=alpha, dropout=0.0)
    loaded = 0
    for name, module in model.named_modules():
        if isinstance(module, minilora.LoRALinear):
            a, b = factors[name]
            module.lora_A.weight.data.copy_(a)
            module.lora_B.weight.data.copy_(b)
            loaded += 1
    assert loaded == len(factors), f"minilora wrapped {loaded} layers, expected {len(factors)}"
    return model


def _with_peft(model, factors, r, alpha, target_modules):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(target_modules),
                        fan_in_fan_out=True)  # GPT-2's Conv1D stores its weight (in, out)
    with warnings.catch_warnings():  # transformers warns about a name PEFT still uses; it is not our business here
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    loaded = 0
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            a, b = factors[name.removeprefix("base_model.model.")]
            module.lora_A["default"].weight.data.copy_(a)
            module.lora_B["default"].weight.data.copy_(b)
            loaded += 1
    assert loaded == len(factors), f"PEFT wrapped {loaded} layers, expected {len(factors)}"
    return peft_model


def build_variants(model="gpt2", variants=VARIANTS, *, r=8, alpha=8, target_modules=TARGET_MODULES,
                   device="cpu", dtype=torch.float32, seed=0, train=False):
    """Return name -> GPT2LMHeadModel for each of ``variants``, all with the same base weights and the same adapter.

    ``model`` is a name of ``MODEL_SHAPES`` or a ``GPT2Config``.

    - ``base``: the model without LoRA.
    - ``merged``: minilora injected, then ``minilora.merge`` (ΔW added into W0; the LoRALinear wrappers stay).
    - ``minilora_unmerged``: minilora injected, not merged; its frozen weights are the base model's own tensors.
    - ``peft_unmerged`` / ``peft_merged``: the same adapter through PEFT (``merge_adapter`` for the merged one).
      We time PEFT's injected GPT2LMHeadModel (``get_base_model()``), not the PeftModel wrapper around it, so the
      comparison with minilora differs only in the LoRA layers. ``peft_unmerged`` shares the base tensors too.

    Sharing means that the base model's parameters are frozen as well (``inject`` and PEFT freeze what they wrap).

    Weights are random (latency does not depend on their values). Everything is built and merged in fp32 on the CPU,
    then moved to ``device`` and cast to ``dtype``. Models are in eval mode unless ``train``.
    """
    from transformers import GPT2LMHeadModel

    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(gpt2_config(model))
    factors = random_adapter(base, target_modules, r=r, seed=seed + 1)
    # The unmerged variants wrap the very tensors of the base model (a deepcopy whose memo maps each parameter to
    # itself), so the three read their frozen weights from the same memory and differ only in the LoRA branch, not
    # in where their copies of W0 happen to lie. The merged variants need weights of their own, W0 + ΔW.
    shared = {id(p): p for p in base.parameters()}
    models = {}
    for variant in variants:
        if variant == "base":
            continue  # the original itself, below, once every copy has been taken
        copied = copy.deepcopy(base, memo=dict(shared) if variant.endswith("_unmerged") else None)
        if variant in ("merged", "minilora_unmerged"):
            built = _with_minilora(copied, factors, r, alpha, target_modules)
            if variant == "merged":
                import minilora

                minilora.merge(built)
        else:
            peft_model = _with_peft(copied, factors, r, alpha, target_modules)
            if variant == "peft_merged":
                peft_model.merge_adapter()
            built = peft_model.get_base_model()
        models[variant] = built.to(device=device, dtype=dtype).train(train)
    if "base" in variants:
        models["base"] = base.to(device=device, dtype=dtype).train(train)
    return {variant: models[variant] for variant in variants}


def max_differences(models, input_ids, reference="minilora_unmerged"):
    """Largest absolute difference of each model's logits from the reference model's, on ``input_ids``."""
    with torch.inference_mode():
        logits = {name: m(input_ids, use_cache=False).logits.float() for name, m in models.items()}
    return {name: (out - logits[reference]).abs().max().item() for name, out in logits.items() if name != reference}


# ---------------------------------------------------------------------------------------------------------------------
# Provenance and the results files


def cpu_model():
    """The processor's model name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device):
    """The provenance fields of a results file: device, library versions, threads, load, date."""
    import peft
    import transformers

    device = torch.device(device)
    is_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if is_cuda else f"CPU: {cpu_model()}"
    return {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda if is_cuda else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32 if is_cuda else None,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def device_slug(results):
    """A short file-name part naming the device of a results dict: ``cpu`` or e.g. ``cuda-nvidia-h100-80gb-hbm3``."""
    if results.get("device_type", "cpu") == "cpu":
        return "cpu"
    words = "".join(c if c.isalnum() else " " for c in results["device"].lower()).split()
    return "-".join([results["device_type"], *words])


def validate_results(results):
    """Raise ValueError unless ``results`` has the agreed shape; return it otherwise.

    ``{"device", "torch", "transformers", "peft", "dtype", "rows": [{"model", "batch", "seq_len", "variant",
    "median_ms", "p10_ms", "p90_ms", "n"}, ...]}``; extra keys are allowed anywhere.
    """
    missing = [key for key in TOP_KEYS if key not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    if results["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {results['dtype']!r}")
    if not isinstance(results["rows"], list) or not results["rows"]:
        raise ValueError("rows must be a non-empty list")
    for row in results["rows"]:
        missing = [key for key in ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"row {row} lacks {missing}")
        if row["variant"] not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {row['variant']!r}")
        for key in ("batch", "seq_len", "n"):
            if not isinstance(row[key], int) or row[key] < 1:
                raise ValueError(f"{key} must be a positive integer in {row}")
        if not 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]:
            raise ValueError(f"need 0 < p10_ms <= median_ms <= p90_ms in {row}")
    return results


def write_results(results, path):
    """Validate ``results`` and write them to ``path`` as JSON (parent folders created)."""
    validate_results(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def overhead_table(results, baseline="base"):
    """One dict per grid point of a results file: ``model, batch, seq_len``, each variant's median (ms) and, for each
    variant but the baseline, its overhead over the baseline, ``overhead_<variant>`` (a fraction, from the medians)."""
    points = {}
    for row in results["rows"]:
        point = points.setdefault((row["model"], row["batch"], row["seq_len"]),
                                  {"model": row["model"], "batch": row["batch"], "seq_len": row["seq_len"]})
        point[row["variant"]] = row["median_ms"]
    for point in points.values():
        for variant in VARIANTS:
            if variant != baseline and variant in point and baseline in point:
                point[f"overhead_{variant}"] = overhead(point[variant], point[baseline])
    return list(points.values())


def load_results(directory, pattern="inference_*.json"):
    """Every results file in ``directory`` matching ``pattern``, validated, sorted by file name."""
    return [validate_results(json.loads(path.read_text())) for path in sorted(Path(directory).glob(pattern))]
