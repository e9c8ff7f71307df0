"""The offline sweep report: the tables of harness-table and the plots a W&B dashboard would give.

`write_report(paths, out)` writes a self-contained folder (open index.html; no network, no
external assets):
    index.html            the tables (seed-grouped mean ± std, paper layouts when the sweep has
                          their axes), the runs left out, and the figures by relative path
    metric_vs_params.png  main metric vs trainable parameters (log x), error bars = std over seeds
    metric_vs_rank.png    LoRA runs: main metric vs r (log2 x), one line per target-module set
    memory.png            peak RSS (and CUDA peak when measured) per group, error bars over seeds
    throughput.png        real-token throughput per group, error bars over seeds
    curves.png            train/loss and the eval main metric vs step from each run's
                          metrics.jsonl, mean over seeds, band = ± std
    learn_forget.png      runs with a forgetting probe (task.forget): task loss vs perplexity on
                          held-out general English, one point per run (Biderman et al. 2024)
Task metrics (tables, metric_vs_params, metric_vs_rank) come from the test split by default and
from the validation split with `--split eval`, as in harness-table; the page says which. The
curves are always the validation evaluations logged during training (`eval/...`).
A figure whose axis the sweep lacks (no LoRA runs, a single rank, no metrics.jsonl) is not drawn
and the page says why (plots.py).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from harness.analysis.plots import (Skip, plot_bars, plot_curves, plot_learning_vs_forgetting, plot_metric_vs_params,
                                    plot_metric_vs_rank)
from harness.analysis.records import completed, dedupe, failed_runs, load_records, records_frame
from harness.analysis.render import render, render_failed
from harness.analysis.summary import (check_keys, default_by, default_split, forget_column, hidden_variation,
                                      resolve_key, resolve_metric, split_of, summarize)

MEMORY = ("memory.peak_rss_gib", "memory.cuda_peak_allocated_gib")
THROUGHPUT = ("throughput.tokens_per_s",)


def paper_tables(df: pd.DataFrame, by, main: str) -> list[tuple[str, pd.DataFrame]]:
    """The LoRA paper's layouts the sweep has the axes for: methods x tasks (its Table 2) and
    target modules x rank (its Table 6)."""
    tables = []
    done = completed(df)
    if "task" in done and done["task"].nunique() > 1:
        rows = [k for k in by if k != "task"] or ["method"]
        metrics = [main] + (["params.trainable"] if "params.trainable" in df else [])
        tables.append(("Methods × tasks (LoRA paper Table 2 layout)", summarize(df, rows, metrics, cols="task")))
    lora = df[df["lora.r"].notna()] if "lora.r" in df else df.iloc[:0]
    done = completed(lora)
    if not done.empty and done["lora.r"].nunique() > 1 and done["lora.target_modules"].nunique() > 1:
        extra = [k for k in default_by(lora) if k not in ("method", "lora.r", "lora.target_modules", "lora.alpha")]
        tables.append(("Target modules × rank, LoRA runs (LoRA paper Table 6 layout)",
                       summarize(lora, ["lora.target_modules", *extra], [main], cols="lora.r")))
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
    records, rerun_notes = dedupe(load_records(paths))  # a re-run is not an extra seed
    df = records_frame(records)
    if completed(df).empty:
        raise ValueError(f"no completed runs among {len(df)} results under {', '.join(map(str, paths))}")
    by = [resolve_key(df, k) for k in by] if by else default_by(df)
    check_keys(df, by)
    split, split_notes = default_split(df, split)
    rerun_notes += split_notes
    main = resolve_metric(df, "main", best, split)
    forget = [forget_column(n, best) for n in ("forget", "forget_increase")]
    forget = forget if forget[0] in df and completed(df)[forget[0]].notna().any() else []
    metrics = [main, *forget] + [m for m in ("params.trainable", *THROUGHPUT, *MEMORY) if m in df]
    summary = summarize(df, by, metrics)
    table_metrics = [m for m in metrics if m != "memory.cuda_peak_allocated_gib" or summary[f"{m}.n"].any()]
    out.mkdir(parents=True, exist_ok=True)

    figures = [
        ("Main metric vs trainable parameters", "metric_vs_params.png", lambda: plot_metric_vs_params(summary, main, out)),
        ("Main metric vs LoRA rank", "metric_vs_rank.png", lambda: plot_metric_vs_rank(df, main, out)),
        ("Peak memory", "memory.png", lambda: plot_bars(summary, MEMORY, out, "memory.png", "peak memory")),
        ("Throughput (real tokens/s)", "throughput.png", lambda: plot_bars(summary, THROUGHPUT, out, "throughput.png", "throughput")),
        ("Training curves (mean over seeds, band = ± std)", "curves.png", lambda: plot_curves(df, by, out)),
        ("Learning vs forgetting (one point per run)", "learn_forget.png",
         lambda: plot_learning_vs_forgetting(df, out, split, best)),
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

    hidden = hidden_variation(df, by)
    failed = failed_runs(df)
    title = title or f"Sweep report: {', '.join(map(str, paths))}"
    page = [f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(df) - len(failed)} completed run(s), {len(failed)} not completed, read from "
            + ", ".join(f"<code>{html.escape(str(p))}</code>" for p in paths) + ". Main metric: "
            + html.escape(summary.attrs["labels"][main]) + " on the " + html.escape(split_of(main)) + ".</p>"]
    page += [f'<p class="note">{html.escape(note.removeprefix("note: "))}.</p>' for note in rerun_notes]
    if hidden:
        page.append(f'<p class="note">Runs averaged together differ in {html.escape(", ".join(hidden))}; '
                    "pass them to --by to split the groups.</p>")
    page += ["<h2>Summary</h2>", render(summary_with(summary, table_metrics), "html"), render_failed(failed, "html")]
    for heading, pivot in paper_tables(df, by, main):
        page += [f"<h2>{html.escape(heading)}</h2>", render(pivot, "html")]
    page += ["<h2>Figures</h2>", *sections, "</body></html>\n"]
    (out / "index.html").write_text("\n".join(page))
    return skipped


def summary_with(summary: pd.DataFrame, metrics) -> pd.DataFrame:
    """The same summary showing only `metrics` (a CUDA column stays out of a CPU sweep's table)."""
    shown = summary.copy()
    shown.attrs = {**summary.attrs, "metrics": list(metrics)}
    return shown
