"""Shared test plumbing: run the real CLI on a tiny model and read back what it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# A few steps of real Rotten Tomatoes data on a 2-layer, 32-wide BERT: seconds per run.
TINY_RUN = ("model.name=tiny_bert", "task.limit_train=96", "task.limit_eval=32", "trainer.batch_size=8",
            "trainer.eval_batch_size=32", "method.lr=1e-2")


def cli_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


def run_cli(model_dir, run_dir, *overrides, multirun=False, timeout=300, tiny=TINY_RUN):
    """`python -m harness.train` on the tiny model; single runs go to run_dir, sweeps to run_dir/."""
    dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    cmd = [sys.executable, "-m", "harness.train", *(["-m"] if multirun else []),
           f"model.name_or_path={model_dir}", *tiny, f"{dir_key}={run_dir}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def read_record(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]
