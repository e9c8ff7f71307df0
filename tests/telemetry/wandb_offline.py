"""Read an offline W&B run back from its `.wandb` file, without a server: what the W&B server would
show after `wandb sync`. Tests use it to check what harness.telemetry.Tracker actually wrote."""
from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
