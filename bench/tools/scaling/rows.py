"""From the sweep's samples to the rows of scaling.csv: medians over repeats, the steps' seconds as the
step estimate times ceil(N / B), each method's total and data rows, and the real-epoch checks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from bench.tools.scaling.population import harness_data_bytes
from bench.tools.scaling.spec import METHODS, Plan, ScalingSpec
from bench.tools.scaling.table import Row, Spread

NOTHING = Spread(0.0, 0.0, 0.0)
NO_TIME = Spread(math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class EpochCheck:
    """A real full epoch against the step estimate (context.json keeps them under "validation")."""

    N: int
    method: str
    real_s: float
    estimated_s: float  # steps x the mean of steps sampled just before and after the epoch
    steps: int
    error_pct: float
    study_median_estimate_s: float  # steps x the study's median step
    study_median_error_pct: float


class Phase(NamedTuple):
    """One phase of a method at one N and backend, before it becomes a row."""

    seconds: Spread
    peak_bytes: int
    kind: str
    note: str
    kmeans_cap: int | None = None


def study_rows(spec: ScalingSpec, plan: Plan, per_n: dict[int, dict], estimate: dict[str, Spread],
               step_memory: dict[str, int], checks: list[EpochCheck], n_max: int) -> list[Row]:
    """The measured and estimated rows of every N and backend, then the real-epoch rows.

    `per_n`: the sweep's (seconds, bytes) per repeat, per N and quantity; `estimate`: one step's seconds per
    method; `step_memory`: a step's working memory per method; `n_max`: the longest sequence.
    """
    rows = []
    for n in plan.users:
        for backend in spec.backends:
            where = {"dataset": spec.dataset, "N": n, "device": plan.device.type, "kmeans": backend,
                     "repeats": len(per_n[n]["encode"])}
            rows += _rows_at(where, plan, per_n[n], estimate, step_memory, n_max)
    for c in checks:
        for backend in spec.backends:
            where = {"dataset": spec.dataset, "N": c.N, "device": plan.device.type, "kmeans": backend, "repeats": 1}
            note = (f"one real epoch, {c.steps} steps; estimate {c.estimated_s:.2f} s ({c.error_pct:+.1f}%) "
                    f"from steps sampled around it; from the study's median step {c.study_median_estimate_s:.2f} s "
                    f"({c.study_median_error_pct:+.1f}%)")
            rows.append(Row.timed(where, c.method, "train_real_epoch", Spread(c.real_s, c.real_s, c.real_s), np.nan,
                                  "measured", note))
    return rows


def _median_of(pairs: list[tuple[float, int]]) -> tuple[Spread, int]:
    """(seconds over repeats, median bytes) of (seconds, bytes) samples."""
    return Spread.of([x[0] for x in pairs]), int(np.median([x[1] for x in pairs]))


def _rows_at(where: dict, plan: Plan, s: dict, estimate: dict[str, Spread], step_memory: dict[str, int],
             n_max: int) -> list[Row]:
    """The rows of one N and backend: each method's phases, total and data, and ELCRec's initialisation."""
    n, backend, cap = where["N"], where["kmeans"], plan.kmeans_cap
    steps = math.ceil(n / plan.iclrec.batch_size)
    enc, enc_mem = _median_of(s["encode"])
    cp, cp_mem = _median_of(s["copy"]) if backend == "faiss" else (NOTHING, 0)
    km, km_mem = _median_of(s[f"kmeans_{backend}"])
    # On a CPU a step's working set is read in a fresh process (see step_memory_fresh); on a GPU,
    # torch's allocator statistics are exact in this one.
    st_mem = {m: max(step_memory[m], int(np.median([x[1] for x in s[f"step_{m}"]]))) for m in METHODS}
    cl = Spread(*(min(v, estimate["elcrec"].mid) for v in Spread.of([x[0] for x in s["cluster_terms"]])))
    other = Spread(*(max(v - cl.mid, 0.0) * steps for v in estimate["elcrec"]))
    phases = {
        "iclrec": {
            "estep_encode": Phase(enc, enc_mem, "measured", ""),
            "estep_copy": Phase(cp, cp_mem, "measured", "faiss needs host data" if backend == "faiss"
                                else "none: torch k-means runs on the device"),
            "estep_kmeans": Phase(km, km_mem, "measured", "sample of at most kmeans_cap points (K x max points per "
                                  "centroid); peak includes the [N, H] matrix", cap),
            "train": Phase(estimate["iclrec"].times(steps), st_mem["iclrec"], "estimated", f"{steps:,} steps x median step"),
        },
        "elcrec": {
            "train_other": Phase(other, st_mem["elcrec"], "estimated", f"{steps:,} steps x (median step - clustering terms)"),
            "cluster_terms": Phase(cl.times(steps), 0, "estimated", f"{steps:,} steps x clustering terms of a step"),
        },
    }
    data_bytes = harness_data_bytes(n, n_max, plan.iclrec.max_len)
    rows = [row for method, ph in phases.items() for row in _method_rows(where, method, ph, data_bytes)]
    init = Spread(enc.mid + cp.mid + km.mid, enc.lo + cp.lo + km.lo, enc.hi + cp.hi + km.hi)
    rows.append(Row.timed(where, "elcrec", "init_once", init, max(enc_mem, km_mem), "measured",
                          "the same E-step as ICLRec's, once before epoch 0; not in the per-epoch total"))
    return rows


def _method_rows(where: dict, method: str, phases: dict[str, Phase], data_bytes: int) -> list[Row]:
    """A method's phase rows, its total (seconds: their sum; peak: the harness data plus the largest phase)
    and its data row."""
    rows = [Row.timed(where, method, name, p.seconds, p.peak_bytes, p.kind, p.note, p.kmeans_cap)
            for name, p in phases.items()]
    total = Spread(*(sum(p.seconds[i] for p in phases.values()) for i in range(3)))
    working = max(p.peak_bytes for p in phases.values())
    rows.append(Row.timed(where, method, "total", total, data_bytes + working, "estimated",
                          "seconds: sum of phases; peak: harness data + largest phase working set"))
    rows.append(Row.timed(where, method, "data", NO_TIME, data_bytes, "computed",
                          "SequenceData tensors, int64, from their shapes"))
    return rows
