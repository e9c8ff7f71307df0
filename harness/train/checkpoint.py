"""Checkpoints that make a killed run end with exactly the numbers of an uninterrupted one.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` holding
- `trainable.safetensors`: only the parameters that train (the adapter and head for LoRA),
  because the frozen base is reloaded from the pretrained weights anyway;
- `state.pt`: optimizer, scheduler, loop position (with the step timer's and the segments'
  accumulated times) and every RNG state, loaded back with `torch.load(weights_only=True)` so a
  checkpoint can never execute code;
- `meta.json`: what the run must agree with to continue from it: the resolved config it was
  trained with (minus `RESUME_SAFE` keys) and its fingerprint, the code version, and the attempt it
  belongs to (its number, its metrics file, its W&B run id). Small, so it is read before the model
  is built.
Each is fsynced inside a temporary folder that is then renamed into place (and the parent folder
fsynced), so a kill or a power cut mid-write leaves the previous checkpoint intact and a renamed
one complete; only the last `keep` are kept. Resuming tries them newest first and falls back to
the one before when one cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from harness.results import fsync as _fsync  # a module name of its own: tests watch the fsyncs
from harness.schema import ConfigError

log = logging.getLogger(__name__)

PREFIX = "step_"
META = "meta.json"
# Config keys that may change between the processes of one run without changing what it computes:
# whether to skip completed jobs, how and where it is logged, how often it checkpoints, whether the
# model is saved at the end, the fresh-start flag itself; sweep_name defaults to the launch time.
RESUME_SAFE = ("resume", "sweep_name", "logger", "trainer.checkpoint_every", "trainer.keep_checkpoints",
               "trainer.save_model", "trainer.restart")


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- config fingerprint


def resume_config(config: Mapping) -> dict[str, Any]:
    """The resolved config as {dotted key: value}, minus the RESUME_SAFE keys: what must not change
    between the processes of one run. Lists stay lists (a changed target module list is one key)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if prefix.rstrip(".") in RESUME_SAFE:
            return
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix.rstrip(".")] = list(node) if isinstance(node, (list, tuple)) else node

    walk(config, "")
    return out


def fingerprint(flat: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of `resume_config(...)`: equal configs, equal fingerprints."""
    text = json.dumps(flat, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """["method.lr: 0.01 -> 0.02", ...] for every key whose value differs (or exists on one side)."""
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            text = lambda v: "(absent)" if v is missing else json.dumps(v, default=str)  # noqa: E731
            changes.append(f"{key}: {text(a)} -> {text(b)}")
    return changes


def check_config(path: Path, meta: Mapping, flat: Mapping[str, Any], restart_hint: str) -> None:
    """Raise ConfigError (one line naming every changed key) when this run's config is not the one
    the checkpoint at `path` was trained with. The restored optimizer and scheduler would otherwise
    silently keep the old learning rate, and the record would describe a config that never ran."""
    if meta.get("fingerprint") == fingerprint(flat):
        return
    changes = config_changes(meta.get("config") or {}, flat)
    raise ConfigError(f"the config changed since checkpoint {path.name} ({'; '.join(changes)}): run the same "
                      f"config to continue, or add {restart_hint} to start afresh (the old checkpoints and "
                      f"curve are kept in attempts/)")


# ----------------------------------------------------------------------------- save / load


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, loop: dict, keep: int,
         meta: Mapping | None = None) -> Path:
    """Write `checkpoints/step_NNNNNNN/` atomically and durably; drop all but the last `keep`."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:07d}"
    tmp = ckpt_root / f".tmp_{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_trainable(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loop": loop, "rng": rng_state()}, tmp / "state.pt")
    (tmp / META).write_text(json.dumps({**(meta or {}), "step": step}, indent=1, default=str))
    for name in ("trainable.safetensors", "state.pt", META):
        _fsync(tmp / name)
    _fsync(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Checkpoint folders, oldest first."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.name.startswith(PREFIX) and (p / "state.pt").exists())


def read_meta(path: Path) -> dict | None:
    """A checkpoint's meta.json; {} for a checkpoint written before meta.json existed (nothing to
    check it against), None when the file is there but unreadable (the checkpoint is not used)."""
    file = Path(path) / META
    if not file.exists():
        return {}
    try:
        meta = json.loads(file.read_text())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def resumable(ckpt_root: Path) -> list[tuple[Path, dict]]:
    """(checkpoint, meta) pairs newest first, leaving out those whose meta.json cannot be read."""
    out = []
    for path in reversed(list_checkpoints(ckpt_root)):
        meta = read_meta(path)
        if meta is None:
            log.warning("checkpoint %s: meta.json is unreadable; skipping it", path)
            continue
        out.append((path, meta))
    return out


def load(path: Path, model, optimizer, scheduler) -> dict:
    """Restore model-trainable weights, optimizer and scheduler; return the saved loop state + rng.

    Both files are read and the parameters checked before anything is restored, so a checkpoint
    whose files are torn or corrupt leaves the model and optimizer as they were."""
    tensors = load_file(path / "trainable.safetensors")
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    unknown, missing = sorted(set(tensors) - trainable), sorted(trainable - set(tensors))
    if unknown or missing:
        raise ValueError(f"checkpoint {path} does not match the parameters this run trains "
                         f"(unknown: {unknown[:5]}, missing: {missing[:5]})")
    for name, value in tensors.items():
        if value.shape != params[name].shape:
            raise ValueError(f"checkpoint {path}: {name} has shape {tuple(value.shape)}, "
                             f"the model {tuple(params[name].shape)}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    return state


def load_newest(paths: list[Path], model, optimizer, scheduler, hint: str = "") -> tuple[Path, dict]:
    """Load the first of `paths` (newest first) that loads, warning about each that does not.

    Raises RuntimeError when none loads: training from step 0 instead would reuse the attempt's
    curve and W&B run for what is really a fresh start, so that takes the fresh-start flag."""
    errors = []
    for path in paths:
        try:
            return path, load(path, model, optimizer, scheduler)
        except Exception as e:  # noqa: BLE001 - a torn or corrupt file: the previous checkpoint may be fine
            errors.append(f"{path.name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            log.warning("checkpoint %s cannot be loaded (%s); trying the one before", path, errors[-1])
    raise RuntimeError(f"no checkpoint could be loaded ({'; '.join(errors)})" + (f"; {hint}" if hint else ""))
