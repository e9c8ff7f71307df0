"""The resolvers conf/ uses, registered wherever a config is composed (harness.config imports this).

`${dirname:...}` turns Hydra's override string into a run folder name; `${mul:a,b}` lets an
experiment say alpha = 2r.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

from harness.telemetry import redact_text


def _without_secrets(override_dirname: str) -> str:
    """Drop the overrides that carry a secret (`+model.token=hf_...`): a folder name is copied into
    every file that names the run folder. Items are split at commas outside brackets and quotes."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(override_dirname + ","):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth <= 0:
            items.append(override_dirname[start:i])
            start = i + 1
    return ",".join(item for item in items if item and redact_text(item) == item)


def _dirname(override_dirname: str, limit: int = 180) -> str:
    """A folder name from Hydra's override string: never empty, never nested, never longer than
    file systems allow (255 bytes): a long one is cut and made unique by a hash of the whole.
    Overrides carrying secrets are left out of it."""
    name = _without_secrets(override_dirname).replace("/", "_") or "default"
    if len(name.encode()) > limit:
        digest = hashlib.md5(name.encode()).hexdigest()[:10]
        name = name.encode()[:limit].decode(errors="ignore") + "~" + digest
    return name


OmegaConf.register_new_resolver("dirname", _dirname, replace=True)
OmegaConf.register_new_resolver("mul", lambda a, b: a * b, replace=True)  # alpha = 2r in rank sweeps
