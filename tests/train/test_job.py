"""run_job in this process: the step hook bench/ times the loop with, the record's shape (the keys
every table reads), lost-job records, and run names that carry the lr where a sweep varies it."""

import json
import os
import signal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from bench.harness_overhead import compose as job_config  # as `python -m harness.train` composes, HydraConfig set

from harness.train import job_run_name, lr_is_swept, run_job
from harness.train.sweep import record_lost_job
from tests.helpers import ROOT, TINY_RUN, metrics_rows, read_record

# results.json of a completed classification run, in file order: what tables and W&B summaries read.
COMPLETED_KEYS = ["status", "error", "method", "model", "task", "seed", "run_name", "lr", "lora", "params",
                  "metrics", "throughput", "memory", "versions", "git", "device", "precision", "attention", "sweep", "packed", "config", "traceback",
                  "attempt", "segments", "steps", "epochs", "train_time_s", "wall_time_s", "finished_at"]


def composed(overrides: list[str], hydra_overrides: list[str] = ()):
    """(job config, hydra config) composed from conf/, for the functions that read Hydra's settings."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *hydra_overrides], return_hydra_config=True)
    return cfg, cfg.hydra


def test_the_step_hook_sees_every_step_of_the_real_loop_and_the_record_keeps_its_keys(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = job_config([f"model.name_or_path={tiny_model_dir}", *TINY_RUN, "trainer.max_steps=4",
                      "trainer.log_every=2", "trainer.save_model=false"], run_dir)
    ends = []
    value = run_job(cfg, on_step=ends.append)
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and value == rec["metrics"]["final"]["accuracy"]
    assert list(rec) == COMPLETED_KEYS
    assert [e.step for e in ends] == [1, 2, 3, 4]
    assert [e.row is not None for e in ends] == [False, True, False, True]
    logged = {r["step"]: r for r in metrics_rows(run_dir) if "train/loss" in r}
    for end in ends[1::2]:  # the hook gets the very row metrics.jsonl got
        assert end.row["train/loss"] == pytest.approx(logged[end.step]["train/loss"])
    assert all(e.tokens > 0 and e.seconds > 0 for e in ends)
    assert ends[1].row["train/loss"] == pytest.approx((ends[0].loss + ends[1].loss) / 2)


def test_a_lost_job_record_says_how_it_died_and_no_more(tmp_path):
    run_dir = tmp_path / "lost"
    cfg = job_config(["seed=3"], run_dir)
    status = signal.SIGKILL  # os.waitpid's status of a child killed by SIGKILL
    assert os.WIFSIGNALED(status)
    assert record_lost_job(cfg, status, preempted=False) is False  # not a sweep job
    rec = json.loads((run_dir / "results.json").read_text())
    assert list(rec) == ["status", "error", "method", "model", "task", "seed", "sweep", "config"]
    assert (rec["status"], rec["error"], rec["seed"]) == ("failed", "job process killed by SIGKILL (out of memory?)", 3)


@pytest.mark.parametrize("sweep_overrides, params, swept", [
    (["method.lr=1e-3,2e-3", "seed=0"], None, True),          # -m method.lr=1e-3,2e-3
    (["+method.lr=1e-3,2e-3"], None, True),
    (["method.lr=1e-3", "seed=0,1"], None, False),            # the lr is fixed, the seed varies
    (["seed=0,1"], {"method.lr": "tag(log, interval(1e-4, 1e-2))"}, True),  # Optuna's search space
    (None, None, False),                                      # no multirun.yaml: nothing to go by
])
def test_lr_is_swept_reads_the_sweep_not_the_job(tmp_path, sweep_overrides, params, swept):
    _, hydra = composed([], ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}"])
    if sweep_overrides is not None:
        OmegaConf.save({"hydra": {"overrides": {"task": sweep_overrides}}}, tmp_path / "multirun.yaml")
    if params is not None:
        with open_dict(hydra):
            hydra.sweeper.params = params
    assert lr_is_swept(hydra) is swept


def test_a_single_run_never_counts_as_an_lr_sweep(tmp_path):
    OmegaConf.save({"hydra": {"overrides": {"task": ["method.lr=1e-3,2e-3"]}}}, tmp_path / "multirun.yaml")
    _, hydra = composed([], [f"hydra.sweep.dir={tmp_path}"])
    assert lr_is_swept(hydra) is False


def test_lr_search_jobs_get_one_name_each():
    names = {job_run_name(composed([f"method.lr={lr}"])[0], include_lr=True) for lr in (5e-4, 1e-3, 2e-3, 5e-3)}
    assert names == {"lora-r8-a16-qv-lr0.0005-seed0", "lora-r8-a16-qv-lr0.001-seed0",
                     "lora-r8-a16-qv-lr0.002-seed0", "lora-r8-a16-qv-lr0.005-seed0"}
    assert job_run_name(composed(["method.lr=5e-4"])[0]) == "lora-r8-a16-qv-seed0"
    assert job_run_name(composed(["method=full", "method.lr=1e-4"])[0], include_lr=True) == "full-lr0.0001-seed0"
