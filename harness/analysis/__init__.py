"""From results records to paper tables and an offline report; never imports torch, so tables can
be made on a laptop without the training stack (tests/analysis/test_torch_free.py checks it).

    records.py  local results.json and W&B run summaries -> records -> one DataFrame row per run
    summary.py  seed groups (mean ± std, n), key and metric resolution, which mean is best
    render.py   a summary as Markdown, LaTeX, HTML or CSV; the runs left out
    plots.py    the report's figures (matplotlib's Figure, never pyplot)
    report.py   write_report: index.html + the figures, a self-contained folder

harness/table.py and harness/report.py are the command lines over this package. Code outside it
imports from here (`from harness.analysis import load_records`), never from the modules.
"""

from harness.analysis.plots import (DPI, MARKERS, Skip, group_labels, load_curves, main_name, mean_curves, panels,
                                    plot_bars, plot_curves, plot_learning_vs_forgetting, plot_metric_vs_params,
                                    plot_metric_vs_rank)
from harness.analysis.records import (PER_RUN_CONFIG, RERUN_CONFIG, RESULTS, SKIP_KEYS, completed, dedupe, failed_runs,
                                      flatten, load_records, load_wandb, ran_precision, record_from_summary, records_frame,
                                      run_identity, run_record)
from harness.analysis.render import (FORMATS, Cell, Column, caption, column_label, latex_escape, markdown_table, render,
                                     render_failed)
from harness.analysis.report import MEMORY, STYLE, THROUGHPUT, paper_tables, summary_with, write_report
from harness.analysis.summary import (ALWAYS_BY, CANDIDATE_BY, DASH, DEFAULT_METRICS, FORGET, LABELS,
                                      LOWER_IS_BETTER_WORDS, SPLITS, available_metrics, best_mask, check_keys,
                                      default_by, default_metrics, default_split, forget_column, hidden_variation, higher_is_better, key_text, metric_label, metric_prefix,
                                      resolve_key, resolve_metric, select, split_keys, split_of, summarize)

__all__ = [
    "DPI", "MARKERS", "Skip", "group_labels", "load_curves", "main_name", "mean_curves", "panels", "plot_bars",
    "plot_curves", "plot_learning_vs_forgetting", "plot_metric_vs_params", "plot_metric_vs_rank",
    "PER_RUN_CONFIG", "RERUN_CONFIG", "RESULTS", "SKIP_KEYS", "completed", "dedupe", "failed_runs", "flatten",
    "load_records", "load_wandb", "ran_precision", "record_from_summary", "records_frame", "run_identity", "run_record",
    "FORMATS", "Cell", "Column", "caption", "column_label", "latex_escape", "markdown_table", "render", "render_failed",
    "MEMORY", "STYLE", "THROUGHPUT", "paper_tables", "summary_with", "write_report",
    "ALWAYS_BY", "CANDIDATE_BY", "DASH", "DEFAULT_METRICS", "FORGET", "LABELS", "LOWER_IS_BETTER_WORDS", "SPLITS",
    "available_metrics", "best_mask", "check_keys", "default_by", "default_metrics", "default_split", "forget_column", "hidden_variation",
    "higher_is_better", "key_text", "metric_label", "metric_prefix", "resolve_key", "resolve_metric", "select",
    "split_keys", "split_of", "summarize",
]
