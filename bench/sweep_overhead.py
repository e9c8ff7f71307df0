"""Item 7: what a Hydra multirun costs beyond training: a 4-job sweep's wall time vs the sum of its
jobs' training time, and whether the tokenized data set is reused (the second job must not
tokenize again).

One real `python -m harness.train -m method.r=4,8 seed=0,1` per logger (none, and offline W&B),
each job training LoRA on 320 Rotten Tomatoes reviews (B=16, 20 steps, eval on 128), with a fresh
tokenization cache ($LORA_HARNESS_CACHE in a temp folder) so job 0 pays for tokenizing.

Per job, results.json gives wall_time_s (the job inside the process: data, model, training, eval,
W&B); training time is results.json `train_time_s` when present, else estimated from the step
timer (timed time + warm-up steps x median step time). The rest of the sweep's wall time is
process start-up (Python, torch, Hydra composing the sweep). Cache reuse is read from the cache
files' modification times: every .arrow file must be written before job 0 finished.

    python -m bench.sweep_overhead
    python -m bench.sweep_overhead --loggers none
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

SWEEP = ["method.r=4,8", "seed=0,1"]


def train_seconds(record: dict, warmup_steps: int) -> float | None:
    """Training time of one job: train_time_s if the harness wrote it, else the step timer's timed
    seconds plus the untimed warm-up steps at the median step time."""
    if record.get("train_time_s") is not None:
        return record["train_time_s"]
    t = record.get("throughput") or {}
    if not t.get("samples_per_s") or not t.get("steps_timed"):
        return None
    batch = record["config"]["trainer"]["batch_size"]
    timed = t["steps_timed"] * batch / t["samples_per_s"]
    return timed + min(warmup_steps, record["steps"]) * t["step_time_s"]


def run_sweep(logger: str, overrides: list[str], folder: Path) -> dict:
    cache, sweep_dir = folder / "cache", folder / "sweep"
    env = dict(os.environ, LORA_HARNESS_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false")
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "-m", "harness.train", "-m", *SWEEP, *overrides, f"logger={logger}",
           *(["logger.mode=offline"] if logger == "wandb" else []), f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    jobs = []
    for path in sorted(sweep_dir.glob("*/results.json"), key=lambda p: int(p.parent.name.split("_")[0])):
        jobs.append({"record": json.loads(path.read_text()), "end": path.stat().st_mtime, "dir": path.parent.name})
    arrows = sorted(cache.rglob("*.arrow"))
    return {"wall": wall, "jobs": jobs, "arrow_mtimes": [p.stat().st_mtime for p in arrows],
            "command": " ".join(cmd[1:])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--loggers", nargs="+", default=["none", "wandb"], choices=["none", "wandb"])
    args = parser.parse_args(argv)
    common.apply_threads(args.threads)
    tcfg = common.trainer_config()
    overrides = ["task.limit_train=320", "task.limit_eval=128", "trainer.batch_size=16", "trainer.save_model=false"]
    if args.quick:
        args.loggers = ["none"]
        overrides = ["task.limit_train=32", "task.limit_eval=16", "trainer.batch_size=8", "trainer.save_model=false",
                     f"model.name_or_path={common.tiny_model_dir()}", "model.name=tiny_bert"]
    record = common.Record("sweep_overhead", {"sweep": SWEEP, "overrides": overrides, "loggers": args.loggers,
                                              "quick": args.quick}, argv)
    jobs_rows, rows = [], []
    raw = {}
    for logger in args.loggers:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"4-job sweep, logger={logger}")
            out = run_sweep(logger, overrides, Path(tmp))
        raw[logger] = {"wall": out["wall"], "arrow_mtimes": out["arrow_mtimes"],
                       "jobs": [{k: j["record"].get(k) for k in ("wall_time_s", "train_time_s", "throughput", "steps")}
                                | {"end": j["end"]} for j in out["jobs"]]}
        job0_end = out["jobs"][0]["end"]
        late = sum(m > job0_end for m in out["arrow_mtimes"])
        train = [train_seconds(j["record"], tcfg.timing_warmup_steps) for j in out["jobs"]]
        walls = [j["record"]["wall_time_s"] for j in out["jobs"]]
        keys = tuple(o.split("=")[0] for o in SWEEP)
        for j, t, w in zip(out["jobs"], train, walls):
            label = ",".join(o for o in j["record"]["sweep"]["overrides"] if o.startswith(keys))
            jobs_rows.append([logger, f"{j['dir'].split('_')[0]}: {label}", w, t, w - t])
        sum_train, sum_wall = sum(train), sum(walls)
        rows.append([logger, len(out["jobs"]), out["wall"], sum_wall, sum_train, sum_train / out["wall"],
                     out["wall"] - sum_wall, f"{len(out['arrow_mtimes'])} files, {late} written after job 0"])
    record.data["raw"] = raw
    record.table("Sweep overhead: `harness-train -m " + " ".join(SWEEP) + "`, fresh tokenization cache",
                 ["logger", "jobs", "sweep wall s", "sum job wall s", "sum train s", "train / wall",
                  "process start-up s", "tokenized cache"], rows,
                 note="train s: results.json train_time_s when written, else the step timer's estimate")
    record.table("Per job: wall (inside the process) = train + set-up (data, model, eval, W&B); job 0 also "
                 "tokenizes and pays first-use costs",
                 ["logger", "job", "job wall s", "train s", "set-up s"], jobs_rows)
    record.write(args.out)


if __name__ == "__main__":
    main()
