"""The front page's one figure: every headline claim as a point with its 95% interval, per dataset (a forest
plot), beside the value its paper claims.

A claim is one method against another on one dataset, as a relative change in percent: accuracy from the
paired test of the two columns (bench/reporting/comparisons.PairedTests), cost from the per-epoch interval.
An accuracy interval is the interval of the mean paired difference divided by the baseline's mean: over
seeds where both methods have 3 or more (drawn thin, with the interval over users drawn thick inside it), else
over the users of the seeds run. A claim without records is a row that says what is missing, so that the
figure shows what is not known as plainly as what is.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.core.stats import Interval, PairedTest
from bench.reporting.plots import png

CLAIM_COLOR = "#c44e52"  # the published value: the paper's claim, or a study's figure
OURS_COLOR = "#222222"


@dataclass(frozen=True)
class Claim:
    """One method against another on one dataset: our change with its interval, and what is published."""

    dataset: str
    label: str  # "ELCRec vs ICLRec, test NDCG@5"
    change_pct: float | None = None  # ours; None: not measured (then `missing` says why)
    low_pct: float | None = None
    high_pct: float | None = None
    basis: str = ""  # what the interval is over: "3 seeds", "22,363 users, 1 seed", "167+109 epochs"
    inner: tuple[float, float] | None = None  # the interval over users, where the outer one is over seeds
    published: tuple[tuple[float, str], ...] = ()  # (value in percent, who says so)
    missing: str = ""

    @property
    def measured(self) -> bool:
        return self.change_pct is not None and np.isfinite(self.change_pct)

    @property
    def has_interval(self) -> bool:
        return self.low_pct is not None and self.high_pct is not None


def pct_text(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else (f"{x:+.1f}%" if abs(x) < 100 else f"{x:+.0f}%")


def interval_text(c: Claim) -> str:
    """`+5.5% [+0.6%, +10.2%]`, or the bare change with `(no interval)`."""
    if not c.measured:
        return ""
    if not c.has_interval:
        return f"{pct_text(c.change_pct)} (no interval)"
    return f"{pct_text(c.change_pct)} [{pct_text(c.low_pct)}, {pct_text(c.high_pct)}]"


def accuracy_claim(dataset: str, label: str, t: PairedTest, mean_a: float, mean_b: float,
                   published: tuple[tuple[float, str], ...] = ()) -> Claim:
    """A's test metric against B's from their paired test, relative to B's mean."""
    if not (np.isfinite(mean_a) and np.isfinite(mean_b)) or mean_b <= 0:
        return Claim(dataset, label, published=published, missing="not measured")
    change = (mean_a / mean_b - 1) * 100

    def rel(lo, hi):
        return None if lo is None else (lo / mean_b * 100, hi / mean_b * 100)

    users = rel(t.ci_low, t.ci_high) if t.p_users is not None else None
    seeds = rel(t.seeds_ci_low, t.seeds_ci_high)
    if seeds is not None:  # the seed-to-seed spread is the wider truth; the users' interval sits inside it
        return Claim(dataset, label, change, *seeds, f"{t.n_seeds} seeds", users, published)
    if users is not None:
        return Claim(dataset, label, change, *users, f"{t.n_users:,} users, {t.n_seeds} seed(s)", None, published)
    return Claim(dataset, label, change, basis="no interval", published=published)


def cost_claim(dataset: str, label: str, iv: Interval, not_compared: str | None,
               published: tuple[tuple[float, str], ...] = ()) -> Claim:
    """A per-epoch cost change with its interval (bench/core/stats.per_epoch_interval)."""
    if not_compared:
        return Claim(dataset, label, published=published, missing=f"not compared: {not_compared}")
    if iv.change_pct is None:
        return Claim(dataset, label, published=published, missing=iv.reason or "not measured")
    return Claim(dataset, label, iv.change_pct, iv.low_pct, iv.high_pct, iv.basis or iv.reason or "", None, published)


PUBLISHED_MARKERS = ("D", "s", "^", "v", "P", "X")
NOTE_WIDTH = 88  # characters a line of a row's words, which fit the words' half of the figure


def forest_figure(claims: list[Claim], title: str) -> Figure:
    """One row per claim, top to bottom: our point and 95% interval, each published value as an open marker
    of its source, our interval and the published values written out at the right; a row without records
    says what is missing."""
    n = max(len(claims), 1)
    fig = Figure(figsize=(12.0, 1.6 + 0.5 * n), layout="constrained")
    # The words get an axes of their own: written beside the plot, they would squeeze it to a sliver.
    ax, notes = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1.0, 1.1], "wspace": 0.02})
    notes.axis("off")
    ys = np.arange(n)[::-1]
    values = [v for c in claims for v in (c.low_pct, c.high_pct, c.change_pct, *(p for p, _ in c.published))
              if v is not None and np.isfinite(v)]
    lo, hi = (min(values + [0.0]), max(values + [0.0])) if values else (-10.0, 10.0)
    pad = max(3.0, 0.06 * (hi - lo))
    ax.axvline(0, color="0.6", lw=1, zorder=0)
    sources = list(dict.fromkeys(who for c in claims for _, who in c.published))
    marker = {who: PUBLISHED_MARKERS[i % len(PUBLISHED_MARKERS)] for i, who in enumerate(sources)}
    seen: set[str] = set()

    def once(label: str) -> str:
        # One legend entry per kind of mark, however many rows draw it.
        if label in seen:
            return "_nolegend_"
        seen.add(label)
        return label

    for y, c in zip(ys, claims):
        if c.measured:
            if c.has_interval:
                ax.hlines(y, c.low_pct, c.high_pct, color=OURS_COLOR, lw=1.4, label=once("ours: 95% interval"))
            if c.inner is not None:
                ax.hlines(y, *c.inner, color=OURS_COLOR, lw=4.5, label=once("ours: interval over users (thin: over seeds)"))
            ax.plot(c.change_pct, y, "o", color=OURS_COLOR, ms=6, label=once("ours"))
            text = f"ours {interval_text(c)}, {c.basis}" if c.basis else f"ours {interval_text(c)}"
        else:
            text = c.missing
        for value, who in c.published:
            ax.plot(value, y, marker[who], color=CLAIM_COLOR, ms=7, mfc="white", mew=1.6, label=once(who))
        lines = textwrap.wrap(text, NOTE_WIDTH)
        if c.published:  # a line of its own: what is published
            lines += textwrap.wrap(", ".join(f"{who} {pct_text(v)}" for v, who in c.published), NOTE_WIDTH)
        notes.annotate("\n".join(lines), (0.0, y), xycoords=("axes fraction", "data"), va="center", fontsize=7.5,
                       color=OURS_COLOR if c.measured else "0.4", style="normal" if c.measured else "italic")
    for y, (above, below) in zip(ys[1:], zip(claims, claims[1:])):
        if above.dataset != below.dataset:  # a rule between datasets
            ax.axhline(y + 0.5, color="0.8", lw=0.8)
    ax.set_yticks(ys, [f"{c.dataset}: {c.label}" for c in claims], fontsize=8.5)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("change of the first method against the second, % (accuracy: higher is better; cost: lower is"
                  " cheaper)", fontsize=9)
    ax.grid(axis="x", color="0.92")
    ax.set_title(title, fontsize="medium", loc="left")
    if seen:
        fig.legend(loc="outside lower center", ncols=min(len(seen), 6), fontsize=8, frameon=False)
    return fig


def describe(claims: list[Claim]) -> str:
    """Alt text: every row in words."""
    rows = []
    for c in claims:
        ours = f"ours {interval_text(c)} ({c.basis})" if c.measured else c.missing
        pub = "; ".join(f"{who} {pct_text(v)}" for v, who in c.published)
        rows.append(f"{c.dataset}, {c.label}: {ours}" + (f"; published: {pub}" if pub else ""))
    return "Forest plot of the headline claims, each a relative change with its 95% interval: " + " | ".join(rows)


def forest_png(claims: list[Claim], title: str) -> tuple[bytes, str]:
    return png(forest_figure(claims, title)), describe(claims)


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """The figure's numbers as a table (forest.csv): every point and interval, regenerable and greppable."""
    return pd.DataFrame([{
        "dataset": c.dataset, "claim": c.label, "change_pct": c.change_pct, "low_pct": c.low_pct,
        "high_pct": c.high_pct, "basis": c.basis, "inner_low_pct": c.inner[0] if c.inner else None,
        "inner_high_pct": c.inner[1] if c.inner else None,
        "published": "; ".join(f"{who} {pct_text(v)}" for v, who in c.published), "missing": c.missing,
    } for c in claims])
