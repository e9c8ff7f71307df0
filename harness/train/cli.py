"""harness-train: fine-tune one model on one task with LoRA or full fine-tuning, and record the result.

    python -m harness.train                                   # default: LoRA r=8 q+v, MiniLM, Rotten Tomatoes
    python -m harness.train method=full
    python -m harness.train -m method.r=1,2,4,8 seed=0,1,2   # a sweep, one job per combination
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from harness.config import ConfigError
from harness.overrides import check_overrides
from harness.tracking import install_secret_redaction, redact_text

from .job import run_job
from .sweep import run_forked

log = logging.getLogger("harness")


# An absolute path: a relative one resolves against the `harness` package when run as a console script.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[2] / "conf"),
            config_name="config")
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
