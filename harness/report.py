"""Offline sweep report: the tables of harness-table and the plots a W&B dashboard would give.

    harness-report outputs/sweeps/lora_vs_full --out reports/lora_vs_full

writes a self-contained folder: index.html (the seed-grouped tables, the paper layouts the sweep
has the axes for, the runs left out) and the figures it shows by relative path; which figures and
what they plot: harness/analysis/report.py. Task metrics come from the test split by default and
from the validation split with `--split eval`, as in harness-table; the page says which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.analysis import SPLITS, split_keys, write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="harness-report", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH", help="sweep folders (searched for results.json)")
    p.add_argument("--out", required=True, type=Path, help="folder to write index.html and the PNGs into")
    p.add_argument("--by", nargs="+", metavar="KEY", help="group keys (default: method, task and whatever else varies besides seed)")
    p.add_argument("--split", default=None, choices=SPLITS,
                   help="where task metrics come from: test (default; scored once at the end) or eval (validation)")
    p.add_argument("--best", action="store_true",
                   help="test: with the best-validation weights (needs trainer.select_best); eval: the best evaluation")
    p.add_argument("--title", help="page title")
    args = p.parse_args(argv)
    try:
        skipped = write_report(args.paths, args.out, split_keys(args.by), args.best, args.title, args.split)
    except ValueError as e:
        print(f"harness-report: error: {e}", file=sys.stderr)
        return 2
    for name, why in skipped.items():
        print(f"{args.out / name}" if why is None else f"skipped {name}: {why}")
    print(args.out / "index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
