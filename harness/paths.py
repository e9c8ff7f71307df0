"""Where the harness keeps what it can rebuild: one resolver for the cache root.

Token caches (harness/data) and dequantized GGUF checkpoints (harness/models) live under the same
root: the configured `cache_dir`, else `$LORA_HARNESS_CACHE`, else `~/.cache/lora-harness`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "LORA_HARNESS_CACHE"


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache root: `configured` if given, else $LORA_HARNESS_CACHE, else ~/.cache/lora-harness."""
    return Path(configured or os.environ.get(ENV) or "~/.cache/lora-harness").expanduser()
