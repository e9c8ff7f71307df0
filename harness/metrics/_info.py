"""What every metric module here tells `evaluate` about itself: a description and the input type.

One definition, imported by each module (`evaluate` copies a module file but imports its absolute
imports normally, so `harness.metrics._info` resolves to this file wherever the harness is installed).
"""

import datasets
import evaluate


def metric_info(description: str, inputs_description: str, dtype: str) -> evaluate.MetricInfo:
    """MetricInfo for a metric of two equal-length columns, `predictions` and `references`, of `dtype`."""
    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}),
    )
