"""Spearman rank correlation (STS-B): Pearson r of the ranks, ties given their average rank.

NaN when either side is constant, as in scipy.
A local `evaluate` module so it loads offline; one import per line because `evaluate` parses them.
"""

import evaluate
import numpy as np

from harness.metrics._info import metric_info
from scipy.stats import rankdata


class Spearmanr(evaluate.Metric):
    def _info(self):
        return metric_info("Spearman rank correlation coefficient.",
                           "predictions, references: float scores of equal length.", "float64")

    def _compute(self, predictions, references):
        x = rankdata(np.asarray(predictions, dtype=np.float64))
        y = rankdata(np.asarray(references, dtype=np.float64))
        x = x - x.mean()
        y = y - y.mean()
        denom = np.sqrt((x @ x) * (y @ y))
        return {"spearmanr": float(x @ y / denom) if denom > 0 else float("nan")}
