"""Accuracy: the fraction of predictions equal to their reference (SST-2, QNLI, RTE, MNLI, QQP, MRPC).

A local `evaluate` module so `evaluate.load(path)` works offline; the hub's `accuracy` name needs
network. Imports stay one per line because `evaluate` parses them to check dependencies.
"""

import datasets
import evaluate
import numpy as np


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of predictions equal to the reference label.",
            citation="",
            inputs_description="predictions, references: int class ids of equal length.",
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if len(references) == 0:
            raise ValueError("accuracy of zero examples is undefined")
        return {"accuracy": float((predictions == references).mean())}
