"""Training: one loop for LoRA and full fine-tuning, its jobs, checkpoints and sweeps.

    runtime.py     seeds, device, autocast, signals (Preempted, TrainingFailed)
    optim.py       AdamW over the trainable parameters, the warm-up + linear-decay schedule
    state.py       LoopState: the loop's position, as checkpoints carry it
    checkpoint.py  atomic checkpoints, resume, the config fingerprint
    weights.py     BestWeights (trainer.select_best), saving the adapter or model
    loop.py        fit: setup, one loop, finalize; the step hook (StepEnd)
    job.py         run_job: one Hydra job, its attempt, tracker and record
    sweep.py       run_forked (a process per job), lost-job records, SweepReport
    cli.py         main: `harness-train` / `python -m harness.train`
"""

import os

# Ask NVML, not the CUDA runtime, whether a GPU exists: the runtime's device count poisons fork()
# (torch then refuses CUDA in a forked child), and sweep jobs run in forked children (run_forked).
# Set before torch is imported here.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from .checkpoint import RESUME_SAFE, fingerprint, resume_config  # noqa: E402
from .cli import main  # noqa: E402
from .job import job_run_name, lr_is_swept, run_job  # noqa: E402
from .loop import StepEnd, StepHook, accumulate_gradients, build_model, fit, prepare_model  # noqa: E402
from .optim import build_optimizer, warmup_linear_decay  # noqa: E402
from .progress import Progress  # noqa: E402
from .runtime import Preempted, Signals, TrainingFailed, autocast, pick_device, seed_everything  # noqa: E402
from .state import LoopState  # noqa: E402
from .sweep import SweepReport, run_forked  # noqa: E402
from .weights import BestWeights, save_trained  # noqa: E402

__all__ = ["RESUME_SAFE", "BestWeights", "LoopState", "Preempted", "Progress", "Signals", "StepEnd", "StepHook",
           "SweepReport", "TrainingFailed", "accumulate_gradients", "autocast", "build_model", "build_optimizer",
           "fingerprint", "fit", "job_run_name", "lr_is_swept", "main", "pick_device", "prepare_model",
           "resume_config", "run_forked", "run_job", "save_trained", "seed_everything", "warmup_linear_decay"]
