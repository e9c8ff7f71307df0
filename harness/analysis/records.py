"""Results records in, one DataFrame row per run out.

Reads the `results.json` every run writes (the local truth, see harness/results.py), or the same
records from W&B runs (the trainer mirrors results.json into each run's summary), keeps one record
per configuration and seed, and flattens each into one DataFrame row: nested keys joined with dots
(`lora.r`, `metrics.final.accuracy`, `params.trainable`, `config.method.lr`), lists joined with
commas, so target modules read `query,value`.

Re-runs count once: records with the same config and seed (the same sweep run again into another
folder, a run listed twice, the preempted and the resumed part of one run on W&B) are one run;
the newest completed one is kept, the others are named in a note. Failed, preempted or unreadable
runs stay in the frame with their status; only completed ones are ever averaged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS = "results.json"
# Config parts that legitimately differ between the seeds of one group.
PER_RUN_CONFIG = {"seed", "resume", "sweep_name", "logger", "hydra", "wandb", "run_name", "output_dir",
                  "checkpoint_every", "keep_checkpoints", "restart"}
# What differs between re-runs of one configuration and seed: the above, plus the code and library
# versions W&B runs carry in their config.
RERUN_CONFIG = (PER_RUN_CONFIG - {"seed"}) | {"versions", "git", "save_model"}
SKIP_KEYS = {"generations"}  # sample texts: long, and not a number to tabulate


def load_records(paths) -> list[dict]:
    """Every results.json under `paths` (folders are searched recursively; files are taken as is),
    except those under a run folder's `attempts/` (earlier attempts set aside, see harness/results.py).

    Each record gets `path`, the run folder, so failed runs can be named. A file that is not valid
    JSON becomes a record with status "unreadable" rather than stopping the whole table.
    """
    records = []
    for p in map(Path, paths):
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(f for f in p.rglob(RESULTS) if "attempts" not in f.relative_to(p).parts[:-1])
        else:
            raise ValueError(f"no such file or folder: {p}")
        for f in files:
            try:
                record = json.loads(f.read_text())
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except (json.JSONDecodeError, ValueError, OSError) as e:
                record = {"status": "unreadable", "error": f"{type(e).__name__}: {e}"}
            records.append({**record, "path": str(f.parent)})
    if not records:
        raise ValueError(f"no {RESULTS} found under: {', '.join(map(str, paths))}")
    return records


def record_from_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The results record stored by `harness.telemetry.Tracker.finish` (without `config`), from
    `run.summary` of `wandb.Api().run(path)` (or of an offline run read back): drops streamed
    ("train/loss") and W&B ("_step") keys."""
    return {k: _plain(v) for k, v in summary.items() if "/" not in k and not k.startswith("_")}


def run_record(run) -> dict:
    """A W&B run as a results record: the trainer mirrors results.json into `run.summary`.

    Streamed keys and those W&B adds itself (`_step`, `_runtime`, `_wandb`, ...) are dropped; `config` comes from
    `run.config` unless the summary carries it; a run without a `status` gets one from `run.state`.
    """
    record = record_from_summary(run.summary)  # drops streamed ("train/loss") and W&B ("_step") keys
    record.setdefault("config", {k: v for k, v in _plain(run.config).items() if not k.startswith("_")})
    state = getattr(run, "state", None)
    record.setdefault("status", {"finished": "completed", "killed": "preempted"}.get(state, state or "unknown"))
    record.setdefault("run_name", getattr(run, "name", None))
    record["path"] = "wandb:" + "/".join(map(str, run.path)) if getattr(run, "path", None) else f"wandb:{run.id}"
    return record


def run_identity(record: Mapping) -> str | None:
    """The configuration and seed a record ran, as canonical JSON; None without a config (an
    unreadable record), which is then never taken for a re-run of another."""
    config = record.get("config")
    if not isinstance(config, Mapping):
        return None

    def strip(node):
        if isinstance(node, Mapping):
            return {str(k): strip(v) for k, v in node.items() if k not in RERUN_CONFIG and k != "seed"}
        return [strip(v) for v in node] if isinstance(node, (list, tuple)) else node

    return json.dumps({"config": strip(config), "seed": record.get("seed", config.get("seed"))},
                      sort_keys=True, default=str)


def _recency(record: Mapping) -> float:
    """When a record was written: its `finished_at`, else its file's time, else 0 (unknown)."""
    try:
        return datetime.fromisoformat(str(record["finished_at"])).timestamp()
    except (KeyError, TypeError, ValueError):
        pass
    try:
        return (Path(record["path"]) / RESULTS).stat().st_mtime
    except (KeyError, TypeError, OSError):
        return 0.0


def dedupe(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per configuration and seed, so that re-runs never count as extra seeds.

    Of the records sharing a `run_identity`, the newest completed one is kept (newest of any status
    when none completed; equal times: the later in `records`, which is W&B's creation order);
    a note names what was kept and what was left out. Order is otherwise kept.
    """
    groups: dict = {}
    for i, record in enumerate(records):
        groups.setdefault(run_identity(record) or ("unique", i), []).append(i)
    keep, notes = set(), []
    for members in groups.values():
        done = [i for i in members if records[i].get("status") == "completed"]
        pick = max(done or members, key=lambda i: (_recency(records[i]), i))
        keep.add(pick)
        if len(members) > 1:
            others = [records[i].get("path", "?") for i in members if i != pick]
            notes.append(f"note: {len(members)} records of one configuration and seed count once: kept "
                         f"{records[pick].get('path', '?')} (the newest {'completed' if done else 'one'}), "
                         f"not {', '.join(map(str, others))}")
    return [r for i, r in enumerate(records) if i in keep], notes


def _plain(obj):
    """W&B summary/config objects (nested SummarySubDicts) as plain dicts and lists."""
    if isinstance(obj, Mapping) or hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_wandb(path: str, group: str | None = None) -> list[dict]:
    """The records of the W&B runs in `path` ("entity/project"), optionally one group (one sweep)."""
    if path.count("/") != 1:
        raise ValueError(f"--wandb wants ENTITY/PROJECT, got {path!r}")
    import wandb  # only here: importing wandb costs a second and the local path never needs it

    try:
        runs = wandb.Api().runs(path, filters={"group": group} if group else None)
        records = [run_record(run) for run in runs]
    except Exception as e:  # network, auth, unknown project: one clear line instead of a traceback
        raise ValueError(f"could not read W&B runs from {path!r}: {type(e).__name__}: {e}") from e
    if not records:
        raise ValueError(f"no W&B runs in {path!r}" + (f" with group {group!r}" if group else ""))
    return records


def flatten(record: Mapping, prefix: str = "") -> dict:
    """{"lora": {"r": 8}} -> {"lora.r": 8}; lists become "query,value" (readable and groupable)."""
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + ".") if value else {name: None})
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out


def ran_precision(record: Mapping) -> str | None:
    """The precision a run computed in ("bf16" or "fp32"): its record's `precision`. Records written
    before that field existed ran bf16 autocast only on CUDA (trainer.precision=bf16 meant that
    then): fp32 on the CPU, the configured precision on a GPU."""
    if record.get("precision") is not None or record.get("device") is None:
        return record.get("precision")
    if record["device"] == "cpu":
        return "fp32"
    return ((record.get("config") or {}).get("trainer") or {}).get("precision")


def records_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run. Adds `metrics.final.main`/`metrics.best.main` (and `metrics.test.final.main`
    / `metrics.test.best.main` for runs scored on a test split): the value of each run's own main
    metric, so tasks with different main metrics (accuracy, mcc) can share a column."""
    rows = [flatten({**{k: v for k, v in r.items() if k not in SKIP_KEYS},
                     **({"precision": p} if (p := ran_precision(r)) else {})}) for r in records]
    for row in rows:
        main = row.get("metrics.main_metric")
        for which in ("final", "best"):
            row[f"metrics.{which}.main"] = row.get(f"metrics.{which}.{main}") if main else None
            if main and f"metrics.test.{which}.{main}" in row:
                row[f"metrics.test.{which}.main"] = row[f"metrics.test.{which}.{main}"]
    df = pd.DataFrame(rows)
    # "lora": null (full fine-tuning) or "metrics.final": null (a failed run) next to lora.r, ...
    parents = {c.rsplit(".", 1)[0] for c in df if "." in c}
    df = df.drop(columns=[c for c in df if c in parents and df[c].isna().all()])
    if "status" not in df:
        df["status"] = None
    return df


def completed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "completed"]


def failed_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that are not averaged: path, status, error."""
    bad = df[df["status"] != "completed"]
    out = pd.DataFrame({c: bad[c] if c in bad else None for c in ("path", "status", "error")})
    return out.fillna({"status": "unknown"}).reset_index(drop=True)
