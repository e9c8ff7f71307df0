"""Progress lines for runs without a terminal (Slurm, nohup, CI), where tqdm turns its bar off."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("harness")


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The progress bar as log lines, for runs without a terminal:

        step 40/323 (12%)  loss 0.6402  1,187 tokens/s  elapsed 0:00:31  ETA 0:03:40

    loss and tokens/s are the logging window's (the row metrics.jsonl gets); the ETA extrapolates
    this process's wall time per step, evaluations included, over the steps left."""

    def __init__(self, total: int, start_step: int):
        self.total, self.start_step, self.t0 = total, start_step, time.perf_counter()

    def log(self, step: int, loss: float | None, tokens_per_s: float) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(1, step - self.start_step) * (self.total - step)
        loss_text = f"{loss:.4f}" if loss is not None else "n/a"
        log.info("step %d/%d (%d%%)  loss %s  %s tokens/s  elapsed %s  ETA %s", step, self.total,
                 100 * step // self.total, loss_text, f"{tokens_per_s:,.0f}", _hms(elapsed), _hms(eta))
