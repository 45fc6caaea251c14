"""The harness's folders in the user's cache, outside any working copy (datasets, mid-run checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(override_env: str, name: str) -> Path:
    """`$<override_env>` when set, else `${XDG_CACHE_HOME:-~/.cache}/intent-bench/<name>`; absolute."""
    if os.environ.get(override_env):
        return Path(os.environ[override_env]).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return (cache / "intent-bench" / name).resolve()
