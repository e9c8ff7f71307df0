"""Step time and real-token throughput.

Throughput counts real tokens (the attention mask's ones), not padding, because dynamic padding
differs batch to batch and LoRA vs full FT must be compared on the work done. A timed step is the
whole optimizer step: fetching and collating its micro-batches, forward, backward and the update.
Only steps after `warmup` count (the first steps pay for allocator growth and kernel selection),
and evaluation time is never inside a timed step.
"""

from __future__ import annotations

import statistics
import time

import torch


class StepTimer:
    """Time whole optimizer steps: `start()` before fetching the first micro-batch, `data_ready()`
    once all of the step's micro-batches are collated, `stop(...)` after the update.

    `start()` while a step is already started does nothing: the trainer starts the clock before it
    creates an epoch's data loader, so the loader's set-up (worker start-up) and the fetch that
    found the previous epoch exhausted count as data time of the next step.
    """

    def __init__(self, warmup: int, device: torch.device):
        self.warmup = warmup
        self.device = device
        self.times: list[float] = []
        self.data_times: list[float] = []
        self.total_s = 0.0  # every step, warm-up included: the training time of the run
        self.data_total_s = 0.0
        self.tokens = self.padded_tokens = self.samples = 0
        self.flops = 0.0
        self._seen = 0
        self._t0: float | None = None
        self._data_s = 0.0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def running(self) -> bool:
        return self._t0 is not None

    def start(self):
        if self._t0 is None:
            self._sync()
            self._t0 = time.perf_counter()

    def data_ready(self):
        """The step's batches are on the host, collated: everything before is data time."""
        self._data_s = time.perf_counter() - self._t0

    def stop(self, tokens: int, padded_tokens: int, samples: int, flops: float = 0.0) -> float:
        """Record one step (`flops`: its model FLOPs); return its duration in seconds."""
        self._sync()
        dt = time.perf_counter() - self._t0
        self._t0 = None
        self.total_s += dt
        self.data_total_s += self._data_s
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(dt)
            self.data_times.append(self._data_s)
            self.tokens += tokens
            self.padded_tokens += padded_tokens
            self.samples += samples
            self.flops += flops
        return dt

    # What a checkpoint carries, so a resumed run's train_time_s and throughput cover every process
    # of the run, not only the last: every accumulated figure, not the settings or the clock.
    _NOT_STATE = ("warmup", "device", "_t0")

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in self._NOT_STATE}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            if k in vars(self) and k not in self._NOT_STATE:
                setattr(self, k, v)

    def summary(self, peak_flops: float | None = None) -> dict:
        """Rates over the timed steps; `mfu` when `peak_flops` (the device's dense bf16 peak) is known."""
        total = sum(self.times)
        if not self.times or total == 0:
            return {"tokens_per_s": None, "padded_tokens_per_s": None, "samples_per_s": None,
                    "step_time_s": None, "data_time_s": None, "steps_timed": 0,
                    "flops_per_token": None, "mfu": None}
        flops_per_token = self.flops / self.tokens if self.flops and self.tokens else None
        return {
            "tokens_per_s": self.tokens / total,
            "padded_tokens_per_s": self.padded_tokens / total,
            "samples_per_s": self.samples / total,
            "step_time_s": statistics.median(self.times),
            "data_time_s": statistics.median(self.data_times),
            "steps_timed": len(self.times),
            "flops_per_token": flops_per_token,
            "mfu": self.flops / total / peak_flops if flops_per_token and peak_flops else None,
        }
