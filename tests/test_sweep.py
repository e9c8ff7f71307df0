"""Real multiruns on the tiny model: one W&B run per job in one group, failures isolated and reported."""

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import TINY_RUN, read_record, run_cli
from tests.telemetry.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow  # every test here runs the real CLI in subprocesses


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/results.json"))


def offline_runs(job_dir: Path) -> list:
    return [read_offline_run(p) for p in sorted((job_dir / "wandb").glob("offline-run-*"))]


def test_sequential_sweep_isolates_a_bad_job_and_streams_each_job_to_its_own_wandb_run(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, "method.r=2,0,4", "logger=wandb", "logger.mode=offline",
                   "sweep_name=rtest", "trainer.save_model=false", multirun=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 job(s) did not complete" in proc.stderr and "method.r=0" in proc.stderr
    dirs = job_dirs(sweep)
    assert [d.name.split(",")[:3] for d in dirs] == [["0_debug=tiny", "method.lr=0.01", "method.r=2"],
                                                     ["1_debug=tiny", "method.lr=0.01", "method.r=0"],
                                                     ["2_debug=tiny", "method.lr=0.01", "method.r=4"]]
    records = [read_record(d) for d in dirs]
    assert [r["status"] for r in records] == ["completed", "failed", "completed"]
    assert "method.r" in records[1]["error"]
    assert [r["sweep"]["job_num"] for r in records] == [0, 1, 2]

    runs = [offline_runs(d) for d in dirs]
    assert [len(r) for r in runs] == [1, 1, 1]  # exactly one W&B run per job, never merged
    done, failed = runs[0][0], runs[1][0]
    assert {r[0].config["sweep_name"] for r in runs} == {"rtest"}
    assert done.summary["status"] == "completed" and failed.summary["status"] == "failed"
    assert done.exit_code == 0 and failed.exit_code == 1
    assert done.summary["params"]["adapter"] == 2 * 2 * 2 * 64
    assert any("train/loss" in row for row in done.history)
    assert done.group == "rtest" and done.job_type == "lora" and done.name == "lora-r2-a16-qv-seed0"


def test_resume_flag_skips_completed_jobs(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli(tiny_model_dir, sweep, "seed=0,1", "trainer.save_model=false", multirun=True).returncode == 0
    first = {d.name: (d / "results.json").stat().st_mtime_ns for d in job_dirs(sweep)}
    proc = run_cli(tiny_model_dir, sweep, "seed=0,1", "trainer.save_model=false", "resume=true", multirun=True)
    assert proc.returncode == 0 and proc.stdout.count("already completed, skipping") == 2, proc.stdout[-2000:]
    assert {d.name: (d / "results.json").stat().st_mtime_ns for d in job_dirs(sweep)} == first


def test_submitit_local_launcher_runs_jobs_in_their_own_processes(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, "method=lora,full", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", "trainer.save_model=false", multirun=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [read_record(d) for d in job_dirs(sweep)]
    assert sorted(r["method"] for r in records) == ["full", "lora"]
    assert all(r["status"] == "completed" for r in records)
    assert (sweep / ".submitit").is_dir()
    assert json.loads((job_dirs(sweep)[0] / "results.json").read_text())["sweep"]["dir"] == str(sweep)


def test_optuna_sweeper_searches_the_learning_rate_on_the_returned_metric(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY_RUN if not o.startswith("method.lr=")]  # the sweeper sets it
    proc = run_cli(tiny_model_dir, sweep, "hparams_search=lora_lr", "hydra.sweeper.n_trials=2", multirun=True,
                   tiny=tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [read_record(d) for d in job_dirs(sweep)]
    assert len(records) == 2 and len({r["lr"] for r in records}) == 2
    assert all(1e-4 <= r["lr"] <= 1e-2 for r in records)
    best = max(r["metrics"]["final"]["accuracy"] for r in records)
    assert f"best_value: {best}" in (sweep / "optimization_results.yaml").read_text().replace("'", "")


def log_span(job_dir: Path) -> tuple[datetime, datetime]:
    """First and last timestamp of a job's log (Hydra's `[2026-12-01 10:00:00,123][...]` lines)."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", (job_dir / "train.log").read_text(), re.M)
    return tuple(datetime.strptime(stamps[i], "%Y-%m-%d %H:%M:%S,%f") for i in (0, -1))


def test_parallel_launcher_preset_runs_jobs_at_the_same_time(tiny_model_dir, tmp_path):
    """conf/hydra/launcher/parallel.yaml (joblib, 2 at a time): the two jobs' logs overlap in time,
    which jobs run one after the other never do."""
    sweep = tmp_path / "sweep"
    # 40 epochs of the tiny run (480 steps, seconds per job): long enough that two workers started
    # together always overlap, whatever each one's start-up costs (12 steps took 0.15 s: flaky).
    proc = run_cli(tiny_model_dir, sweep, "seed=0,1", "hydra/launcher=parallel", "trainer.save_model=false",
                   "trainer.epochs=40", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = job_dirs(sweep)
    records = [read_record(d) for d in dirs]
    assert [(r["status"], r["seed"]) for r in records] == [("completed", 0), ("completed", 1)]
    (start0, end0), (start1, end1) = [log_span(d) for d in dirs]
    assert max(start0, start1) < min(end0, end1), (start0, end0, start1, end1)
