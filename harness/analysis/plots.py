"""The figures of the sweep report, drawn offline from the seed-group summaries (see report.py).

A figure whose axis the sweep lacks (no LoRA runs, a single rank, no metrics.jsonl) raises `Skip`
with the reason, which the page shows instead. Plots use matplotlib's Figure directly, never
pyplot, so importing this module changes no global backend and holds no figures open.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.records import completed
from harness.analysis.summary import DASH, default_by, forget_column, key_text, metric_prefix, split_of, summarize

MARKERS = {"full": "o", "lora": "s"}
DPI = 110


class Skip(Exception):
    """A figure the sweep has no axis for; the message is shown on the page instead."""


def group_labels(frame: pd.DataFrame, keys) -> pd.Series:
    """Legend labels from the keys that vary across the rows: "full", "lora r=8 [query,value]"."""
    keys = list(keys)
    varying = [k for k in keys if frame[k].map(key_text).nunique() > 1] or keys[:1]

    def label(row):
        parts = []
        for k in varying:
            text = key_text(row[k])
            if text == DASH:
                continue
            parts.append(text if k in ("method", "model", "task") else f"[{text}]" if k == "lora.target_modules"
                         else f"{k.rsplit('.', 1)[-1]}={text}")
        return " ".join(parts) or DASH

    return frame.apply(label, axis=1) if len(frame) else pd.Series(dtype=str)


def panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per task: a metric is only comparable within a task."""
    if "task" not in frame or frame["task"].nunique() < 2:
        return [("", frame)]
    return [(str(task), part) for task, part in frame.groupby("task", sort=True)]


def main_name(df: pd.DataFrame, task=None) -> str | None:
    runs = completed(df)
    if task is not None and "task" in runs:
        runs = runs[runs["task"] == task]
    names = runs["metrics.main_metric"].dropna().unique() if "metrics.main_metric" in runs else []
    return str(names[0]) if len(names) else None


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The metrics.jsonl rows of the completed runs, each with its run's `path`.

    A line that is not JSON (a run killed mid-write) is skipped, not fatal.
    """
    frames = []
    for path in completed(df)["path"]:
        file = Path(path) / "metrics.jsonl"
        if not file.is_file():
            continue
        rows = []
        for line in file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if rows:
            frames.append(pd.DataFrame(rows).assign(path=path))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "step"])


def mean_curves(curves: pd.DataFrame, df: pd.DataFrame, by, key: str) -> pd.DataFrame:
    """Per group and step: mean, std (ddof=1) and n of `key` over the group's runs."""
    by = list(by)
    if key not in curves:
        return pd.DataFrame(columns=[*by, "step", "mean", "std", "n"])
    rows = curves.loc[curves[key].notna(), ["path", "step", key]]
    rows = rows.merge(completed(df)[["path", *by]], on="path")
    stats = rows.groupby([*by, "step"], dropna=False)[key].agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}).reset_index()


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    return name


def _colors(labels) -> dict:
    cycle = [f"C{i}" for i in range(10)]
    return {label: cycle[i % 10] for i, label in enumerate(dict.fromkeys(labels))}


def _legend_keys(by) -> list[str]:
    """Group keys for a legend; the task is already the panel's title."""
    return [k for k in by if k != "task"] or list(by)


def _task_axes(summary: pd.DataFrame) -> tuple[Figure, list]:
    """A figure with one axis per task (`panels`): the figure and its (axis, title, rows) triples."""
    parts = panels(summary)
    fig = Figure(layout="constrained", figsize=(4.8 * len(parts) + 1, 3.8))
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    return fig, [(ax, title, part) for ax, (title, part) in zip(axes, parts)]


def _finish_axis(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, title, a light grid and a legend (when something on the axis has a label)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _metric_axis(summary: pd.DataFrame, metric: str) -> str:
    """"accuracy (test)" / "accuracy (validation)": a figure travels without its page."""
    split = split_of(metric)
    return f"{summary.attrs['labels'][metric]} ({split.split(' split')[0]})" if split else summary.attrs["labels"][metric]


def plot_metric_vs_params(summary: pd.DataFrame, metric: str, out: Path) -> str:
    x, y = "params.trainable.mean", f"{metric}.mean"
    if x not in summary or summary[x].isna().all():
        raise Skip("the runs record no trainable parameter counts")
    if summary[y].isna().all():
        raise Skip(f"no completed run has a value for {metric}")
    labels = group_labels(summary, _legend_keys(summary.attrs["by"]))
    colors = _colors(labels)
    fig, axes = _task_axes(summary)
    for ax, title, part in axes:
        for i in part.index:
            method = summary.at[i, "method"] if "method" in summary else None
            ax.errorbar(summary.at[i, x], summary.at[i, y], yerr=np.nan_to_num(summary.at[i, f"{metric}.std"]),
                        fmt=MARKERS.get(method, "D"), color=colors[labels[i]], capsize=3, label=labels[i])
        ax.set_xscale("log")
        _finish_axis(ax, "trainable parameters", _metric_axis(summary, metric), title)
    return _save(fig, out, "metric_vs_params.png")


def plot_metric_vs_rank(df: pd.DataFrame, metric: str, out: Path) -> str:
    """One line per LoRA setting other than r (target modules, ...); alpha is taken to follow r."""
    lora = completed(df)
    lora = lora[lora["lora.r"].notna()] if "lora.r" in lora else lora.iloc[:0]
    if lora.empty:
        raise Skip("no completed LoRA runs")
    ranks = sorted(int(r) for r in lora["lora.r"].unique())
    if len(ranks) < 2:
        raise Skip(f"a single rank (r={ranks[0]}); nothing to plot against")
    lines = [k for k in default_by(lora) if k not in ("method", "task", "lora.r", "lora.alpha")]
    keys = (["task"] if "task" in lora else []) + lines + ["lora.r"]
    summary = summarize(lora, keys, [metric])
    labels = group_labels(summary, lines) if lines else pd.Series("LoRA", index=summary.index)
    colors = _colors(labels)
    fig, axes = _task_axes(summary)
    for ax, title, part in axes:
        for label, line in part.groupby(labels[part.index], sort=False):
            ax.errorbar(line["lora.r"].astype(float), line[f"{metric}.mean"], yerr=np.nan_to_num(line[f"{metric}.std"]),
                        marker="o", capsize=3, color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        _finish_axis(ax, "rank r", _metric_axis(summary, metric), title)
    return _save(fig, out, "metric_vs_rank.png")


def plot_bars(summary: pd.DataFrame, metrics, out: Path, name: str, what: str) -> str:
    metrics = [m for m in metrics if f"{m}.mean" in summary and summary[f"{m}.mean"].notna().any()]
    if not metrics:
        raise Skip(f"the runs record no {what}")
    labels = group_labels(summary, summary.attrs["by"])
    colors = [_colors(summary["method"])[m] for m in summary["method"]] if "method" in summary else None
    fig = Figure(layout="constrained", figsize=(max(4.0, 0.7 * len(summary) + 1.5) * len(metrics), 3.8))
    for ax, m in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
        positions = np.arange(len(summary))
        ax.bar(positions, summary[f"{m}.mean"], yerr=np.nan_to_num(summary[f"{m}.std"]), capsize=3, color=colors)
        ax.set_xticks(positions, list(labels), rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(summary.attrs["labels"][m])
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, out, name)


def plot_curves(df: pd.DataFrame, by, out: Path) -> str:
    curves = load_curves(df)
    if "train/loss" not in curves and not any(c.startswith("eval/") for c in curves):
        raise Skip("no metrics.jsonl with train/loss or eval rows next to the completed runs")
    groups = completed(df)[list(by)].drop_duplicates()
    groups["label"] = group_labels(groups, _legend_keys(by))
    colors = _colors(groups["label"])
    runs = completed(df)
    tasks = panels(runs[runs["path"].isin(set(curves["path"]))])  # tasks with no logged curve get no panel
    fig = Figure(layout="constrained", figsize=(10, 3.4 * len(tasks)))
    axes = fig.subplots(len(tasks), 2, squeeze=False)
    for row, (title, runs) in zip(axes, tasks):
        main = main_name(runs)
        for ax, key in zip(row, ("train/loss", f"eval/{main}" if main else "eval/loss")):
            stats = mean_curves(curves, runs, by, key)
            if stats.empty:
                ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
            stats = stats.merge(groups, on=list(by), how="left")
            for label, line in stats.groupby("label", sort=False):
                ax.plot(line["step"], line["mean"], marker=".", color=colors.get(label), label=label)
                spread = line["std"].fillna(0.0)
                ax.fill_between(line["step"], line["mean"] - spread, line["mean"] + spread, color=colors.get(label), alpha=0.2)
            _finish_axis(ax, "step", key, f"{title} {key}".strip())
    return _save(fig, out, "curves.png")


def plot_learning_vs_forgetting(df: pd.DataFrame, out: Path, split: str = "test", best: bool = False) -> str:
    """Biderman et al. 2024's learning-forgetting plot: one point per completed run; x = the task's
    loss on `split` (learning, lower is better), y = the forgetting probe's perplexity after
    fine-tuning (`--best`: both with the best-validation weights); colour = group (method, rank,
    target modules), marker = method; a dashed line marks the pretrained model's perplexity; the
    perplexity axis is logarithmic."""
    runs = completed(df)
    x, y = f"{metric_prefix(split, best)}loss", forget_column("forget", best)
    if y not in runs or runs[y].isna().all():
        why = ("the best-validation weights are probed only with trainer.select_best=true" if best else
               "only tasks with task.forget set have a forgetting probe")
        raise Skip(f"no completed run has {y} ({why})")
    if x not in runs or runs[x].isna().all():
        raise Skip(f"no completed run has {x}")
    runs = runs[runs[x].notna() & runs[y].notna()]
    keys = [k for k in default_by(runs) if k != "task"]
    try:
        runs = runs.sort_values(keys, na_position="first")  # full FT, then LoRA by rank: a stable legend
    except TypeError:
        pass
    labels = group_labels(runs, keys)
    colors = _colors(labels)
    before = forget_column("forget_before")
    fig, axes = _task_axes(runs)
    for ax, title, part in axes:
        for label, group in part.groupby(labels[part.index], sort=False):
            method = group["method"].iloc[0] if "method" in group else None
            ax.scatter(group[x], group[y], marker=MARKERS.get(method, "D"), color=colors[label], label=label)
        if before in part and part[before].notna().any():
            ax.axhline(part[before].mean(), linestyle="--", color="0.4", label="pretrained model")
        weights = "best-validation weights" if best else "final weights"
        # log perplexity = NLL: a run that diverged (perplexity in the hundreds) leaves the rest readable
        ax.set_yscale("log")
        _finish_axis(ax, f"{split_of(x).split(',')[0]} loss (learning: lower is better)",
                     f"held-out English perplexity (log), {weights} (forgetting)", title)
    return _save(fig, out, "learn_forget.png")
