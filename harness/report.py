"""Offline sweep report: the tables of harness.table and the plots a W&B dashboard would give.

    harness-report outputs/sweeps/lora_vs_full --out reports/lora_vs_full

writes a self-contained folder (open index.html; no network, no external assets):
    index.html            the tables (seed-grouped mean ± std, paper layouts when the sweep has
                          their axes), the runs left out, and the figures by relative path
    metric_vs_params.png  main metric vs trainable parameters (log x), error bars = std over seeds
    metric_vs_rank.png    LoRA runs: main metric vs r (log2 x), one line per target-module set
    memory.png            peak RSS (and CUDA peak when measured) per group, error bars over seeds
    throughput.png        real-token throughput per group, error bars over seeds
    curves.png            train/loss and the eval main metric vs step from each run's
                          metrics.jsonl, mean over seeds, band = ± std
Task metrics (tables, metric_vs_params, metric_vs_rank) come from the test split by default and
from the validation split with `--split eval`, as in harness-table; the page says which. The
curves are always the validation evaluations logged during training (`eval/...`).
A figure whose axis the sweep lacks (no LoRA runs, a single rank, no metrics.jsonl) is not drawn
and the page says why. Plots use matplotlib's Figure directly, never pyplot, so importing this
module changes no global backend and holds no figures open.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness import table as T

MARKERS = {"full": "o", "lora": "s"}
MEMORY = ("memory.peak_rss_gib", "memory.cuda_peak_allocated_gib")
THROUGHPUT = ("throughput.tokens_per_s",)
DPI = 110


class Skip(Exception):
    """A figure the sweep has no axis for; the message is shown on the page instead."""


# ----------------------------------------------------------------------------- data


def group_labels(frame: pd.DataFrame, keys) -> pd.Series:
    """Legend labels from the keys that vary across the rows: "full", "lora r=8 [query,value]"."""
    keys = list(keys)
    varying = [k for k in keys if frame[k].map(T.key_text).nunique() > 1] or keys[:1]

    def label(row):
        parts = []
        for k in varying:
            text = T.key_text(row[k])
            if text == T.DASH:
                continue
            parts.append(text if k in ("method", "model", "task") else f"[{text}]" if k == "lora.target_modules"
                         else f"{k.rsplit('.', 1)[-1]}={text}")
        return " ".join(parts) or T.DASH

    return frame.apply(label, axis=1) if len(frame) else pd.Series(dtype=str)


def panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per task: a metric is only comparable within a task."""
    if "task" not in frame or frame["task"].nunique() < 2:
        return [("", frame)]
    return [(str(task), part) for task, part in frame.groupby("task", sort=True)]


def main_name(df: pd.DataFrame, task=None) -> str | None:
    runs = T.completed(df)
    if task is not None and "task" in runs:
        runs = runs[runs["task"] == task]
    names = runs["metrics.main_metric"].dropna().unique() if "metrics.main_metric" in runs else []
    return str(names[0]) if len(names) else None


def load_curves(df: pd.DataFrame) -> pd.DataFrame:
    """The metrics.jsonl rows of the completed runs, each with its run's `path`.

    A line that is not JSON (a run killed mid-write) is skipped, not fatal.
    """
    frames = []
    for path in T.completed(df)["path"]:
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
    rows = rows.merge(T.completed(df)[["path", *by]], on="path")
    stats = rows.groupby([*by, "step"], dropna=False)[key].agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}).reset_index()


# ----------------------------------------------------------------------------- figures


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=DPI, bbox_inches="tight")
    return name


def _colors(labels) -> dict:
    cycle = [f"C{i}" for i in range(10)]
    return {label: cycle[i % 10] for i, label in enumerate(dict.fromkeys(labels))}


def _legend_keys(by) -> list[str]:
    """Group keys for a legend; the task is already the panel's title."""
    return [k for k in by if k != "task"] or list(by)


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _metric_axis(summary: pd.DataFrame, metric: str) -> str:
    """"accuracy (test)" / "accuracy (validation)": a figure travels without its page."""
    split = T.split_of(metric)
    return f"{summary.attrs['labels'][metric]} ({split.split(' split')[0]})" if split else summary.attrs["labels"][metric]


def plot_metric_vs_params(summary: pd.DataFrame, metric: str, out: Path) -> str:
    x, y = "params.trainable.mean", f"{metric}.mean"
    if x not in summary or summary[x].isna().all():
        raise Skip("the runs record no trainable parameter counts")
    if summary[y].isna().all():
        raise Skip(f"no completed run has a value for {metric}")
    labels = group_labels(summary, _legend_keys(summary.attrs["by"]))
    colors = _colors(labels)
    parts = panels(summary)
    fig = Figure(layout="constrained", figsize=(4.8 * len(parts) + 1, 3.8))
    for ax, (title, part) in zip(fig.subplots(1, len(parts), squeeze=False)[0], parts):
        for i in part.index:
            method = summary.at[i, "method"] if "method" in summary else None
            ax.errorbar(summary.at[i, x], summary.at[i, y], yerr=np.nan_to_num(summary.at[i, f"{metric}.std"]),
                        fmt=MARKERS.get(method, "D"), color=colors[labels[i]], capsize=3, label=labels[i])
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(_metric_axis(summary, metric))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _legend(ax)
    return _save(fig, out, "metric_vs_params.png")


def plot_metric_vs_rank(df: pd.DataFrame, metric: str, out: Path) -> str:
    """One line per LoRA setting other than r (target modules, ...); alpha is taken to follow r."""
    lora = T.completed(df)
    lora = lora[lora["lora.r"].notna()] if "lora.r" in lora else lora.iloc[:0]
    if lora.empty:
        raise Skip("no completed LoRA runs")
    ranks = sorted(int(r) for r in lora["lora.r"].unique())
    if len(ranks) < 2:
        raise Skip(f"a single rank (r={ranks[0]}); nothing to plot against")
    lines = [k for k in T.default_by(lora) if k not in ("method", "task", "lora.r", "lora.alpha")]
    keys = (["task"] if "task" in lora else []) + lines + ["lora.r"]
    summary = T.summarize(lora, keys, [metric])
    labels = group_labels(summary, lines) if lines else pd.Series("LoRA", index=summary.index)
    colors = _colors(labels)
    parts = panels(summary)
    fig = Figure(layout="constrained", figsize=(4.8 * len(parts) + 1, 3.8))
    for ax, (title, part) in zip(fig.subplots(1, len(parts), squeeze=False)[0], parts):
        for label, line in part.groupby(labels[part.index], sort=False):
            ax.errorbar(line["lora.r"].astype(float), line[f"{metric}.mean"], yerr=np.nan_to_num(line[f"{metric}.std"]),
                        marker="o", capsize=3, color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("rank r")
        ax.set_ylabel(_metric_axis(summary, metric))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        _legend(ax)
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
    groups = T.completed(df)[list(by)].drop_duplicates()
    groups["label"] = group_labels(groups, _legend_keys(by))
    colors = _colors(groups["label"])
    runs = T.completed(df)
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
            ax.set_xlabel("step")
            ax.set_ylabel(key)
            ax.set_title(f"{title} {key}".strip())
            ax.grid(alpha=0.3)
            _legend(ax)
    return _save(fig, out, "curves.png")


# ----------------------------------------------------------------------------- page


def paper_tables(df: pd.DataFrame, by, main: str) -> list[tuple[str, pd.DataFrame]]:
    """The LoRA paper's layouts the sweep has the axes for: methods x tasks (its Table 2) and
    target modules x rank (its Table 6)."""
    tables = []
    done = T.completed(df)
    if "task" in done and done["task"].nunique() > 1:
        rows = [k for k in by if k != "task"] or ["method"]
        metrics = [main] + (["params.trainable"] if "params.trainable" in df else [])
        tables.append(("Methods × tasks (LoRA paper Table 2 layout)", T.summarize(df, rows, metrics, cols="task")))
    lora = df[df["lora.r"].notna()] if "lora.r" in df else df.iloc[:0]
    done = T.completed(lora)
    if not done.empty and done["lora.r"].nunique() > 1 and done["lora.target_modules"].nunique() > 1:
        extra = [k for k in T.default_by(lora) if k not in ("method", "lora.r", "lora.target_modules", "lora.alpha")]
        tables.append(("Target modules × rank, LoRA runs (LoRA paper Table 6 layout)",
                       T.summarize(lora, ["lora.target_modules", *extra], [main], cols="lora.r")))
    return tables


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table.results{border-collapse:collapse;margin:1em 0;font-size:14px}
table.results th,table.results td{border-bottom:1px solid #ccc;padding:4px 10px}
table.results thead th{border-bottom:2px solid #444}
td.num{text-align:right;font-variant-numeric:tabular-nums} caption{caption-side:bottom;text-align:left;color:#555;font-size:12px}
img{max-width:100%} .skipped{color:#a60} .note{color:#a60} code{font-size:12px}"""


def write_report(paths, out, by=None, best: bool = False, title: str | None = None,
                 split: str | None = None) -> dict[str, str | None]:
    """Write index.html and the PNGs into `out`; returns {figure file: None if drawn, else why skipped}.
    `split` and `best` choose the task metrics as harness-table's --split and --best do."""
    out = Path(out)
    records, rerun_notes = T.dedupe(T.load_records(paths))  # a re-run is not an extra seed
    df = T.records_frame(records)
    if T.completed(df).empty:
        raise ValueError(f"no completed runs among {len(df)} results under {', '.join(map(str, paths))}")
    by = [T.resolve_key(df, k) for k in by] if by else T.default_by(df)
    T.check_keys(df, by)
    split, split_notes = T.default_split(df, split)
    rerun_notes += split_notes
    main = T.resolve_metric(df, "main", best, split)
    metrics = [main] + [m for m in ("params.trainable", *THROUGHPUT, *MEMORY) if m in df]
    summary = T.summarize(df, by, metrics)
    table_metrics = [m for m in metrics if m != "memory.cuda_peak_allocated_gib" or summary[f"{m}.n"].any()]
    out.mkdir(parents=True, exist_ok=True)

    figures = [
        ("Main metric vs trainable parameters", "metric_vs_params.png", lambda: plot_metric_vs_params(summary, main, out)),
        ("Main metric vs LoRA rank", "metric_vs_rank.png", lambda: plot_metric_vs_rank(df, main, out)),
        ("Peak memory", "memory.png", lambda: plot_bars(summary, MEMORY, out, "memory.png", "peak memory")),
        ("Throughput (real tokens/s)", "throughput.png", lambda: plot_bars(summary, THROUGHPUT, out, "throughput.png", "throughput")),
        ("Training curves (mean over seeds, band = ± std)", "curves.png", lambda: plot_curves(df, by, out)),
    ]
    skipped: dict[str, str | None] = {}
    sections = []
    for heading, name, draw in figures:
        try:
            draw()
            skipped[name] = None
            body = f'<img src="{name}" alt="{html.escape(heading)}">'
        except Skip as why:
            (out / name).unlink(missing_ok=True)  # a stale figure from an earlier report must not linger
            skipped[name] = str(why)
            body = f'<p class="skipped">Not drawn: {html.escape(str(why))}.</p>'
        sections.append(f"<h3>{html.escape(heading)}</h3>\n{body}")

    hidden = T.hidden_variation(df, by)
    failed = T.failed_runs(df)
    title = title or f"Sweep report: {', '.join(map(str, paths))}"
    page = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(df) - len(failed)} completed run(s), {len(failed)} not completed, read from "
            + ", ".join(f"<code>{html.escape(str(p))}</code>" for p in paths) + ". Main metric: "
            + html.escape(summary.attrs["labels"][main]) + " on the " + html.escape(T.split_of(main)) + ".</p>"]
    page += [f'<p class="note">{html.escape(note.removeprefix("note: "))}.</p>' for note in rerun_notes]
    if hidden:
        page.append(f'<p class="note">Runs averaged together differ in {html.escape(", ".join(hidden))}; '
                    "pass them to --by to split the groups.</p>")
    page += ["<h2>Summary</h2>", T.render(summary_with(summary, table_metrics), "html"), T.render_failed(failed, "html")]
    for heading, pivot in paper_tables(df, by, main):
        page += [f"<h2>{html.escape(heading)}</h2>", T.render(pivot, "html")]
    page += ["<h2>Figures</h2>", *sections, "</body></html>\n"]
    (out / "index.html").write_text("\n".join(page))
    return skipped


def summary_with(summary: pd.DataFrame, metrics) -> pd.DataFrame:
    """The same summary showing only `metrics` (a CUDA column stays out of a CPU sweep's table)."""
    shown = summary.copy()
    shown.attrs = {**summary.attrs, "metrics": list(metrics)}
    return shown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="harness-report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="sweep folders (searched for results.json)")
    p.add_argument("--out", required=True, type=Path, help="folder to write index.html and the PNGs into")
    p.add_argument("--by", nargs="+", metavar="KEY", help="group keys (default: method, task and whatever else varies besides seed)")
    p.add_argument("--split", default=None, choices=T.SPLITS,
                   help="where task metrics come from: test (default; scored once at the end) or eval (validation)")
    p.add_argument("--best", action="store_true",
                   help="test: with the best-validation weights (needs trainer.select_best); eval: the best evaluation")
    p.add_argument("--title", help="page title")
    args = p.parse_args(argv)
    try:
        skipped = write_report(args.paths, args.out, T._split(args.by), args.best, args.title, args.split)
    except ValueError as e:
        print(f"harness-report: error: {e}", file=sys.stderr)
        return 2
    for name, why in skipped.items():
        print(f"{args.out / name}" if why is None else f"skipped {name}: {why}")
    print(args.out / "index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
