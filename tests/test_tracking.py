"""Tracker: metrics.jsonl rows, and the offline W&B run read back from its .wandb file.

There is no W&B server here, so every wandb run is offline (or an online run that must fall back
to offline) under tmp_path, and `read_offline_run` parses what wandb actually wrote.
"""
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.tracking import (REDACTED, Tracker, install_secret_redaction, read_offline_run, record_from_summary,
                              redact, redact_text, redact_yaml_file, run_name)

WANDB_OFFLINE = {"name": "wandb", "project": "lora-harness-test", "mode": "offline", "tags": ["ci"]}
HF_TOKEN = "hf_" + "A1b2C3d4" * 5


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
    """Keep wandb quiet, off the network and out of the home directory."""
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT",
                "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NAME", "WANDB_JOB_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("XDG_CACHE_HOME", "xdg_cache")):  # wandb-core's own debug logs
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)


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
        "import sys; from pathlib import Path; from harness.tracking import Tracker\n"
        f"t = Tracker.start({{'name': 'none'}}, Path({str(tmp_path)!r}), 'full-seed0', None, 'full', {{}})\n"
        "t.log({'train/loss': 1.0}, step=1); t.finish({'status': 'completed'})\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 1.0}]


@pytest.mark.parametrize("api_key", ["a" * 40, None], ids=["server-unreachable", "no-api-key"])
def test_online_without_server_falls_back_to_offline(tmp_path, monkeypatch, caplog, api_key):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="harness.tracking"):
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
    with caplog.at_level(logging.WARNING, logger="harness.tracking"):
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
    conf = Path(__file__).parents[1] / "conf" / "logger"
    wandb_cfg = OmegaConf.load(conf / "wandb.yaml")
    fields = (wandb_cfg.name, wandb_cfg.project, wandb_cfg.mode, wandb_cfg.dir, wandb_cfg.group)
    assert fields == ("wandb", "lora-harness", "offline", None, None)
    assert Tracker.start(OmegaConf.load(conf / "none.yaml"), tmp_path, "x", None, "lora", {}).run is None
    tracker = Tracker.start(OmegaConf.merge(wandb_cfg, {"mode": "disabled"}), tmp_path, "x", None, "lora", {})
    assert tracker.mode == "disabled"
    tracker.finish({"status": "completed"})


@pytest.mark.parametrize("method, seed, expected", [
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": ["query", "value"]}, 0, "lora-r8-a16-qv-seed0"),
    ({"name": "lora", "r": 4, "alpha": 8.0, "target_modules": ["value", "query", "key", "dense"]}, 2,
     "lora-r4-a8-qkvo-seed2"),
    ({"name": "lora", "r": 16, "alpha": 0.5, "target_modules": ["q_proj", "o_proj", "gate_proj", "up_proj"]}, 1,
     "lora-r16-a0.5-qo+gate_proj+up_proj-seed1"),
    ({"name": "lora", "r": 2, "alpha": 4, "target_modules": ["out_proj"]}, 0, "lora-r2-a4-o-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"}, 0, "lora-r8-a16-all-seed0"),
    ({"name": "lora", "r": 8, "alpha": 16, "target_modules": ["intermediate"]}, 0, "lora-r8-a16-intermediate-seed0"),
    ({"name": "full", "lr": 2e-5}, 3, "full-seed3"),
])
def test_run_name(method, seed, expected):
    assert run_name(method, seed) == expected
    assert run_name(OmegaConf.create(method), seed) == expected


def test_run_name_with_lr_and_bad_method():
    assert run_name({"name": "full", "lr": 5e-4}, 0, include_lr=True) == "full-lr0.0005-seed0"
    with pytest.raises(ValueError, match=r"method.name must be one of \('lora', 'full'\), got 'ia3'"):
        run_name({"name": "ia3"}, 0)
    with pytest.raises(ValueError, match="needs r and alpha"):
        run_name({"name": "lora", "alpha": 16}, 0)


def test_redact():
    config = OmegaConf.create({
        "WANDB_API_KEY": "k1", "hub": {"hf_token": "k2", "use_auth_token": True, "token": None},
        "db": {"password": 123, "Secret": "k3", "private-key": "k4"},
        "env": [{"name": "x", "value": HF_TOKEN}],  # value of a secret env var, under an innocent key
        "overrides": ["method.r=8", "+hub.hf_token=abc"],
        "tokenizer": {"pad_token": "[PAD]", "eos_token": "</s>", "pad_token_id": 0},
        "train": {"max_tokens": 512, "tokens_per_s": 1.0, "keys": ["query"], "seed": 0},
    })
    out = redact(config)
    assert out == {
        "WANDB_API_KEY": REDACTED, "hub": {"hf_token": REDACTED, "use_auth_token": True, "token": None},
        "db": {"password": REDACTED, "Secret": REDACTED, "private-key": REDACTED},
        "env": [{"name": "x", "value": REDACTED}],
        "overrides": ["method.r=8", f"+hub.hf_token={REDACTED}"],
        "tokenizer": {"pad_token": "[PAD]", "eos_token": "</s>", "pad_token_id": 0},
        "train": {"max_tokens": 512, "tokens_per_s": 1.0, "keys": ["query"], "seed": 0},
    }
    assert type(out) is dict and type(out["overrides"]) is list  # plain containers, ready for JSON


def test_redact_text_inside_strings(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plain-secret-123")  # a secret env var by its name
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to search for inside strings
    line = (f"#0 : seed=0 +model.token=xyz123 +db.password=hunter2 use_auth_token=true pad_token=[PAD] "
            f"url=https://u:plain-secret-123@host dirname=seed=0,+hub.api_key=k9,method.r=8 abc {HF_TOKEN}x")
    assert redact_text(line) == (
        f"#0 : seed=0 +model.token={REDACTED} +db.password={REDACTED} use_auth_token=true pad_token=[PAD] "
        f"url=https://u:{REDACTED}@host dirname=seed=0,+hub.api_key={REDACTED},method.r=8 abc {REDACTED}x")


def test_log_records_are_redacted_whatever_handler_writes_them(tmp_path):
    install_secret_redaction()
    install_secret_redaction()  # idempotent: one factory, not two stacked
    assert logging.getLogRecordFactory().redacts_secrets
    logger = logging.getLogger("test_secret_redaction")
    handler = logging.FileHandler(tmp_path / "job.log")  # made after the install, as Hydra's are
    logger.addHandler(handler)
    try:
        logger.warning("overrides: %s", ["+model.token=abc123", "seed=0"])
        try:
            raise ValueError(f"bad token {HF_TOKEN}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "job.log").read_text()
    assert "abc123" not in text and HF_TOKEN not in text
    assert f"overrides: ['+model.token={REDACTED}', 'seed=0']" in text and f"ValueError: bad token {REDACTED}" in text


def test_redact_yaml_file_keeps_interpolations(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  token: abc\n  name: ${{oc.env:USER}}\noverrides:\n- +model.token={HF_TOKEN}\n- seed=0\n")
    assert redact_yaml_file(path)
    assert OmegaConf.to_container(OmegaConf.load(path)) == {
        "model": {"token": REDACTED, "name": "${oc.env:USER}"}, "overrides": [f"+model.token={REDACTED}", "seed=0"]}
    assert not redact_yaml_file(path)  # nothing left to redact: not rewritten


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


def test_secrets_stay_out_of_every_file_of_a_sweep(tiny_model_dir, tmp_path, monkeypatch):
    """A token, a password and a secret env var's value given on the command line: none of them in
    any file of the sweep folder (Hydra's, the record, the log, W&B's offline run) or on the console,
    whether the job completes (`model.token` is a real setting) or fails validation (`hub_password`
    and `auth` are not model settings: the job fails with one line, its record and W&B run written)."""
    from tests.helpers import read_record, run_cli

    token, password, env_secret = "hf_" + "Zy9" * 12, "s3cr3t-Pa55word-42", "env-only-secret-7781"
    monkeypatch.setenv("MY_SERVICE_TOKEN", env_secret)
    runs = {"completed": (0, [f"+model.token={token}"]),
            "failed": (1, [f"+model.token={token}", f"+model.hub_password={password}",
                           "+model.auth=${oc.env:MY_SERVICE_TOKEN}"])}
    for status, (code, secrets) in runs.items():
        sweep = tmp_path / status
        proc = run_cli(tiny_model_dir, sweep, *secrets, "logger=wandb", "logger.mode=offline",
                       "trainer.save_model=false", "task.limit_train=16", multirun=True)
        assert proc.returncode == code, proc.stderr[-3000:]
        (job,) = [p.parent for p in sweep.glob("*/results.json")]
        rec = read_record(job)
        assert rec["status"] == status and f"+model.token={REDACTED}" in rec["sweep"]["overrides"]
        assert rec["config"]["model"]["token"] == REDACTED
        if status == "failed":
            assert rec["config"]["model"]["auth"] == REDACTED and "not a model setting" in rec["error"]
        files = [p for p in sweep.rglob("*") if p.is_file()]
        assert {".hydra/hydra.yaml", "multirun.yaml", "train.log", "results.json"} <= {
            p.relative_to(job if job in p.parents else sweep).as_posix() for p in files}
        assert any(p.suffix == ".wandb" for p in files)
        for secret in (token, password, env_secret):
            assert [str(p) for p in files if secret.encode() in p.read_bytes()] == [], secret
            assert secret not in str(job) and secret not in proc.stdout + proc.stderr
