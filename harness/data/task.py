"""Tasks: a data set, how it becomes model inputs and how it is scored.

`build_task(cfg, tokenizer, seed)` turns one `conf/task/<name>.yaml` into a `TaskData`: three
tokenized splits (train / eval / test), a collate function with dynamic padding, and the scoring
settings `harness.scoring` reads. Where the rows come from and how they are split: sources.py;
how they are tokenized and cached: tokenize.py; how they are batched: batching.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from datasets import Dataset

from harness.data import batching
from harness.data.batching import Collator
from harness.data.config import SPLITS, TaskConfig, task_config
from harness.data.labels import check_texts, label_map
from harness.data.prompts import pad_token_id
from harness.data.sources import column, load_examples
from harness.data.tokenize import tokenize_split, tokenizer_fingerprint

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    """Tokenized splits plus everything needed to batch and score them."""

    name: str
    kind: str
    train: Dataset
    eval: Dataset
    test: Optional[Dataset]
    collate: Collator
    num_labels: Optional[int]
    label_names: Optional[List[str]]
    main_metric: str
    greater_is_better: bool
    metrics: List[str]
    metric_kwargs: Dict[str, Any]
    max_length: int
    group_by_length: bool = True
    seed: int = 0
    config: Optional[TaskConfig] = None
    raw: Dict[str, Dataset] = field(default_factory=dict)  # untokenized splits (after limits)

    def split(self, name: str) -> Dataset:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {SPLITS}")
        ds = getattr(self, name)
        if ds is None:
            raise ValueError(f"task {self.name} has no {name} split (unlabelled or not configured)")
        return ds

    def train_batches(self, batch_size: int, seed: int | None = None, epoch: int = 0) -> list[list[int]]:
        """The example indices of every train batch of one epoch (`batching.train_batches`); the
        build seed is the default."""
        return batching.train_batches(column(self.train, "length"), batch_size, self.seed if seed is None else seed,
                                      epoch, self.group_by_length)

    def train_loader(self, batch_size: int, seed: int | None = None, epoch: int = 0, skip_batches: int = 0,
                     num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Train batches in the order of `train_batches`; skip_batches resumes mid-epoch without reading them."""
        batches = self.train_batches(batch_size, seed, epoch)[skip_batches:]
        # Its own generator: creating the iterator then draws nothing from the global RNG, so dropout
        # masks depend only on the steps taken, and a resumed run replays them exactly.
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.utils.data.DataLoader(self.train, batch_sampler=batches, collate_fn=self.collate,
                                           num_workers=num_workers, generator=generator)

    def eval_batches(self, batch_size: int, split: str = "eval") -> list[list[int]]:
        """The example indices of every batch of a split, longest examples first (`batching.eval_batches`)."""
        return batching.eval_batches(column(self.split(split), "length"), batch_size)

    def eval_loader(self, batch_size: int, split: str = "eval") -> torch.utils.data.DataLoader:
        """Batches of a split in the order of `eval_batches` (length-sorted)."""
        return torch.utils.data.DataLoader(self.split(split), batch_sampler=self.eval_batches(batch_size, split),
                                           collate_fn=self.collate)


def build_task(task_cfg, tokenizer, seed: int, max_length: int | None = None) -> TaskData:
    """Load, check, limit and tokenize a task; `max_length` overrides the task's own.

    The splits do not depend on `seed` (see harness/data/sources.py); the seed is the default for
    `train_loader`.
    """
    cfg = task_config(task_cfg)
    max_length = max_length or cfg.max_length
    splits = load_examples(cfg)
    limits = {"train": cfg.limit_train, "eval": cfg.limit_eval, "test": cfg.limit_eval}
    for split, ds in splits.items():
        if limits[split] is not None and limits[split] < len(ds):
            if cfg.source in ("hub", "files"):
                ds = ds.shuffle(seed=0)
            splits[split] = ds.select(range(limits[split]))
    labels, label_names = label_map(cfg, splits)
    check_texts(cfg, splits)
    folder = tokenizer_fingerprint(tokenizer)
    tokenized = {s: tokenize_split(cfg, s, ds, tokenizer, folder, max_length, labels) for s, ds in splits.items()}
    counts = {s: sum(column(ds, "truncated")) for s, ds in tokenized.items()}
    if any(counts.values()):
        log.warning("task %s: truncated %s examples (of %s) to max_length=%d tokens", cfg.name,
                    " / ".join(f"{s} {n}" for s, n in counts.items()),
                    " / ".join(f"{len(ds)}" for ds in tokenized.values()), max_length)
    return TaskData(
        name=cfg.name, kind=cfg.kind, train=tokenized["train"], eval=tokenized["eval"],
        test=tokenized.get("test"), collate=Collator(pad_token_id(tokenizer), cfg.kind),
        num_labels=cfg.num_labels, label_names=label_names, main_metric=cfg.main_metric,
        greater_is_better=cfg.greater_is_better, metrics=list(cfg.metrics),
        metric_kwargs={k: dict(v) for k, v in cfg.metric_kwargs.items()}, max_length=max_length,
        group_by_length=cfg.group_by_length, seed=seed, config=cfg, raw=splits,
    )
