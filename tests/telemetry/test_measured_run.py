"""What a run measures, read from the records and curves of real CLI runs on the tiny model, each
figure against an independent computation: peak RSS of a sweep job vs the same job alone, step
time with a slow data path, model FLOPs per token against the hand count over the timed batches,
memory in every logged row (metrics.jsonl and W&B), and tables that show MFU and CUDA peaks only
where they were measured."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer

from harness import table
from harness.tiny import save_tiny
from tests.helpers import ROOT, TINY_RUN, cli_env, metrics_rows, read_record, run_cli
from tests.telemetry.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow  # every test here runs the real CLI in subprocesses


def run_patched(patch: str, *overrides, multirun=False, timeout=300):
    """`harness.train` in a process where `patch` (Python source) ran first: the job's forked
    child inherits it, so a test can slow the data path or kill one job."""
    code = f"import sys\n{patch}\nfrom harness.train import main\nmain()"
    cmd = [sys.executable, "-c", code, *(["-m"] if multirun else []), "hydra.job.name=train", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------ peak RSS in a sweep


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory, tiny_model_dir):
    """A 4-layer, 384-wide BERT (~25M params): a first sweep job that leaves memory behind."""
    return save_tiny("bert", tmp_path_factory.mktemp("wide_bert"), hidden_size=384, num_hidden_layers=4,
                     intermediate_size=1536, max_position_embeddings=128)


def test_sweep_job_peak_rss_equals_the_same_job_run_alone(tiny_model_dir, wide_model_dir, tmp_path):
    # Job 0 trains the wide model, job 1 the tiny one; in one shared process job 1 read 16% above
    # the same command alone (0.771 vs 0.666 GiB), however VmHWM was reset at its start.
    sweep = tmp_path / "sweep"
    proc = run_cli(tiny_model_dir, sweep, f"model.name_or_path={wide_model_dir},{tiny_model_dir}",
                   "trainer.save_model=false", multirun=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    wide, tiny = (read_record(d) for d in jobs)
    alone = tmp_path / "alone"
    assert run_cli(tiny_model_dir, alone, "trainer.save_model=false").returncode == 0
    solo = read_record(alone)
    assert wide["memory"]["peak_rss_gib"] > 1.05 * solo["memory"]["peak_rss_gib"]  # job 0 did hold more
    assert tiny["memory"]["peak_rss_gib"] == pytest.approx(solo["memory"]["peak_rss_gib"], rel=0.03)
    if torch.cuda.is_available():  # the same on the device: each job has its own process and allocator
        for key in ("cuda_peak_allocated_gib", "cuda_peak_reserved_gib"):
            assert tiny["memory"][key] == pytest.approx(solo["memory"][key], rel=0.03), key
    # the job ran in a child process, and its log still reached the job's log file
    assert "trainable params" in (jobs[1] / "train.log").read_text()


def test_a_sweep_job_killed_outright_is_recorded_and_the_sweep_goes_on(tiny_model_dir, tmp_path):
    # What the OOM killer does: SIGKILL to the job's process, no chance to write its own record.
    patch = ("import os, signal, harness.train.loop as t\n_fit = t.fit\n"
             "def fit(cfg, *a, **k):\n"
             "    if cfg.seed == 1: os.kill(os.getpid(), signal.SIGKILL)\n"
             "    return _fit(cfg, *a, **k)\n"
             "t.fit = fit")
    sweep = tmp_path / "sweep"
    proc = run_patched(patch, f"model.name_or_path={tiny_model_dir}", *TINY_RUN, "trainer.save_model=false",
                       "seed=0,1,2", f"hydra.sweep.dir={sweep}", multirun=True)
    assert proc.returncode == 1, proc.stderr[-3000:]
    records = [read_record(d) for d in sorted(p.parent for p in sweep.glob("*/results.json"))]
    assert [(r["seed"], r["status"]) for r in records] == [(0, "completed"), (1, "failed"), (2, "completed")]
    assert records[1]["error"] == "job process killed by SIGKILL (out of memory?)"
    assert "1 job(s) did not complete" in proc.stderr


# ------------------------------------------------------------------------------ step time


def test_step_time_includes_fetching_and_collating_the_batches(tiny_model_dir, tmp_path):
    # 0.2 s per collated batch, 2 micro-batches per step: the data path is >= 0.4 s of every step.
    # Fetched before the clock started, as before, the tiny model's step would read ~0.02 s.
    patch = ("import time, harness.data as t\n_call = t.Collator.__call__\n"
             "t.Collator.__call__ = lambda self, ex: (time.sleep(0.2), _call(self, ex))[1]")
    run_dir = tmp_path / "slow"
    proc = run_patched(patch, f"model.name_or_path={tiny_model_dir}", *TINY_RUN, "trainer.batch_size=4",
                       "trainer.grad_accum=2", "trainer.save_model=false", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = read_record(run_dir)
    t = rec["throughput"]
    assert rec["steps"] == 12 and t["steps_timed"] == 9
    assert 0.4 <= t["data_time_s"] < t["step_time_s"]
    assert rec["train_time_s"] >= 12 * 0.4
    # samples/s over the 9 timed steps of 8 examples can be no more than 8 per 0.4 s
    assert t["samples_per_s"] <= 8 / 0.4


def _tiny_run_task(tiny_model_dir):
    from omegaconf import OmegaConf

    from harness.data import build_task

    cfg = OmegaConf.load(ROOT / "conf" / "task" / "rotten_tomatoes.yaml")
    cfg.limit_train, cfg.limit_eval = 96, 32
    return build_task(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), seed=0)


# ------------------------------------------------------------------------------ one run, every field


@pytest.fixture(scope="module")
def wandb_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("measured")
    proc = run_cli(tiny_model_dir, run_dir, "trainer.log_every=1", "logger=wandb", "logger.mode=offline",
                   "trainer.save_model=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_record_flops_per_token_is_the_hand_count_over_the_timed_batches(tiny_model_dir, wandb_run):
    rec = read_record(wandb_run)
    task = _tiny_run_task(tiny_model_dir)
    # steps 4..12 (3 warm-up steps untimed), one batch of 8 each; LoRA q+v on the tiny BERT:
    # 64,000 FLOPs per token, 6,528 per sequence, 768 * L^2 attention
    batches = task.train_batches(8, 0, 0)[3:12]
    lengths = [len(task.train[i]["input_ids"]) for b in batches for i in b]
    flops = sum(64_000 * n + 6_528 + 768 * n * n for n in lengths)
    t = rec["throughput"]
    assert t["flops_per_token"] == pytest.approx(flops / sum(lengths), rel=1e-12)
    if rec["device"] == "cpu":
        assert t["mfu"] is None and t["peak_flops"] is None
    elif t["peak_flops"]:
        assert t["mfu"] == pytest.approx(t["flops_per_token"] * t["tokens_per_s"] / t["peak_flops"], rel=1e-9)


def test_memory_fields_split_training_and_evaluation_peaks(wandb_run):
    rec = read_record(wandb_run)
    mem = rec["memory"]
    keys = ("cuda_peak_allocated_gib", "cuda_peak_reserved_gib", "cuda_eval_peak_allocated_gib",
            "cuda_eval_peak_reserved_gib")
    assert set(keys) <= set(mem)
    if rec["device"] == "cpu":
        assert [mem[k] for k in keys] == [None] * 4
    else:
        assert all(mem[k] > 0 for k in keys)
        assert mem["cuda_peak_allocated_gib"] <= mem["cuda_peak_reserved_gib"]


def test_every_logged_training_row_carries_memory_in_jsonl_and_wandb(wandb_run):
    rec = read_record(wandb_run)
    rows = [r for r in metrics_rows(wandb_run) if "train/loss" in r]
    assert len(rows) == 12
    for row in rows:
        assert 0.1 < row["train/rss_gib"] <= rec["memory"]["peak_rss_gib"] + 1e-6
        if rec["device"] != "cpu":
            assert 0 < row["train/cuda_allocated_gib"] <= row["train/cuda_peak_allocated_gib"]
    (run,) = [read_offline_run(p) for p in (wandb_run / "wandb").glob("offline-run-*")]
    streamed = [h["train/rss_gib"] for h in run.history if "train/rss_gib" in h]
    assert streamed == pytest.approx([r["train/rss_gib"] for r in rows])


def test_tables_show_mfu_and_cuda_peak_by_default_only_where_measured(tmp_path, capsys):
    src = ROOT / "tests" / "fixtures" / "sweep_lora_vs_full"
    for run in sorted(src.glob("[0-2]_full-seed*")):
        shutil.copytree(run, tmp_path / "cpu" / run.name)
        shutil.copytree(run, tmp_path / "cuda" / run.name)
        rec = json.loads((run / "results.json").read_text())
        rec["throughput"]["mfu"] = 0.3 + 0.01 * rec["seed"]  # 0.30, 0.31, 0.32 -> 0.31 ± 0.01
        rec["memory"]["cuda_peak_allocated_gib"] = 4.0
        (tmp_path / "cuda" / run.name / "results.json").write_text(json.dumps(rec))
    assert table.main([str(tmp_path / "cpu")]) == 0
    header = capsys.readouterr().out.splitlines()[2]
    assert "MFU" not in header and "CUDA" not in header
    assert table.main([str(tmp_path / "cuda")]) == 0
    out = capsys.readouterr().out
    assert "| MFU" in out and "CUDA peak alloc. (GiB)" in out and "0.3100 ± 0.0100" in out
