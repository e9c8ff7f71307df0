"""Throughput, FLOPs and memory, measured the way the comparison needs them.

Throughput counts real tokens (the attention mask's ones), not padding, because dynamic padding
differs batch to batch and LoRA vs full FT must be compared on the work done. A timed step is the
whole optimizer step: fetching and collating its micro-batches, forward, backward and the update.
Only steps after `warmup` count (the first steps pay for allocator growth and kernel selection),
and evaluation time is never inside a timed step.

Model FLOPs (`model_flops`) count the matmuls the architecture needs per real token, so that MFU =
FLOPs/token x real tokens/s / the device's dense bf16 peak. Memory: peak RSS of the job's process,
CUDA allocator peaks of training and of evaluation kept apart (`CudaPeaks`), and the analytic bytes
of training state.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import psutil
import torch

from harness.lora import LINEAR_TYPES, LoraLinear, in_out_features

GIB = 1024**3
log = logging.getLogger(__name__)

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, matched against
# torch.cuda.get_device_name by substring, most specific first. Unknown devices get no MFU.
PEAK_BF16_FLOPS = (
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12),
    ("V100", 125e12),
)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """The device's dense bf16 peak FLOP/s from PEAK_BF16_FLOPS; None for CPUs and unknown GPUs."""
    if not device_name:
        return None
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


# ------------------------------------------------------------------------------------------ FLOPs


@dataclass(frozen=True)
class ModelFlops:
    """Training FLOPs of a batch as a function of its real sequence lengths L_i:

        per_token * sum(L_i) + per_sequence * len(L) + attention * sum(L_i ** 2)

    Every matmul weight W (in x out) costs 2*in*out per row forward and as much backward for the
    activation gradient (counted on every layer, frozen or not), plus 2*in*out for the weight
    gradient only when W trains: 6x for full fine-tuning, 4x for a frozen base. A LoRA layer's
    base weight, A and B are each such a matmul. Attention's score (Q K^T) and context (P V)
    matmuls are 2 * L^2 * heads * head_dim each per layer forward, twice that backward: 12 L^2 d per
    layer, over the full L x L square (the PaLM convention, causal or not). Embedding lookups are
    not matmuls; recomputation under gradient checkpointing is not model FLOPs.
    """

    per_token: float           # matmuls applied to every token (encoder/decoder layers, LM head)
    per_sequence: float        # matmuls applied once per sequence (BERT's pooler and classifier)
    attention: float           # c: one sequence of L real tokens costs c * L^2 in attention
    matmul_params: int         # weights of the matmuls above, each counted once per use
    trainable_matmul_params: int

    def of_batch(self, attention_mask: torch.Tensor) -> float:
        """FLOPs of one training micro-batch, counting its real tokens only (padding is not model work)."""
        lengths = attention_mask.sum(-1).double()
        return float(self.per_token * lengths.sum() + self.per_sequence * len(lengths)
                     + self.attention * (lengths**2).sum())

    def as_dict(self) -> dict:
        return asdict(self)


def model_flops(model: torch.nn.Module, probe_len: int = 8) -> ModelFlops | None:
    """Count the model's training matmul FLOPs (see ModelFlops), or None when its shape is not one
    this count understands (then MFU is left out, with a warning; training goes on).

    Which matmuls run once per token and which once per sequence is read from one forward pass on a
    probe batch (2 sequences of `probe_len` ones) with hooks on every Linear, Conv1D and LoraLinear:
    rows = 2 * probe_len means per token, rows = 2 per sequence. Modules the probe never calls
    (an unused head) cost nothing.
    """
    batch = 2
    inside_lora = {id(c) for m in model.modules() if isinstance(m, LoraLinear) for c in m.modules() if c is not m}
    weights: dict[int, tuple[int, int]] = {}  # id(module) -> (matmul weights, trainable ones)
    rows: dict[int, int] = {}
    hooks = []
    for m in model.modules():
        if id(m) in inside_lora or not isinstance(m, (LoraLinear, *LINEAR_TYPES)):
            continue
        parts = [m.base.weight] if isinstance(m, LoraLinear) else [m.weight]
        if isinstance(m, LoraLinear) and not m.merged:
            parts += [m.lora_A.weight, m.lora_B.weight]
        weights[id(m)] = (sum(p.numel() for p in parts), sum(p.numel() for p in parts if p.requires_grad))
        in_features = in_out_features(m.base if isinstance(m, LoraLinear) else m)[0]
        hooks.append(m.register_forward_hook(
            lambda mod, inp, out, n=in_features: rows.__setitem__(id(mod), rows.get(id(mod), 0) + inp[0].numel() // n)))
    device = next(model.parameters()).device
    probe = torch.ones(batch, probe_len, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()  # no dropout: the probe must not draw from the RNG that training's masks come from
    try:
        with torch.no_grad():
            model(input_ids=probe, attention_mask=probe)
    except Exception as e:  # noqa: BLE001 - a model the probe cannot drive gets no MFU, and still trains
        log.warning("MFU left out: the FLOP-count probe failed (%s: %s)", type(e).__name__, e)
        return None
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    per_token = per_sequence = 0.0
    n_all = n_trainable = 0
    for key, n in rows.items():
        total, trainable = weights[key]
        cost = 4 * total + 2 * trainable
        if n == batch * probe_len:
            per_token += cost
        elif n == batch:
            per_sequence += cost
        else:
            log.warning("MFU left out: a matmul saw %d rows for a probe of %d x %d tokens", n, batch, probe_len)
            return None
        n_all, n_trainable = n_all + total, n_trainable + trainable
    cfg = getattr(model, "config", None)
    try:
        layers, heads = cfg.num_hidden_layers, cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    except AttributeError as e:
        log.warning("MFU left out: the model config has no attention shape (%s)", e)
        return None
    return ModelFlops(per_token=per_token, per_sequence=per_sequence, attention=12.0 * layers * heads * head_dim,
                      matmul_params=n_all, trainable_matmul_params=n_trainable)


# ------------------------------------------------------------------------------------------ timing


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


# ------------------------------------------------------------------------------------------ memory


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
