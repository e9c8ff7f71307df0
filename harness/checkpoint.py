"""Checkpoints that make a killed run end with exactly the numbers of an uninterrupted one.

A checkpoint is a folder `checkpoints/step_NNNNNNN/` holding
- `trainable.safetensors`: only the parameters that train (the adapter and head for LoRA),
  because the frozen base is reloaded from the pretrained weights anyway;
- `state.pt`: optimizer, scheduler, loop position and every RNG state, loaded back with
  `torch.load(weights_only=True)` so a checkpoint can never execute code.
It is written to a temporary folder and renamed into place, so a kill mid-write leaves the previous
checkpoint intact; only the last `keep` are kept.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step_"


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


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save(ckpt_root: Path, step: int, model, optimizer, scheduler, loop: dict, keep: int) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"{PREFIX}{step:07d}"
    tmp = ckpt_root / f".tmp_{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_trainable(model), tmp / "trainable.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loop": loop, "rng": rng_state()}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.name.startswith(PREFIX) and (p / "state.pt").exists())


def load(path: Path, model, optimizer, scheduler) -> dict:
    """Restore model-trainable weights, optimizer and scheduler; return the saved loop state + rng."""
    tensors = load_file(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - {n for n, p in params.items() if p.requires_grad})
    if unknown:
        raise ValueError(f"checkpoint {path} holds parameters this run does not train: {unknown[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    state = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state
