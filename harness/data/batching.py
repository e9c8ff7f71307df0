"""Batching: which examples form each batch, and how a batch of examples becomes padded tensors.

Train batches are a function of (seed, epoch) only, so a resumed run replays the same batches;
evaluation batches are length-sorted, a pure speed change (scoring restores stored order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from harness.data.tokenize import IGNORE_INDEX


@dataclass
class Collator:
    """list of examples -> dict of tensors, padded to the longest example in the batch (right side)."""

    pad_token_id: int
    kind: str

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch = {}
        for key, value in pad_values.items():
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])
        labels = [e["labels"] for e in examples]
        if self.kind == "causal_lm":
            batch["labels"] = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels])
        else:
            dtype = torch.float32 if self.kind == "regression" else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch) through SeedSequence, so (1, 0) and (0, 1) differ."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")


def train_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True) -> list[list[int]]:
    """The example indices of every train batch of one epoch, a function of (seed, epoch) only.

    group_by_length: shuffle, cut into chunks of 50 batches, sort each chunk by length (longest
    first) and cut it into batches, then shuffle the batches. Each batch holds similar lengths
    (less padding) while which examples meet, and the batch order, stay random.
    """
    _check_batch_size(batch_size)
    g = epoch_generator(seed, epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    chunk = 50 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def eval_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """The example indices of every batch of a split, longest examples first.

    Sorting by length is a pure speed change (each batch pads to its own longest example, so
    little padding is computed): `harness.scoring.evaluate_model` puts every per-example result
    back in stored order before anything is summed or scored. Longest first, so the largest
    batch (the evaluation's memory peak) comes at once. Ties keep stored order (stable sort).
    """
    _check_batch_size(batch_size)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
