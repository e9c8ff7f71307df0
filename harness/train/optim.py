"""The optimizer and the learning-rate schedule: the same for LoRA and full fine-tuning."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from harness.config import TrainerConfig
from harness.lora import lora_layers


def warmup_linear_decay(warmup: int, total: int):
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at step `total`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return factor


def build_optimizer(tcfg: TrainerConfig, model: torch.nn.Module, lr: float,
                    lr_ratio: float | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norm weights (1-D tensors).

    lr_ratio (LoRA+, Hayou et al. 2024): every LoRA B matrix gets its own group at lr * lr_ratio,
    the rest (A, DoRA's magnitude, the head) keeps lr. (peft's create_loraplus_optimizer also
    gives every 1-D tensor B's rate; the paper's ratio is between B and A, so only B gets it here.)
    The schedule multiplies each group's own rate, so the ratio holds at every step. None or 1:
    the two plain groups, as without LoRA+ (checkpoints keep their group layout).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fast = set()
    if lr_ratio is not None and lr_ratio != 1:
        fast = {id(layer.lora_B.weight) for layer in lora_layers(model).values() if layer.lora_B.weight.requires_grad}
    groups = [
        {"params": [p for p in params if p.ndim >= 2 and id(p) not in fast], "weight_decay": tcfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        {"params": [p for p in params if id(p) in fast], "weight_decay": tcfg.weight_decay,
         "lr": lr * (lr_ratio or 1)},
    ]
    kwargs = dict(tcfg.optimizer or {"_target_": "torch.optim.AdamW", "_partial_": True})
    if kwargs.get("fused") and not _fused_ok(params):
        kwargs["fused"] = None
    return instantiate(kwargs)([g for g in groups if g["params"]], lr=lr)


def _fused_ok(params) -> bool:
    """Fused AdamW needs floating-point params on one device type that it supports."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
