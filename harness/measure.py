"""Throughput and memory, measured the way the comparison needs them.

Throughput counts real tokens (the attention mask's ones), not padding, because dynamic padding
differs batch to batch and LoRA vs full FT must be compared on the work done. Only training steps
after `warmup` are timed (the first steps pay for allocator growth and kernel selection), and
evaluation time is never inside a timed step.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch

GIB = 1024**3


class StepTimer:
    """Time optimizer steps; `start()` before the first micro-batch, `stop(...)` after the update."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup = warmup
        self.device = device
        self.times: list[float] = []
        self.total_s = 0.0  # every step, warm-up included: the training time of the run
        self.tokens = self.padded_tokens = self.samples = 0
        self._seen = 0
        self._t0 = 0.0

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self):
        self._sync()
        self._t0 = time.perf_counter()

    def stop(self, tokens: int, padded_tokens: int, samples: int) -> float:
        """Record one step; return its duration in seconds."""
        self._sync()
        dt = time.perf_counter() - self._t0
        self.total_s += dt
        self._seen += 1
        if self._seen > self.warmup:
            self.times.append(dt)
            self.tokens += tokens
            self.padded_tokens += padded_tokens
            self.samples += samples
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

    def summary(self) -> dict:
        total = sum(self.times)
        if not self.times or total == 0:
            return {"tokens_per_s": None, "padded_tokens_per_s": None, "samples_per_s": None,
                    "step_time_s": None, "steps_timed": 0}
        return {
            "tokens_per_s": self.tokens / total,
            "padded_tokens_per_s": self.padded_tokens / total,
            "samples_per_s": self.samples / total,
            "step_time_s": statistics.median(self.times),
            "steps_timed": len(self.times),
        }


def reset_peak_rss() -> None:
    """Start a new peak: in a sequential sweep each job must not inherit the earlier jobs' peaks.

    Linux resets VmHWM when "5" is written to /proc/self/clear_refs; elsewhere the peak stays
    process-wide (ru_maxrss cannot be reset).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gib() -> float:
    """Peak resident set size since the last reset: VmHWM on Linux, else ru_maxrss (process-wide).

    Not ru_maxrss on Linux: exec keeps the parent's high-water mark in it (fs/exec.c copies the old
    mm's hiwater into signal->maxrss), so a child started by a 2.5 GiB parent reads >= 2.5 GiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GIB  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_summary(device: torch.device, state_bytes: dict) -> dict:
    """Process peak RSS, CUDA training peaks, and the analytic bytes of training state."""
    cuda = device.type == "cuda"
    return {
        "peak_rss_gib": peak_rss_gib(),
        "cuda_peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB if cuda else None,
        "cuda_peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if cuda else None,
        "param_gib": state_bytes["param_bytes"] / GIB,
        "grad_gib": state_bytes["grad_bytes"] / GIB,
        "optimizer_gib": state_bytes["optimizer_bytes"] / GIB,
        "state_gib": state_bytes["state_bytes"] / GIB,
    }
