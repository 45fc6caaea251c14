"""A method's hyperparameter search space: the `[search_space]` table of `methods/configs/<method>.toml`.

    lr = { type = "float", low = 1e-4, high = 5e-3, log = true }
    num_layers = { type = "int", low = 1, high = 3 }
    num_intents = { type = "categorical", choices = [64, 128, 256, 512] }

Everything is checked when the file is read, before any trial starts: a typo found by the tenth trial of a
study on a GPU would waste the nine before it. `suggest` maps a space onto Optuna's `trial.suggest_*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import configs
from bench.core.errors import BenchError

KINDS = ("float", "int", "categorical")
_ALLOWED = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter, already validated against the config field it sets."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()


SearchSpace = dict[str, Dimension]


def space_path(method: str) -> Path:
    return configs.CONFIG_DIR / f"{method}.toml"


def load(method: str, path: Path | None = None) -> SearchSpace:
    """The validated search space of `method`, from `path` (default `methods/configs/<method>.toml`)."""
    path = Path(path) if path is not None else space_path(method)
    cls = configs.method_class(method).Config
    if not path.is_file():
        raise BenchError(f"{path}: no such file; a method's search space lives in its [search_space] table")
    table = configs.read_toml(path).get("search_space")
    if not isinstance(table, dict) or not table:
        raise BenchError(f"{path}: no [search_space] table (or it is empty): nothing to tune for {method}")
    return parse(table, cls, str(path))


def parse(table: dict, config_cls: type, where: str) -> SearchSpace:
    """Validate a `[search_space]` table against a config dataclass; `where` names the file in errors."""
    types = configs.field_types(config_cls)
    space: SearchSpace = {}
    for key, entry in table.items():
        here = f"{where}: [search_space].{key}"
        if key not in types:
            raise BenchError(f"{here}: unknown key; {config_cls.__name__} has {', '.join(types)}")
        if not isinstance(entry, dict):
            raise BenchError(f"{here}: expected a table like {{ type = \"float\", low = ..., high = ... }}")
        space[key] = _dimension(key, entry, types[key], here)
    return space


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: Any, expected: type) -> bool:
    """Whether a TOML value may be given to a field of type `expected` (an int is a valid float)."""
    if expected is float:
        return _is_number(value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _dimension(key: str, entry: dict, field_type: type, here: str) -> Dimension:
    kind = entry.get("type")
    if kind not in KINDS:
        raise BenchError(f"{here}: type must be one of {', '.join(KINDS)}, got {kind!r}")
    extra = sorted(set(entry) - _ALLOWED[kind])
    if extra:
        raise BenchError(f"{here}: {', '.join(extra)} not allowed for type {kind!r} (allowed: {', '.join(sorted(_ALLOWED[kind]))})")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BenchError(f"{here}: choices must be a non-empty list")
        wrong = [c for c in choices if not _fits(c, field_type)]
        if wrong:
            raise BenchError(f"{here}: choice(s) {wrong} are not {field_type.__name__} values like the field")
        if len(set(choices)) != len(choices):
            raise BenchError(f"{here}: choices contain duplicates")
        # A float field gets floats, so the suggested value has the field's type whatever the TOML wrote.
        return Dimension(key, kind, choices=tuple(field_type(c) for c in choices))

    if field_type not in (int, float) or (kind == "float" and field_type is int):
        raise BenchError(f"{here}: a {kind} range cannot set a {field_type.__name__} field; use a categorical")
    low, high = entry.get("low"), entry.get("high")
    if not (_is_number(low) and _is_number(high)):
        raise BenchError(f"{here}: low and high are required numbers, got low={low!r} high={high!r}")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise BenchError(f"{here}: an int range needs integer low and high, got low={low!r} high={high!r}")
    if not low < high:
        raise BenchError(f"{here}: low must be < high, got low={low!r} high={high!r}")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise BenchError(f"{here}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise BenchError(f"{here}: log = true needs low > 0, got low={low!r}")
    step = entry.get("step")
    if step is not None:
        if not _is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise BenchError(f"{here}: step must be a positive {kind}, got {step!r}")
        if log:  # Optuna rejects the pair, later and less clearly
            raise BenchError(f"{here}: step and log = true cannot be combined")
    if kind == "float":
        return Dimension(key, kind, float(low), float(high), log, None if step is None else float(step))
    return Dimension(key, kind, low, high, log, step)


def suggest(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """One value per dimension from an Optuna trial (or anything with the same `suggest_*` methods)."""
    values: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.kind == "float":
            values[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log, step=dim.step)
        elif dim.kind == "int":
            values[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log, step=dim.step or 1)
        else:
            values[name] = trial.suggest_categorical(name, list(dim.choices))
    return values
