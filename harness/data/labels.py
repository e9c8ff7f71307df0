"""Labels: map raw label values to class ids, and check labels and texts before tokenizing, so a bad
file fails before minutes of work.
"""

from __future__ import annotations

import math

from datasets import Dataset

from harness.data.config import TaskConfig
from harness.data.sources import column, data_name
from harness.schema import ConfigError


def label_map(cfg: TaskConfig, splits: dict[str, Dataset]) -> tuple[dict | None, list[str] | None]:
    """{raw label value: class id} for classification, and the label names in id order."""
    if cfg.kind != "classification":
        return None, None
    feature = splits["train"].features.get(cfg.label_column)
    names = list(cfg.label_names) if cfg.label_names is not None else getattr(feature, "names", None)
    values = {s: ds.unique(cfg.label_column) for s, ds in splits.items()}
    if names is None:
        train_values = values["train"]
        if all(isinstance(v, str) for v in train_values):
            names = sorted(train_values)
            if len(names) != cfg.num_labels:
                raise ValueError(f"{data_name(cfg, 'train')}: column {cfg.label_column!r} has {len(names)} "
                                 f"labels {names}, expected num_labels={cfg.num_labels}; set label_names")
        else:
            names = [str(i) for i in range(cfg.num_labels)]
    mapping = {name: i for i, name in enumerate(names)} | {i: i for i in range(len(names))}
    ids = f"ids 0..{len(names) - 1}"
    expected = (f"not in task.label_names={names} (nor {ids}); fix the data or task.label_names"
                if cfg.label_names is not None else
                f"expected {names} or {ids} (task.num_labels={cfg.num_labels}); fix the data, or set "
                f"task.num_labels / task.label_names")
    for split, found in values.items():
        # bool is an int to Python (True == 1): a true/false column must not map silently onto ids.
        bad = sorted((v for v in found if isinstance(v, bool) or not isinstance(v, (str, int)) or v not in mapping),
                     key=repr)
        if bad:
            raise ConfigError(f"{data_name(cfg, split)}: column {cfg.label_column!r} has label value(s) {bad[:10]} "
                              f"{expected}")
    return mapping, names


def check_texts(cfg: TaskConfig, splits: dict[str, Dataset]) -> None:
    """Every text a string (None would crash the tokenizer mid-map); regression labels finite numbers."""
    columns = [cfg.prompt_column, cfg.response_column] if cfg.kind == "causal_lm" else list(cfg.text_columns)
    for split, ds in splits.items():
        for c in columns:
            n_bad = sum(not isinstance(t, str) for t in column(ds, c))
            if n_bad:
                raise ValueError(f"{data_name(cfg, split)}: column {c!r} has {n_bad} missing or non-text values")
        if cfg.kind == "regression":
            bad = [v for v in column(ds, cfg.label_column)
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
            if bad:
                raise ValueError(f"{data_name(cfg, split)}: column {cfg.label_column!r} has non-numeric "
                                 f"label values {bad[:10]}")

