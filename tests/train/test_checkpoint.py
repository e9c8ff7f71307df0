"""Preemption and divergence: a killed run resumes to exactly the uninterrupted numbers, as one
record and one W&B run, from whatever the crash left (a torn curve, a corrupt newest checkpoint);
every step appears once in the curve of the attempt that produced the record."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from harness.train import checkpoint
from tests.helpers import ROOT, TINY_RUN, cli_env, metrics_rows, read_record, run_cli
from tests.telemetry.wandb_offline import read_offline_run

# Slow enough to interrupt: an evaluation after every one of 2 x 12 steps, dropout on (RNG state
# matters), checkpoints every 4 steps (step 12 is an epoch boundary).
SLOW = ("task.limit_train=96", "trainer.epochs=2", "task.limit_eval=128", "trainer.eval_every=1", "trainer.checkpoint_every=4",
        "trainer.log_every=1", "method.dropout=0.1", "trainer.save_model=false")


WANDB = ("logger=wandb", "logger.mode=offline")


def start(model_dir, run_dir, *overrides, slow=SLOW):
    cmd = [sys.executable, "-m", "harness.train", f"model.name_or_path={model_dir}", *TINY_RUN, *slow,
           f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(path, proc, timeout=120, text=None):
    """Until `path` exists (and holds `text`, when given), failing if the run ends first."""
    deadline = time.time() + timeout
    while not path.exists() or (text is not None and text not in path.read_text()):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, f"{path} never appeared" + (f" with {text!r}" if text else "")
        time.sleep(0.01)


def loop_state(ckpt):
    return torch.load(ckpt / "state.pt", weights_only=True)["loop"]


def assert_each_row_once(run_dir):
    """A train row and an eval row may share a step; the same kind of row twice may not."""
    kinds = Counter((r["step"], "eval" if any(k.startswith("eval/") for k in r) else "train")
                    for r in metrics_rows(run_dir))
    assert [k for k, n in kinds.items() if n > 1] == []


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


@pytest.mark.slow
def test_sigkill_mid_write_resumes_from_the_last_good_checkpoint_to_identical_metrics(tiny_model_dir, reference,
                                                                                      tmp_path):
    """What a hard kill can leave: a torn last line in metrics.jsonl and a torn newest checkpoint.
    The run continues from the checkpoint before, to the uninterrupted numbers, as one record whose
    times and step counts add up over both processes."""
    killed = tmp_path / "killed"
    proc = start(tiny_model_dir, killed)
    wait_for(killed / "checkpoints" / "step_0000012", proc)  # the end of epoch 1
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "train/lo')  # killed mid-row
    *_, previous, newest = checkpoint.list_checkpoints(killed / "checkpoints")
    first = loop_state(previous)["segments"]  # what the killed process had done at that checkpoint
    torn = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(torn[:len(torn) // 2])

    resumed = run_cli(tiny_model_dir, killed, *SLOW)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{newest} cannot be loaded" in resumed.stdout and f"resumed from {previous}" in resumed.stdout
    assert comparable(killed) == comparable(reference)
    assert_each_row_once(killed)
    assert not (killed / "checkpoints").exists()  # a completed run keeps no checkpoints

    rec = read_record(killed)
    step = int(previous.name.split("_")[1])
    assert len(first) == 1 and first[0]["from_step"] == 0 and first[0]["to_step"] == step
    assert rec["segments"][0] == first[0]
    assert (rec["segments"][1]["from_step"], rec["segments"][1]["to_step"]) == (step, 24)
    assert rec["segments"][1]["train_time_s"] > 0
    assert rec["train_time_s"] == pytest.approx(first[0]["train_time_s"] + rec["segments"][1]["train_time_s"])
    assert rec["wall_time_s"] == pytest.approx(first[0]["wall_time_s"] + rec["segments"][1]["wall_time_s"])
    assert rec["wall_time_s"] > rec["train_time_s"] > first[0]["train_time_s"]
    # 24 steps, the first 3 warm-up: the timed steps of both processes add up, as uninterrupted
    assert rec["throughput"]["steps_timed"] == read_record(reference)["throughput"]["steps_timed"] == 21


@pytest.mark.slow
def test_killed_before_its_first_checkpoint_restarts_with_each_step_once(tiny_model_dir, reference, tmp_path):
    run_dir = tmp_path / "early"
    proc = start(tiny_model_dir, run_dir, "trainer.checkpoint_every=null")
    wait_for(run_dir / "metrics.jsonl", proc, text='"eval/')
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = (run_dir / "metrics.jsonl").read_text()
    proc = run_cli(tiny_model_dir, run_dir, *SLOW, "trainer.checkpoint_every=null")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert comparable(run_dir) == comparable(reference)  # a fresh attempt, each step once
    assert_each_row_once(run_dir)
    assert (run_dir / "attempts" / "1" / "metrics.jsonl").read_text() == killed_rows  # kept aside
    assert read_record(run_dir)["attempt"] == 2


@pytest.mark.slow
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
    (saved,) = loop_state(run_dir / "checkpoints" / f"step_{step:07d}")["segments"]
    (segment,) = rec["segments"]  # the record's wall time runs to the end of the process, the checkpoint's to the save
    assert {**segment, "wall_time_s": None} == {**saved, "wall_time_s": None} and segment["to_step"] == step
    assert segment["wall_time_s"] >= saved["wall_time_s"] == pytest.approx(rec["wall_time_s"], abs=5)
    assert run_cli(tiny_model_dir, run_dir, *SLOW).returncode == 0
    assert comparable(run_dir) == comparable(reference)
    assert_each_row_once(run_dir)
    assert [s["to_step"] for s in read_record(run_dir)["segments"]] == [step, 24]


@pytest.mark.slow
def test_sigterm_in_the_final_evaluation_ends_preempted_and_resumes_in_the_same_wandb_run(tiny_model_dir, tmp_path):
    """No step boundary comes during the final evaluation to check a flag: the signal must still
    end the run as preempted, record written, W&B run finished; the same command then only redoes
    the evaluation (training ended with a checkpoint) and streams into the same W&B run."""
    run_dir = tmp_path / "final"
    last_eval = ("trainer.max_steps=2", "trainer.checkpoint_every=1", "task.limit_eval=400",
                 "trainer.eval_batch_size=1", "trainer.save_model=false", *WANDB)  # a ~3 s final evaluation
    proc = start(tiny_model_dir, run_dir, slow=last_eval)
    wait_for(run_dir / "train.log", proc, text="final evaluation at step 2")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 1
    rec = read_record(run_dir)
    assert rec["status"] == "preempted", rec["error"]
    assert rec["error"] == ("Preempted: signal 15 outside a training step (while loading, in the final "
                            "evaluation or while saving)")
    (first,) = [read_offline_run(p) for p in (run_dir / "wandb").glob("offline-run-*")]
    assert first.exit_code == 1 and first.summary["status"] == "preempted"

    proc = run_cli(tiny_model_dir, run_dir, *last_eval)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resumed from" in proc.stdout and "step_0000002 (step 2 of 2)" in proc.stdout
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and rec["steps"] == 2
    assert [(s["from_step"], s["to_step"]) for s in rec["segments"]] == [(0, 2), (2, 2)]
    assert rec["segments"][1]["train_time_s"] == 0  # nothing trained twice
    runs = sorted((read_offline_run(p) for p in (run_dir / "wandb").glob("offline-run-*")), key=lambda r: r.exit_code)
    assert [r.exit_code for r in runs] == [0, 1] and runs[0].run_id == runs[1].run_id == first.run_id
    assert runs[0].summary["status"] == "completed" and runs[0].summary["traceback"] is None
    assert_each_row_once(run_dir)


@pytest.mark.slow
def test_changed_config_refuses_to_resume_and_restart_sets_the_old_attempt_aside(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "changed"
    # diverges at step 2, after the checkpoint of step 1: a run folder with a checkpoint to continue
    assert run_cli(tiny_model_dir, run_dir, "method.lr=1e30", "trainer.checkpoint_every=1",
                   "trainer.log_every=1").returncode == 1
    assert checkpoint.read_meta(run_dir / "checkpoints" / "step_0000001")["config"]["method.lr"] == 1e30

    proc = run_cli(tiny_model_dir, run_dir, "method.lr=1e-2", "trainer.checkpoint_every=1", "trainer.log_every=1")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "failed:" in line]
    assert len(errors) == 1 and "the config changed since checkpoint step_0000001 (method.lr: 1e+30 -> 0.01)" \
        in errors[0] and "trainer.restart=true" in errors[0], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert (run_dir / "checkpoints" / "step_0000001").exists()  # refused, nothing touched

    proc = run_cli(tiny_model_dir, run_dir, "method.lr=1e-2", "trainer.restart=true", "trainer.log_every=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = read_record(run_dir)
    assert rec["status"] == "completed" and rec["lr"] == 1e-2 and len(rec["segments"]) == 1
    assert [r["step"] for r in metrics_rows(run_dir) if "train/loss" in r] == list(range(1, 13))
    aside = run_dir / "attempts" / "1"
    assert (aside / "checkpoints" / "step_0000001" / "state.pt").exists()
    assert [json.loads(line)["step"] for line in (aside / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((aside / "results.json").read_text())["status"] == "failed"
    assert rec["attempt"] == 2


@pytest.mark.slow
def test_nan_loss_fails_with_the_step(tiny_model_dir, tmp_path):
    proc = run_cli(tiny_model_dir, tmp_path / "nan", "method.lr=1e30")
    assert proc.returncode == 1
    rec = read_record(tmp_path / "nan")
    assert rec["status"] == "failed"
    assert rec["error"] == "TrainingFailed: non-finite loss/grad norm (nan/nan) at step 2"


@pytest.mark.slow
def test_nan_loss_can_skip_steps_instead(tiny_model_dir, tmp_path):
    proc = run_cli(tiny_model_dir, tmp_path / "skip", "method.lr=1e30", "trainer.on_nan=skip")
    assert proc.returncode == 0
    rec = read_record(tmp_path / "skip")
    assert rec["status"] == "completed" and rec["metrics"]["skipped_steps"] == 11


@pytest.mark.slow
def test_reruns_keep_each_record_with_its_own_curve(tiny_model_dir, tmp_path):
    """Run, fail a re-run, run again: the record and curve in the run folder always belong together,
    each step once; a failed re-run never touches the completed pair; earlier attempts are kept."""
    run_dir = tmp_path / "run"
    common = ("trainer.save_model=false", "trainer.log_every=1")
    assert run_cli(tiny_model_dir, run_dir, *common).returncode == 0
    before = {name: (run_dir / name).read_text() for name in ("results.json", "metrics.jsonl")}
    assert run_cli(tiny_model_dir, run_dir, *common, "method.lr=1e30").returncode == 1
    assert {name: (run_dir / name).read_text() for name in before} == before
    assert read_record(run_dir)["status"] == "completed"
    failed = json.loads((run_dir / "results.failed.json").read_text())
    assert "non-finite" in failed["error"] and failed["attempt"] == 2
    assert [json.loads(line)["step"] for line in (run_dir / "attempts/2/metrics.jsonl").read_text().splitlines()] == [1]

    assert run_cli(tiny_model_dir, run_dir, *common).returncode == 0
    assert read_record(run_dir)["attempt"] == 3 and not (run_dir / "results.failed.json").exists()
    measured = ("train/tokens_per_s", "train/rss_gib", "train/cuda_allocated_gib", "train/cuda_peak_allocated_gib")
    untimed = lambda text: [{k: v for k, v in json.loads(line).items() if k not in measured}  # noqa: E731
                            for line in text.splitlines()]
    assert untimed((run_dir / "metrics.jsonl").read_text()) == untimed(before["metrics.jsonl"])  # same seed: same curve
    assert_each_row_once(run_dir)
    assert {name: (run_dir / "attempts/1" / name).read_text() for name in before} == before
    assert json.loads((run_dir / "attempts/2/results.json").read_text())["attempt"] == 2


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    torch.manual_seed(3)
    state = checkpoint.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = torch.rand(3)
    torch.rand(5)
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
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


def test_checkpoint_files_and_folders_are_fsynced_before_and_after_the_rename(tiny_bert, tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: events.append(("fsync", path.relative_to(tmp_path).as_posix())))
    rename = type(tmp_path).rename
    monkeypatch.setattr(type(tmp_path), "rename", lambda self, target: (events.append(("rename", self.name)),
                                                                         rename(self, target))[1])
    optimizer = torch.optim.AdamW(tiny_bert.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    flat = checkpoint.resume_config({"method": {"lr": 1e-3}, "logger": {"name": "wandb"}, "seed": 0})
    path = checkpoint.save(tmp_path / "checkpoints", 3, tiny_bert, optimizer, scheduler, {"step": 3}, keep=2,
                           meta={"config": flat, "fingerprint": checkpoint.fingerprint(flat)})
    tmp = "checkpoints/.tmp_step_0000003"
    assert events == [("fsync", f"{tmp}/trainable.safetensors"), ("fsync", f"{tmp}/state.pt"),
                      ("fsync", f"{tmp}/meta.json"), ("fsync", tmp), ("rename", ".tmp_step_0000003"),
                      ("fsync", "checkpoints")]
    meta = checkpoint.read_meta(path)
    assert meta["step"] == 3 and meta["config"] == {"method.lr": 1e-3, "seed": 0}  # logger may change
    checkpoint.check_config(path, meta, flat, "trainer.restart=true")  # the same config passes
    with pytest.raises(checkpoint.ConfigError, match=r"^the config changed since checkpoint step_0000003 "
                       r"\(method.lr: 0.001 -> 0.002; seed: 0 -> \(absent\)\)"):
        checkpoint.check_config(path, meta, {"method.lr": 2e-3}, "trainer.restart=true")
