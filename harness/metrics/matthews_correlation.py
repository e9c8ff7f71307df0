"""Matthews correlation coefficient (CoLA): the correlation between predicted and true labels.

Multi-class form (Gorodkin 2004), which reduces to (TP*TN - FP*FN) / sqrt(...) for two classes:
    MCC = (c*s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2))
with c correct predictions, s samples, p_k / t_k how often class k is predicted / true. Defined as
0 when a denominator term is 0 (a constant predictor), as in sklearn and the GLUE scorer.
A local `evaluate` module so it loads offline; one import per line because `evaluate` parses them.
"""

import evaluate
import numpy as np

from harness.metrics._info import metric_info


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        return metric_info("Matthews correlation coefficient between predictions and references.",
                           "predictions, references: int class ids of equal length.", "int64")

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        classes = np.union1d(predictions, references)
        p = np.array([np.sum(predictions == k) for k in classes], dtype=np.float64)
        t = np.array([np.sum(references == k) for k in classes], dtype=np.float64)
        c = float(np.sum(predictions == references))
        s = float(len(references))
        denom = (s * s - p @ p) * (s * s - t @ t)
        mcc = (c * s - p @ t) / np.sqrt(denom) if denom > 0 else 0.0
        return {"matthews_correlation": float(mcc)}
