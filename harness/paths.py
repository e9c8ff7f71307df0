"""Where the harness reads its configs and keeps what it writes or can rebuild.

- `conf_dir()`: the Hydra configs. In a source checkout (and an editable install) they are the
  repository's top-level `conf/`; a built wheel ships the same files as `harness/conf/` (setup.py
  copies them in at build time), so `harness-train` finds them from any folder.
- `PathsConfig`: the `paths` config group (conf/paths/default.yaml): where runs are written
  (`output_dir`) and the cache root every task and model uses (`cache_dir`).
- `cache_root()`: one resolver for that cache root. Token caches (harness/data) and dequantized
  GGUF checkpoints (harness/models) live under it: the configured `cache_dir`, else
  `$LORA_HARNESS_CACHE`, else `~/.cache/lora-harness`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENV = "LORA_HARNESS_CACHE"
_PACKAGE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    """The folder holding config.yaml: the installed package's copy if there is one, else the
    repository's conf/ beside the package (a checkout never has harness/conf: it is build output)."""
    packaged = _PACKAGE / "conf"
    return packaged if (packaged / "config.yaml").is_file() else _PACKAGE.parent / "conf"


@dataclass
class PathsConfig:
    """conf/paths/default.yaml. Relative paths resolve against the folder harness-train starts in."""

    output_dir: str = "outputs"  # runs/<model>/<task>/<overrides>/ and sweeps/<sweep_name>/ go here
    cache_dir: Optional[str] = None  # null: $LORA_HARNESS_CACHE, else ~/.cache/lora-harness (cache_root)


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: `configured` if given, else $LORA_HARNESS_CACHE, else ~/.cache/lora-harness."""
    return Path(configured or os.environ.get(ENV) or "~/.cache/lora-harness").expanduser()
