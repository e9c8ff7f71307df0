"""Paper tables from sweep results: runs that differ only in seed become one row, mean ± std (n).

Reads the `results.json` every run writes (the local truth, see harness/results.py), or the same
records from W&B runs, flattens each into one DataFrame row (nested keys joined with dots: `lora.r`,
`metrics.final.accuracy`, `params.trainable`, `config.method.lr`; lists joined with commas, so
target modules read `query,value`), groups the completed runs and renders Markdown (GitHub),
LaTeX (booktabs) or CSV. Rows and columns are config keys, so the LoRA paper's layouts come out
directly:

    harness-table outputs/sweeps/x --by method --cols task --metric main params.trainable   # Table 2
    harness-table outputs/sweeps/x --by lora.target_modules                                  # Table 5
    harness-table outputs/sweeps/x --by lora.target_modules --cols lora.r --where method=lora  # Table 6

Split: task metrics come from the test split by default (`metrics.test.final.*`: scored once at the
end of training, never used to choose anything; `--best`: with the weights of the best validation
evaluation, `metrics.test.best.*`, which needs `trainer.select_best=true`), and from the validation
split the runs were selected on with `--split eval` (`metrics.final.*`, `--best`: `metrics.best.*`).
The caption says which.

Statistics: mean and sample std (ddof=1) over the runs of a group; a group of one run has no std
("± —"). `n` counts the completed runs of a group; a cell whose metric is null in some runs says
`(n=k)`. Failed, preempted or unreadable runs are listed under the table and never averaged.
Re-runs count once: records with the same config and seed (the same sweep run again into another
folder, a run listed twice, the preempted and the resumed part of one run on W&B) are one run;
the newest completed one is kept, the others are named in a note.

Best (bold in Markdown, LaTeX and HTML), compared only between rows of the same task and model
(and the same column in a pivot), on the mean:
  - the main metric: higher is better unless the runs say `metrics.greater_is_better: false`;
  - `params.*` and `memory.*`, and any metric whose name contains loss, perplexity, error or time:
    lower is better;
  - everything else (accuracy, f1, tokens/s, ...): higher is better.
The rules apply in this order, so throughput.step_time_s is lower-is-better.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from harness.tracking import record_from_summary

RESULTS = "results.json"
FORMATS = ("md", "latex", "csv", "html")
SPLITS = ("test", "eval")
# Keys a sweep varies, in the order they appear as row keys. method and task are always shown; the
# others only when they vary and are not already fixed by the keys before them (alpha = 2r adds no
# column; a learning rate chosen per method adds none either).
ALWAYS_BY = ("method", "task")
CANDIDATE_BY = ("method", "model", "task", "lora.r", "lora.target_modules", "lora.alpha",
                "lora.dropout", "lora.init", "lora.rslora", "lr")
# Default columns; one that no run has a value for (MFU and CUDA peaks on CPU) is left out.
DEFAULT_METRICS = ("main", "params.trainable", "throughput.tokens_per_s", "throughput.mfu", "memory.peak_rss_gib",
                   "memory.cuda_peak_allocated_gib")
# Config parts that legitimately differ between the seeds of one group.
PER_RUN_CONFIG = {"seed", "resume", "sweep_name", "logger", "hydra", "wandb", "run_name", "output_dir",
                  "checkpoint_every", "keep_checkpoints", "restart"}
# What differs between re-runs of one configuration and seed: the above, plus the code and library
# versions W&B runs carry in their config.
RERUN_CONFIG = (PER_RUN_CONFIG - {"seed"}) | {"versions", "git", "save_model"}
SKIP_KEYS = {"generations"}  # sample texts: long, and not a number to tabulate
LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "error", "time")
LABELS = {
    "params.trainable": "trainable params", "params.total": "total params",
    "params.trainable_pct": "trainable %", "params.adapter": "adapter params",
    "throughput.tokens_per_s": "tokens/s", "throughput.samples_per_s": "samples/s",
    "throughput.step_time_s": "step time (s)", "memory.peak_rss_gib": "peak RSS (GiB)",
    "memory.cuda_peak_allocated_gib": "CUDA peak alloc. (GiB)", "memory.cuda_peak_reserved_gib": "CUDA peak reserved (GiB)",
    "memory.state_gib": "train state (GiB)", "wall_time_s": "wall time (s)", "train_time_s": "train time (s)",
    "throughput.mfu": "MFU", "throughput.flops_per_token": "FLOPs/token", "throughput.data_time_s": "data time (s)",
    "memory.cuda_eval_peak_allocated_gib": "CUDA eval peak alloc. (GiB)",
    "memory.cuda_eval_peak_reserved_gib": "CUDA eval peak reserved (GiB)",
}
DASH = "—"


# ----------------------------------------------------------------------------- loading


def load_records(paths) -> list[dict]:
    """Every results.json under `paths` (folders are searched recursively; files are taken as is),
    except those under a run folder's `attempts/` (earlier attempts set aside, see harness/results.py).

    Each record gets `path`, the run folder, so failed runs can be named. A file that is not valid
    JSON becomes a record with status "unreadable" rather than stopping the whole table.
    """
    records = []
    for p in map(Path, paths):
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob(RESULTS) if "attempts" not in f.relative_to(p).parts[:-1])
        else:
            raise ValueError(f"no such file or folder: {p}")
        for f in files:
            try:
                record = json.loads(f.read_text())
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (json.JSONDecodeError, ValueError, OSError) as e:
                record = {"status": "unreadable", "error": f"{type(e).__name__}: {e}"}
            records.append({**record, "path": str(f.parent)})
    if not records:
        raise ValueError(f"no {RESULTS} found under: {', '.join(map(str, paths))}")
    return records


def run_record(run) -> dict:
    """A W&B run as a results record: the trainer mirrors results.json into `run.summary`.

    Streamed keys and those W&B adds itself (`_step`, `_runtime`, `_wandb`, ...) are dropped; `config` comes from
    `run.config` unless the summary carries it; a run without a `status` gets one from `run.state`.
    """
    record = record_from_summary(run.summary)  # drops streamed ("train/loss") and W&B ("_step") keys
    record.setdefault("config", {k: v for k, v in _plain(run.config).items() if not k.startswith("_")})
    state = getattr(run, "state", None)
    record.setdefault("status", {"finished": "completed", "killed": "preempted"}.get(state, state or "unknown"))
    record.setdefault("run_name", getattr(run, "name", None))
    record["path"] = "wandb:" + "/".join(map(str, run.path)) if getattr(run, "path", None) else f"wandb:{run.id}"
    return record


def run_identity(record: Mapping) -> str | None:
    """The configuration and seed a record ran, as canonical JSON; None without a config (an
    unreadable record), which is then never taken for a re-run of another."""
    config = record.get("config")
    if not isinstance(config, Mapping):
        return None

    def strip(node):
        if isinstance(node, Mapping):
            return {str(k): strip(v) for k, v in node.items() if k not in RERUN_CONFIG and k != "seed"}
        return [strip(v) for v in node] if isinstance(node, (list, tuple)) else node

    return json.dumps({"config": strip(config), "seed": record.get("seed", config.get("seed"))},
                      sort_keys=True, default=str)


def _recency(record: Mapping) -> float:
    """When a record was written: its `finished_at`, else its file's time, else 0 (unknown)."""
    try:
        return datetime.fromisoformat(str(record["finished_at"])).timestamp()
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return (Path(record["path"]) / RESULTS).stat().st_mtime
    except (KeyError, TypeError, OSError):
        return 0.0


def dedupe(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per configuration and seed, so that re-runs never count as extra seeds.

    Of the records sharing a `run_identity`, the newest completed one is kept (newest of any status
    when none completed; equal times: the later in `records`, which is W&B's creation order);
    a note names what was kept and what was left out. Order is otherwise kept.
    """
    groups: dict = {}
    for i, record in enumerate(records):
        groups.setdefault(run_identity(record) or ("unique", i), []).append(i)
    keep, notes = set(), []
    for members in groups.values():
        done = [i for i in members if records[i].get("status") == "completed"]
        pick = max(done or members, key=lambda i: (_recency(records[i]), i))
        keep.add(pick)
        if len(members) > 1:
            others = [records[i].get("path", "?") for i in members if i != pick]
            notes.append(f"note: {len(members)} records of one configuration and seed count once: kept "
                         f"{records[pick].get('path', '?')} (the newest {'completed' if done else 'one'}), "
                         f"not {', '.join(map(str, others))}")
    return [r for i, r in enumerate(records) if i in keep], notes


def _plain(obj):
    """W&B summary/config objects (nested SummarySubDicts) as plain dicts and lists."""
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_wandb(path: str, group: str | None = None) -> list[dict]:
    """The records of the W&B runs in `path` ("entity/project"), optionally one group (one sweep)."""
    if path.count("/") != 1:
        raise ValueError(f"--wandb wants ENTITY/PROJECT, got {path!r}")
    import wandb  # only here: importing wandb costs a second and the local path never needs it

    try:
        runs = wandb.Api().runs(path, filters={"group": group} if group else None)
        records = [run_record(run) for run in runs]
    except Exception as e:  # network, auth, unknown project: one clear line instead of a traceback
        raise ValueError(f"could not read W&B runs from {path!r}: {type(e).__name__}: {e}") from e
    if not records:
        raise ValueError(f"no W&B runs in {path!r}" + (f" with group {group!r}" if group else ""))
    return records


# ----------------------------------------------------------------------------- one row per run


def flatten(record: Mapping, prefix: str = "") -> dict:
    """{"lora": {"r": 8}} -> {"lora.r": 8}; lists become "query,value" (readable and groupable)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + ".") if value else {name: None})
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run. Adds `metrics.final.main`/`metrics.best.main` (and `metrics.test.final.main`
    / `metrics.test.best.main` for runs scored on a test split): the value of each run's own main
    metric, so tasks with different main metrics (accuracy, mcc) can share a column."""
    rows = [flatten({k: v for k, v in r.items() if k not in SKIP_KEYS}) for r in records]
    for row in rows:
        main = row.get("metrics.main_metric")
        for which in ("final", "best"):
            row[f"metrics.{which}.main"] = row.get(f"metrics.{which}.{main}") if main else None
            if main and f"metrics.test.{which}.{main}" in row:
                row[f"metrics.test.{which}.main"] = row[f"metrics.test.{which}.{main}"]
    df = pd.DataFrame(rows)
    # "lora": null (full fine-tuning) or "metrics.final": null (a failed run) next to lora.r, ...
    parents = {c.rsplit(".", 1)[0] for c in df if "." in c}
    df = df.drop(columns=[c for c in df if c in parents and df[c].isna().all()])
    if "status" not in df:
        df["status"] = None
    return df


def completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "completed"]


def failed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that are not averaged: path, status, error."""
    bad = df[df["status"] != "completed"]
    out = pd.DataFrame({c: bad[c] if c in bad else None for c in ("path", "status", "error")})
    return out.fillna({"status": "unknown"}).reset_index(drop=True)


def default_by(df: pd.DataFrame, cols: str | None = None) -> list[str]:
    """method, task, and each other sweep axis that varies and is not fixed by the keys before it."""
    done = completed(df)
    by: list[str] = []
    for key in CANDIDATE_BY:
        if key not in df or key == cols:
            continue
        if key in ALWAYS_BY:
            by.append(key)
        elif done[key].nunique(dropna=False) > 1 and _varies_within(done, by, key):
            by.append(key)
    return by


def _varies_within(df: pd.DataFrame, by: list[str], key: str) -> bool:
    if not by:
        return df[key].nunique(dropna=False) > 1
    return bool((df.groupby(by, dropna=False)[key].nunique(dropna=False) > 1).any())


def hidden_variation(df: pd.DataFrame, by: list[str]) -> list[str]:
    """Settings (sweep axes and config.* keys) that differ between runs grouped together.

    Such runs differ in more than seed, so averaging them is only right if the user meant it.
    """
    done = completed(df)
    if done.empty:
        return []
    candidates = [k for k in CANDIDATE_BY if k in done and k not in by]
    candidates += [c for c in done if c.startswith("config.") and not PER_RUN_CONFIG & set(c.split("."))]
    return [c for c in candidates if _varies_within(done, by, c)]


def metric_prefix(split: str = "test", best: bool = False) -> str:
    """Where a split's task metrics live in a flattened record (see the module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is invalid: choose {' or '.join(SPLITS)}")
    which = "best" if best else "final"
    return f"metrics.test.{which}." if split == "test" else f"metrics.{which}."


def default_split(df: pd.DataFrame, split: str | None) -> tuple[str, list[str]]:
    """The split to show: `split` when given; else test, unless no completed run has any test-split
    metric (records written before test scoring), then eval with a note saying so. An explicit
    `--split test` on such records stays an error (resolve_metric)."""
    if split is not None:
        return split, []
    done = completed(df)
    has_test = any(c.startswith("metrics.test.") and done[c].notna().any() for c in done.columns)
    if has_test or done.empty:
        return "test", []
    return "eval", ["note: no completed run has test-split metrics (records written before test scoring, or "
                    "tasks without a labelled test split): showing the validation split"]


def resolve_metric(df: pd.DataFrame, name: str, best: bool = False, split: str = "test") -> str:
    """A metric name as given on the command line -> its column.

    "main" is each run's main metric; a bare task metric name ("accuracy", "f1") means that metric
    on `split` ("test": metrics.test.final.<name>, or metrics.test.best.<name> with best=True;
    "eval": metrics.final.<name> / metrics.best.<name>); anything else is a column name. Asking for
    test metrics that no completed run has is a ValueError saying why they may be missing.
    """
    prefix = metric_prefix(split, best)
    done = completed(df)  # no completed run at all is summarize's error to give
    if name == "main":
        mains = df["metrics.main_metric"].dropna().unique() if "metrics.main_metric" in df else []
        one = len(mains) == 1 and (f"{prefix}{mains[0]}" in df or not done.empty)
        column = f"{prefix}{mains[0]}" if one else f"{prefix}main"
    else:
        column = next((c for c in (f"{prefix}{name}", name) if c in df), None)
        if column is None and not (split == "test" and _task_metric(df, name)):
            raise ValueError(f"unknown metric {name!r}; choose from: {', '.join(available_metrics(df))}")
        column = column or f"{prefix}{name}"
    if column.startswith("metrics.test.") and not done.empty and (column not in df or done[column].isna().all()):
        why = ("the weights of the best validation evaluation are kept only with trainer.select_best=true; "
               "drop --best" if best else
               "metrics.test is null for tasks without a labelled test split (GLUE) and absent from records "
               "written before test scoring")
        raise ValueError(f"no completed run has {column} ({why}); --split eval shows the validation split")
    return column


def _task_metric(df: pd.DataFrame, name: str) -> bool:
    return any(c == f"metrics.final.{name}" or c == f"metrics.best.{name}" for c in df)


def split_of(column: str) -> str | None:
    """"test" / "validation" for a task-metric column, with which weights; None for other columns."""
    for prefix, text in (("metrics.test.final.", "test split, final weights"),
                         ("metrics.test.best.", "test split, weights of the best validation evaluation"),
                         ("metrics.final.", "validation split, final evaluation"),
                         ("metrics.best.", "validation split, best evaluation")):
        if column.startswith(prefix):
            return text
    return None


def available_metrics(df: pd.DataFrame) -> list[str]:
    evals = sorted({c.split(".", 2)[2] for c in df if c.startswith("metrics.final.")} - {"main"})
    numeric = [c for c in df if not c.startswith(("config.", "metrics.final.", "metrics.best.", "metrics.test.",
                                                  "lora.", "versions."))
               and c not in ("seed", "lr", "sweep.job_num") and df[c].dtype.kind in "if"]
    return ["main", *evals, *sorted(numeric)]


def resolve_key(df: pd.DataFrame, key: str) -> str:
    """A column name, accepting the override spelling too: `method.lr` finds `config.method.lr`."""
    return key if key in df or f"config.{key}" not in df else f"config.{key}"


def check_keys(df: pd.DataFrame, keys) -> None:
    unknown = [k for k in keys if k not in df]
    if unknown:
        raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; available keys: {', '.join(df.columns)}")


# ----------------------------------------------------------------------------- statistics


def summarize(df: pd.DataFrame, by, metrics, cols: str | None = None) -> pd.DataFrame:
    """Completed runs grouped by `by` (+ `cols`, the pivot key): n and, per metric column m,
    `m.mean`, `m.std` (sample std, ddof=1; NaN for one run) and `m.n` (runs where m is not null).

    Rows are sorted by the keys, missing values first (full fine-tuning has no lora.r, so it leads).
    The layout for `render` travels in `.attrs`.
    """
    by, metrics = list(by), list(metrics)
    keys = by + ([cols] if cols else [])
    done = completed(df)
    if done.empty:
        raise ValueError(f"no completed runs among {len(df)} results (statuses: {dict(df['status'].value_counts(dropna=False))})")
    check_keys(df, keys + metrics)
    if len(set(keys)) != len(keys) or set(keys) & set(metrics):
        raise ValueError(f"a key may appear once among --by, --cols and --metric; got by={by}, cols={cols}, metrics={metrics}")
    values = done[keys].copy()
    for k in keys:  # lora.r is float only because full fine-tuning has none: show 8, not 8.0
        values[k] = _integers(values[k])
    for m in metrics:
        values[m] = pd.to_numeric(done[m], errors="coerce")
    gib = "metrics.greater_is_better"
    values["greater_is_better"] = done[gib].fillna(True).astype(bool) if gib in done else True
    grouped = values.groupby(keys, dropna=False, sort=False)
    stats = grouped[metrics].agg(["mean", "std", "count"])
    stats.columns = [f"{m}.{'n' if stat == 'count' else stat}" for m, stat in stats.columns]
    stats.insert(0, "n", grouped.size())
    stats["greater_is_better"] = grouped["greater_is_better"].first()
    summary = stats.reset_index()
    try:
        summary = summary.sort_values(keys, na_position="first", ignore_index=True)
    except TypeError:  # a key holding both numbers and strings ("5e-5" from YAML next to 1e-3): sort as text
        text = lambda col: col if col.dtype.kind in "ifb" else col.map(lambda v: v if pd.isna(v) else str(v))  # noqa: E731
        summary = summary.sort_values(keys, na_position="first", ignore_index=True, key=text)
    mains = set(done["metrics.main_metric"].dropna()) if "metrics.main_metric" in done else set()
    summary.attrs = {
        "by": by, "cols": cols, "metrics": metrics,
        "main": [m for m in metrics if m.endswith(".main") or (m.startswith("metrics.") and m.rsplit(".", 1)[1] in mains)],
        "labels": {m: metric_label(m, mains) for m in metrics},
    }
    return summary


def _integers(column: pd.Series) -> pd.Series:
    if column.dtype.kind == "f" and column.notna().any() and (column.dropna() % 1 == 0).all():
        return column.astype("Int64")
    return column


def metric_label(column: str, mains=()) -> str:
    """A column's header: the metric's name, "(best)" for the best evaluation or best-validation
    weights; which split it is the caption says (see `split_of`)."""
    if column in LABELS:
        return LABELS[column]
    for which in ("final", "best"):
        for prefix in (f"metrics.test.{which}.", f"metrics.{which}."):
            if column.startswith(prefix):
                name = column[len(prefix):]
                if name == "main":
                    name = next(iter(mains)) if len(mains) == 1 else "main metric"
                return name if which == "final" else f"{name} (best)"
    return column


def higher_is_better(column: str, main: bool = False, flag: bool = True) -> bool:
    """The rule in the module docstring; `flag` is the runs' metrics.greater_is_better."""
    leaf = column.rsplit(".", 1)[-1]
    if main:
        return bool(flag)
    if column.startswith(("params.", "memory.")) or any(w in leaf for w in LOWER_IS_BETTER_WORDS):
        return False
    return True


def best_mask(summary: pd.DataFrame, metric: str) -> pd.Series:
    """True where the mean of `metric` is the best among comparable rows (same task, model, column).

    Ties are all best; a comparison with fewer than two values marks nothing.
    """
    a = summary.attrs
    context = [k for k in ("model", "task") if k in a["by"]] + ([a["cols"]] if a["cols"] else [])
    means = summary[f"{metric}.mean"]
    mask = pd.Series(False, index=summary.index)
    groups = [part.index for _, part in summary.groupby(context, dropna=False)] if context else [summary.index]
    for index in groups:
        values = means[index].dropna()
        if len(values) < 2:
            continue
        up = higher_is_better(metric, metric in a["main"], summary.loc[values.index[0], "greater_is_better"])
        mask[values.index[values == (values.max() if up else values.min())]] = True
    return mask


# ----------------------------------------------------------------------------- rendering


class Cell(NamedTuple):
    """One table cell before formatting. std: "" none to show (key cell, identical runs), "—" one run."""
    mean: str
    std: str = ""
    note: str = ""
    bold: bool = False


def render(summary: pd.DataFrame, fmt: str = "md") -> str:
    """The summary as Markdown (GitHub), LaTeX (booktabs), HTML, or CSV.

    CSV is the long summary (keys, n, and mean/std/n columns per metric) whatever the layout, since
    that is what a program wants to read; the others pivot when the summary was made with `cols`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from: {', '.join(FORMATS)}")
    if fmt == "csv":
        return summary.drop(columns="greater_is_better").to_csv(index=False)
    header, rows = _grid(summary)
    return {"md": _markdown, "latex": _latex, "html": _html}[fmt](header, rows, caption(summary))


def caption(summary: pd.DataFrame) -> str:
    a = summary.attrs
    names = ", ".join(a["labels"][m] for m in a["metrics"])
    splits = list(dict.fromkeys(filter(None, map(split_of, a["metrics"]))))
    where = f" Task metrics: {'; '.join(splits)}." if splits else ""
    text = f"Mean ± sample std over seeds; best per column in bold.{where} Metrics: {names}."
    if a["cols"]:
        text = f"Rows: {', '.join(a['by'])}; columns: {a['cols']}. {text} n = {_typical_n(summary)} per cell unless marked."
    return text


def _typical_n(summary: pd.DataFrame) -> int:
    return int(summary["n"].mode().max())


class Column(NamedTuple):
    label: str
    group: str | None = None  # the metric, above its columns in a multi-metric pivot
    numeric: bool = True      # right-aligned


def _grid(summary: pd.DataFrame) -> tuple[list[Column], list[list[Cell]]]:
    """Header and rows of cells, in the long layout or pivoted on `cols`."""
    a = summary.attrs
    by, cols, metrics = a["by"], a["cols"], a["metrics"]
    digits = {m: _digits(summary[f"{m}.mean"]) for m in metrics}
    bold = {m: best_mask(summary, m) for m in metrics}

    def cell(i, m, reference_n):
        mean, std, n = summary.at[i, f"{m}.mean"], summary.at[i, f"{m}.std"], int(summary.at[i, f"{m}.n"])
        if n == 0:
            return Cell(DASH, "")
        # one run: no std to give; identical runs (parameter counts): the mean says it all
        std_text = DASH if n == 1 else "" if std == 0 else _number(std, digits[m])
        note = f"(n={n})" if n != reference_n else ""
        return Cell(_number(mean, digits[m]), std_text, note, bool(bold[m][i]))

    keys = [Column(k, numeric=False) for k in by]
    if not cols:
        header = keys + [Column("n")] + [Column(a["labels"][m]) for m in metrics]
        rows = [[Cell(key_text(summary.at[i, k])) for k in by] + [Cell(str(summary.at[i, "n"]))]
                + [cell(i, m, summary.at[i, "n"]) for m in metrics] for i in summary.index]
        return header, rows

    column_values = list(dict.fromkeys(map(_key, summary[cols].sort_values(na_position="first"))))
    header = keys + [Column(column_label(cols, v), a["labels"][m] if len(metrics) > 1 else None)
                     for m in metrics for v in column_values]
    typical = _typical_n(summary)
    rows = []
    for _, part in summary.groupby(by, dropna=False, sort=False) if by else [(None, summary)]:
        i0 = part.index[0]
        row = [Cell(key_text(summary.at[i0, k])) for k in by]
        at = {_key(v): i for i, v in part[cols].items()}
        for m in metrics:
            row += [cell(at[v], m, typical) if v in at else Cell(DASH, "") for v in column_values]
        rows.append(row)
    return header, rows


def _key(value):
    return None if pd.isna(value) else value


def key_text(value) -> str:
    """A key value for display: 8.0 -> "8", missing -> "—" (full fine-tuning has no lora.r)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return DASH
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def column_label(key: str, value) -> str:
    text = key_text(value)
    return text if key in ("method", "model", "task") else f"{key.rsplit('.', 1)[-1]}={text}"


def _digits(means: pd.Series) -> int:
    """Decimals for a metric column: counts get none, big numbers one, scores four."""
    values = means.dropna().abs()
    if values.empty or ((values % 1 == 0).all() and values.max() >= 1):
        return 0
    top = values.max()
    return 1 if top >= 100 else 3 if top >= 1 else 4


def _number(x: float, digits: int) -> str:
    return f"{x:,.{digits}f}"


def _cell_text(c: Cell, pm="±", dash=DASH, escape=lambda s: s) -> str:
    text = dash if c.mean == DASH else escape(c.mean)
    if c.std:
        text += f" {pm} " + (dash if c.std == DASH else escape(c.std))
    return text + (f" {escape(c.note)}" if c.note else "")


def _markdown(header, rows, caption_text) -> str:
    labels = [f"{c.group}: {c.label}" if c.group else c.label for c in header]
    body = [[_md_escape(_cell_text(c)) for c in row] for row in rows]
    body = [[f"**{t}**" if c.bold else t for t, c in zip(texts, row)] for texts, row in zip(body, rows)]
    labels = [_md_escape(l) for l in labels]
    widths = [max(3, *(len(t) for t in col)) for col in zip(labels, *body)]  # GitHub wants >= 1 dash per rule
    rule = ["-" * (w - 1) + ":" if c.numeric else ":" + "-" * (w - 1) for w, c in zip(widths, header)]
    line = lambda cells: "| " + " | ".join(t.ljust(w) for t, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([caption_text, "", line(labels), "|" + "|".join(f" {r.ljust(w)} " for r, w in zip(rule, widths)) + "|",
                      *map(line, body)]) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex(header, rows, caption_text) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); a multi-metric pivot gets a two-level header."""
    align = "".join("r" if c.numeric else "l" for c in header)
    lines = ["% " + caption_text.replace("±", "+-"), f"\\begin{{tabular}}{{{align}}}", r"\toprule"]
    groups = [c.group for c in header]
    if any(groups):
        top, rules, col = [], [], 1
        for g, span in _runs(groups):
            top.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(g)}}}" if g else " & ".join([""] * span))
            if g:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines += [" & ".join(top) + r" \\", "".join(rules)]
    lines.append(" & ".join(latex_escape(c.label) for c in header) + r" \\")
    lines.append(r"\midrule")
    for row in rows:
        texts = [_cell_text(c, pm=r"$\pm$", dash="---", escape=latex_escape) for c in row]
        lines.append(" & ".join(f"\\textbf{{{t}}}" if c.bold else t for t, c in zip(texts, row)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _runs(items):
    """[a, a, b] -> [(a, 2), (b, 1)]"""
    out = []
    for x in items:
        if out and out[-1][0] == x:
            out[-1] = (x, out[-1][1] + 1)
        else:
            out.append((x, 1))
    return out


def _html(header, rows, caption_text) -> str:
    esc = html.escape
    head = []
    groups = [c.group for c in header]
    if any(groups):
        head.append("<tr>" + "".join(f'<th colspan="{span}">{esc(g or "")}</th>' for g, span in _runs(groups)) + "</tr>")
    head.append("<tr>" + "".join(f"<th>{esc(c.label)}</th>" for c in header) + "</tr>")
    body = []
    for row in rows:
        tds = []
        for c, col in zip(row, header):
            text = esc(_cell_text(c))
            tds.append(f'<td class="{"num" if col.numeric else "key"}">' + (f"<strong>{text}</strong>" if c.bold else text) + "</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table class="results">\n<caption>{esc(caption_text)}</caption>\n<thead>\n' + "\n".join(head)
            + "\n</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n")


def render_failed(failed: pd.DataFrame, fmt: str = "md") -> str:
    """The runs left out of the table, one line each: path, status, error."""
    if failed.empty:
        return ""
    title = f"Not averaged: {len(failed)} run(s) that did not complete"
    items = [(str(r.path), str(r.status), "" if r.error is None or pd.isna(r.error) else str(r.error))
             for r in failed.itertuples()]
    if fmt == "latex":
        return "\n".join([f"% {title}:"] + [f"%   {p}: {s}" + (f": {e}" if e else "") for p, s, e in items]) + "\n"
    if fmt == "html":
        lis = "".join(f"<li><code>{html.escape(p)}</code>: {html.escape(s)}" + (f": {html.escape(e)}" if e else "") + "</li>\n"
                      for p, s, e in items)
        return f'<p class="failed">{html.escape(title)}:</p>\n<ul class="failed">\n{lis}</ul>\n'
    if fmt == "csv":
        return pd.DataFrame(items, columns=["path", "status", "error"]).to_csv(index=False)
    return "\n".join([f"{title}:", ""] + [f"- `{p}`: {s}" + (f": {_md_escape(e)}" if e else "") for p, s, e in items]) + "\n"


# ----------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness-table", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="sweep folders (searched for results.json) or results.json files")
    p.add_argument("--by", nargs="+", metavar="KEY", help="row keys (default: method, task and whatever else varies besides seed)")
    p.add_argument("--cols", metavar="KEY", help="pivot: one column per value of KEY (e.g. task, lora.r)")
    p.add_argument("--metric", nargs="+", metavar="NAME",
                   help=f"metrics: main, an eval metric name (accuracy, f1), or a column (default: {' '.join(DEFAULT_METRICS)})")
    p.add_argument("--where", nargs="+", metavar="KEY=VALUE", default=[],
                   help="keep only runs whose KEY shows as VALUE (method=lora, lora.target_modules=query,value)")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="where task metrics come from: test (default; scored once at the end, never used for "
                        "selection) or eval (the validation split runs were selected on); by default eval, "
                        "with a note, only when no run has test metrics")
    p.add_argument("--best", action="store_true",
                   help="test: with the weights of the best validation evaluation (needs trainer.select_best); "
                        "eval: the best evaluation instead of the final one")
    p.add_argument("--format", default="md", choices=FORMATS)
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read W&B runs instead of local results.json files")
    p.add_argument("--group", help="with --wandb: only runs of this W&B group (a sweep)")
    return p


def _split(values) -> list[str]:
    """--by method,task and --by method task mean the same."""
    return [v for value in values or [] for v in value.split(",") if v]


def select(df: pd.DataFrame, conditions) -> pd.DataFrame:
    """Runs matching every KEY=VALUE, comparing VALUE with the key as the table shows it."""
    for condition in conditions:
        key, sep, value = condition.partition("=")
        if not sep:
            raise ValueError(f"--where wants KEY=VALUE, got {condition!r}")
        key = resolve_key(df, key)
        check_keys(df, [key])
        df = df[df[key].map(key_text) == value]
    return df


def build(args) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(summary, failed runs, notes) for parsed command-line arguments."""
    if args.wandb:
        records = load_wandb(args.wandb, args.group)
    elif args.paths:
        records = load_records(args.paths)
    else:
        raise ValueError("give sweep folders (PATH ...) or --wandb ENTITY/PROJECT")
    records, rerun_notes = dedupe(records)
    df = select(records_frame(records), args.where)
    if args.cols:
        args.cols = resolve_key(df, args.cols)
        check_keys(df, [args.cols])
    by = [resolve_key(df, k) for k in _split(args.by)] or default_by(df, args.cols)
    check_keys(df, by)
    args.split, split_notes = default_split(df, args.split)
    names = _split(args.metric) or [m for m in DEFAULT_METRICS if m == "main" or (m in df and df[m].notna().any())]
    metrics = list(dict.fromkeys(resolve_metric(df, name, args.best, args.split) for name in names))
    summary = summarize(df, by, metrics, args.cols)
    hidden = hidden_variation(df, by + ([args.cols] if args.cols else []))
    notes = [f"note: runs averaged together differ in {', '.join(hidden)}; add to --by to split them"] if hidden else []
    return summary, failed_runs(df), rerun_notes + split_notes + notes


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        summary, failed, notes = build(args)
    except ValueError as e:
        print(f"harness-table: error: {e}", file=sys.stderr)
        return 2
    text = render(summary, args.format)
    listing = render_failed(failed, "md" if args.format == "csv" else args.format)
    if args.format == "csv" and listing:  # keep the CSV itself machine-readable; the listing goes to stderr
        notes.append(listing.rstrip())
    elif listing:
        text += "\n" + listing
    for note in notes:
        print(note, file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
