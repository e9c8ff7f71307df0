"""What the tracker and redaction tests share: a wandb kept quiet, offline and out of the home
directory, and a Hugging Face token in the environment that must never be written anywhere."""

import pytest

HF_TOKEN = "hf_" + "A1b2C3d4" * 5


@pytest.fixture
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
