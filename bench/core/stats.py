"""Statistics behind every verdict in the tables: paired accuracy tests and a noise model for cost.

Pure functions of numbers (no records, no files), so that each rule can be tested on values built in a test.

Accuracy. Two methods evaluated on the same users are compared user by user: each user's value of the metric
(HR@K hit, NDCG@K gain, from the stored rank) is paired across the two methods and a two-sided Wilcoxon
signed-rank test is run over the users (scipy, zero differences dropped, normal approximation with tie
correction for large samples). Where both methods have at least 3 seeds in common, a paired t-test over the
seeds' metric values is run as well. A difference counts as significant only if every available test gives
p < ALPHA; with no test available (no per-user ranks and fewer than 3 seeds), nothing is significant. The
interval shown is that of the mean paired difference (over users, normal approximation; else over seeds, t).
The rank test and the mean can disagree: where the Wilcoxon test does not reject although the interval of
the mean over the same users excludes zero, the text calls it borderline, and the rule's verdict stands.

Cost. A per-epoch time is the run's median over the epochs after the first. Its noise is measured, never
assumed: with at least 2 runs (seeds) per method, the spread between runs (each run summarised by the mean
log seconds of its epochs after the first); otherwise, the spread of the epochs after the first within the
runs. The interval is a Welch t-interval on the difference of mean log seconds, turned into a ratio: a
relative change with its 95% interval. A change is a saving (or a cost) only when the whole interval lies
below (above) zero; otherwise "no difference detectable (±x%)", x the larger bound. A quantity measured once
per run (peak memory, total training time) needs 2 runs per method for an interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
MIN_SEEDS_FOR_T = 3
# Relative changes against a baseline under this value are not printed: a percentage of a number this
# small (a few hits among a few thousand users) says more about the baseline's noise than about the method.
MIN_BASELINE = 0.01


# --------------------------------------------------------------------------------------------- accuracy
@dataclass(frozen=True)
class PairedTest:
    """Outcome of comparing method A with method B on one metric."""

    p_users: float | None = None  # Wilcoxon signed-rank over users
    n_users: int = 0
    p_seeds: float | None = None  # paired t over seeds (>= 3 seeds in common)
    n_seeds: int = 0  # seeds both methods ran, whether or not enough for the t-test
    # 95% interval of the mean paired difference A - B: over users (normal approximation) where per-user
    # values exist, else over seeds (t) with 3 or more.
    ci_low: float | None = None
    ci_high: float | None = None
    # 95% t-interval of the mean paired difference over seeds (3 or more in common), whether or not per-user
    # values exist: with several seeds it is the one that shows how far the result moves from seed to seed.
    seeds_ci_low: float | None = None
    seeds_ci_high: float | None = None

    @property
    def available(self) -> bool:
        return self.p_users is not None or self.p_seeds is not None

    @property
    def significant(self) -> bool:
        ps = [p for p in (self.p_users, self.p_seeds) if p is not None]
        return bool(ps) and all(p < ALPHA for p in ps)

    @property
    def borderline(self) -> bool:
        """The Wilcoxon test over users does not reject, though the interval of the mean difference over the
        same users excludes zero. The rank test and the mean can read one set of differences differently
        (per-user NDCG differences are mostly zero, and skewed); the verdict keeps the rule, and the text says
        that the two disagree. (Over seeds the t-test and the t-interval always agree.)"""
        return (self.p_users is not None and self.p_users >= ALPHA and self.ci_low is not None
                and self.ci_high is not None and (self.ci_low > 0 or self.ci_high < 0))

    def describe(self) -> str:
        if not self.available:
            return f"test unavailable (no per-user ranks in the records, fewer than {MIN_SEEDS_FOR_T} seeds)"
        parts = []
        if self.p_users is not None:
            parts.append(f"p={format_p(self.p_users)} (Wilcoxon, {self.n_users:,} users)")
        if self.p_seeds is not None:
            parts.append(f"p={format_p(self.p_seeds)} (paired t, {self.n_seeds} seeds)")
        if self.borderline:
            parts.append(f"borderline: the 95% interval of the mean difference over users excludes zero, but the"
                         f" Wilcoxon test does not reject at p < {ALPHA}")
        return "; ".join(parts)


def format_p(p: float) -> str:
    if p < 1e-4:
        return "<1e-4"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.4f}"


def wilcoxon_users(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p of the Wilcoxon signed-rank test of paired per-user values; 1.0 when all pairs are equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values of different lengths: {a.shape} vs {b.shape}")
    d = a - b
    if not np.any(np.abs(d) > 1e-12):
        return 1.0
    return float(stats.wilcoxon(d[np.abs(d) > 1e-12], zero_method="wilcox").pvalue)


def paired_t_seeds(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided p of the paired t-test over seeds; None with fewer than MIN_SEEDS_FOR_T pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < MIN_SEEDS_FOR_T or len(a) != len(b):
        return None
    d = a - b
    if np.allclose(d, d[0]):  # no spread: the test is undefined; equal values are no evidence of a difference
        return 1.0 if abs(d[0]) < 1e-12 else None
    return float(stats.ttest_rel(a, b).pvalue)


def paired_test(
    users_a: np.ndarray | None, users_b: np.ndarray | None, seeds_a: np.ndarray, seeds_b: np.ndarray
) -> PairedTest:
    """Per-user values (averaged over seeds; None where any run lacks ranks) and per-seed values, paired."""
    p_users, n_users, ci = None, 0, (None, None)
    if users_a is not None and users_b is not None and len(users_a) == len(users_b) and len(users_a) > 1:
        p_users, n_users = wilcoxon_users(users_a, users_b), len(users_a)
        d = np.asarray(users_a, dtype=np.float64) - np.asarray(users_b, dtype=np.float64)
        half = float(stats.norm.ppf(0.5 + CONFIDENCE / 2)) * d.std(ddof=1) / math.sqrt(len(d))
        ci = (d.mean() - half, d.mean() + half)
    p_seeds, seeds_ci = paired_t_seeds(seeds_a, seeds_b), (None, None)
    if p_seeds is not None:
        d = np.asarray(seeds_a, dtype=np.float64) - np.asarray(seeds_b, dtype=np.float64)
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(d) - 1)) * d.std(ddof=1) / math.sqrt(len(d))
        seeds_ci = (float(d.mean() - half), float(d.mean() + half))
        ci = ci if ci[0] is not None else seeds_ci
    return PairedTest(p_users, n_users, p_seeds, len(seeds_a), *ci, *seeds_ci)


# ------------------------------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class Interval:
    """Relative change of A against B in percent, with its 95% interval, or the reason there is none."""

    change_pct: float | None
    low_pct: float | None = None
    high_pct: float | None = None
    basis: str = ""  # what the spread was measured over
    reason: str | None = None  # why there is no interval

    @property
    def has_interval(self) -> bool:
        return self.low_pct is not None and self.high_pct is not None


def _pct(x: float) -> str:
    return f"{x:+.1f}%" if abs(x) < 100 else f"{x:+.0f}%"


def _welch_log(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(estimate, low, high) of the log ratio mean(log a) - mean(log b), Welch t-interval."""
    la, lb = np.log(np.asarray(a, dtype=np.float64)), np.log(np.asarray(b, dtype=np.float64))
    d = la.mean() - lb.mean()
    va, vb = la.var(ddof=1) / len(la), lb.var(ddof=1) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, d, d
    df = (va + vb) ** 2 / ((va**2 / (len(la) - 1) if va else 0.0) + (vb**2 / (len(lb) - 1) if vb else 0.0))
    t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df))
    return d, d - t * se, d + t * se


def _as_change(d: float, lo: float, hi: float, basis: str) -> Interval:
    return Interval(
        (math.exp(d) - 1) * 100, (math.exp(lo) - 1) * 100, (math.exp(hi) - 1) * 100, basis=basis
    )


def per_epoch_interval(epochs_a: list[list[float]], epochs_b: list[list[float]]) -> Interval:
    """Change of A's per-epoch seconds against B's; each argument holds one list per run (seed) of the
    seconds of its epochs after the first."""
    runs_a = [[x for x in r if x > 0] for r in epochs_a]
    runs_b = [[x for x in r if x > 0] for r in epochs_b]
    runs_a, runs_b = [r for r in runs_a if r], [r for r in runs_b if r]
    if not runs_a or not runs_b:
        return Interval(None, reason="no epoch after warm-up")
    point = (np.median([np.median(r) for r in runs_a]) / np.median([np.median(r) for r in runs_b]) - 1) * 100
    if len(runs_a) >= 2 and len(runs_b) >= 2:
        means_a = [float(np.exp(np.mean(np.log(r)))) for r in runs_a]
        means_b = [float(np.exp(np.mean(np.log(r)))) for r in runs_b]
        return _as_change(*_welch_log(means_a, means_b), basis=f"{len(runs_a)}+{len(runs_b)} seeds")
    pooled_a = [x for r in runs_a for x in r]
    pooled_b = [x for r in runs_b for x in r]
    if len(pooled_a) < 2 or len(pooled_b) < 2:
        return Interval(float(point), reason="one epoch after warm-up: no spread to measure")
    return _as_change(
        *_welch_log(pooled_a, pooled_b), basis=f"{len(pooled_a)}+{len(pooled_b)} epochs after the first"
    )


def per_run_interval(values_a: list[float], values_b: list[float]) -> Interval:
    """Change of a quantity measured once per run (peak memory, total time): needs 2 runs per method."""
    a = [x for x in values_a if x is not None and np.isfinite(x) and x > 0]
    b = [x for x in values_b if x is not None and np.isfinite(x) and x > 0]
    if not a or not b:
        return Interval(None, reason="not measured")
    point = (np.mean(a) / np.mean(b) - 1) * 100
    if len(a) < 2 or len(b) < 2:
        return Interval(float(point), reason="one run per method: no spread to measure")
    return _as_change(*_welch_log(a, b), basis=f"{len(a)}+{len(b)} seeds")


def interval_text(iv: Interval) -> str:
    """`-12.0% [-15.0%, -9.0%]`, or the bare change with `(no interval)`."""
    if iv.change_pct is None:
        return ""
    if not iv.has_interval:
        return f"{_pct(iv.change_pct)} (no interval)"
    return f"{_pct(iv.change_pct)} [{_pct(iv.low_pct)}, {_pct(iv.high_pct)}]"


def cost_verdict(iv: Interval, who: str = "ELCRec") -> str:
    """The verdict on one cost change: a saving, a cost, no detectable difference, or no verdict."""
    if iv.change_pct is None:
        return f"no verdict: {iv.reason}"
    if not iv.has_interval:
        return f"no verdict: {iv.reason} ({who} {_pct(iv.change_pct)})"
    if iv.high_pct < 0:
        return f"{who} saves: {interval_text(iv)} ({iv.basis})"
    if iv.low_pct > 0:
        return f"{who} costs more: {interval_text(iv)} ({iv.basis})"
    bound = max(abs(iv.low_pct), abs(iv.high_pct))
    width = f"±{bound:.1f}%" if bound < 100 else "interval wider than ±100%"
    return f"no difference detectable ({width}): {interval_text(iv)} ({iv.basis})"
