"""Many adapters on one base model, switched in place: serving several tasks from one loaded model."""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.lora.config import LoraConfig
from harness.lora.files import PREFIX
from harness.lora.load import copy_adapter_in, prepare_adapter


class AdapterBank:
    """Many adapters, one base model: each adapter's tensors stay in memory and `activate` copies
    them into the single-adapter LoRA layers in place (no base reload, no per-adapter dicts in the
    layers). All adapters must adapt the same modules with the same ranks; alpha may differ.

        bank = AdapterBank(model); bank.add("sst2", "runs/sst2/adapter"); bank.activate("sst2")
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._adapters: dict[str, tuple[LoraConfig, dict[str, torch.Tensor]]] = {}
        self._active: str | None = None

    @property
    def names(self) -> list[str]:
        return list(self._adapters)

    @property
    def active(self) -> str | None:
        return self._active

    def add(self, name: str, path) -> None:
        """Read, validate and keep adapter `path` under `name` (the model is adapted on first add)."""
        if name in self._adapters:
            raise ValueError(f"adapter name {name!r} already loaded; loaded: {self.names}")
        cfg, tensors = prepare_adapter(self.model, path)
        if self._adapters:
            first = next(iter(self._adapters.values()))[1]
            extra, missing = sorted(set(tensors) - set(first)), sorted(set(first) - set(tensors))
            if extra or missing:
                raise ValueError(f"{path}: keys differ from the adapters already loaded "
                                 f"(extra: {extra[:3]}, missing: {missing[:3]})")
        params = dict(self.model.named_parameters(remove_duplicate=False))
        # stored on the model's device and dtype, so activate is a plain in-place copy
        stored = {k: t.to(device=params[k[len(PREFIX):]].device, dtype=params[k[len(PREFIX):]].dtype)
                  for k, t in tensors.items()}
        self._adapters[name] = (cfg, stored)

    def activate(self, name: str) -> None:
        if name not in self._adapters:
            raise ValueError(f"unknown adapter {name!r}; loaded: {self.names}")
        cfg, tensors = self._adapters[name]
        copy_adapter_in(self.model, cfg, tensors)
        self._active = name
