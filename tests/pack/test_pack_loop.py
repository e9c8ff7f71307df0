"""The pack loop's own contracts: a diverging job fails alone, a preempted pack resumes each job
from its checkpoint to the metrics of an uninterrupted pack, and halving prunes the worst jobs."""

import os
import signal

import pytest

from harness.pack import PruneConfig, run_pack, survivors
from harness.schema import ConfigError
from harness.train import Preempted
from tests.helpers import metrics_rows, read_record
from tests.pack.helpers import pack_jobs

TWO = (("method.r=4", "seed=0", "method.lr=1e-2"), ("method.r=8", "seed=1", "method.lr=5e-3"))


def test_a_diverging_job_fails_alone_and_the_pack_goes_on(tiny_model_dir, tmp_path):
    jobs = pack_jobs(tiny_model_dir, tmp_path, (TWO[0], ("method.r=8", "seed=1", "method.lr=1e6"), TWO[1]),
                     extra=("trainer.max_grad_norm=null", "trainer.save_model=false"))
    values = run_pack(jobs, "p")
    records = [read_record(j.run_dir) for j in jobs]
    assert [r["status"] for r in records] == ["completed", "failed", "completed"]
    assert "non-finite loss" in records[1]["error"]
    assert values[1] != values[1] and values[0] == values[0]  # NaN for the failed job only
    alone = pack_jobs(tiny_model_dir, tmp_path / "two", TWO, extra=("trainer.max_grad_norm=null", "trainer.save_model=false"))
    run_pack(alone, "q")
    for a, b in zip((records[0], records[2]), (read_record(j.run_dir) for j in alone)):
        assert a["metrics"]["final"] == pytest.approx(b["metrics"]["final"], abs=1e-4)


def test_a_preempted_pack_resumes_each_job_from_its_checkpoint(tiny_model_dir, tmp_path):
    extra = ("trainer.checkpoint_every=4", "trainer.save_model=false")
    whole = pack_jobs(tiny_model_dir, tmp_path / "whole", TWO, extra=extra)
    run_pack(whole, "w")
    jobs = pack_jobs(tiny_model_dir, tmp_path / "cut", TWO, extra=extra)

    def stop_at_6(end):
        if end.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        run_pack(jobs, "c", on_step=stop_at_6)
    assert [read_record(j.run_dir)["status"] for j in jobs] == ["preempted", "preempted"]
    run_pack(pack_jobs(tiny_model_dir, tmp_path / "cut", TWO, extra=extra), "c")
    for j, w in zip(jobs, whole):
        resumed, uninterrupted = read_record(j.run_dir), read_record(w.run_dir)
        assert resumed["status"] == "completed" and [s["from_step"] for s in resumed["segments"]] == [0, 6]
        assert resumed["metrics"]["final"] == pytest.approx(uninterrupted["metrics"]["final"], abs=1e-4)
        assert [r["step"] for r in metrics_rows(j.run_dir) if "train/loss" in r] == list(range(1, 13))


def test_halving_prunes_the_worst_jobs_at_each_rung(tiny_model_dir, tmp_path):
    four = [("method.lr=1e-2", "seed=0"), ("method.lr=1e-5", "seed=0"), ("method.lr=5e-3", "seed=1"),
            ("method.lr=1e-6", "seed=1")]
    jobs = pack_jobs(tiny_model_dir, tmp_path, four, extra=("trainer.save_model=false",))
    values = run_pack(jobs, "p", prune=PruneConfig(metric="eval/loss", every=4, keep=0.5))
    records = [read_record(j.run_dir) for j in jobs]
    statuses = [r["status"] for r in records]
    assert statuses.count("pruned") == 3 and statuses.count("completed") == 1  # 4 -> 2 at step 4 -> 1 at step 8
    for r, j in zip(records, jobs):
        evals = [row for row in metrics_rows(j.run_dir) if "eval/loss" in row]
        if r["status"] == "pruned":
            assert r["steps"] in (4, 8) and evals[-1]["step"] == r["steps"] and r["metrics"]["final"]["loss"] > 0
            assert r["metrics"]["test"] is None  # compared on validation only: the test split stays unread
        else:
            assert r["steps"] == 12 and set(r["metrics"]["test"]["final"]) >= {"loss", "accuracy"}
    assert all(v == v for v in values)  # pruned jobs report their metrics so far


def test_rungs_fixed_or_geometric():
    assert [s for s in range(1, 30) if PruneConfig(every=6).is_rung(s)] == [6, 12, 18, 24]
    assert [s for s in range(1, 200) if PruneConfig(every=6, growth=2).is_rung(s)] == [6, 12, 24, 48, 96, 192]
    assert [s for s in range(1, 40) if PruneConfig(every=4, growth=1.5).is_rung(s)] == [4, 6, 9, 14, 21, 32]
    with pytest.raises(ConfigError, match=r"hydra.launcher.prune.growth=0.5 is invalid: must be a number >= 1"):
        PruneConfig(growth=0.5)


def test_survivors_and_bad_prune_settings():
    assert survivors({0: 0.5, 1: 0.2, 2: float("nan"), 3: 0.9}, 0.5, greater_is_better=False) == {0, 1}
    assert survivors({0: 0.5, 1: 0.2, 2: 0.7}, 0.5, greater_is_better=True) == {0, 2}
    assert survivors({0: 1.0, 1: 2.0}, 0.1, greater_is_better=True) == {1}
    with pytest.raises(ConfigError, match=r"hydra.launcher.prune.keep=1.5 is invalid"):
        PruneConfig(keep=1.5)
    with pytest.raises(ConfigError, match=r"hydra.launcher.prune.metric='loss' is invalid: must be eval/"):
        PruneConfig(metric="loss")


def test_forward_modes_and_a_bad_one():
    import torch

    from harness.pack.launcher import PackedLauncher
    from harness.pack.loop import resolve_forward

    assert resolve_forward("auto", torch.device("cpu")) == "per_job"
    assert resolve_forward("auto", torch.device("cuda", 0)) == "concat"
    assert resolve_forward("concat", torch.device("cpu")) == "concat"
    with pytest.raises(ConfigError, match=r"^hydra.launcher.forward='rows' is invalid: choose auto, concat or per_job$"):
        PackedLauncher(forward="rows")
