"""Real multiruns on the tiny model: one W&B run per job in one group, failures isolated and reported."""

import json
from pathlib import Path

from tests.helpers import TINY_RUN, read_record, run_cli
from tests.telemetry.wandb_offline import read_offline_run


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
    assert [d.name.split(",")[:2] for d in dirs] == [["0_method.lr=0.01", "method.r=2"],
                                                     ["1_method.lr=0.01", "method.r=0"],
                                                     ["2_method.lr=0.01", "method.r=4"]]
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
    proc = run_cli(tiny_model_dir, sweep, "+hparams_search=lora_lr", "hydra.sweeper.n_trials=2", multirun=True,
                   tiny=tiny)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [read_record(d) for d in job_dirs(sweep)]
    assert len(records) == 2 and len({r["lr"] for r in records}) == 2
    assert all(1e-4 <= r["lr"] <= 1e-2 for r in records)
    best = max(r["metrics"]["final"]["accuracy"] for r in records)
    assert f"best_value: {best}" in (sweep / "optimization_results.yaml").read_text().replace("'", "")


def test_joblib_launcher_runs_jobs_in_parallel_processes(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   "trainer.save_model=false", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [read_record(d) for d in job_dirs(sweep)]
    assert [(r["status"], r["seed"]) for r in records] == [("completed", 0), ("completed", 1)]
