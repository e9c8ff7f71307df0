"""One optimizer step's arithmetic: forward and backward over its micro-batches, and what a step
hook is told afterwards. Shared by the one loop (loop.py) and the packed loop (harness/pack)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from harness.scoring import loss_items, summed_loss

from .runtime import to_device


def accumulate_gradients(model: torch.nn.Module, micro: list[dict], kind: str, device: torch.device,
                         autocast=contextlib.nullcontext) -> torch.Tensor:
    """Forward and backward over the micro-batches of one optimizer step; returns the step's loss.

    The loss is summed over every item of the step (examples; response tokens for causal LMs) and
    divided by the step's total item count, so the gradient is the one of a single batch holding
    all the micro-batches: a short last batch, or micro-batches with different numbers of response
    tokens, weigh by their items and not as whole micro-batches (transformers' `num_items_in_batch`
    fix). The summed loss comes from the logits (harness.scoring.summed_loss), not from the model.
    """
    items = sum(loss_items(kind, b["labels"]) for b in micro)  # on the host: no device sync
    total = torch.zeros((), device=device)
    for batch in micro:
        batch = to_device(batch, device)
        labels = batch.pop("labels")
        with autocast():
            logits = model(**batch).logits
        loss = summed_loss(kind, logits, labels) / items
        loss.backward()
        total += loss.detach()
    return total


@dataclass
class StepEnd:
    """What a step hook (`fit(on_step=...)`) gets after each optimizer step, once the step's
    logging, evaluation and checkpoint are done: bench/ times the real loop with it."""
    step: int                 # optimizer steps done
    loss: float               # this step's loss (NaN/inf for a skipped step)
    grad_norm: float
    tokens: int               # real (unpadded) tokens of the step
    seconds: float            # the step's time as the step timer measured it
    row: dict | None          # the train row logged at this step, None between logging steps


StepHook = Callable[[StepEnd], None]

