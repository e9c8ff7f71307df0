"""Tracker: metrics.jsonl rows, and the offline W&B run read back from its .wandb file.

There is no W&B server here, so every wandb run is offline (or an online run that must fall back
to offline) under tmp_path, and `read_offline_run` (tests/telemetry/wandb_offline.py) parses what
wandb actually wrote.
"""
import json
import logging
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from harness.analysis import record_from_summary
from harness.telemetry import REDACTED, Tracker
from tests.helpers import ROOT
from tests.telemetry.conftest import HF_TOKEN
from tests.telemetry.wandb_offline import read_offline_run

pytestmark = pytest.mark.usefixtures("wandb_env")

WANDB_OFFLINE = {"name": "wandb", "project": "lora-harness-test", "mode": "offline", "tags": ["ci"]}


def offline_run_of(tracker):
    assert tracker.mode == "offline" and tracker.sync_dir is not None
    assert tracker.sync_dir.parent == tracker.run_dir / "wandb"
    assert tracker.sync_dir.name.startswith("offline-run-")
    return read_offline_run(tracker.sync_dir)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


RECORD = {
    "status": "completed", "error": None, "method": "lora", "model": "minilm", "task": "rotten_tomatoes",
    "seed": 0, "run_name": "lora-r8-a16-qv-seed0",
    "lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
    "params": {"trainable": 73728, "total": 22713216, "trainable_pct": 0.3246},
    "metrics": {"main_metric": "accuracy", "greater_is_better": True,
                "final": {"loss": 0.55, "accuracy": 0.6}, "best": {"loss": 0.5, "accuracy": 0.7},
                "best_step": 2, "best_epoch": 1, "train_loss": 0.25},
    "throughput": {"tokens_per_s": 1500.0, "step_time_s": 0.8},
    "memory": {"peak_rss_gib": 1.2, "cuda_peak_allocated_gib": None},
    "versions": {"torch": "2.13.0"}, "git": {"commit": "abc123", "dirty": False},
    "config": {"method": {"r": 8}},
}


def test_offline_run_holds_config_history_summary_and_jsonl(tmp_path):
    config = {"method": {"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]},
              "hub": {"hf_token": "secret-1"}, "wandb": {"api_key": "secret-2"},
              "download": {"auth": HF_TOKEN}, "versions": {"torch": "2.13.0"}, "git": {"commit": "abc123"}}
    tracker = Tracker.start(WANDB_OFFLINE, tmp_path / "job0", "lora-r8-a16-qv-seed0", "rank_ablation", "lora",
                            config, tags=["r8"], main_metric="accuracy", greater_is_better=True)
    for step, loss in ((1, 1.0), (2, 0.5), (3, 0.25)):
        tracker.log({"epoch": step / 2, "train/loss": loss, "train/lr": 5e-4 * step}, step=step)
        if step >= 2:
            tracker.log({"epoch": step / 2, "eval/loss": 0.5 if step == 2 else 0.55,
                         "eval/accuracy": 0.7 if step == 2 else 0.6}, step=step)
    tracker.finish(RECORD)
    run = offline_run_of(tracker)

    assert (run.name, run.group, run.job_type, run.tags) == ("lora-r8-a16-qv-seed0", "rank_ablation", "lora",
                                                             ["ci", "r8"])
    assert run.config["method"] == config["method"]
    assert run.config["versions"] == {"torch": "2.13.0"} and run.config["git"] == {"commit": "abc123"}
    assert run.config["hub"]["hf_token"] == run.config["wandb"]["api_key"] == run.config["download"]["auth"] == REDACTED

    # Every row is its own history row on the optimizer-step axis.
    rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in run.history]
    assert rows == [
        {"trainer/step": 1, "trainer/epoch": 0.5, "train/loss": 1.0, "train/lr": 5e-4},
        {"trainer/step": 2, "trainer/epoch": 1.0, "train/loss": 0.5, "train/lr": 1e-3},
        {"trainer/step": 2, "trainer/epoch": 1.0, "eval/loss": 0.5, "eval/accuracy": 0.7},
        {"trainer/step": 3, "trainer/epoch": 1.5, "train/loss": 0.25, "train/lr": 1.5e-3},
        {"trainer/step": 3, "trainer/epoch": 1.5, "eval/loss": 0.55, "eval/accuracy": 0.6},
    ]
    # Streamed summaries: last value, plus the best for eval/loss and the main metric.
    assert run.summary["train/loss"] == 0.25 and run.summary["trainer/step"] == 3
    assert run.summary["eval/accuracy"] == {"last": 0.6, "max": 0.7}
    assert run.summary["eval/loss"] == {"last": 0.55, "min": 0.5}
    # The results record, nested as in results.json, minus config (already the run config).
    assert run.summary["metrics"]["best"]["accuracy"] == 0.7
    assert run.summary["params"]["trainable"] == 73728
    expected = {k: v for k, v in RECORD.items() if k != "config"}
    assert record_from_summary(run.summary) == expected
    assert run.exit_code == 0

    # metrics.jsonl is the same stream, with the RESULTS.md keys.
    jsonl = read_jsonl(tmp_path / "job0" / "metrics.jsonl")
    assert len(jsonl) == 5
    assert jsonl[0] == {"step": 1, "epoch": 0.5, "train/loss": 1.0, "train/lr": 5e-4}
    assert jsonl[4] == {"step": 3, "epoch": 1.5, "eval/loss": 0.55, "eval/accuracy": 0.6}


def test_failed_run_is_finished_with_exit_code_1_and_error(tmp_path):
    tracker = Tracker.start(WANDB_OFFLINE, tmp_path, "full-seed0", "g", "full", {},
                            main_metric="mse", greater_is_better=False)
    tracker.log({"eval/mse": 2.0}, step=1)
    tracker.log({"eval/mse": 1.0}, step=2)
    tracker.log({"eval/mse": 3.0}, step=3)
    tracker.finish({"status": "failed", "error": "FloatingPointError: loss is nan", "metrics": None})
    tracker.finish({"status": "completed"})  # second call: a no-op, not a crash
    run = offline_run_of(tracker)
    assert run.exit_code == 1
    assert run.summary["status"] == "failed" and run.summary["error"] == "FloatingPointError: loss is nan"
    assert run.summary["eval/mse"] == {"last": 3.0, "min": 1.0}


def test_context_manager_finishes_run_as_failed_when_training_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker.start(WANDB_OFFLINE, tmp_path, "full-seed1", "g", "full", {}) as tracker:
            tracker.log({"train/loss": 1.0}, step=1)
            raise RuntimeError("boom")
    run = offline_run_of(tracker)
    assert run.exit_code == 1 and run.summary["error"] == "RuntimeError: boom"


def test_sequential_jobs_get_separate_runs_in_one_group(tmp_path):
    """As in a sequential multirun: even a job that leaks its run must not absorb the next job."""
    leaked = Tracker.start(WANDB_OFFLINE, tmp_path / "0", "lora-r1-a2-q-seed0", "sweep", "lora", {"seed": 0})
    leaked.log({"train/loss": 1.0}, step=1)  # never finished by the job
    second = Tracker.start(WANDB_OFFLINE, tmp_path / "1", "lora-r2-a4-q-seed0", "sweep", "lora", {"seed": 1})
    second.log({"train/loss": 2.0}, step=1)
    second.finish({"status": "completed"})

    a, b = read_offline_run(leaked.sync_dir), offline_run_of(second)
    assert a.path != b.path and a.run_id != b.run_id
    assert a.group == b.group == "sweep"
    assert a.exit_code is not None  # closed by the next wandb.init (reinit="finish_previous")
    assert [r["train/loss"] for r in a.history] == [1.0]
    assert [r["train/loss"] for r in b.history] == [2.0]
    assert (a.config, b.config) == ({"seed": 0}, {"seed": 1})


@pytest.mark.parametrize("logger_cfg", [{"name": "none"}, {**WANDB_OFFLINE, "mode": "disabled"}, None])
def test_disabled_and_none_write_only_metrics_jsonl(tmp_path, logger_cfg):
    import torch

    tracker = Tracker.start(logger_cfg, tmp_path, "full-seed0", None, "full", {})
    tracker.log({"train/loss": torch.tensor(0.5), "train/grad_norm": float("nan"), "time_s": 1.5}, step=1)
    tracker.finish({"status": "completed"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    # Strict JSON: tensors become numbers, NaN becomes null.
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "train/loss": 0.5, "train/grad_norm": None, "time_s": 1.5}]


def test_logger_none_never_imports_wandb(tmp_path):
    code = (
        "import sys; from pathlib import Path; from harness.telemetry import Tracker\n"
        f"t = Tracker.start({{'name': 'none'}}, Path({str(tmp_path)!r}), 'full-seed0', None, 'full', {{}})\n"
        "t.log({'train/loss': 1.0}, step=1); t.finish({'status': 'completed'})\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 1.0}]


@pytest.mark.parametrize("api_key", ["a" * 40, None], ids=["server-unreachable", "no-api-key"])
def test_online_without_server_falls_back_to_offline(tmp_path, monkeypatch, caplog, api_key):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="harness.telemetry"):
        tracker = Tracker.start({**WANDB_OFFLINE, "mode": "online", "init_timeout": 3}, tmp_path,
                                "full-seed0", "g", "full", {"seed": 0})
    assert time.monotonic() - t0 < 20
    assert "continuing OFFLINE" in caplog.text and "wandb sync" in caplog.text
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish({"status": "completed"})
    run = offline_run_of(tracker)
    assert [r["train/loss"] for r in run.history] == [1.0] and run.exit_code == 0


class _BrokenRun:
    """A W&B run whose every call fails, as when the service dies mid-training."""
    def log(self, *a, **k): raise ConnectionError("service died")
    def finish(self, *a, **k): raise ConnectionError("service died")
    @property
    def summary(self): raise ConnectionError("service died")


def test_wandb_failures_only_warn(tmp_path, caplog):
    tracker = Tracker(tmp_path, run=_BrokenRun(), mode="online")
    with caplog.at_level(logging.WARNING, logger="harness.telemetry"):
        tracker.log({"train/loss": 1.0}, step=1)
        tracker.finish({"status": "completed"})
    assert "W&B log failed" in caplog.text and "W&B finish failed" in caplog.text
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 1.0}]


@pytest.mark.parametrize("logger_cfg, match", [
    ({"name": "tensorboard"}, r"logger.name='tensorboard' is invalid: choose one of none, wandb"),
    ({**WANDB_OFFLINE, "mode": "cloud"}, r"logger.mode='cloud' is invalid: choose one of online, offline, disabled"),
    ({**WANDB_OFFLINE, "projct": "x"}, r"logger.projct='x' is invalid: not a logger setting"),
])
def test_bad_logger_config_raises(tmp_path, logger_cfg, match):
    with pytest.raises(ValueError, match=match):
        Tracker.start(logger_cfg, tmp_path, "x", None, "lora", {})


def test_log_rejects_step_inside_metrics(tmp_path):
    tracker = Tracker.start({"name": "none"}, tmp_path, "x", None, "lora", {})
    with pytest.raises(ValueError, match="`step` argument"):
        tracker.log({"step": 3, "train/loss": 1.0}, step=3)


def test_conf_logger_files_load(tmp_path):
    conf = ROOT / "conf" / "logger"
    wandb_cfg = OmegaConf.load(conf / "wandb.yaml")
    fields = (wandb_cfg.name, wandb_cfg.project, wandb_cfg.mode, wandb_cfg.dir, wandb_cfg.group)
    assert fields == ("wandb", "lora-harness", "offline", None, None)
    assert Tracker.start(OmegaConf.load(conf / "none.yaml"), tmp_path, "x", None, "lora", {}).run is None
    tracker = Tracker.start(OmegaConf.merge(wandb_cfg, {"mode": "disabled"}), tmp_path, "x", None, "lora", {})
    assert tracker.mode == "disabled"
    tracker.finish({"status": "completed"})

def test_rewind_drops_later_rows_and_a_torn_last_line(tmp_path):
    tracker = Tracker.start({"name": "none"}, tmp_path, "x", None, "lora", {})
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step}, step=step)
    with open(tracker.metrics_path, "a") as f:
        f.write('{"step": 4, "train/lo')  # a kill mid-write
    assert tracker.rewind(2) == 2
    assert read_jsonl(tracker.metrics_path) == [{"step": 1, "train/loss": 1.0}, {"step": 2, "train/loss": 0.5}]
    tracker.log({"train/loss": 0.25}, step=3)
    assert [r["step"] for r in read_jsonl(tracker.metrics_path)] == [1, 2, 3]
