"""The long tables behind leaderboard.csv and cost.csv, computed from the completed runs alone.

Accuracy: one row per (group, dataset, metric, column): mean, sample std and number of seeds of the test
metric, the published number beside runs with the paper's budget and the published loss, the marks and
ELCRec against its best baseline (bench/reporting/comparisons.py). Cost: one row per (group, dataset,
column): warm-up and steady-state seconds per phase, totals, peak memory and the execution context.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.records import DEFAULT_ENCODER, METRICS
from bench.reporting.comparisons import PairedTests, compare_accuracy, with_training_seconds
from bench.reporting.published import PUBLISHED_ACCURACY, PUBLISHED_LOSS, PUBLISHED_SOURCE
from bench.reporting.runs import GROUP, PAPER_PROFILE, converged_group, groups_by_authority, ordered

COLUMN_KEYS = ["config_source", "method_options", "rec_loss", "encoder"]  # what tells two columns of a method apart


def _published(acc: pd.DataFrame) -> tuple[list[float], list[str]]:
    """Published values and sources: only beside the paper's budget and runs trained with the published loss
    on the published encoder (SASRec)."""
    values, sources = [], []
    keys = ["profile", "dataset", "method", "metric", "rec_loss", "encoder"]
    for profile, dataset, method, metric, loss, encoder in acc[keys].to_numpy():
        value = PUBLISHED_ACCURACY.get(dataset, {}).get(method, {}).get(metric, np.nan)
        shown = profile == PAPER_PROFILE and loss == PUBLISHED_LOSS.get(method) and encoder == DEFAULT_ENCODER
        shown = shown and not np.isnan(value)
        values.append(value if shown else np.nan)
        sources.append(PUBLISHED_SOURCE.get(method, "") if shown else "")
    return values, sources


def accuracy_table(runs: pd.DataFrame, tests: PairedTests) -> pd.DataFrame:
    """One row per (group, column, dataset, metric): mean, std, n, published, marks, ELCRec vs best baseline."""
    ids = [*GROUP, *COLUMN_KEYS, "dataset", "method", "column", "seed"]
    long = runs.melt(id_vars=ids, value_vars=[f"test_{m}" for m in METRICS], var_name="metric")
    long["metric"] = long["metric"].str.removeprefix("test_")
    keys = [*GROUP, *COLUMN_KEYS, "dataset", "metric", "method", "column"]
    # Sample std (ddof=1) is NaN for a single seed, which the tables show as "(n=1)" rather than "± 0".
    acc = long.groupby(keys, sort=False)["value"].agg(mean="mean", std="std", n_seeds="count").reset_index()
    acc["published"], acc["published_source"] = _published(acc)
    acc["diff"] = acc["mean"] - acc["published"]
    marked = {key for key in groups_by_authority(runs) if converged_group(runs, key)}
    acc = compare_accuracy(acc, tests, marked)
    return ordered(acc, [*GROUP, "dataset", "metric", "method", *COLUMN_KEYS])


# ------------------------------------------------------------------------------------------------- cost
def in_flight_text(s: pd.DataFrame) -> str:
    known = s["concurrency"].dropna()
    if len(known) == len(s):
        # A context written before runs were counted on the host counted its own grid's only (a lower bound).
        counted = [(c or {}).get("in_flight_counted") or "grid" for c in s["context"]]
        values = sorted({(int(v), how) for v, how in zip(s["concurrency"], counted)})
        return "/".join(f"{v}" if how == "host" else f"{v} (its grid)" for v, how in values)
    seen = s["in_flight_seen"].max()
    if pd.isna(seen):
        return "unknown"
    return "unknown (alone by record times)" if seen == 1 else f"unknown (≥{int(seen)} by record times)"


def load_text(s: pd.DataFrame) -> str:
    loads = [
        (c["loadavg_start"][0], c["loadavg_end"][0])
        for c in s["context"]
        if c["loadavg_start"] and c["loadavg_end"]  # null where not recorded, or without os.getloadavg
    ]
    if not loads:
        return ""
    return ", ".join(f"{a:.1f}→{b:.1f}" for a, b in loads)


COST_MEANS = ["training_s_first", "training_s_steady_median"]
COST_MEANS += [f"{p}_s_{k}" for k in ("first", "steady_median") for p in ("estep", "train", "eval")]
COST_MEANS += ["training_cpu_s_steady_median", "training_s", "time_to_best_s", "epochs_run", "peak_memory_mb"]


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, column, dataset): warm-up and steady-state seconds (mean over seeds), context."""
    runs = with_training_seconds(runs)
    runs = runs.assign(
        training_s_first=runs["estep_s_first"] + runs["train_s_first"],
        training_s_steady_median=runs["epoch_training_s"].map(lambda e: np.median(e[1:]) if len(e) > 1 else np.nan),
    )
    keys = [*GROUP, *COLUMN_KEYS, "method", "column", "dataset"]
    rows = []
    for k, s in runs.groupby(keys, sort=False):
        row = dict(zip(keys, k))
        row.update({c: s[c].mean() for c in COST_MEANS})
        row["n_seeds"] = len(s)
        row["machine"] = ", ".join(sorted(set(s["machine"].fillna("unknown").astype(str))))
        row["threads"] = "/".join(sorted({str(int(t)) for t in s["threads"].dropna()})) or "unknown"
        row["in_flight"] = in_flight_text(s)
        row["load"] = load_text(s)
        row["torch"] = ", ".join(sorted({c["torch"] for c in s["context"] if c["torch"]}))
        rows.append(row)
    return ordered(pd.DataFrame(rows), [*GROUP, "dataset", "method", *COLUMN_KEYS])
