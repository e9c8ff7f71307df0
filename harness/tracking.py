"""Experiment tracking: `metrics.jsonl` is the truth, Weights & Biases mirrors it.

One `Tracker` per Hydra job. It always appends rows to `<run_dir>/metrics.jsonl` (or the curve file
of its attempt, see harness/results.py; format in .agents/RESULTS.md) and, with `logger=wandb`,
streams the same rows to one W&B run that is always finished, so a multirun never merges two jobs
into one run; a job that resumes a run passes the run's id and continues its W&B run. Tracking must
never kill training: every W&B call is wrapped and a failure becomes a logged warning.
`logger=none` never imports wandb. Secrets are redacted (`redact`, `redact_text`) from everything
this module writes, and `install_secret_redaction` redacts them from every log line.

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
  start with "_", so `record_from_summary(run.summary)` separates the record from streamed keys.

Offline runs are written under `<run_dir>/wandb/offline-run-*` (upload later with `wandb sync`)
and can be read back without a server by `read_offline_run`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REDACTED = "***REDACTED***"
LOGGER_NAMES = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
STEP_METRIC = "trainer/step"
DEFAULT_INIT_TIMEOUT_S = 30.0  # wandb's own default is 90 s: too long to wait before going offline


# ----------------------------------------------------------------------------- secrets

# A key is secret when its last word is one of these ("hf_token", "WANDB_API_KEY", "db.password"),
# matched on whole words so "tokens_per_s" or "tokenizer" are not.
_SECRET_KEY = re.compile(
    r"(?:^|[_.])(?:api_?key|apikey|access_?key|private_?key|secret(?:_?key)?|password|passwd|"
    r"credentials?|token)$",
    re.IGNORECASE,
)
# ...except tokenizer settings whose values are vocabulary strings, not credentials.
_TOKENIZER_TOKEN = re.compile(r"^(?:pad|eos|bos|unk|sep|cls|mask|additional_special)_tokens?$", re.I)
# Hugging Face tokens look like this wherever they appear, alone or inside a longer string.
_HF_TOKEN_TEXT = re.compile(r"hf_[A-Za-z0-9]{30,}")
# `key=value` inside a string: a Hydra override ("+model.token=abc"), an override_dirname
# ("seed=0,+model.token=abc"), a command line in a log line.
_ASSIGNMENT = re.compile(r"(?P<key>[+~]*[A-Za-z_][\w.\-]*)=(?P<value>'[^']*'|\"[^\"]*\"|[^\s,'\"\]\)}]+)")
_HARMLESS_VALUES = {"true", "false", "null", "none", REDACTED.lower()}  # `use_auth_token=true` reveals nothing
# The usual secret environment variables; any other variable whose name looks secret (`*_TOKEN`,
# `*_API_KEY`, `*_PASSWORD`, ...) counts too. Values shorter than this are not searched for inside
# strings: a 1-character "secret" would redact every string holding that character.
_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_API_TOKEN", "GITHUB_TOKEN",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "OPENAI_API_KEY")
_MIN_ENV_SECRET = 8


def _is_secret_key(key: Any) -> bool:
    key = str(key).replace("-", "_")
    # `flops_per_token` is a rate, not a credential (a numeric password, `db.password=123`, is one)
    return bool(_SECRET_KEY.search(key)) and not _TOKENIZER_TOKEN.match(key) and not key.lower().endswith("per_token")


def _env_secrets() -> list[str]:
    """Values of secret environment variables, longest first (so no secret is half-replaced)."""
    names = set(_SECRET_ENV) | {k for k in os.environ if _is_secret_key(k)}
    values = {os.environ[k] for k in names if len(os.environ.get(k) or "") >= _MIN_ENV_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, env_secrets: Sequence[str] | None = None) -> str:
    """`text` with secrets inside it replaced: values of secret environment variables, anything
    shaped like a Hugging Face token, and the value of every `key=value` whose key looks secret."""
    for secret in _env_secrets() if env_secrets is None else env_secrets:
        text = text.replace(secret, REDACTED)
    text = _HF_TOKEN_TEXT.sub(REDACTED, text)

    def assignment(m: re.Match) -> str:
        leaf = m["key"].lstrip("+~").rsplit(".", 1)[-1]
        if _is_secret_key(leaf) and m["value"].strip("'\"").lower() not in _HARMLESS_VALUES:
            return f"{m['key']}={REDACTED}"
        return m[0]

    return _ASSIGNMENT.sub(assignment, text)


def redact(config: Any) -> Any:
    """Copy `config` as plain dicts/lists with secret values replaced by "***REDACTED***".

    Secret = the value of a key that looks secret (`api_key`, `hf_token`, `password`, ...; None and
    booleans such as `use_auth_token: true` are kept because they reveal nothing), and inside every
    string what `redact_text` finds: a secret environment variable's value (`WANDB_API_KEY`,
    `HF_TOKEN`, ...), a string shaped like a Hugging Face token, the value in a `key=value` override
    whose key is secret.
    """
    env_secrets = _env_secrets()

    def walk(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: (REDACTED if _is_secret_key(k) and v is not None and not isinstance(v, bool)
                        else walk(v)) for k, v in obj.items()}
        if isinstance(obj, str):
            return redact_text(obj, env_secrets)
        if isinstance(obj, Sequence | set | frozenset) and not isinstance(obj, bytes | bytearray):
            return [walk(v) for v in obj]
        return obj

    return walk(config)


def redact_yaml_file(path: Path) -> bool:
    """Rewrite a YAML file (Hydra's `.hydra/*.yaml`, `multirun.yaml`) with its secrets redacted.

    Hydra writes these before the job function runs, with every override verbatim, so a token
    given on the command line would sit in the run folder. Interpolations stay unresolved. Written
    atomically and only when something changed; returns whether it did.
    """
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        return False
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    clean = redact(data)
    if clean == data:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(clean)))
    os.replace(tmp, path)
    return True


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed call: logging reports it when the record is emitted
        return
    clean = redact_text(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))


def install_secret_redaction() -> None:
    """Redact secrets from every log record as it is created (its message and its traceback), in
    this process, whatever handlers write it later: Hydra's launcher logs every job's overrides
    verbatim, after configuring its own handlers, and each job's console and `train.log` handlers
    are made anew from `hydra/job_logging`. A record factory outlives all of that (a handler filter
    would not). Idempotent."""
    base = logging.getLogRecordFactory()
    if getattr(base, "redacts_secrets", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = base(*args, **kwargs)
        _redact_record(record)
        return record

    factory.redacts_secrets = True
    logging.setLogRecordFactory(factory)


# ----------------------------------------------------------------------------- run names

# Attention projections by the names BERT (query/key/value/dense) and Llama-style models use.
_MODULE_LETTER = {
    "q": "q", "query": "q", "q_proj": "q",
    "k": "k", "key": "k", "k_proj": "k",
    "v": "v", "value": "v", "v_proj": "v",
    "o": "o", "dense": "o", "o_proj": "o", "out_proj": "o",
}


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read a field from a dict, DictConfig, dataclass or namespace alike."""
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _num(x: Any) -> str:
    """16 -> "16", 16.0 -> "16", 0.5 -> "0.5", 5e-4 -> "0.0005"."""
    x = float(x)
    return str(int(x)) if x.is_integer() else format(x, "g")


def _targets_abbrev(target_modules: Any) -> str:
    """["query", "value"] -> "qv"; "all-linear" -> "all"; "query+value" (each family's q and v,
    harness.lora.QUERY_VALUE) -> "qv"; unknown names are appended with "+"."""
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return "all"
        if target_modules == "query+value":
            return "qv"
        target_modules = [target_modules]
    letters, others = set(), []
    for name in target_modules:
        leaf = str(name).rsplit(".", 1)[-1]
        if leaf in _MODULE_LETTER:
            letters.add(_MODULE_LETTER[leaf])
        else:
            others.append(str(name))
    if not letters and not others:
        raise ValueError(f"method.target_modules must name at least one module, got {target_modules!r}")
    attention = "".join(c for c in "qkvo" if c in letters)  # canonical order: [value, query] -> "qv"
    return "+".join(([attention] if attention else []) + others)


def run_name(method_cfg: Any, seed: int, include_lr: bool = False) -> str:
    """A name that reads like a table row: "lora-r8-a16-qv-seed0", "full-seed0".

    `include_lr` appends e.g. "-lr0.0005" for learning-rate sweeps, where the rest is constant.
    """
    method = _cfg_get(method_cfg, "name")
    if method == "lora":
        r, alpha = _cfg_get(method_cfg, "r"), _cfg_get(method_cfg, "alpha")
        if r is None or alpha is None:
            raise ValueError(f"a lora method config needs r and alpha, got r={r!r}, alpha={alpha!r}")
        parts = ["lora", f"r{_num(r)}", f"a{_num(alpha)}",
                 _targets_abbrev(_cfg_get(method_cfg, "target_modules", "all-linear"))]
    elif method == "full":
        parts = ["full"]
    else:
        raise ValueError(f"method.name must be one of ('lora', 'full'), got {method!r}")
    if include_lr:
        parts.append(f"lr{_num(_cfg_get(method_cfg, 'lr'))}")
    return "-".join(parts + [f"seed{seed}"])


# ----------------------------------------------------------------------------- tracker

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
    ready for `wandb sync` or `read_offline_run`. The next `wandb.init` restarts the service (~0.2 s).
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


# ----------------------------------------------------------------------------- reading runs back

def record_from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The results record stored by `Tracker.finish` (without `config`), from `run.summary` of
    `wandb.Api().run(path)` or of `read_offline_run`: drops streamed ("train/loss") and W&B ("_step") keys."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, Mapping) or hasattr(obj, "items"):
            return {k: plain(v) for k, v in obj.items()}
        return [plain(v) for v in obj] if isinstance(obj, list | tuple) else obj

    return {k: plain(v) for k, v in summary.items() if "/" not in k and not k.startswith("_")}


@dataclass
class OfflineRun:
    """What an offline run's `.wandb` file holds, as the W&B server would show it after `wandb sync`."""
    path: Path
    run_id: str
    name: str
    group: str
    job_type: str
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    exit_code: int | None  # None: the run was never finished


def _set_nested(d: dict, keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def _wandb_records(path: Path):
    """Protobuf records of a `.wandb` file: a LevelDB-style log (7-byte ":W&B" header, then 32 KiB
    blocks of chunks `crc32c:u32 length:u16 type:u8 data`, type 1 full, 2 first, 3 middle, 4 last).
    The CRCs are not checked: this reads back our own freshly written files in tests and tools."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32 * 1024
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:4]!r})")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse an offline run folder (`<run_dir>/wandb/offline-run-*`) or its `.wandb` file."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.wandb"))
    if len(files) != 1:
        raise ValueError(f"expected one .wandb file in {path}, found {[f.name for f in files]}")
    out = OfflineRun(path, "", "", "", "", [], {}, [], {}, None)

    def value(item) -> tuple[list[str], Any]:
        return (list(item.nested_key) or [item.key]), json.loads(item.value_json)

    for rec in _wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.name, out.group, out.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            out.tags = list(r.tags)
            for item in r.config.update:
                _set_nested(out.config, *value(item))
        elif kind == "config":
            for item in rec.config.update:
                _set_nested(out.config, *value(item))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set_nested(row, *value(item))
            out.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _set_nested(out.summary, *value(item))
            for item in rec.summary.remove:
                keys = list(item.nested_key) or [item.key]
                parent = out.summary
                for k in keys[:-1]:
                    parent = parent.get(k, {})
                parent.pop(keys[-1], None)
        elif kind == "exit":
            out.exit_code = rec.exit.exit_code
    out.config.pop("_wandb", None)
    return out
