"""Secret redaction: configs, strings, log records and Hydra's YAML files, and a whole sweep's
folder, where no token, password or secret environment variable's value may appear."""
import logging

import pytest
from omegaconf import OmegaConf

from harness.telemetry import REDACTED, install_secret_redaction, redact, redact_text, redact_yaml_file
from tests.telemetry.conftest import HF_TOKEN

pytestmark = pytest.mark.usefixtures("wandb_env")


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


@pytest.mark.slow
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
