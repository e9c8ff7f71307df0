"""What a run records about itself: metrics rows (metrics.jsonl, mirrored to W&B), its name,
what it measures (time, throughput, FLOPs, memory), and secrets kept out of all of it.

    redact.py   secret redaction: configs, strings, Hydra's YAML files, every log record
    names.py    run_name: "lora-r8-a16-qv-seed0"
    tracker.py  Tracker (metrics.jsonl + one W&B run per job) and LoggerSettings (conf/logger)
    timer.py    StepTimer: whole optimizer steps, real-token throughput, MFU
    flops.py    model_flops: training matmul FLOPs per real token; the devices' bf16 peaks
    memory.py   peak RSS, CUDA training vs evaluation peaks, the memory fields of a record

Code outside this package imports from here (`from harness.telemetry import Tracker`), never from
the modules, so they can be reshuffled freely.
"""

from harness.telemetry.flops import PEAK_BF16_FLOPS, ModelFlops, model_flops, peak_bf16_flops
from harness.telemetry.memory import (GIB, CudaPeaks, memory_row, memory_summary, peak_rss_gib, release_cuda_memory,
                                      reset_peak_rss, rss_gib)
from harness.telemetry.names import run_name
from harness.telemetry.redact import REDACTED, install_secret_redaction, redact, redact_text, redact_yaml_file
from harness.telemetry.timer import StepTimer
from harness.telemetry.tracker import (DEFAULT_INIT_TIMEOUT_S, LOGGER_NAMES, STEP_METRIC, WANDB_MODES, LoggerSettings,
                                       Tracker)

__all__ = [
    "PEAK_BF16_FLOPS", "ModelFlops", "model_flops", "peak_bf16_flops",
    "GIB", "CudaPeaks", "memory_row", "memory_summary", "peak_rss_gib", "release_cuda_memory", "reset_peak_rss",
    "rss_gib",
    "run_name",
    "REDACTED", "install_secret_redaction", "redact", "redact_text", "redact_yaml_file",
    "StepTimer",
    "DEFAULT_INIT_TIMEOUT_S", "LOGGER_NAMES", "STEP_METRIC", "WANDB_MODES", "LoggerSettings", "Tracker",
]
