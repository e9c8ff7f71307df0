"""One Hydra job: a run folder, its attempt, its tracker, `fit`, and the record, whatever happens.

Every run, completed or not, ends with `results.json` in its output folder (see harness/results.py).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError, validate
from harness.telemetry import release_cuda_memory, reset_peak_rss
from harness.results import (Attempt, RunRecord, finish_attempt, fresh_attempt, new_run_id, next_attempt,
                             read_results, write_results)
from harness.telemetry import Tracker, install_secret_redaction, redact, redact_text, redact_yaml_file, run_name

from . import checkpoint, loop
from .step import StepHook
from .runtime import Preempted, Signals, seed_everything

log = logging.getLogger("harness")

LR = "method.lr"


def job_info(cfg: DictConfig) -> tuple[Path, bool, dict]:
    """(run folder, whether this is a multirun job, the record's `sweep` entry)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    sweep = {"dir": hc.sweep.dir if multirun else None, "job_num": hc.job.num if multirun else None,
             "overrides": list(hc.overrides.task)}
    return Path(hc.runtime.output_dir), multirun, sweep


def lr_is_swept(hydra_cfg) -> bool:
    """Whether this job's sweep varies method.lr: a sweeper's own params (an experiment's, Optuna's
    search space) or a sweep override on the command line (`-m method.lr=1e-3,2e-3`), which only the
    sweep's `multirun.yaml` still holds (a job's overrides carry its one value)."""
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return False
    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    if any(str(key).lstrip("+~") == LR for key in params):
        return True
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        sweep_cfg = OmegaConf.load(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
        overrides = OverridesParser.create().parse_overrides(list(sweep_cfg.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - no readable multirun.yaml (another launcher): the name just lacks the lr
        return False
    return any(o.key_or_group.lstrip("+~") == LR and o.is_sweep_override() for o in overrides)


def job_run_name(cfg: DictConfig, include_lr: bool = False) -> str:
    """The run's display name, with the learning rate where the sweep varies it (`include_lr`), so
    the jobs of an lr search get one name each; never the error for a bad method value
    (method.alpha=abc), which validate() reports in its own words a moment later."""
    try:
        return run_name(cfg.method, cfg.get("seed"), include_lr=include_lr)
    except (ValueError, TypeError):
        return f"{cfg.method.get('name')}-seed{cfg.get('seed')}"


def run_job(cfg: DictConfig, on_step: StepHook | None = None) -> float:
    """One Hydra job. Returns the main eval metric (what the Optuna sweeper optimizes), NaN on failure.
    `on_step` goes to `fit`: called after every optimizer step (bench/ times the loop with it)."""
    t0 = time.perf_counter()
    reset_peak_rss()
    run_dir, multirun, sweep = job_info(cfg)
    job = JobRun(cfg, run_dir, multirun, sweep, t0)
    if job.skipped is not None:
        return job.skipped
    try:
        method, tcfg = job.begin(include_lr=lr_is_swept(HydraConfig.get()))
        with Signals(immediate=True):  # outside the step loop a signal stops at once, as preempted
            loop.fit(cfg, method, tcfg, run_dir, job.tracker, job.record, job.attempt, on_step=on_step)
        job.record.status = "completed"
    except Exception as e:  # noqa: BLE001 - every failure is recorded, never lost
        job.fail(e)
    finally:
        job.end()
    return job.result()


class JobRun:
    """One job's run folder, record, attempt and W&B run around its training: what `run_job` does
    before and after `fit`, kept apart so that a packed sweep (harness/pack) wraps each of its
    jobs in exactly the same, with one training between them.

    `skipped`: the job's main metric when `resume=true` found it completed (nothing else runs)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, multirun: bool, sweep: dict, t0: float):
        self.cfg, self.run_dir, self.multirun, self.sweep, self.t0 = cfg, run_dir, multirun, sweep, t0
        self.tracker = self.attempt = None
        self.skipped = None
        install_secret_redaction()  # already done by main(); a launcher's worker process may not run it
        _redact_hydra_files(run_dir, sweep)
        previous = read_results(run_dir)
        # `is True`: a bad value (resume=maybe) must not skip anything; validate() rejects it below.
        if cfg.get("resume") is True and previous and previous.get("status") == "completed":
            log.info("resume=true: %s already completed, skipping", run_dir)
            self.skipped = float(previous["metrics"]["final"].get(previous["metrics"]["main_metric"]) or float("nan"))
        self.record = RunRecord.start(cfg, sweep)

    def begin(self, include_lr: bool):
        """Attempt, tracker, validation; returns (method, trainer) configs. Raises what is wrong."""
        cfg, record = self.cfg, self.record
        config = record.config = redact(OmegaConf.to_container(cfg, resolve=True))
        record.run_name = job_run_name(cfg, include_lr=include_lr)
        self.attempt = _begin_attempt(cfg, config, self.run_dir, record.git, self.t0)
        group = cfg.logger.get("group") or (cfg.sweep_name if self.multirun else None)
        # Started before validation, so a job with a bad value shows up as a failed W&B run too.
        self.tracker = Tracker.start(cfg.logger, self.run_dir, record.run_name, group=group, job_type=record.method,
                                     config={**config, "versions": record.versions, "git": record.git},
                                     tags=[record.method, record.model, record.task],
                                     main_metric=cfg.task.get("main_metric"),
                                     greater_is_better=cfg.task.get("greater_is_better", True),
                                     metrics_path=self.attempt.curve, run_id=self.attempt.wandb_run_id)
        method, tcfg = validate(cfg)
        if method.lora is not None:
            lora = method.lora
            record.lora = {"r": lora.r, "alpha": lora.alpha, "target_modules": _plain(lora.target_modules),
                           "dropout": lora.dropout, "init": lora.init, "rslora": lora.rslora,
                           "use_dora": lora.use_dora, "freeze_a": lora.freeze_a, "lr_ratio": method.lr_ratio}
        seed_everything(cfg.seed)
        return method, tcfg

    def fail(self, e: BaseException) -> None:
        """Record a failure (preempted for `Preempted`), its one line on the console, its trace in the log."""
        record = self.record
        record.status = "preempted" if isinstance(e, Preempted) else "failed"
        record.error = f"{type(e).__name__}: {e}".splitlines()[0]
        record.traceback = "".join(traceback.format_exception(e))
        _log_traceback_to_file(record.traceback)
        log.error("%s: %s", record.status, record.error)

    def end(self) -> None:
        """Wall time, the record written (completed or not), the W&B run finished."""
        record = self.record
        wall = time.perf_counter() - self.t0
        if record.segments:  # a resumed run's wall time is the sum over its processes
            record.segments[-1]["wall_time_s"] = wall
            wall = sum(s["wall_time_s"] or 0.0 for s in record.segments)
        record.wall_time_s = wall
        record.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = finish_attempt(self.run_dir, self.attempt, record) if self.attempt else write_results(self.run_dir, record)
        if self.tracker is not None:
            self.tracker.finish(record.to_dict())
        release_cuda_memory()
        log.info("results: %s", path)

    def value(self) -> float:
        """The main validation metric, NaN unless completed (or pruned: its metrics so far)."""
        if self.record.status not in ("completed", "pruned") or not self.record.metrics:
            return float("nan")
        return float(self.record.metrics["final"].get(self.record.metrics["main_metric"]) or float("nan"))

    def result(self) -> float:
        """What `run_job` returns; exits instead where the job must stop its caller."""
        if self.record.status != "completed":
            # A preempted sweep must stop (the machine is being taken away); a failed job must not stop it.
            if not self.multirun or self.record.status == "preempted":
                sys.exit(1)
            return float("nan")
        return self.value()


def _plain(value):
    """Lists as JSON has them (a LoraConfig holds tuples)."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _log_traceback_to_file(text: str) -> None:
    """Full trace in the job log file only; the console gets one line."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.stream.write(redact_text(text))
            handler.flush()


def _redact_hydra_files(run_dir: Path, sweep: dict) -> None:
    """Hydra writes the overrides verbatim into `.hydra/` (and a sweep's `multirun.yaml`) before
    the job starts; rewrite them with secrets redacted before anything else happens."""
    files = [run_dir / ".hydra" / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if sweep["dir"]:
        files.append(Path(sweep["dir"]) / "multirun.yaml")
    for path in files:
        try:
            redact_yaml_file(path)
        except Exception as e:  # noqa: BLE001 - a file we cannot parse is left as Hydra wrote it
            log.warning("could not redact %s (%s: %s)", path, type(e).__name__, e)


def _begin_attempt(cfg: DictConfig, config: dict, run_dir: Path, git: dict, started: float) -> Attempt:
    """Continue the attempt of the newest readable checkpoint, or start a new attempt.

    Continuing needs the config the checkpoints were trained with: a changed value stops the job
    with one line naming it (ConfigError). `trainer.restart=true` starts afresh instead, setting
    the checkpoints and the unfinished attempt's curve aside in attempts/<n>/.
    """
    restart = OmegaConf.select(cfg, "trainer.restart", default=False)
    if not isinstance(restart, bool):
        raise ConfigError(f"trainer.restart={restart!r} is invalid: must be true or false")
    flat = checkpoint.resume_config(config)
    common = dict(started=started, config=flat, fingerprint=checkpoint.fingerprint(flat), git=git)
    found = checkpoint.resumable(run_dir / "checkpoints")
    if found and not restart:
        path, meta = found[0]
        if meta:
            checkpoint.check_config(path, meta, flat, restart_hint="trainer.restart=true")
        else:
            log.warning("checkpoint %s has no meta.json (an older harness): resuming without checking the config", path)
        old = (meta.get("git") or {}).get("commit")
        if old and old != git.get("commit"):
            log.warning("the code changed since checkpoint %s (commit %s, now %s)", path.name, old[:12],
                        (git.get("commit") or "unknown")[:12])
        return Attempt(run_dir, meta.get("attempt") or next_attempt(run_dir), run_dir / meta.get("curve", "metrics.jsonl"),
                       meta.get("wandb_run_id") or new_run_id(), [p for p, _ in found], **common)
    if found:
        log.info("trainer.restart=true: starting afresh; the checkpoints from step %d are set aside", found[0][1].get("step", -1))
    number, curve = fresh_attempt(run_dir, found[0][1] if found else None)
    return Attempt(run_dir, number, curve, new_run_id(), [], **common)
