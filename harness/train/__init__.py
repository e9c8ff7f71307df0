"""Training: one loop for LoRA and full fine-tuning, its jobs, checkpoints and sweeps.

    runtime.py     seeds, device, autocast, signals (Preempted, TrainingFailed)
    optim.py       AdamW over the trainable parameters, the warm-up + linear-decay schedule
    state.py       LoopState: the loop's position, as checkpoints carry it
    checkpoint.py  atomic checkpoints, resume, the config fingerprint
    weights.py     BestWeights (trainer.select_best), saving the adapter or model
    step.py        one step's forward/backward over its micro-batches; the step hook (StepEnd)
    loop.py        fit: setup, one loop (Training's step methods), finalize
    job.py         run_job: one Hydra job, its attempt, tracker and record
    sweep.py       run_forked (a process per job), lost-job records, SweepReport
    __init__.py    main: `harness-train` / `python -m harness.train` (here, so that Hydra names the
                   job, and its log file train.log, after this module: `harness.train`)

    python -m harness.train                                   # default: LoRA r=8 q+v, MiniLM, Rotten Tomatoes
    python -m harness.train method=full
    python -m harness.train -m method.r=1,2,4,8 seed=0,1,2   # a sweep, one job per combination
"""

import logging
import os
import sys

# Ask NVML, not the CUDA runtime, whether a GPU exists: the runtime's device count poisons fork()
# (torch then refuses CUDA in a forked child), and sweep jobs run in forked children (run_forked).
# Set before torch is imported here.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

from .checkpoint import RESUME_SAFE, fingerprint, resume_config  # noqa: E402
from .job import JobRun, job_info, job_run_name, lr_is_swept, run_job  # noqa: E402
from .loop import Training, build_model, finalize, fit, prepare_model, setup, train  # noqa: E402
from .step import StepEnd, StepHook, accumulate_gradients  # noqa: E402
from .optim import build_optimizer, warmup_linear_decay  # noqa: E402
from .progress import Progress  # noqa: E402
from .runtime import (Preempted, Signals, TrainingFailed, attention_for, autocast, effective_precision,  # noqa: E402
                      pick_device, seed_everything, to_device)
from .state import LoopState  # noqa: E402
from .sweep import SweepReport, run_forked  # noqa: E402
from .weights import BestWeights, save_trained  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from harness.config import CONF_DIR, ConfigError  # noqa: E402
from harness.overrides import check_overrides  # noqa: E402
from harness.telemetry import install_secret_redaction, redact_text  # noqa: E402

log = logging.getLogger("harness")

__all__ = ["RESUME_SAFE", "BestWeights", "JobRun", "LoopState", "Preempted", "Progress", "Signals", "StepEnd", "StepHook",
           "SweepReport", "Training", "TrainingFailed", "finalize", "setup", "train", "accumulate_gradients", "attention_for", "autocast", "build_model", "build_optimizer", "effective_precision",
           "fingerprint", "fit", "job_info", "job_run_name", "lr_is_swept", "main", "pick_device", "prepare_model",
           "resume_config", "run_forked", "run_job", "save_trained", "seed_everything", "to_device", "warmup_linear_decay"]


# An absolute path: a relative one resolves against the `harness` package when run as a console script.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float:
    # Imported here, once, and not lazily inside each job: every job runs in a forked child
    # (run_forked), and `evaluate` (with what it pulls in) costs ~3 s to import.
    import evaluate  # noqa: F401

    return run_forked(run_job, cfg)  # every job, single or in a sweep, in a process of its own


def main():
    """harness-train. Log lines are redacted from the start: Hydra's launcher logs every job's
    overrides, secrets included, before any job runs. What Hydra itself would reject while composing
    (an unknown group option or key, an unparsable override) is reported in one line first; then
    Hydra runs the job(s)."""
    install_secret_redaction()
    try:
        check_overrides(sys.argv[1:])
    except ConfigError as e:
        print(f"harness-train: error: {redact_text(str(e))}", file=sys.stderr)
        sys.exit(1)
    except Exception:  # noqa: BLE001 - a check that cannot decide must not block: Hydra reports it then
        log.debug("check_overrides could not decide", exc_info=True)
    return _hydra_main()
