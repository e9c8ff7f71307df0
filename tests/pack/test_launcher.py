"""`harness-train -m ... hydra/launcher=packed` end to end on the tiny BERT: LoRA jobs in a pack, a
full-FT job alone, every record where the basic launcher would have put it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness.pack.group import group_jobs, pack_reason
from tests.helpers import ROOT, TINY_RUN, cli_env, metrics_rows, read_record, run_cli
from tests.pack.helpers import job_cfg

pytestmark = pytest.mark.slow  # runs the real CLI


def test_grouping_names_why_a_job_runs_alone(tiny_model_dir):
    cfgs = [job_cfg(tiny_model_dir, "method.r=4"), job_cfg(tiny_model_dir, "method=full"),
            job_cfg(tiny_model_dir, "method.r=8", "seed=1"), job_cfg(tiny_model_dir, "method.init=pissa"),
            job_cfg(tiny_model_dir, "trainer.batch_size=4"), job_cfg(tiny_model_dir, "method.lr=1e-3")]
    packs, alone = group_jobs(cfgs, max_pack=2)
    assert packs == [[0, 2]]
    assert alone == {1: "method=full: only LoRA jobs share a frozen base",
                     3: "method.init=pissa rewrites the base weights it adapts, so its base is its own",
                     4: "no other job shares its model, task and budget",
                     5: "no other job shares its model, task and budget"}  # max_pack=2 split 0, 2 | 5
    assert pack_reason(cfgs[0]) is None
    # the LoRA family: LoRA+ packs (its ratio is in the job's own optimizer); the rest own more than a low-rank path
    assert pack_reason(job_cfg(tiny_model_dir, "method=lora_plus")) is None
    assert {preset: pack_reason(job_cfg(tiny_model_dir, f"method={preset}")) for preset in ("dora", "olora", "lora_fa")} == {
        "dora": "method.use_dora=true: DoRA rescales the base product per job, not a low-rank path beside it",
        "olora": "method.init=olora rewrites the base weights it adapts, so its base is its own",
        "lora_fa": "method.freeze_a=true: LoRA-FA's frozen A is the job's own, not part of the shared base"}


def test_packed_launcher_runs_lora_jobs_in_a_pack_and_full_ft_alone(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, "method=lora,full", "seed=0,1", "hydra/launcher=packed",
                   "trainer.save_model=false", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = {d.name: read_record(d) for d in sorted(p.parent for p in sweep.glob("*/results.json"))}
    assert len(records) == 4 and all(r["status"] == "completed" for r in records.values())
    lora = [r for r in records.values() if r["method"] == "lora"]
    full = [r for r in records.values() if r["method"] == "full"]
    forward = "concat" if lora[0]["device"].startswith("cuda") else "per_job"  # hydra.launcher.forward=auto
    assert [r["packed"] for r in lora] == [{"size": 2, "pack_id": "pack0", "forward": forward}] * 2
    assert [r["seed"] for r in lora] == [0, 1] and all(r["packed"] is None for r in full) and len(full) == 2
    assert sorted(r["sweep"]["job_num"] for r in records.values()) == [0, 1, 2, 3]
    assert all((sweep / name / ".hydra" / "config.yaml").exists() for name in records)
    assert all((sweep / name / "metrics.jsonl").exists() for name in records)


def test_a_pack_killed_outright_resumes_every_job_with_the_same_command(tiny_model_dir, tmp_path):
    """SIGKILL (no chance to checkpoint or write a record) once both jobs have a checkpoint: the same
    command continues each job from its last checkpoint, and the jobs end as an uninterrupted pack
    does, every step once in their curves."""
    args = ("method.r=4,8", "hydra/launcher=packed", "trainer.save_model=false", "trainer.checkpoint_every=4",
            "trainer.max_steps=300", "trainer.log_every=1")
    whole = tmp_path / "whole"
    assert run_cli(tiny_model_dir, whole, *args, multirun=True).returncode == 0
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "harness.train", "-m", f"model.name_or_path={tiny_model_dir}", *TINY_RUN,
           f"hydra.sweep.dir={cut}", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while len(list(cut.glob("*/checkpoints/step_*"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the pack's forked process alike
    proc.wait()
    assert len(list(cut.glob("*/checkpoints/step_*"))) >= 2 and not list(cut.glob("*/results.json"))
    assert run_cli(tiny_model_dir, cut, *args, multirun=True).returncode == 0
    for job in sorted(p.parent for p in whole.glob("*/results.json")):
        resumed, uninterrupted = read_record(cut / job.name), read_record(job)
        assert resumed["status"] == "completed" and resumed["packed"]["size"] == 2
        assert resumed["segments"][0]["from_step"] == 0 and resumed["segments"][-1]["from_step"] > 0
        assert resumed["metrics"]["final"] == pytest.approx(uninterrupted["metrics"]["final"], abs=1e-4)
        steps = [r["step"] for r in metrics_rows(cut / job.name) if "train/loss" in r]
        assert steps == list(range(1, resumed["steps"] + 1)) == list(range(1, uninterrupted["steps"] + 1))
