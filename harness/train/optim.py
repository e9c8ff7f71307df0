"""The optimizer and the learning-rate schedule: the same for LoRA and full fine-tuning."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from harness.config import TrainerConfig


def warmup_linear_decay(warmup: int, total: int):
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at step `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def build_optimizer(tcfg: TrainerConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tcfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(tcfg.optimizer or {"_target_": "torch.optim.AdamW", "_partial_": True})
    if kwargs.get("fused") and not _fused_ok(params):
        kwargs["fused"] = None
    return instantiate(kwargs)([g for g in groups if g["params"]], lr=lr)


def _fused_ok(params) -> bool:
    """Fused AdamW needs floating-point params on one device type that it supports."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
