"""The metric registry: the `evaluate` modules in this folder, found by file name and loaded by path.

`evaluate.load` on a local file works offline; the hub names ("accuracy", "glue") do not. Each
module here is one metric (accuracy.py, f1.py, ...) and is never imported as Python: `evaluate`
copies and loads it itself. This package imports nothing of the harness, so task configs (which
check metric names) and scoring (which computes them) can both depend on it.
"""

from __future__ import annotations

import functools
from pathlib import Path

METRICS_DIR = Path(__file__).parent


def available_metrics() -> list[str]:
    return sorted(p.stem for p in METRICS_DIR.glob("*.py") if not p.stem.startswith("_"))


@functools.cache
def load_metric(name: str):
    """The evaluate module harness/metrics/<name>.py, loaded once per process.

    keep_in_memory: predictions stay in RAM instead of evaluate's Arrow cache files, so parallel
    sweep jobs never contend for the same files. (`import evaluate` costs ~3 s once: it imports
    transformers.pipelines.)
    """
    if name not in available_metrics():
        raise ValueError(f"unknown metric {name!r}; available: {available_metrics()}")
    import evaluate

    return evaluate.load(str(METRICS_DIR / f"{name}.py"), keep_in_memory=True)
