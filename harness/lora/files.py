"""LoRA adapter files in peft's on-disk format: what they hold, writing them, reading them back.

A saved adapter is a folder, exactly as peft's `PeftModel.save_pretrained` writes it, so files made
here load in the tools people serve with (peft, vLLM, TGI):

    adapter_model.safetensors   base_model.model.<module path>.lora_A.weight   (r, in)
                                base_model.model.<module path>.lora_B.weight   (out, r)
                                base_model.model.<module path>.<param>         modules_to_save, under
                                                                               the module's own path
    adapter_config.json         peft_type "LORA", r, lora_alpha, target_modules, lora_dropout, ...

(peft `utils/save_and_load.py::get_peft_model_state_dict` strips the adapter name, turning
`...q_proj.lora_A.default.weight` into `...q_proj.lora_A.weight` and a ModulesToSaveWrapper's
`classifier.modules_to_save.default.weight` into `classifier.weight`.)

A file means the same in every tool, which takes four things peft's own `save_pretrained` leaves to
the caller:
- PiSSA and OLoRA adapters (RESIDUAL_INITS) are saved converted to a plain LoRA delta on the
  *original* weights, as peft's `save_pretrained(path_initial_model_for_weight_conversion=...)` does:
  trained W_res + s B A equals W + s B' A' with A' = [A; A0], B' = [B, -B0] (rank 2r, alpha doubled
  so s is unchanged; x sqrt(2) with rsLoRA), where A0, B0 are the starting factors (W = W_res +
  s B0 A0). Tools that add B A to the weights they loaded (vLLM, TGI, peft without PiSSA/OLoRA)
  then compute the trained model. DoRA's magnitude is unchanged by this: its norm is of the same
  W_res + s B A = W + s B' A'.
- DoRA adapters add `<module path>.lora_magnitude_vector` (out,) per module and `use_dora: true`.
- `base_model_name_or_path` is a folder or hub id `from_pretrained` can open (never `pkg:...`).
- A sequence-classification adapter always carries its classifier (peft's SEQ_CLS models expect
  `classifier`/`score` weights in the file and raise KeyError without them), even when it did not
  train: the head of a fresh base is random, so the adapter is meaningless without the one it met.
- `target_modules` is the list of modules actually adapted: their last names (what peft writes for
  "all-linear") when those match nothing else, else the full module names. "all-linear" or a regex
  would be re-expanded by each tool by its own rules (peft's all-linear includes BERT's pooler).

Loading reads safetensors only — pickled `adapter_model.bin` files are refused, never unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from harness.lora.config import RESIDUAL_INITS, LoraConfig, name_matches
from harness.lora.dora import DoraLinear
from harness.lora.inject import has_lora, lora_layers, match_modules_to_save
from harness.models import resolve_path

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
CHECKSUM_KEY = "harness_sha256"  # our own metadata entry; peft ignores it, files without it still load
# init <-> peft's init_lora_weights (True means kaiming-uniform A, zero B)
_INIT_TO_PEFT = {"kaiming": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
_TASK_TYPES = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
               ("ForQuestionAnswering", "QUESTION_ANS"), ("ForCausalLM", "CAUSAL_LM"),
               ("LMHeadModel", "CAUSAL_LM"), ("ForConditionalGeneration", "SEQ_2_SEQ_LM"))
# Heads peft's task models wrap in modules_to_save themselves and so expect in the file
# (peft_model.py: PeftModelForSequenceClassification / ForTokenClassification / ForQuestionAnswering).
_PEFT_TASK_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"),
                    "QUESTION_ANS": ("qa_outputs",)}


def lora_config_of(model: nn.Module) -> LoraConfig:
    cfg = getattr(model, "lora_config", None)
    if not isinstance(cfg, LoraConfig) or not has_lora(model):
        raise ValueError(f"{type(model).__name__} has no LoRA adapters; call apply_lora or load_adapter first")
    return cfg


def saved_modules(model: nn.Module) -> tuple[str, ...]:
    """modules_to_save as the file records it: the config's entries, plus the task head peft's task
    model expects (see the module docstring) when no entry already covers it."""
    cfg = lora_config_of(model)
    saved = list(cfg.modules_to_save)
    covered = match_modules_to_save(model, saved)
    names = [n for n, _ in model.named_modules() if n]
    adapted = lora_layers(model)
    for head in _PEFT_TASK_HEADS.get(_task_type(model), ()):
        hits = [n for n in names if name_matches(n, head, regex=False)]
        inside = any(h == c or h.startswith(c + ".") for h in hits for c in covered)
        if hits and not inside and not any(h in adapted for h in hits):  # a head with LoRA on it is in the file
            saved.append(head)
    return tuple(saved)


def _converts_residual(model: nn.Module, convert_residual: bool) -> bool:
    return lora_config_of(model).init in RESIDUAL_INITS and convert_residual


def adapter_state_dict(model: nn.Module, convert_residual: bool = True) -> dict[str, torch.Tensor]:
    """What the file holds, under peft's key names, as contiguous CPU tensors: A and B of every
    adapted module (for PiSSA / OLoRA, converted to [A; A0] and [B, -B0] unless
    convert_residual=False), DoRA's magnitude vectors, and the parameters of `saved_modules`."""
    convert = _converts_residual(model, convert_residual)
    out = {}
    for name, layer in lora_layers(model).items():
        a, b = layer.lora_A.weight, layer.lora_B.weight
        if convert:
            if not hasattr(layer, "init_A0"):
                init = lora_config_of(model).init
                raise ValueError(f"{name}: a {init} adapter without its starting factors cannot be converted "
                                 f"to a plain LoRA delta; apply {init} to the base again, or save with "
                                 f"convert_residual=False (loads only where {init} recomputes the residual)")
            a = torch.cat([a, layer.init_A0.to(a.dtype)], dim=0)    # (2r, in)
            b = torch.cat([b, -layer.init_B0.to(b.dtype)], dim=1)   # (out, 2r)
        out[f"{PREFIX}{name}.lora_A.weight"] = a
        out[f"{PREFIX}{name}.lora_B.weight"] = b
        if isinstance(layer, DoraLinear):
            out[f"{PREFIX}{name}.lora_magnitude_vector"] = layer.lora_magnitude_vector
    for root in match_modules_to_save(model, saved_modules(model)):
        for pname, p in model.get_submodule(root).named_parameters(remove_duplicate=False):
            out[f"{PREFIX}{root}.{pname}"] = p
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in out.items()}


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _task_type(model: nn.Module) -> str | None:
    name = type(model).__name__
    return next((task for suffix, task in _TASK_TYPES if name.endswith(suffix)), None)


def target_module_names(model: nn.Module) -> list[str]:
    """The adapted modules as a peft target list: their last names when those match exactly the
    adapted set (peft matches a name or a `.`-suffix), else the full names, sorted."""
    adapted = set(lora_layers(model))
    leaves = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    names = [n for n, m in model.named_modules() if n and not any(n.startswith(a + ".") for a in adapted)]
    hits = {n for n in names if any(name_matches(n, leaf, regex=False) for leaf in leaves)}
    return leaves if hits == adapted else sorted(adapted)


def base_model_path(name_or_path: str | None) -> str | None:
    """A name every tool can open: `pkg:MODULE/SUBDIR` becomes the installed folder, an existing
    local folder its absolute path; hub ids pass through."""
    if not name_or_path:
        return None
    name = resolve_path(str(name_or_path))
    return str(Path(name).resolve()) if Path(name).exists() else name


def peft_config_dict(model: nn.Module, base_model_name_or_path: str | None = None,
                     convert_residual: bool = True) -> dict:
    """adapter_config.json contents: peft's LoraConfig fields, with peft's defaults for those we
    do not use (layer selection, LoftQ, Megatron). A converted PiSSA / OLoRA adapter is described
    as the plain rank-2r LoRA it became (see adapter_state_dict)."""
    cfg = lora_config_of(model)
    name = base_model_path(base_model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None))
    r, alpha, rank_pattern, alpha_pattern = cfg.r, cfg.alpha, dict(cfg.rank_pattern), dict(cfg.alpha_pattern)
    init = _INIT_TO_PEFT[cfg.init]
    if _converts_residual(model, convert_residual):  # peft_model.py save_pretrained: the same rescaling
        grow = math.sqrt(2) if cfg.rslora else 2  # s = alpha/r, or alpha/sqrt(r), unchanged at 2r
        r, alpha, init = 2 * r, grow * alpha, True
        rank_pattern = {k: 2 * v for k, v in rank_pattern.items()}
        alpha_pattern = {k: grow * v for k, v in alpha_pattern.items()}
    return {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": name,
        "revision": None,
        "inference_mode": True,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": target_module_names(model),
        "use_rslora": cfg.rslora,
        "modules_to_save": list(saved_modules(model)) or None,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "init_lora_weights": init,
        "bias": "none",
        "fan_in_fan_out": any(layer.fan_in_fan_out for layer in lora_layers(model).values()),
        "use_dora": cfg.use_dora,
        "layers_to_transform": None,
        "layers_pattern": None,
        "layer_replication": None,
        "auto_mapping": None,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "loftq_config": {},
    }


def save_adapter(model: nn.Module, path, base_model_name_or_path: str | None = None,
                 convert_residual: bool = True) -> Path:
    """Write adapter_model.safetensors + adapter_config.json into folder `path` (created); return it.

    Args:
        base_model_name_or_path: what the adapter was trained on (default: the model's own
            `config._name_or_path`); `pkg:` names and relative folders are written resolved.
        convert_residual: False writes a PiSSA / OLoRA adapter as trained (A, B for the residual
            base, config `init_lora_weights: "pissa"` / `"olora"`), which only loaders that redo the
            SVD / QR on the same base reproduce (peft, load_adapter); True (default) writes the
            plain rank-2r LoRA delta.
    """
    path = Path(path)
    config = peft_config_dict(model, base_model_name_or_path, convert_residual)
    tensors = adapter_state_dict(model, convert_residual)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / WEIGHTS_NAME, metadata={"format": "pt", CHECKSUM_KEY: _checksum(tensors)})
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def read_adapter(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json as a dict, {key: tensor}) from an adapter folder (or a file inside it).
    Any unreadable, truncated or modified file is a ValueError naming the path."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    weights, config_file = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    if not weights.is_file():
        if (folder / PICKLE_NAME).is_file():
            raise ValueError(f"{folder / PICKLE_NAME}: pickled adapter weights are never loaded (unpickling runs "
                             f"arbitrary code); convert it to {WEIGHTS_NAME}")
        raise ValueError(f"{weights}: no such adapter weights file")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{config_file}: unreadable adapter config ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"{config_file}: expected a JSON object, got {type(config).__name__}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for bad headers / short files
        raise ValueError(f"{weights}: corrupted or truncated safetensors file ({e})") from e
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and _checksum(tensors) != expected:
        raise ValueError(f"{weights}: checksum mismatch; the file was modified after it was saved")
    return config, tensors


def lora_config_from_peft(config: dict, path="adapter") -> LoraConfig:
    """Our LoraConfig from an adapter_config.json dict; a field we cannot honour is a ValueError."""
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type={config.get('peft_type')!r}; only 'LORA' adapters are supported")
    for key, ok in (("lora_bias", False), ("bias", "none")):
        if config.get(key, ok) != ok:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported (only {ok!r})")
    for key in ("layers_to_transform", "layer_replication", "trainable_token_indices", "target_parameters"):
        if config.get(key):
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported (only null)")
    init_field = config.get("init_lora_weights", True)
    inits = {True: "kaiming", False: "kaiming", "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
    # False (peft: non-zero B) and gaussian only shape the starting point, which loading overwrites.
    if not isinstance(init_field, (bool, str)) or init_field not in inits:
        raise ValueError(f"{path}: init_lora_weights={init_field!r} is not supported; choices: {list(inits)}")
    try:
        return LoraConfig(r=config.get("r"), alpha=config.get("lora_alpha"),
                          target_modules=config.get("target_modules"), dropout=config.get("lora_dropout", 0.0),
                          init=inits[init_field], rslora=config.get("use_rslora", False),
                          modules_to_save=config.get("modules_to_save"), rank_pattern=config.get("rank_pattern"),
                          alpha_pattern=config.get("alpha_pattern"), use_dora=config.get("use_dora") or False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e
