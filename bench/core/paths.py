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


def portable(path: str | None) -> str | None:
    """`path` as a record keeps it: under the user's home as `~/...`, so that a record names no machine's
    home folder (the run's checkpoint folder, a saved checkpoint); other paths as given."""
    if path is None:
        return None
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path
