"""F1 = 2PR / (P + R) (MRPC, QQP; macro-averaged for multi-class tasks such as bbc_news).

`average="binary"` scores class `pos_label`; "macro" is the unweighted mean of per-class F1 over
the classes that occur in predictions or references; "micro" pools all classes (= accuracy for
single-label data). A class never predicted and never present scores 0, not NaN, as in sklearn.
A local `evaluate` module so it loads offline; one import per line because `evaluate` parses them.
"""

import evaluate
import numpy as np

from harness.metrics._info import metric_info


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else 0.0


class F1(evaluate.Metric):
    def _info(self):
        return metric_info("F1 score, binary or averaged over classes.",
                           "predictions, references: int class ids; average: binary | macro | micro.", "int64")

    def _compute(self, predictions, references, average="binary", pos_label=1):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if average == "binary":
            classes = [pos_label]
        elif average in ("macro", "micro"):
            classes = np.union1d(predictions, references)
        else:
            raise ValueError(f"average={average!r} is not one of binary, macro, micro")
        counts = [
            (np.sum((predictions == c) & (references == c)),
             np.sum((predictions == c) & (references != c)),
             np.sum((predictions != c) & (references == c)))
            for c in classes
        ]
        if average == "micro":
            tp, fp, fn = (sum(col) for col in zip(*counts))
            return {"f1": float(_f1(tp, fp, fn))}
        return {"f1": float(np.mean([_f1(*c) for c in counts]))}
