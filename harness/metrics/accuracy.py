"""Accuracy: the fraction of predictions equal to their reference (SST-2, QNLI, RTE, MNLI, QQP, MRPC).

A local `evaluate` module so `evaluate.load(path)` works offline; the hub's `accuracy` name needs
network. Imports stay one per line because `evaluate` parses them to check dependencies.
"""

import evaluate
import numpy as np

from harness.metrics._info import metric_info


class Accuracy(evaluate.Metric):
    def _info(self):
        return metric_info("Fraction of predictions equal to the reference label.",
                           "predictions, references: int class ids of equal length.", "int64")

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(references) == 0:
            raise ValueError("accuracy of zero examples is undefined")
        return {"accuracy": float((predictions == references).mean())}
