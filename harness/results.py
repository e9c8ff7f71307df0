"""The results record: one `results.json` per run, the file every table and plot is built from.

Written atomically (temp file + rename) so a crash never leaves half a record, and a failed run
never replaces a completed one (it goes to `results.failed.json` beside it instead). Secrets are
redacted from the whole record as it is written.

Attempts: one attempt trains a run folder's config from step 0 to its end, in one process or
several (a killed or preempted run resumed from its checkpoints is still one attempt). Running a
command again without a checkpoint to continue from starts a new attempt, and the run folder keeps
each step once in the curve of the attempt that produced its record:
- `results.json` + `metrics.jsonl`: the record and its curve;
- `attempts/<n>/`: earlier attempts set aside, never deleted: their `metrics.jsonl`, their
  `results.json` when they wrote one, their `checkpoints/` when a fresh start (or unreadable
  checkpoints) set them aside;
- a re-run over a completed record writes its curve to `attempts/<n>/metrics.jsonl`; completed, it
  replaces the record and its curve (which move to `attempts/<m>/`); failed or preempted, its record
  goes to `results.failed.json` (its `attempt` field names the folder of its curve) and the
  completed record and curve stay untouched.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import string
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.telemetry import redact

RESULTS = "results.json"
FAILED = "results.failed.json"
CURVE = "metrics.jsonl"
ATTEMPTS = "attempts"
CHECKPOINTS = "checkpoints"
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


# ----------------------------------------------------------------------------- the record

# Keys a record has only once training ended (a run that failed before has none of them), and
# `generations` only for causal LMs: left out of the file while unset, as the record always had.
_WHEN_SET = ("steps", "epochs", "train_time_s", "generations")
# What a job's parent can say about a child that died without a word (sweep.record_lost_job).
LOST_KEYS = ("status", "error", "method", "model", "task", "seed", "sweep", "config")


@dataclass
class RunRecord:
    """One run's `results.json`, the file every table reads, filled in as results become known,
    so a run that fails keeps what it had. `to_dict()` is the file's content, in this field order."""
    status: str = "running"             # running -> completed | failed | preempted | pruned (a packed sweep's halving)
    error: str | None = None            # "ExceptionType: first line of the message"
    method: str | None = None
    model: str | None = None
    task: str | None = None
    seed: int | None = None
    run_name: str | None = None
    lr: float | None = None
    lora: dict | None = None            # r, alpha, target_modules (resolved names), dropout, init, rslora,
                                        # use_dora, freeze_a, lr_ratio
    params: dict | None = None          # harness.lora.count_parameters
    metrics: dict | None = None         # main_metric, final, best, test, ...
    throughput: dict | None = None
    memory: dict | None = None
    versions: dict | None = None
    git: dict | None = None
    device: str | None = None           # "cpu" or the CUDA device's name
    precision: str | None = None        # what ran: "bf16" (autocast) or "fp32" (trainer.precision resolved)
    attention: str | None = None        # the attention kernel that ran (model.attn_implementation resolved)
    sweep: dict | None = None           # {dir, job_num, overrides}
    packed: dict | None = None          # {size, pack_id, ...}: trained in a pack (harness/pack); None: alone
    config: dict | None = None          # the job's config, redacted (resolved once it resolves)
    traceback: str | None = None
    attempt: int | None = None
    segments: list | None = None        # one {from_step, to_step, train_time_s, wall_time_s, git_commit} per process
    steps: int | None = None
    epochs: float | None = None
    train_time_s: float | None = None   # training steps, data path included, every segment of a resumed run
    generations: list | None = None     # causal LMs: a few prompts, references and generations
    wall_time_s: float | None = None    # the job, every process of a resumed run
    finished_at: str | None = None      # UTC, ISO 8601

    @classmethod
    def start(cls, cfg: DictConfig, sweep: dict | None) -> RunRecord:
        """What a job knows before it validates anything: names from the raw config (so a bad
        value still gets a record that says which run failed) and the code it runs."""
        method = cfg.get("method") or {}
        return cls(method=method.get("name"), model=(cfg.get("model") or {}).get("name"),
                   task=(cfg.get("task") or {}).get("name"), seed=cfg.get("seed"), lr=method.get("lr"),
                   versions=versions(), git=git_state(), sweep=sweep,
                   config=redact(OmegaConf.to_container(cfg, resolve=False)))

    def to_dict(self, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The file's content; `keys` keeps only those (a lost job's record, LOST_KEYS)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: v for k, v in out.items() if not (k in _WHEN_SET and v is None)}
        return {k: out[k] for k in keys} if keys else out


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync(path.parent)  # the rename is durable too
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (a folder: its entries, so a rename survives);
    a no-op where that cannot be done (some file systems cannot fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_results(run_dir: Path, name: str = RESULTS) -> dict | None:
    path = Path(run_dir) / name
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def write_results(run_dir: Path, record: dict | RunRecord) -> Path:
    """Write the record; a non-completed record never overwrites a completed one."""
    if isinstance(record, RunRecord):
        record = record.to_dict()
    run_dir = Path(run_dir)
    path = run_dir / RESULTS
    previous = read_results(run_dir)
    if record.get("status") != "completed" and previous and previous.get("status") == "completed":
        path = run_dir / FAILED
    write_json_atomic(path, redact(record))
    return path


# ----------------------------------------------------------------------------- attempts


def new_run_id() -> str:
    """A W&B run id (8 characters of [a-z0-9], as wandb makes them), from the OS's randomness:
    `random` is seeded by every run, so it would give two runs of one seed the same id."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclass
class Attempt:
    """The attempt a job continues or starts (see the module docstring), and what its checkpoints
    must carry so that a later process continues it: `meta()` goes into every checkpoint."""
    run_dir: Path
    number: int
    curve: Path                 # the metrics.jsonl this attempt's rows go to
    wandb_run_id: str | None    # one W&B run for all processes of the attempt
    checkpoints: list[Path] = field(default_factory=list)  # to resume from, newest first; [] = from step 0
    started: float = field(default_factory=time.perf_counter)  # time.perf_counter() when this job began
    config: dict = field(default_factory=dict)   # checkpoint.resume_config of the run's config
    fingerprint: str | None = None
    git: dict = field(default_factory=dict)

    def meta(self) -> dict:
        return {"attempt": self.number, "curve": self.curve.relative_to(self.run_dir).as_posix(),
                "wandb_run_id": self.wandb_run_id, "fingerprint": self.fingerprint, "config": self.config,
                "git": self.git}


def _attempt_of(record: dict | None) -> int | None:
    value = (record or {}).get("attempt")
    return value if isinstance(value, int) and value > 0 else None


def next_attempt(run_dir: Path, also_taken=()) -> int:
    """1 + the highest attempt number the run folder knows (set-aside folders and records)."""
    run_dir = Path(run_dir)
    taken = set(also_taken)
    if (run_dir / ATTEMPTS).is_dir():
        taken |= {int(p.name) for p in (run_dir / ATTEMPTS).iterdir() if p.name.isdigit()}
    taken |= {n for n in (_attempt_of(read_results(run_dir)), _attempt_of(read_results(run_dir, FAILED))) if n}
    return max(taken | {0}) + 1


def _set_aside(run_dir: Path, number: int, *names: str, rename: dict | None = None) -> None:
    """Move run-folder entries into attempts/<number>/ (never over an existing entry)."""
    target = run_dir / ATTEMPTS / str(number)
    for name in names:
        source = run_dir / name
        if not source.exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        dest = target / (rename or {}).get(name, Path(name).name)
        while dest.exists():  # never overwrite what was set aside before
            dest = dest.with_name(dest.name + ".1")
        shutil.move(str(source), str(dest))


def fresh_attempt(run_dir: Path, stale: dict | None = None) -> tuple[int, Path]:
    """Start a new attempt: set aside what earlier attempts left that is not the completed record
    and its curve; return the new attempt's number and the path of its curve.

    `stale` is the meta of checkpoints that are not continued (a fresh start was asked for), or
    None; checkpoints that cannot be read at all go aside too.
    """
    run_dir = Path(run_dir)
    top, failed = read_results(run_dir), read_results(run_dir, FAILED)
    taken: set[int] = set()

    def number(preferred: int | None) -> int:
        n = preferred or next_attempt(run_dir, taken)
        taken.add(n)
        return n

    if (run_dir / FAILED).exists():  # a failed re-run's record joins its curve in attempts/<n>/
        _set_aside(run_dir, number(_attempt_of(failed)), FAILED, rename={FAILED: RESULTS})
    kept = bool(top) and top.get("status") == "completed"
    stale_n = _attempt_of(stale)
    orphan = None
    if not kept and ((run_dir / CURVE).exists() or (run_dir / RESULTS).exists()):
        # a failed or preempted first run, or one killed before its first checkpoint
        curve_is_stale = stale is not None and stale.get("curve", CURVE) == CURVE
        orphan = number(_attempt_of(top) or (stale_n if curve_is_stale else None))
        _set_aside(run_dir, orphan, CURVE, RESULTS)
    ckpts = run_dir / CHECKPOINTS
    if ckpts.is_dir() and any(ckpts.iterdir()):
        _set_aside(run_dir, number(stale_n or orphan), CHECKPOINTS)
    elif ckpts.is_dir():
        ckpts.rmdir()
    n = number(None)
    curve = run_dir / ATTEMPTS / str(n) / CURVE if kept else run_dir / CURVE
    return n, curve


def finish_attempt(run_dir: Path, attempt: Attempt, record: dict | RunRecord) -> Path:
    """Write the attempt's record, and make the run folder's record and curve belong together:
    a completed re-run's curve replaces the earlier completed pair (set aside, not lost)."""
    run_dir = Path(run_dir)
    if isinstance(record, RunRecord):
        record.attempt = attempt.number
        record = record.to_dict()
    record["attempt"] = attempt.number
    top = read_results(run_dir)
    if record.get("status") == "completed":
        if attempt.curve != run_dir / CURVE:
            old = _attempt_of(top)
            if old is None or (run_dir / ATTEMPTS / str(old) / RESULTS).exists():
                old = next_attempt(run_dir, {attempt.number})
            _set_aside(run_dir, old, RESULTS, CURVE)
            if attempt.curve.exists():
                shutil.move(str(attempt.curve), str(run_dir / CURVE))
            with_nothing_left = attempt.curve.parent
            if with_nothing_left.is_dir() and not any(with_nothing_left.iterdir()):
                with_nothing_left.rmdir()
        failed = read_results(run_dir, FAILED)
        if failed is not None and _attempt_of(failed) == attempt.number:
            (run_dir / FAILED).unlink()  # this attempt's own earlier preempted segment: superseded
    return write_results(run_dir, record)
