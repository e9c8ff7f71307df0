"""Pearson correlation r between predicted and reference scores (STS-B, the LoRA paper's number).

r = cov(x, y) / (std(x) std(y)). NaN when either side is constant (undefined, as in scipy), so a
collapsed regressor shows up instead of hiding behind a 0.
A local `evaluate` module so it loads offline; one import per line because `evaluate` parses them.
"""

import evaluate
import numpy as np

from harness.metrics._info import metric_info


class Pearsonr(evaluate.Metric):
    def _info(self):
        return metric_info("Pearson correlation coefficient.",
                           "predictions, references: float scores of equal length.", "float64")

    def _compute(self, predictions, references):
        x = np.asarray(predictions, dtype=np.float64)
        y = np.asarray(references, dtype=np.float64)
        x = x - x.mean()
        y = y - y.mean()
        denom = np.sqrt((x @ x) * (y @ y))
        return {"pearsonr": float(x @ y / denom) if denom > 0 else float("nan")}
