"""Resolving a method's configuration: published (paper) settings or tuned ones, plus `--set` overrides.

The data lives in `methods/configs/<method>.toml` (`[defaults]`, `[datasets.<Name>]`, `[search_space]`) and
`<results>/tuned/<method>.toml` (written by `bench tune --export`; docs/tuned-configs.md). Every value is checked against
the method's typed config dataclass: unknown keys and wrong types are user errors.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from methods import REGISTRY, Method, MethodConfig

CONFIG_DIR = importlib.resources.files("methods") / "configs"  # package data: methods/configs/<method>.toml
CONFIG_SOURCES = ("paper", "tuned")


def method_class(name: str) -> type[Method]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise BenchError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}") from None


def read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: invalid TOML ({exc})") from None


def field_types(config_cls: type[MethodConfig]) -> dict[str, type]:
    defaults = config_cls()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(config_cls)}


def coerce(key: str, value: Any, expected: type, where: str) -> Any:
    """Convert `value` (from TOML or a `--set` string) to the field's type, or fail with a clear message.

    Numbers must be finite: `lr=nan` or `lr=inf` would only fail an epoch later, as a diverged run.
    """
    value = _convert(key, value, expected, where)
    if expected is float and not math.isfinite(value):
        raise BenchError(f"{where}: {key}={value!r} is not a finite number")
    return value


def _convert(key: str, value: Any, expected: type, where: str) -> Any:
    if isinstance(value, str) and expected is not str:
        text = value.strip()
        try:
            if expected is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            return expected(float(text)) if expected is int and float(text).is_integer() else expected(text)
        except ValueError:
            raise BenchError(f"{where}: {key}={value!r} is not a valid {expected.__name__}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise BenchError(f"{where}: {key}={value!r} should be a {expected.__name__}")
    return value


def check_values(config_cls: type[MethodConfig], values: dict, where: str) -> dict:
    types = field_types(config_cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise BenchError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types)}")
    return {k: coerce(k, v, types[k], where) for k, v in values.items()}


def build_config(config_cls: type[MethodConfig], values: dict, where: str) -> MethodConfig:
    config = config_cls(**check_values(config_cls, values, where))
    try:
        config.validate()
    except ValueError as exc:
        raise BenchError(f"{where}: {exc}") from None
    return config


def paper_values(method: str, dataset: str) -> dict:
    raw = read_toml(CONFIG_DIR / f"{method}.toml")
    return {**raw.get("defaults", {}), **raw.get("datasets", {}).get(dataset, {})}


_results_folder: dict[str, Path | None] = {"path": None}  # the command's --results (set by the CLI)


def use_results_folder(results: Path | str | None) -> None:
    """Tuned configs are read from and exported to `<results>/tuned` of the command being run."""
    _results_folder["path"] = None if results is None else Path(results).expanduser().resolve()


def results_folder() -> Path | None:
    """The folder set by `use_results_folder` (None: the default one)."""
    return _results_folder["path"]


def tuned_dir() -> Path:
    """Where tuned configs live: $BENCH_TUNED_DIR when set, else `tuned/` of the command's results folder
    (`use_results_folder`), else of the default one ($BENCH_RESULTS, else ./results); read at each call."""
    if os.environ.get("BENCH_TUNED_DIR"):
        return Path(os.environ["BENCH_TUNED_DIR"])
    results = _results_folder["path"] or Path(os.environ.get("BENCH_RESULTS") or "results").resolve()
    return results / "tuned"


def tuned_values(method: str, dataset: str) -> dict | None:
    entry = read_toml(tuned_dir() / f"{method}.toml").get("datasets", {}).get(dataset)
    if entry is None:
        return None
    return {k: v for k, v in entry.items() if k != "provenance"}


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BenchError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value
    return overrides


def resolve_config(
    method: str, dataset: str, source: str = "paper", overrides: dict | None = None
) -> tuple[MethodConfig, str]:
    """The config a run uses, and its provenance label: paper | tuned | custom (when overrides apply).

    With source "tuned" and no tuned entry for this (method, dataset), the paper config is used and the
    label says "paper", so a record never claims a tuning that did not happen.
    """
    if source not in CONFIG_SOURCES:
        raise BenchError(f"unknown config source {source!r}; choose one of {', '.join(CONFIG_SOURCES)}")
    method_cls = method_class(method)
    cls = method_cls.Config
    values = paper_values(method, dataset)
    label = "paper"
    if source == "tuned":
        tuned = tuned_values(method, dataset)
        if tuned is not None:
            values = {**values, **tuned}
            label = "tuned"
    where = f"config of {method} on {dataset}"
    values = check_values(cls, values, where)
    if overrides:
        values = {**values, **check_values(cls, overrides, "--set")}
        label = "custom"
    config = build_config(cls, values, where)
    try:
        method_cls.check_config(config)  # what the method's training data allows (rec_loss ce_last)
    except ValueError as exc:
        raise BenchError(f"{where}: {exc}") from None
    return config, label


# Config keys the tables show as columns of their own (docs/records.md): setting one of them with `--set`
# leaves a run's hyperparameters those of its source, so they do not make a run's config "custom" there.
OWN_COLUMN_KEYS = ("rec_loss", "encoder")


def hyperparameter_source(method: str, dataset: str, source: str, config: dict | None) -> str:
    """Where a record's hyperparameters come from, for the tables: its `config_source`, except that a
    "custom" config equal to the paper config in every key but `OWN_COLUMN_KEYS` counts as "paper" (SASRec
    with `--set rec_loss=ce` is the paper's SASRec trained with another loss, a column the tables name).
    A method this harness does not know, or a config it cannot resolve, keeps its recorded source."""
    if source != "custom" or not config or method not in REGISTRY:
        return source
    paper = _paper_config(method, dataset)
    if paper is None:
        return source
    differs = [k for k in set(paper) | set(config) if k not in OWN_COLUMN_KEYS and config.get(k, paper.get(k)) != paper.get(k)]
    return source if differs else "paper"


@functools.cache
def _paper_config(method: str, dataset: str) -> dict | None:
    """The resolved paper config as a dict (package data: the same for every record of a leaderboard)."""
    try:
        return resolve_config(method, dataset, "paper")[0].to_dict()
    except BenchError:
        return None
