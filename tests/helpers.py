"""Shared test plumbing: run the real CLI on a tiny model and read back what it wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# A few steps of real Rotten Tomatoes data on a 2-layer, 32-wide BERT: seconds per run. debug=tiny
# (conf/debug/tiny.yaml) is the budget: 96 training examples in batches of 8, 32 for eval and test.
# fp32: trainer.precision=auto would run bf16 on a CPU with native bf16 and fp32 on one without, and
# the tests pin numbers against fp32 references (tests/train/test_precision.py covers bf16).
TINY_RUN = ("debug=tiny", "model.name=tiny_bert", "method.lr=1e-2", "trainer.precision=fp32")


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


def compose(*overrides, hydra=False):
    """The config `harness-train <overrides>` composes from conf/ (with the `hydra` node if asked)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


def task_preset(name, **overrides) -> dict:
    """conf/task/<name>.yaml as a run sees it (a GLUE task merged onto conf/task/_glue.yaml),
    resolved, with `overrides` on top."""
    from omegaconf import OmegaConf

    return {**OmegaConf.to_container(compose(f"task={name}").task, resolve=True), **overrides}


def read_record(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def metrics_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def hf_perplexity(model, chunks) -> tuple[float, float]:
    """(token-weighted perplexity, mean of per-chunk perplexities) of `chunks` (input_ids rows) from
    the HF model's own `labels=` loss, one unpadded chunk at a time: that loss is the mean over a
    chunk's len - 1 predictions, weighted back by hand. The forgetting probe's reference."""
    import math

    import torch

    total, tokens, per_chunk = 0.0, 0, []
    with torch.no_grad():
        for ids in chunks["input_ids"]:
            x = torch.tensor([ids])
            loss = model(input_ids=x, labels=x).loss.item()
            total, tokens = total + loss * (len(ids) - 1), tokens + len(ids) - 1
            per_chunk.append(math.exp(loss))
    return math.exp(total / tokens), sum(per_chunk) / len(per_chunk)


def missing_package(cfg) -> str | None:
    """The optional package a `pkg:` model needs when it is not installed (SmolLM2 comes with
    `bash install.sh --causal-lm`, which CI's plain install.sh leaves out), else None."""
    import importlib.util

    path = str(cfg.model.name_or_path)
    module = path[len("pkg:"):].partition("/")[0] if path.startswith("pkg:") else None
    return module if module and importlib.util.find_spec(module) is None else None
