"""What the paper compares between LoRA and full fine-tuning: parameter counts and training-state bytes."""

from __future__ import annotations

import torch.nn as nn

from harness.lora.inject import lora_layers


def count_parameters(model: nn.Module) -> dict:
    """trainable / total parameter counts (shared tensors once), the trainable ones split into
    `adapter` (lora_A, lora_B and DoRA's magnitude vectors that train: B alone for LoRA-FA) and
    `head` (trainable parameters outside adapters: modules_to_save, or everything for full
    fine-tuning), so trainable = adapter + head. The LoRA papers' counts are `adapter`."""
    adapter_ids = {id(p) for layer in lora_layers(model).values() for n, p in layer.named_parameters()
                   if not n.startswith("base.")}
    total = trainable = adapter = head = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
            adapter += n if id(p) in adapter_ids else 0
            head += 0 if id(p) in adapter_ids else n
    pct = 100.0 * trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "trainable_pct": pct, "adapter": adapter, "head": head}


def trainable_state_bytes(model: nn.Module, optimizer_slots: int = 2) -> dict:
    """Bytes of training state: all parameters, gradients of trainable ones, and optimizer slots
    (AdamW: 2 moments) assumed fp32 (4 bytes) per trainable element, as in mixed-precision training."""
    if isinstance(optimizer_slots, bool) or not isinstance(optimizer_slots, int) or optimizer_slots < 0:
        raise ValueError(f"optimizer_slots={optimizer_slots!r}: must be a non-negative integer")
    params = list(model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    optimizer_bytes = optimizer_slots * 4 * sum(p.numel() for p in params if p.requires_grad)
    return {"param_bytes": param_bytes, "grad_bytes": grad_bytes, "optimizer_bytes": optimizer_bytes,
            "state_bytes": param_bytes + grad_bytes + optimizer_bytes}
