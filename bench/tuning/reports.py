"""What a study leaves behind for people: its reports and the tuned configurations exported from it.

`write_reports` writes `<results>/studies/<study>/` (trials.csv, importances.csv, history.png, best.json),
each file atomically; `export` writes the best parameters of each (method, dataset) to
`<results>/tuned/<method>.toml`, which `run --configs tuned` reads. Nothing here trains or runs trials:
this module only reads studies (through bench/tuning/studies.py) and writes files.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.core import configs, files
from bench.core.errors import BenchError
from bench.tuning import search_space
from bench.tuning.studies import (
    METRIC,
    check_study_name,
    journal_path,
    open_storage,
    public_storage,
    studies_dir,
)

# When several studies tuned the same (method, dataset), export prefers the one with the larger budget.
_PROFILE_RANK = {"paper": 3, "quick": 2, "smoke": 1}


# ------------------------------------------------------------------------------------------- reports
def counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    out = {name.lower(): states.count(state) for name, state in TrialState.__members__.items()}
    return {"complete": out["complete"], "pruned": out["pruned"], "failed": out["fail"],
            "running": out["running"], "waiting": out["waiting"], "total": len(states)}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importances, or {} when they mean nothing (fewer than 2 results, or all equal)."""
    done = complete_trials(study)
    if len(done) < 2 or len({t.value for t in done}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. every searched value identical
        return {}


def plot_history(study: optuna.Study, title: str) -> bytes:
    """PNG of the optimisation history: each finished trial's value and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    done = sorted(complete_trials(study), key=lambda t: t.number)
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if done:
        xs = [t.number for t in done]
        ys = [t.value for t in done]
        best, running = [], -math.inf
        for y in ys:
            running = max(running, y)
            best.append(running)
        ax.scatter(xs, ys, s=18, color="tab:blue", label="complete", zorder=3)
        # Carry the best to the last trial, pruned or not, so the line spans the whole study.
        last = max(t.number for t in study.get_trials(deepcopy=False))
        ax.step([*xs, last], [*best, best[-1]], where="post", color="tab:red", label="best so far")
    if pruned:
        ax.scatter(
            [t.number for t in pruned], [max(t.intermediate_values.values()) for t in pruned],
            s=18, marker="x", color="tab:gray", label="pruned (best before pruning)", zorder=2,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {METRIC}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(loc="best")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_reports(study: optuna.Study, out: Path, summary: dict) -> None:
    attrs = ("number", "value", "state", "datetime_start", "datetime_complete", "duration", "params", "user_attrs")
    frame = study.trials_dataframe(attrs=attrs)
    files.write_text_atomic(out / "trials.csv", frame.to_csv(index=False))
    rows = ["param,importance"] + [f"{k},{v:.6f}" for k, v in importances(study).items()]
    files.write_text_atomic(out / "importances.csv", "\n".join(rows) + "\n")
    files.write_bytes_atomic(out / "history.png", plot_history(study, summary["study"]))
    files.write_text_atomic(out / "best.json", json.dumps(summary, indent=1) + "\n")


def space_entry(dim: search_space.Dimension) -> dict:
    entry = {"type": dim.kind}
    if dim.kind == "categorical":
        return {**entry, "choices": list(dim.choices)}
    entry.update(low=dim.low, high=dim.high, log=dim.log)
    return entry if dim.step is None else {**entry, "step": dim.step}


def fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------- export
@dataclass
class _Candidate:
    storage: str
    study: str
    attrs: dict
    trial: FrozenTrial


def _candidates(storage: str, study: str | None, method: str | None, dataset: str | None) -> list[_Candidate]:
    store = open_storage(storage, create=False)
    found = []
    for frozen in store.get_all_studies():
        attrs = frozen.user_attrs
        if study and frozen.study_name != study:
            continue
        if "method" not in attrs or "dataset" not in attrs:
            print(f"skipping study {frozen.study_name}: not made by bench tune", file=sys.stderr)
            continue
        if (method and attrs["method"] != method) or (dataset and attrs["dataset"] != dataset):
            continue
        loaded = optuna.load_study(study_name=frozen.study_name, storage=store)
        done = complete_trials(loaded)
        if not done:
            print(f"skipping study {frozen.study_name}: no complete trial", file=sys.stderr)
            continue
        best = max(done, key=lambda t: t.value)
        found.append(_Candidate(storage, frozen.study_name, dict(attrs), best))
    return found


def export(
    results: Path,
    *,
    storage: str | None = None,
    study: str | None = None,
    method: str | None = None,
    dataset: str | None = None,
    tuned_dir: Path | None = None,
) -> list[Path]:
    """Write the best params of each (method, dataset) to `<tuned_dir>/<method>.toml`; returns the files.

    Sources: the given storage, else the study's journal, else every journal under `<results>/studies/`.
    When several studies tuned the same pair, the one with the larger budget wins (paper > quick > smoke >
    custom), then the better value: a high score on 2,000 users says less than a lower one on all of them.
    """
    target = Path(tuned_dir) if tuned_dir is not None else configs.tuned_dir()
    files.check_writable(target, "tuned configs folder")  # before reading any study
    sources = _export_sources(results, storage, study)
    found: list[_Candidate] = []
    for source in sources:
        found += _candidates(source, study, method, dataset)
    if not found:
        where = ", ".join(public_storage(s) for s in sources) or f"{studies_dir(results)} (no *.journal)"
        raise BenchError(f"no study with a complete trial to export in {where}")
    texts, lines = _tuned_files(target, _best_per_pair(found))
    for path, text in texts.items():  # every file checked and built before the first is replaced
        files.write_text_atomic(path, text)
    print("\n".join(lines))
    return list(texts)


def _export_sources(results: Path, storage: str | None, study: str | None) -> list[str]:
    """The storages to export from: the given one, else the study's journal, else every journal of `results`."""
    if storage:
        return [storage]
    if study:
        return [str(journal_path(results, check_study_name(study)))]
    return [str(p) for p in sorted(studies_dir(results).glob("*.journal"))]


def _best_per_pair(found: list[_Candidate]) -> dict[tuple[str, str], _Candidate]:
    """The study each (method, dataset) is exported from: the larger budget, then the better value."""

    def rank(c: _Candidate) -> tuple:
        return (_PROFILE_RANK.get(c.attrs.get("profile"), 0), c.trial.value)

    chosen: dict[tuple[str, str], _Candidate] = {}
    for c in found:
        key = (c.attrs["method"], c.attrs["dataset"])
        if key not in chosen or rank(c) > rank(chosen[key]):
            chosen[key] = c
    return chosen


def _tuned_files(target: Path, chosen: dict[tuple[str, str], _Candidate]) -> tuple[dict[Path, str], list[str]]:
    """The text of each method's tuned TOML, its earlier datasets kept and the chosen ones replaced, and a
    line per (method, dataset) exported."""
    import tomli_w

    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    texts: dict[Path, str] = {}
    lines: list[str] = []
    for m in sorted({k[0] for k in chosen}):
        path = target / f"{m}.toml"
        doc = configs.read_toml(path)
        datasets = doc.setdefault("datasets", {})
        for (method_name, ds), c in sorted(chosen.items()):
            if method_name != m:
                continue
            datasets[ds] = _tuned_entry(m, c, now)
            lines.append(f"{m}/{ds}: study {c.study} trial #{c.trial.number} (valid {METRIC} {c.trial.value:.4f}) -> {path}")
        header = "# Tuned configurations, written by `python -m bench tune --export`; used by `run --configs tuned`.\n"
        texts[path] = header + tomli_w.dumps(doc)
    return texts, lines


def _tuned_entry(method: str, c: _Candidate, now: str) -> dict:
    """One dataset's table in a tuned TOML: the best trial's params, checked against the method's config,
    and where they come from."""
    cls = configs.method_class(method).Config
    values = configs.check_values(cls, dict(c.trial.params), f"study {c.study} trial {c.trial.number}")
    provenance = {
        "study": c.study, "storage": public_storage(c.storage), "trial": c.trial.number,
        "value": c.trial.value, "metric": c.attrs.get("metric", f"valid {METRIC}"),
        "profile": c.attrs.get("profile"), "max_users": c.attrs.get("max_users"),
        "epochs": c.attrs.get("epochs"), "patience": c.attrs.get("patience"), "date": now,
    }
    # TOML has no null: a budget without a user cap simply has no max_users.
    return {**values, "provenance": {k: v for k, v in provenance.items() if v is not None}}


__all__ = ["counts", "export", "importances", "write_reports"]
