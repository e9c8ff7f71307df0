"""What a training process needs from its machine: seeds, the device, autocast, and the signals
that tell it to stop (SIGTERM/SIGINT, what Slurm sends before preemption)."""

from __future__ import annotations

import contextlib
import random
import signal

import numpy as np
import torch

from harness.schema import ConfigError


class TrainingFailed(RuntimeError):
    """Training stopped on purpose (divergence); the message says where."""


class Preempted(RuntimeError):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the run can continue later."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' is invalid: no CUDA device is available (use auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 matmuls are emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def effective_precision(device: torch.device, precision: str) -> str:
    """"bf16" or "fp32": what trainer.precision means on this device. `auto` (the default) is bf16
    where the hardware has it and fp32 elsewhere; `bf16` and `fp32` force one. Chosen by
    measurement: the same validation accuracy for LoRA and full FT (experiments/defaults,
    "Precision"), and the time in bench/README.md (default_sweep, harness vs harness_fp32)."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def attention_for(choice: str | None, device: torch.device, precision: str) -> str | None:
    """model.attn_implementation resolved (None: transformers' default, sdpa for the models here).
    Automatic (null) picks eager attention where the run autocasts to bf16 on a CPU: torch's CPU
    flash-attention backward is ~6x slower in bf16 than in fp32 (72 vs 12 ms a layer for a MiniLM
    batch of 32 reviews; torch.profiler, 2026-12-03), while eager attention's matmuls gain from bf16
    like every other layer's; bench/default_sweep.py measures the whole sweep."""
    if choice is not None:
        return choice
    if device.type == "cpu" and effective_precision(device, precision) == "bf16":
        return "eager"
    return None


def autocast(device: torch.device, precision: str):
    """A context-manager factory: bf16 autocast where effective_precision says bf16, else nothing.
    Weights, gradients and optimizer states stay fp32 either way (mixed precision); losses are
    computed in fp32 (harness/scoring.py)."""
    if effective_precision(device, precision) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Signals:
    """Turn SIGTERM/SIGINT (what Slurm sends before preemption) into a flag the loop checks.

    With `immediate=True` the signal raises Preempted at once instead: what run_job installs around
    the whole of `fit`, so a signal outside the step loop (while loading, or during the final
    evaluation or save, where no step boundary comes to check a flag) still ends the run as
    preempted with its record written and its W&B run finished. The step loop's own handler
    replaces it while steps run and restores it after.
    """

    def __init__(self, immediate: bool = False):
        self.received: int | None = None
        self.immediate = immediate
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum
        if self.immediate:
            raise Preempted(f"signal {signum} outside a training step (while loading, in the final "
                            f"evaluation or while saving)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
