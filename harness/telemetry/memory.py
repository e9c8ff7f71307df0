"""Memory: peak RSS of the job's process, CUDA allocator peaks of training and of evaluation kept
apart (`CudaPeaks`), and the analytic bytes of training state."""

from __future__ import annotations

import contextlib
import gc
import resource
import sys

import psutil
import torch

GIB = 1024**3


def reset_peak_rss() -> None:
    """Start a new peak at the current RSS: Linux resets VmHWM when "5" is written to
    /proc/self/clear_refs; elsewhere the peak stays process-wide (ru_maxrss cannot be reset).

    This only lowers the peak to what the process holds now, so it cannot undo what earlier work
    in the same process left resident; sweep jobs get a process of their own instead (see
    harness.train.run_forked)."""
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


def rss_gib() -> float:
    """Current resident set size of this process."""
    return psutil.Process().memory_info().rss / GIB


class CudaPeaks:
    """CUDA allocator peaks of training and of evaluation, kept apart (no-ops off CUDA).

    `start()` after the model is loaded empties the cache and resets the peaks, so the training
    window begins with only the model resident. Each `evaluation()` block first folds the training
    peak so far into `train`, then empties the cache and resets the peaks, so evaluation's large
    batches (and a causal LM's fp32 full-vocabulary logits) land in `eval`; on leaving it does the
    same the other way, so training after an evaluation neither sees its peak nor reuses its cached
    blocks in the reserved figure.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.train = {"allocated": 0, "reserved": 0}
        self.eval: dict | None = None
        self._in_eval = False

    def _reset(self):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)

    def _fold(self, into: dict):
        into["allocated"] = max(into["allocated"], torch.cuda.max_memory_allocated(self.device))
        into["reserved"] = max(into["reserved"], torch.cuda.max_memory_reserved(self.device))

    def start(self):
        if self.cuda:
            self._reset()

    @contextlib.contextmanager
    def evaluation(self):
        if not self.cuda or self._in_eval:
            yield
            return
        self._fold(self.train)
        self._reset()
        self._in_eval = True
        try:
            yield
        finally:
            self.eval = self.eval or {"allocated": 0, "reserved": 0}
            self._fold(self.eval)
            self._reset()
            self._in_eval = False

    def train_peak_allocated(self) -> int:
        """Bytes: the training peak so far (call it from the training loop, not inside an evaluation)."""
        return max(self.train["allocated"], torch.cuda.max_memory_allocated(self.device))

    def summary(self) -> dict:
        keys = ("cuda_peak_allocated_gib", "cuda_peak_reserved_gib",
                "cuda_eval_peak_allocated_gib", "cuda_eval_peak_reserved_gib")
        if not self.cuda:
            return dict.fromkeys(keys)
        if not self._in_eval:
            self._fold(self.train)
        ev = self.eval or {"allocated": None, "reserved": None}
        values = (self.train["allocated"], self.train["reserved"], ev["allocated"], ev["reserved"])
        return {k: (v / GIB if v is not None else None) for k, v in zip(keys, values)}


def memory_row(device: torch.device, peaks: CudaPeaks) -> dict:
    """What a logged training row carries about memory: RSS now; on CUDA allocated now and the
    training peak so far."""
    row = {"train/rss_gib": rss_gib()}
    if device.type == "cuda":
        row["train/cuda_allocated_gib"] = torch.cuda.memory_allocated(device) / GIB
        row["train/cuda_peak_allocated_gib"] = peaks.train_peak_allocated() / GIB
    return row


def release_cuda_memory() -> None:
    """Hand cached CUDA blocks back to the driver and clear the peaks, so whatever runs next in this
    process (a job run in-process by a launcher, a benchmark) starts from an empty cache."""
    if torch.cuda.is_initialized():
        gc.collect()  # tensors held only by reference cycles (a failed job's traceback frames)
        torch.cuda.empty_cache()
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def memory_summary(device: torch.device, state_bytes: dict, peaks: CudaPeaks | None = None) -> dict:
    """Process peak RSS, CUDA training and evaluation peaks, and the analytic bytes of training state."""
    return {
        "peak_rss_gib": peak_rss_gib(),
        **(peaks or CudaPeaks(device)).summary(),
        "param_gib": state_bytes["param_bytes"] / GIB,
        "grad_gib": state_bytes["grad_bytes"] / GIB,
        "optimizer_gib": state_bytes["optimizer_bytes"] / GIB,
        "state_gib": state_bytes["state_bytes"] / GIB,
    }
