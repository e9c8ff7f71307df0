"""Seed groups: completed runs that differ only in seed become one row, mean ± std (n).

Rows and columns are config keys (`--by`, `--cols`), resolved against the flattened records of
records.py; metrics are columns too, with `main` meaning each run's own main metric.

Split: task metrics come from the test split by default (`metrics.test.final.*`: scored once at the
end of training, never used to choose anything; `--best`: with the weights of the best validation
evaluation, `metrics.test.best.*`, which needs `trainer.select_best=true`), and from the validation
split the runs were selected on with `--split eval` (`metrics.final.*`, `--best`: `metrics.best.*`).
The caption says which.

Statistics: mean and sample std (ddof=1) over the runs of a group; a group of one run has no std
("± —"). `n` counts the completed runs of a group; a cell whose metric is null in some runs says
`(n=k)`. Failed, preempted or unreadable runs are listed under the table and never averaged.

Best (bold in Markdown, LaTeX and HTML), compared only between rows of the same task and model
(and the same column in a pivot), on the mean:
  - the main metric: higher is better unless the runs say `metrics.greater_is_better: false`;
  - `params.*` and `memory.*`, and any metric whose name contains loss, perplexity, error or time:
    lower is better;
  - everything else (accuracy, f1, tokens/s, ...): higher is better.
The rules apply in this order, so throughput.step_time_s is lower-is-better.

Forgetting (runs whose task sets `task.forget`, see harness/forgetting.py): `forget` names the
perplexity on the held-out general English after fine-tuning (`metrics.forget.final.perplexity`;
`--best`: with the best-validation weights), `forget_increase` its increase over the pretrained
model's, `forget_before` the pretrained model's own. `forget` is a default column wherever a run has it.
"""

from __future__ import annotations

import pandas as pd

from harness.analysis.records import PER_RUN_CONFIG, completed

SPLITS = ("test", "eval")
# Keys a sweep varies, in the order they appear as row keys. method and task are always shown; the
# others only when they vary and are not already fixed by the keys before them (alpha = 2r adds no
# column; a learning rate chosen per method adds none either).
ALWAYS_BY = ("method", "task")
CANDIDATE_BY = ("method", "model", "task", "lora.r", "lora.target_modules", "lora.alpha",
                "lora.dropout", "lora.init", "lora.rslora", "lora.use_dora", "lora.freeze_a", "lora.lr_ratio", "lr")
# Default columns; one that no run has a value for (MFU and CUDA peaks on CPU) is left out.
DEFAULT_METRICS = ("main", "forget", "params.trainable", "throughput.tokens_per_s", "throughput.mfu", "memory.peak_rss_gib",
                   "memory.cuda_peak_allocated_gib")
LOWER_IS_BETTER_WORDS = ("loss", "perplexity", "nll", "error", "time")
# Forgetting names -> (which weights, the entry's field); "best"/"final" follow --best.
FORGET = {"forget": (None, "perplexity"), "forget_increase": (None, "perplexity_increase"),
          "forget_before": ("before", "perplexity")}
_FORGET_LABELS = {"perplexity": "forget ppl", "perplexity_increase": "forget ppl increase", "nll": "forget nll"}
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


def default_metrics(df: pd.DataFrame) -> list[str]:
    """The metric names a table shows when none are asked for: `main`, then each other default
    (`forget` included) that some run has a value for."""
    def present(name):
        column = forget_column(name) if name in FORGET else name
        return column in df and df[column].notna().any()

    return [m for m in DEFAULT_METRICS if m == "main" or present(m)]


def forget_column(name: str, best: bool = False) -> str:
    """`forget`, `forget_increase`, `forget_before` -> their column in a flattened record."""
    which, leaf = FORGET[name]
    return f"metrics.forget.{which or ('best' if best else 'final')}.{leaf}"


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
    if name in FORGET:
        column = forget_column(name, best)
        if not done.empty and (column not in df or done[column].isna().all()):
            why = ("the best-validation weights are probed only with trainer.select_best=true; drop --best"
                   if best and name != "forget_before" else "only runs whose task sets task.forget (a causal LM) have it")
            raise ValueError(f"no completed run has {column} ({why})")
        return column
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
    forget = [n for n in FORGET if forget_column(n) in df]
    return ["main", *evals, *forget, *sorted(numeric)]


def resolve_key(df: pd.DataFrame, key: str) -> str:
    """A column name, accepting the override spelling too: `method.lr` finds `config.method.lr`."""
    return key if key in df or f"config.{key}" not in df else f"config.{key}"


def check_keys(df: pd.DataFrame, keys) -> None:
    unknown = [k for k in keys if k not in df]
    if unknown:
        raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; available keys: {', '.join(df.columns)}")


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
    if column.startswith("metrics.forget."):
        which, _, leaf = column.removeprefix("metrics.forget.").partition(".")
        label = _FORGET_LABELS.get(leaf, f"forget {leaf}")
        return label if which == "final" else f"{label} ({which})"
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


def key_text(value) -> str:
    """A key value for display: 8.0 -> "8", missing -> "—" (full fine-tuning has no lora.r)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return DASH
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def split_keys(values) -> list[str]:
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
