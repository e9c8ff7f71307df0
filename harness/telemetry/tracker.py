"""Experiment tracking: `metrics.jsonl` is the truth, Weights & Biases mirrors it.

One `Tracker` per Hydra job. It always appends rows to `<run_dir>/metrics.jsonl` (or the curve file
of its attempt, see harness/results.py; format in .agents/RESULTS.md) and, with `logger=wandb`,
streams the same rows to one W&B run that is always finished, so a multirun never merges two jobs
into one run; a job that resumes a run passes the run's id and continues its W&B run. Tracking must
never kill training: every W&B call is wrapped and a failure becomes a logged warning.
`logger=none` never imports wandb. Secrets are redacted (harness/telemetry/redact.py) from everything
this module writes.

W&B layout (what `wandb.Api().run(...)` reads back):
- config: the resolved run config passed to `start` (secrets redacted), nested as given.
- history: one row per `log` call. `step` becomes `trainer/step`, the x axis of every chart
  (`define_metric("*", step_metric="trainer/step")`), so train and eval rows at the same optimizer
  step never collide on W&B's own `_step`. Keys without a "/" (`epoch`, `time_s`) are logged as
  `trainer/<key>`; `train/*` and `eval/*` keep their names.
- summary: streamed keys hold their last value; `eval/loss` and `eval/<main_metric>` hold
  `{"last": ..., "min"|"max": ...}` (best by `greater_is_better`). At `finish` the results record
  is added with its own top-level keys and nested dicts kept nested (`summary["metrics"]["best"]
  ["accuracy"]`), minus `config` (already the run config). Record keys never contain "/" and never
  start with "_", so `harness.analysis.record_from_summary(run.summary)` separates the record from
  streamed keys.

Offline runs are written under `<run_dir>/wandb/offline-run-*` (upload later with `wandb sync`);
tests/telemetry/wandb_offline.py reads them back without a server.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.telemetry.redact import redact

log = logging.getLogger(__name__)

LOGGER_NAMES = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
STEP_METRIC = "trainer/step"
DEFAULT_INIT_TIMEOUT_S = 30.0  # wandb's own default is 90 s: too long to wait before going offline


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; tensor/numpy scalars via .item(); NaN/inf -> None (strict JSON, per RESULTS.md)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # torch / numpy scalar
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


@dataclass
class LoggerSettings:
    """conf/logger/*.yaml, validated once so a typo fails at start, not at the end of training."""
    name: str = "none"
    project: str = "lora-harness"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None
    dir: str | None = None
    init_timeout: float = DEFAULT_INIT_TIMEOUT_S

    @classmethod
    def from_cfg(cls, logger_cfg: Any) -> LoggerSettings:
        if logger_cfg is None:
            return cls()
        known = cls.__dataclass_fields__
        items = dict(logger_cfg.items()) if isinstance(logger_cfg, Mapping) else vars(logger_cfg)
        unknown = sorted(set(items) - set(known))
        if unknown:
            raise ValueError(f"logger.{unknown[0]}={items[unknown[0]]!r} is invalid: not a logger setting; "
                             f"settings: {', '.join(sorted(known))}")
        s = cls(**{k: v for k, v in items.items() if v is not None})  # null -> the default above
        if s.name not in LOGGER_NAMES:
            raise ValueError(f"logger.name={s.name!r} is invalid: choose one of {', '.join(LOGGER_NAMES)}")
        if s.name == "wandb" and s.mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={s.mode!r} is invalid: choose one of {', '.join(WANDB_MODES)}")
        s.tags = list(s.tags or [])
        return s


class Tracker:
    """Writes metrics.jsonl and mirrors it to at most one W&B run; use `start`, then `log`, `finish`.

    Also a context manager: leaving the block finishes the W&B run (as failed, with the error, when
    an exception escapes), so each Hydra job's run is closed even if the trainer crashes.
    """

    def __init__(self, run_dir: Path, run: Any = None, mode: str | None = None, metrics_path: Path | None = None):
        self.run_dir = Path(run_dir)
        # metrics.jsonl of the run folder, or of attempts/<n>/ for a re-run over a completed record
        self.metrics_path = Path(metrics_path) if metrics_path else self.run_dir / "metrics.jsonl"
        self.run = run            # the wandb Run, or None when W&B is off or could not start
        self.mode = mode          # the W&B mode actually used ("offline" after a fallback), or None
        self.finished = False

    @property
    def sync_dir(self) -> Path | None:
        """The offline run folder to pass to `wandb sync`; None unless the run is offline."""
        if self.run is None or self.mode != "offline":
            return None
        return Path(self.run.settings.sync_dir)

    @classmethod
    def start(cls, logger_cfg: Any, run_dir: Path, run_name: str, group: str | None, job_type: str,
              config: Mapping, tags: Sequence[str] = (), *, main_metric: str | None = None,
              greater_is_better: bool = True, metrics_path: Path | None = None,
              run_id: str | None = None) -> Tracker:
        """Open the tracker for one job. `group` is used unless logger.group sets one.

        `main_metric` (e.g. "accuracy") makes the W&B summary of `eval/<main_metric>` keep its best
        value next to its last one. `run_id` names the W&B run: a run resumed from a checkpoint
        passes the id its first process used, so every process of one run streams into one W&B run
        (`resume="allow"`: the run is continued when it exists, created when it does not).
        `metrics_path` is where rows go (default `<run_dir>/metrics.jsonl`). Bad logger settings
        raise ValueError; W&B failures only warn.
        """
        settings = LoggerSettings.from_cfg(logger_cfg)
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if metrics_path is not None:
            Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        if settings.name == "none":
            return cls(run_dir, metrics_path=metrics_path)
        all_tags = [str(t)[:64] for t in dict.fromkeys([*settings.tags, *tags]) if str(t)]  # W&B: 1..64 chars
        init_kwargs = dict(
            project=settings.project, entity=settings.entity, dir=str(settings.dir or run_dir),
            name=run_name, group=settings.group or group, job_type=job_type, tags=all_tags,
            notes=settings.notes, config=_jsonable(redact(config)),
            reinit="finish_previous",  # a run leaked by an earlier job in this process is closed
        )
        if run_id:
            init_kwargs.update(id=run_id, resume="allow")
        run, mode = _init_wandb(settings.mode, settings.init_timeout, init_kwargs, run_dir)
        tracker = cls(run_dir, run, mode, metrics_path=metrics_path)
        if run is not None:
            tracker._define_metrics(main_metric, greater_is_better)
        return tracker

    def _define_metrics(self, main_metric: str | None, greater_is_better: bool) -> None:
        try:
            self.run.define_metric(STEP_METRIC)
            self.run.define_metric("*", step_metric=STEP_METRIC)
            # Exact definitions override the glob, so they repeat the step metric.
            best = {"eval/loss": "min"}
            if main_metric:
                best[f"eval/{main_metric}"] = "max" if greater_is_better else "min"
            for name, goal in best.items():
                self.run.define_metric(name, step_metric=STEP_METRIC, summary=f"last,{goal}")
        except Exception as e:  # noqa: BLE001 - tracking must never kill training
            log.warning("W&B define_metric failed (%s: %s); charts may use W&B's own step", type(e).__name__, e)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append one row {"step": step, **metrics} to metrics.jsonl and mirror it to W&B.

        A failing metrics.jsonl write raises: it is the record every table is built from. A failing
        W&B call only warns.
        """
        if "step" in metrics:
            raise ValueError(f"pass the step as the `step` argument, not inside metrics: {dict(metrics)!r}")
        row = _jsonable({"step": int(step), **metrics})
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
        if self.run is None or self.finished:
            return
        wb_row = {STEP_METRIC: int(step)}
        for k, v in metrics.items():
            v = v.item() if hasattr(v, "item") else v
            if v is not None:  # a logged None would blank the summary's last value
                wb_row[k if "/" in k else f"trainer/{k}"] = v
        try:
            self.run.log(wb_row)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B log failed at step %s (%s: %s); metrics.jsonl still has the row",
                        step, type(e).__name__, e)

    def sync(self) -> None:
        """fsync metrics.jsonl: called before a checkpoint is saved, so the rows up to the
        checkpoint's step are on disk whenever the checkpoint is."""
        try:
            with open(self.metrics_path, "rb") as f:
                os.fsync(f.fileno())
        except FileNotFoundError:
            pass

    def rewind(self, step: int) -> int:
        """Keep only the rows up to `step`: a run resumed from the checkpoint at `step` logs the
        later ones again. A line that is not JSON (the torn last line a kill leaves mid-write) is
        dropped too. Returns the number of lines dropped."""
        if not self.metrics_path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line + "\n")
            elif line.strip():
                dropped += 1
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)
        return dropped

    def finish(self, record: Mapping[str, Any]) -> None:
        """Put the results record into the W&B summary and close the run: exit code 0 when
        record["status"] == "completed", else 1 (W&B then shows it as failed). Idempotent; never raises."""
        if self.finished:
            return
        self.finished = True
        if self.run is None:
            return
        try:
            summary = _jsonable(redact(dict(record)))
            summary.pop("config", None)  # already the run config
            self.run.summary.update(summary)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B summary update failed (%s: %s)", type(e).__name__, e)
        try:
            self.run.finish(exit_code=0 if record.get("status") == "completed" else 1)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B finish failed (%s: %s)", type(e).__name__, e)
        if self.mode in ("online", "offline"):
            _flush_wandb()
        if self.mode == "offline":
            log.info("W&B offline run saved; upload with: wandb sync %s", self.sync_dir)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish({"status": "completed"})
        else:
            self.finish({"status": "failed", "error": f"{exc_type.__name__}: {exc}"})
        return False  # never swallow the exception


def _flush_wandb() -> None:
    """Wait until wandb-core has written and closed the run's files.

    `run.finish()` returns before wandb-core flushes the `.wandb` transaction log: about one offline
    run in ten was still a 7-byte header right after it (wandb 0.31, two busy cores). `wandb.teardown`
    waits for the service to close its streams, so when `finish` returns the run is complete on disk,
    ready for `wandb sync` (or tests/telemetry/wandb_offline.py). The next `wandb.init` restarts the service (~0.2 s).
    """
    try:
        import wandb

        wandb.teardown()
    except (Exception, SystemExit) as e:  # teardown sys.exit()s when the service exited non-zero
        log.warning("W&B teardown failed (%s: %s)", type(e).__name__, e)


@contextlib.contextmanager
def _redacted_argv():
    """W&B stores the command line (`sys.argv`) in the run's metadata: show it a redacted copy."""
    argv = sys.argv
    sys.argv = redact(list(argv))
    try:
        yield
    finally:
        sys.argv = argv


def _init_wandb(mode: str, init_timeout: float, init_kwargs: dict, run_dir: Path) -> tuple[Any, str | None]:
    """wandb.init in `mode`; an online run that cannot reach the server goes offline instead."""
    try:
        import wandb  # lazily: logger=none must work without touching wandb
    except Exception as e:  # noqa: BLE001
        log.warning("cannot import wandb (%s); metrics go to metrics.jsonl only", e)
        return None, None
    try:
        with _redacted_argv():
            run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout), **init_kwargs)
        return run, mode
    except Exception as e:  # noqa: BLE001
        if mode != "online":
            log.warning("W&B %s init failed (%s: %s); metrics go to metrics.jsonl only",
                        mode, type(e).__name__, e)
            return None, None
        log.warning("W&B online init failed (%s: %s); continuing OFFLINE. Upload later with: "
                    "wandb sync %s/wandb/offline-run-*", type(e).__name__, e, init_kwargs["dir"])
    try:
        with _redacted_argv():
            return wandb.init(mode="offline", **init_kwargs), "offline"
    except Exception as e:  # noqa: BLE001
        log.warning("W&B offline init failed too (%s: %s); metrics go to metrics.jsonl only",
                    type(e).__name__, e)
        return None, None
