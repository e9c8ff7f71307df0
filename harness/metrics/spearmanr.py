"""Spearman rank correlation (STS-B): Pearson r of the ranks, ties given their average rank.

NaN when either side is constant, as in scipy.
A local `evaluate` module so it loads offline; one import per line because `evaluate` parses them.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import rankdata


class Spearmanr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Spearman rank correlation coefficient.",
            citation="",
            inputs_description="predictions, references: float scores of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        x = rankdata(np.asarray(predictions, dtype=np.float64))
        y = rankdata(np.asarray(references, dtype=np.float64))
        x = x - x.mean()
        y = y - y.mean()
        denom = np.sqrt((x @ x) * (y @ y))
        return {"spearmanr": float(x @ y / denom) if denom > 0 else float("nan")}
