"""intent-bench: `import bench`, then `bench.run`, `bench.grid`, `bench.records`, `bench.leaderboard` and
`bench.add_dataset` (bench/api.py; docs/api.md). Every problem the user can fix raises `bench.BenchError`.

The names are imported on first use: `import bench` loads neither torch nor pandas.
"""

from bench.core.errors import BenchError

__all__ = ["BenchError", "Results", "Run", "RunFailed", "add_dataset", "grid", "leaderboard", "records", "run"]
_API = set(__all__) - {"BenchError"}


def __getattr__(name: str):
    if name in _API:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
