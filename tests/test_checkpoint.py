"""Preemption and divergence: a killed run resumes to exactly the uninterrupted numbers."""

import signal
import subprocess
import sys
import time

import pytest
import torch

from harness import checkpoint
from tests.helpers import ROOT, TINY_RUN, cli_env, metrics_rows, read_record, run_cli

# Slow enough to interrupt: an evaluation after every one of 2 x 12 steps, dropout on (RNG state
# matters), checkpoints every 4 steps (step 12 is an epoch boundary).
SLOW = ("task.limit_train=96", "trainer.epochs=2", "task.limit_eval=128", "trainer.eval_every=1", "trainer.checkpoint_every=4",
        "trainer.log_every=1", "method.dropout=0.1", "trainer.save_model=false")


def start(model_dir, run_dir):
    cmd = [sys.executable, "-m", "harness.train", f"model.name_or_path={model_dir}", *TINY_RUN, *SLOW,
           f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def comparable(run_dir):
    rec = read_record(run_dir)
    losses = [(r["step"], r["train/loss"]) for r in metrics_rows(run_dir) if "train/loss" in r]
    return rec["status"], rec["metrics"], rec["steps"], losses


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run both interrupted runs must reproduce exactly."""
    run_dir = tmp_path_factory.mktemp("reference")
    assert run_cli(tiny_model_dir, run_dir, *SLOW).returncode == 0
    return run_dir


def test_sigkill_then_same_command_resumes_to_identical_metrics(tiny_model_dir, reference, tmp_path):
    killed = tmp_path / "killed"
    proc = start(tiny_model_dir, killed)
    wait_for(killed / "checkpoints" / "step_0000012", proc)  # the end of epoch 1
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    resumed = run_cli(tiny_model_dir, killed, *SLOW)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert comparable(killed) == comparable(reference)
    assert not (killed / "checkpoints").exists()  # a completed run keeps no checkpoints


def test_sigterm_saves_checkpoint_records_preempted_then_resumes(tiny_model_dir, reference, tmp_path):
    run_dir = tmp_path / "preempted"
    proc = start(tiny_model_dir, run_dir)
    wait_for(run_dir / "checkpoints" / "step_0000004", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    rec = read_record(run_dir)
    assert rec["status"] == "preempted" and "checkpoint saved" in rec["error"]
    step = int(rec["error"].split("at step ")[1].split(";")[0])
    assert checkpoint.list_checkpoints(run_dir / "checkpoints")[-1].name == f"step_{step:07d}"
    assert run_cli(tiny_model_dir, run_dir, *SLOW).returncode == 0
    assert comparable(run_dir) == comparable(reference)


def test_nan_loss_fails_with_the_step(tiny_model_dir, tmp_path):
    proc = run_cli(tiny_model_dir, tmp_path / "nan", "method.lr=1e30")
    assert proc.returncode == 1
    rec = read_record(tmp_path / "nan")
    assert rec["status"] == "failed"
    assert rec["error"] == "TrainingFailed: non-finite loss/grad norm (nan/nan) at step 2"


def test_nan_loss_can_skip_steps_instead(tiny_model_dir, tmp_path):
    proc = run_cli(tiny_model_dir, tmp_path / "skip", "method.lr=1e30", "trainer.on_nan=skip")
    assert proc.returncode == 0
    rec = read_record(tmp_path / "skip")
    assert rec["status"] == "completed" and rec["metrics"]["skipped_steps"] == 11


def test_failed_rerun_never_overwrites_a_completed_record(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(tiny_model_dir, run_dir, "trainer.save_model=false").returncode == 0
    before = (run_dir / "results.json").read_text()
    assert run_cli(tiny_model_dir, run_dir, "trainer.save_model=false", "method.lr=1e30").returncode == 1
    assert (run_dir / "results.json").read_text() == before
    assert read_record(run_dir)["status"] == "completed"
    assert "non-finite" in (run_dir / "results.failed.json").read_text()


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = torch.rand(3)
    torch.rand(5)
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected)


def test_sigterm_stops_the_whole_sweep_after_checkpointing(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "harness.train", "-m", f"model.name_or_path={tiny_model_dir}", *TINY_RUN, *SLOW,
           f"hydra.sweep.dir={sweep}", "seed=0,1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(sweep.glob("0_*/checkpoints/step_0000004")):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    (job0,) = sweep.glob("0_*")
    assert read_record(job0)["status"] == "preempted"
    assert not list(sweep.glob("1_*"))  # the machine is going away: no next job starts
