"""Adapter files: save only A and B (and the numbers that go with them), in PEFT's on-disk format.

Hu et al. 2021 (sections 1 and 4.2): one frozen base model can serve many tasks, each a small pair of matrices per
adapted layer, swapped in memory. For GPT-2 small with r = 8 on ``c_attn`` that is 294,912 numbers against 124
million. An adapter directory holds the two files PEFT writes and reads:

    adapter_config.json         {"peft_type": "LORA", "r": 8, "lora_alpha": 8, "target_modules": ["c_attn"], ...}
    adapter_model.safetensors   base_model.model.<module name>.lora_A.weight   (r, in)
                                base_model.model.<module name>.lora_B.weight   (out, r)

``load_adapter`` checks everything (files, options, targets, keys, shapes) before it changes the model, so a failed
load leaves the model as it was.
"""

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file

from .injection import check_wrappable, find_targets, inject
from .layer import check_hyperparameters, linear_shape, lora_layers

CONFIG, WEIGHTS, PREFIX = "adapter_config.json", "adapter_model.safetensors", "base_model.model."
# PEFT options that change what an adapter computes and that minilora does not implement: a value other than a
# neutral one is refused by name, since ignoring it would give other outputs. (PiSSA, OLoRA, LoftQ... initialisations
# change the base weights too, so their A and B alone do not reproduce the fine-tuned model.)
NEUTRAL = (None, False, "none", {}, [])
ALLOWED = {key: NEUTRAL for key in (
    "use_dora", "bias", "lora_bias", "modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform",
    "layers_pattern", "exclude_modules", "target_parameters", "layer_replication", "trainable_token_indices",
    "alora_invocation_tokens", "use_qalora", "use_bdlora", "megatron_config", "arrow_config", "kasa_config",
    "velora_config", "monteclora_config")} | {"init_lora_weights": (None, True, False, "gaussian")}


def save_adapter(model, directory, base_model_name_or_path=None):
    """Write the LoRA layers of ``model`` to ``directory`` as PEFT would; PEFT's ``PeftModel.from_pretrained`` reads it."""
    layers = lora_layers(model)
    sliced = [name for name, layer in layers if hasattr(layer, "slices")]  # minilora.SlicedLoRALinear
    if sliced:
        raise ValueError(f"{sliced[0]!r} has LoRA on slices of its outputs, which PEFT's adapter format cannot "
                         f"express; save it with torch.save(model.state_dict()), or fold it in with minilora.unload")
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save; call minilora.inject first")
    settings = sorted({(layer.r, layer.alpha, layer.lora_dropout.p, layer.use_rslora) for _, layer in layers})
    if len(settings) > 1:
        raise ValueError(f"the adapter format holds one (r, alpha, dropout, use_rslora) for all layers; "
                         f"this model mixes {settings}")
    [(r, alpha, dropout, use_rslora)] = settings
    names = [name for name, _ in layers]
    # Short names ("c_attn") when they select exactly the adapted layers, else the full names.
    leaves = sorted({name.rpartition(".")[2] for name in names})
    targets = leaves if find_targets(model, leaves) == names else names
    config = adapter_config(r, alpha, dropout, use_rslora, targets, any(layer.fan_in_fan_out for _, layer in layers),
                            base_model_name_or_path)
    tensors = {f"{PREFIX}{name}.{part}.weight": getattr(layer, part).weight.detach().cpu().contiguous()
               for name, layer in layers for part in ("lora_A", "lora_B")}
    _write_both(Path(directory), tensors, json.dumps(config, indent=2, sort_keys=True) + "\n")


def adapter_config(r, alpha, dropout, use_rslora, target_modules, fan_in_fan_out, base_model_name_or_path=None):
    """The ``adapter_config.json`` of a plain LoRA adapter, every option PEFT reads at its neutral value."""
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
            "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "use_rslora": use_rslora,
            "target_modules": target_modules, "fan_in_fan_out": fan_in_fan_out,
            "bias": "none", "use_dora": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "layers_to_transform": None, "layers_pattern": None, "init_lora_weights": True, "inference_mode": True}


def _write_both(directory, tensors, config_text):
    """Write both files under temporary names in ``directory``, then rename them into place.

    A failure while writing leaves an existing adapter there as it was (never new weights beside an old config); the
    renames themselves cannot fail halfway through a file, as ``os.replace`` is atomic within one folder.
    """
    directory.mkdir(parents=True, exist_ok=True)
    temporary = {file: directory / f".{file}.{os.getpid()}.tmp" for file in (WEIGHTS, CONFIG)}
    try:
        save_file(tensors, temporary[WEIGHTS], metadata={"format": "pt"})
        temporary[CONFIG].write_text(config_text)
        for file, path in temporary.items():
            os.replace(path, directory / file)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)


def _read_config(directory):
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{str(directory)!r} is a file; an adapter is a directory holding {CONFIG} and "
                                 f"{WEIGHTS}")
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist")
    for file in (CONFIG, WEIGHTS):
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{str(directory / file)!r} not found; an adapter directory holds {CONFIG} and "
                                    f"{WEIGHTS} (PEFT writes the latter unless safe_serialization=False)")
        try:  # safetensors reports an unreadable file as "No such file or directory"
            (directory / file).open("rb").close()
        except PermissionError:
            raise PermissionError(f"{str(directory / file)!r} exists but cannot be read (permission denied); "
                                  f"check its read permission") from None
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON ({error}); it must hold one JSON object") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(path)!r} holds a JSON {type(config).__name__}, not an object of LoRA settings "
                         f"({{\"peft_type\": \"LORA\", \"r\": ...}})")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{CONFIG} has peft_type={config.get('peft_type')!r}; minilora reads only 'LORA' adapters")
    for key, allowed in ALLOWED.items():
        if config.get(key) not in allowed:
            raise ValueError(f"{CONFIG} sets {key}={config[key]!r}, which minilora does not implement")
    config.setdefault("lora_dropout", 0.0)
    config.setdefault("use_rslora", False)
    check_hyperparameters(config.get("r"), config.get("lora_alpha"), config["lora_dropout"], config["use_rslora"])
    return config


def _check_swap(existing, names, config):
    """Raise unless the model's LoRA layers can take the adapter's A and B as they are."""
    if sorted(names) != sorted(existing):
        raise ValueError(f"the model carries LoRA on {_some(existing)} but the adapter's target_modules="
                         f"{config['target_modules']!r} select {_some(names)}; unload the model to change targets")
    merged = [name for name, layer in existing.items() if layer.merged]
    if merged:
        raise ValueError(f"LoRA layer {merged[0]!r} is merged into its weights; call minilora.unmerge(model) "
                         f"before loading another adapter")
    ranks = {name: layer.r for name, layer in existing.items() if layer.r != config["r"]}
    if ranks:
        raise ValueError(f"the adapter has r={config['r']} but the model's LoRA layers have {ranks}")


def _read_tensors(directory, model, names, r):
    """The adapter's tensors, after checking that they are exactly the A and B the named layers need."""
    tensors = load_file(directory / WEIGHTS)
    for key, tensor in sorted(tensors.items()):
        if not tensor.is_floating_point():  # an int would be cast silently, a complex one would lose its imaginary part
            raise ValueError(f"{WEIGHTS} tensor {key!r} has dtype {tensor.dtype}; LoRA factors must be floating point")
    expected = {}
    for name in names:
        module = model.get_submodule(name)
        in_features, out_features, _ = linear_shape(getattr(module, "base_layer", module))
        expected[f"{PREFIX}{name}.lora_A.weight"] = (r, in_features)
        expected[f"{PREFIX}{name}.lora_B.weight"] = (out_features, r)
    unknown, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if unknown:
        raise ValueError(f"{WEIGHTS} key {unknown[0]!r} matches no LoRA layer the adapter targets in "
                         f"{type(model).__name__} ({len(unknown)} such keys)")
    if missing:
        raise ValueError(f"{WEIGHTS} has no tensor {missing[0]!r} ({len(missing)} missing)")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{WEIGHTS} tensor {key!r} has shape {tuple(tensors[key].shape)}, the model needs {shape}")
    return tensors


def _some(names):
    return f"{sorted(names)[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def load_adapter(model, directory):
    """Load a LoRA adapter saved by ``save_adapter`` or by PEFT's ``save_pretrained`` into ``model``; return ``model``.

    A model without LoRA layers gets them (``inject`` with the file's settings). A model that already carries LoRA on
    exactly the adapter's targets, with the same ``r``, keeps its layers and gets the new ``A``, ``B`` and scaling:
    that is how one base model switches between task adapters.
    """
    directory = Path(directory)
    config = _read_config(directory)
    names = find_targets(model, config["target_modules"], each_entry=False)  # PEFT's rule: some entry must match
    existing = dict(lora_layers(model))
    sliced = [name for name, layer in existing.items() if hasattr(layer, "slices")]
    if sliced:  # a PEFT file holds one B per layer, not one per slice: nothing to load into these layers
        raise ValueError(f"{sliced[0]!r} carries LoRA on slices of its outputs, which a PEFT adapter file cannot "
                         f"fill; call minilora.unload(model) first, then load the adapter into the plain model")
    if existing:
        _check_swap(existing, names, config)
    else:
        check_wrappable(model, names)
    tensors = _read_tensors(directory, model, names, config["r"])
    # Everything is checked: from here on nothing can fail, so a failed load has changed nothing.
    if not existing:
        inject(model, names, config["r"], config["lora_alpha"])  # the full names: exactly the layers found
    for name in names:
        layer = model.get_submodule(name)
        layer.lora_A.weight.data.copy_(tensors[f"{PREFIX}{name}.lora_A.weight"])  # copy_ casts to the layer's dtype
        layer.lora_B.weight.data.copy_(tensors[f"{PREFIX}{name}.lora_B.weight"])
        layer.alpha, layer.use_rslora = config["lora_alpha"], config["use_rslora"]
        layer.lora_dropout.p = config["lora_dropout"]
    return model
