"""Paper tables from sweep results: runs that differ only in seed become one row, mean ± std (n).

The command line over harness.analysis: reads every run's `results.json` under the given folders
(or the same records from W&B runs, `--wandb`), groups the completed runs by config keys and
renders Markdown (GitHub), LaTeX (booktabs), HTML or CSV. Keys are the flattened record's columns
(`lora.r`, `metrics.final.accuracy`, `config.method.lr`; the override spelling `method.lr` works
too), so the LoRA paper's layouts come out directly:

    harness-table outputs/sweeps/x --by method --cols task --metric main params.trainable   # Table 2
    harness-table outputs/sweeps/x --by lora.target_modules                                  # Table 5
    harness-table outputs/sweeps/x --by lora.target_modules --cols lora.r --where method=lora  # Table 6

Task metrics come from the test split by default (`--split eval`: the validation split the runs
were selected on; `--best`: the best-validation weights), and the caption says which. Mean and
sample std over the completed runs of a group; failed runs are listed under the table and never
averaged; re-runs of one configuration and seed count once; the best mean is bold. The rules in
full: harness/analysis/summary.py (statistics, best) and harness/analysis/records.py (re-runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.analysis import (DEFAULT_METRICS, FORMATS, SPLITS, check_keys, dedupe, default_by, default_metrics,
                              default_split, failed_runs, hidden_variation, load_records, load_wandb, records_frame, render,
                              render_failed, resolve_key, resolve_metric, select, split_keys, summarize)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness-table", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="sweep folders (searched for results.json) or results.json files")
    p.add_argument("--by", nargs="+", metavar="KEY", help="row keys (default: method, task and whatever else varies besides seed)")
    p.add_argument("--cols", metavar="KEY", help="pivot: one column per value of KEY (e.g. task, lora.r)")
    p.add_argument("--metric", nargs="+", metavar="NAME",
                   help=f"metrics: main, an eval metric name (accuracy, f1), forget / forget_increase / forget_before "
                        f"(perplexity on held-out general English, task.forget), or a column (default: "
                        f"{' '.join(DEFAULT_METRICS)}, those the runs have)")
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
    by = [resolve_key(df, k) for k in split_keys(args.by)] or default_by(df, args.cols)
    check_keys(df, by)
    args.split, split_notes = default_split(df, args.split)
    names = split_keys(args.metric) or default_metrics(df)
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
