"""The results record: one `results.json` per run, the file every table and plot is built from.

Written atomically (temp file + rename) so a crash never leaves half a record, and a failed run
never replaces a completed one (it goes to `results.failed.json` beside it instead).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

RESULTS = "results.json"
PACKAGES = ("torch", "transformers", "datasets", "evaluate", "hydra-core", "safetensors", "wandb", "lora-harness")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: Path | None = None) -> dict:
    """Commit and dirtiness of the harness checkout (None outside a git checkout)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True).stdout
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_results(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RESULTS
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_results(run_dir: Path, record: dict) -> Path:
    """Write the record; a non-completed record never overwrites a completed one."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS
    previous = read_results(run_dir)
    if record.get("status") != "completed" and previous and previous.get("status") == "completed":
        path = run_dir / "results.failed.json"
    write_json_atomic(path, record)
    return path
