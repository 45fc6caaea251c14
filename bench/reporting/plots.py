"""The four plots of a group: convergence, test accuracy, accuracy against training time, cost by phase.

Each is built as a matplotlib Figure (so that a test can measure where its legend lies) and saved as PNG
bytes. Legends sit outside the panels under constrained layout, so that six or more methods with long
column names never cover the data or fall off the figure; colours are the methods' own.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.reporting.runs import column_colors, columns_of, datasets_of

DPI = 110
PLOT_KINDS = {
    "convergence": "valid NDCG@20 per epoch",
    "accuracy": "test NDCG@20",
    "tradeoff": "accuracy against training time",
    "cost": "seconds per epoch by phase",
}
PHASE_COLORS = {"E-step": "#8c8c8c", "train": "#4c72b0", "eval": "#dd8452"}


def png(fig: Figure) -> bytes:
    # An explicit Agg canvas instead of pyplot: no global backend switch, no figure registry to leak into.
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(n_panels: int, title: str, width: float | None = None) -> tuple[Figure, list]:
    fig = Figure(figsize=(width or max(7.5, 2.5 + 3.3 * n_panels), 4.2), layout="constrained")
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    what, _, group = title.partition(": ")
    fig.suptitle(f"{what}\n{group}" if group else what, fontsize="medium")  # two lines: never clipped
    return fig, axes


def _legend(fig: Figure, axes: list) -> None:
    handles: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")


def convergence_figure(runs: pd.DataFrame, title: str) -> Figure:
    datasets, colors = datasets_of(runs), column_colors(runs)
    fig, axes = _figure(len(datasets), f"valid NDCG@20 per epoch (mean over seeds): {title}")
    for ax, dataset in zip(axes, datasets):
        d = runs[runs["dataset"] == dataset]
        for col in columns_of(d):
            curves = list(d.loc[d["column"] == col, "valid_curve"])
            length = max(len(c) for c in curves)
            padded = np.array([list(c) + [np.nan] * (length - len(c)) for c in curves], dtype=float)
            mean = np.nanmean(padded, axis=0) if length else padded
            x = np.arange(1, length + 1)
            ax.plot(x, mean, marker="o" if length < 15 else None, ms=3, label=col, color=colors[col])
        ax.set_title(dataset, fontsize="small")
        ax.set_xlabel("epoch")
        longest = max(len(c) for c in d["valid_curve"])
        ax.set_xlim(0.5, max(longest, 2) + 0.5)
        ax.set_xticks(np.unique(np.linspace(1, max(longest, 1), min(max(longest, 1), 10)).round().astype(int)))
    axes[0].set_ylabel("valid NDCG@20")
    _legend(fig, axes)
    return fig


def accuracy_figure(acc: pd.DataFrame, title: str) -> Figure:
    d = acc[acc["metric"] == "NDCG@20"]
    datasets, cols, colors = datasets_of(d), columns_of(d), column_colors(d)
    # Wider with more bars per dataset, so that every bar keeps a readable width.
    width_in = max(7.5, 3.5 + len(datasets) * max(1.6, 0.3 * len(cols)))
    fig, axes = _figure(1, f"test NDCG@20 (mean ± std over seeds): {title}", width=width_in)
    ax = axes[0]
    width = 0.8 / len(cols)
    for i, col in enumerate(cols):
        sub = d[d["column"] == col].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (i - (len(cols) - 1) / 2) * width
        ax.bar(x, sub["mean"], width, yerr=sub["std"].fillna(0), capsize=3, ecolor="0.35", label=col,
               color=colors[col])
        if sub["published"].notna().any():  # paper profile only
            ax.scatter(x, sub["published"], marker="D", s=18, color="black", zorder=3, label="published")
    ax.set_xticks(np.arange(len(datasets)), datasets, fontsize="small")
    ax.set_ylabel("test NDCG@20")
    _legend(fig, axes)
    return fig


def tradeoff_figure(runs: pd.DataFrame, title: str) -> Figure:
    datasets, colors = datasets_of(runs), column_colors(runs)
    fig, axes = _figure(len(datasets), f"test NDCG@20 against training time (each point a run): {title}")
    for ax, dataset in zip(axes, datasets):
        d = runs[runs["dataset"] == dataset]
        for col in columns_of(d):
            s = d[d["column"] == col]
            ax.scatter(s["estep_s"] + s["train_s"], s["test_NDCG@20"], label=col, color=colors[col], s=30)
        ax.set_title(dataset, fontsize="small")
        ax.set_xlabel("training s (E-step + train)")
        ax.set_xlim(left=0)  # from zero: the eye reads ratios of time and accuracy
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-3))
    axes[0].set_ylabel("test NDCG@20")
    _legend(fig, axes)
    return fig


def cost_figure(cost: pd.DataFrame, title: str) -> Figure:
    datasets = datasets_of(cost)
    most = max(cost.groupby("dataset")["column"].nunique())
    width_in = max(7.5, 2.5 + len(datasets) * max(3.3, 0.55 * most))
    fig, axes = _figure(len(datasets), f"seconds per epoch by phase, median after the first epoch: {title}", width_in)
    phases = {"estep_s_steady_median": "E-step", "train_s_steady_median": "train", "eval_s_steady_median": "eval"}
    for ax, dataset in zip(axes, datasets):
        g = cost[cost["dataset"] == dataset]
        bottom = np.zeros(len(g))
        steady = g[list(phases)].notna().any(axis=1).to_numpy()
        for col, label in phases.items():
            seconds = g[col].fillna(0).to_numpy()
            ax.bar(g["column"], seconds, bottom=bottom, label=label, color=PHASE_COLORS[label])
            bottom += seconds
        # One-epoch runs have no steady state: their first epoch is drawn hatched instead, and says so.
        first = np.where(steady, 0.0, (g["training_s_first"] + g["eval_s_first"]).fillna(0).to_numpy())
        if first.any():
            ax.bar(g["column"], first, fill=False, hatch="//", edgecolor="0.3", label="only epoch (warm-up)")
        ax.set_title(dataset, fontsize="small")
        ax.tick_params(axis="x", labelrotation=35 if most > 4 else 30, labelsize="small")
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    axes[0].set_ylabel("seconds per epoch")
    _legend(fig, axes)
    return fig


def describe(kind: str, frame: pd.DataFrame, group: str) -> str:
    """Alt text of a plot: what it shows, of which methods, on which datasets."""
    cols = ", ".join(columns_of(frame))
    datasets = ", ".join(datasets_of(frame))
    what = {
        "convergence": "Line chart of the valid NDCG@20 after each epoch, mean over seeds, one panel per dataset",
        "accuracy": "Bar chart of the test NDCG@20 per dataset, mean with the std over seeds as error bars",
        "tradeoff": "Scatter plot of each run's test NDCG@20 against its E-step + training seconds, one panel per dataset",
        "cost": "Stacked bars of the E-step, training and evaluation seconds per epoch after the first, one panel per dataset",
    }[kind]
    return f"{what}; methods: {cols}; datasets: {datasets}; group: {group}."


def group_plots(runs: pd.DataFrame, acc: pd.DataFrame, cost: pd.DataFrame, title: str) -> dict[str, tuple[bytes, str]]:
    """kind -> (PNG, alt text) for one group's runs and tables."""
    figures = {
        "convergence": (convergence_figure(runs, title), runs),
        "accuracy": (accuracy_figure(acc, title), acc),
        "tradeoff": (tradeoff_figure(runs, title), runs),
        "cost": (cost_figure(cost, title), cost),
    }
    return {kind: (png(fig), describe(kind, frame, title)) for kind, (fig, frame) in figures.items()}
