"""Completed runs as the tables see them: which records count, how they are grouped and ordered, and what
each column of a table is called.

A group is (profile, protocol, device, variant): numbers from a smoke run, from the strict protocol, from a
GPU or from a run whose precision or compilation differs are not comparable with each other, so they never
share a table. The variant of a group is made of the options every method has (precision, compile). Within
a group, one column per method, further split wherever runs of a method differ in what was trained: the
config source (`paper`, `tuned` or `custom`), a method's own execution options (`view_encoding`,
`kmeans_init`), the recommendation loss (`bce`, `ce`, `ce_last`) and the encoder. The column's name says how
it differs from the method as published ("SASRec (ce)"), so no table averages over any of them.

Groups are ordered by authority: the paper's budget first, then quick, smoke and custom; within a profile
the reference protocol, the faithful variant and the GPU (where the papers measured) come first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.core.identity import SPEC_OPTIONS
from bench.core.records import DEFAULT_ENCODER, FAITHFUL, METRICS, faithful_values, variant_mode
from methods import REGISTRY

GROUP = ["profile", "protocol", "device", "variant"]
PAPER_PROFILE = "paper"
PAPER_BUDGET = "all users, up to 300 epochs (patience 40), seeds 1, 2, 3"
PROFILE_AUTHORITY = ("paper", "quick", "smoke", "custom")
# Profiles whose budget is meant to let a run converge (the published protocol). Smoke and quick runs stop
# after a few epochs by design: pipeline checks, whose accuracy says nothing about the methods; custom
# budgets are whatever someone asked for. Only converged runs answer a question on the front page.
CONVERGING_PROFILES = ("paper",)
PROTOCOL_AUTHORITY = ("reference", "strict")
DEVICE_AUTHORITY = ("cuda", "cpu")
MODE_AUTHORITY = ("faithful", "modified", "fast")
DATASET_ORDER = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games", "Yelp")
# Registry order; a record of a method no longer registered sorts after them, under its registry name.
METHOD_ORDER = tuple(REGISTRY)
METHOD_NAMES = {name: cls.display_name or name for name, cls in REGISTRY.items()}
METHOD_COLORS = {name: cls.color for name, cls in REGISTRY.items()}
# The method the ELCRec paper proposes, and the one its cost table compares it with. Every other method of
# a table is one of its baselines, so a method added to methods/ is compared without a change here.
PROPOSED = "elcrec"
COST_BASELINE = "iclrec"
MIB = 2**20  # the paper's "MB" are nvidia-smi MiB
METHOD_OPTIONS = tuple(k for k in FAITHFUL if k not in SPEC_OPTIONS)

_ORDERS = {
    "dataset": DATASET_ORDER,
    "metric": METRICS,
    "method": METHOD_ORDER,
    "profile": PROFILE_AUTHORITY,
    "protocol": PROTOCOL_AUTHORITY,
    "device": DEVICE_AUTHORITY,
    "config_source": ("paper", "tuned"),  # the published configuration first
    "encoder": (DEFAULT_ENCODER,),  # the published encoder first
}


def _sort_key(col: pd.Series) -> pd.Series:
    # Known names sort in their order, unknown ones after them alphabetically (the prefix keeps them apart).
    if col.name == "variant":  # "faithful (compile=...)": by mode, then by the label
        order = MODE_AUTHORITY
        return col.map(lambda v: f"{_rank(order, str(v).split(' ')[0])}:{v}")
    order = _ORDERS.get(str(col.name))
    if order is None:
        return col
    return col.map(lambda v: f"{_rank(order, v)}:{v}")


def _rank(order: tuple, value) -> str:
    return f"{order.index(value) if value in order else len(order):02d}"


def ordered(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """`frame` sorted by `by`, each known column in its authority or paper order (stable, index reset)."""
    return frame.sort_values(by, key=_sort_key, kind="stable").reset_index(drop=True)


def datasets_of(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(ordered(frame, ["dataset"])["dataset"]))


def group_title(key: tuple) -> str:
    return ", ".join(f"{name} `{value}`" for name, value in zip(GROUP, key))


def in_group(frame: pd.DataFrame, key: tuple) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for name, value in zip(GROUP, key):
        mask &= frame[name] == value
    return mask


def group_slug(key: tuple) -> str:
    """A file-name part for a group that depends on the group alone, e.g. `smoke_reference_cpu_faithful`."""

    def slug(value: str) -> str:
        return "-".join("".join(ch if ch.isalnum() else " " for ch in str(value)).split())

    return "_".join(slug(v) for v in key)


def groups_by_authority(runs: pd.DataFrame) -> list[tuple]:
    return list(dict.fromkeys(map(tuple, ordered(runs[GROUP], GROUP).to_numpy())))


# ------------------------------------------------------------------------------------------------- runs
def in_flight_from_times(records: pd.DataFrame) -> pd.Series:
    """Most runs in flight at once during each run (itself included), from the records' start and finish
    times on the same host: a lower bound (other work on the machine leaves no record here)."""
    start = pd.to_datetime(records["started_at"], errors="coerce", utc=True)
    end = pd.to_datetime(records["finished_at"], errors="coerce", utc=True)
    # The times are to the second: a run that started and finished within one second reads start == finish.
    # It was in flight at its start, so it counts there (itself, and the runs it overlapped).
    end = end.mask(start.notna() & end.notna() & (end <= start), start + pd.Timedelta(microseconds=1))
    host = records["hostname"].fillna("")
    out = pd.Series(np.nan, index=records.index)
    for i in records.index:
        if pd.isna(start[i]) or pd.isna(end[i]):
            continue
        others = (host == host[i]) & (start < end[i]) & (end > start[i])
        # The count at each moment a run inside the window started (or this one started) is the maximum.
        moments = [max(start[i], t) for t in start[others]]
        out[i] = max(int(((start[others] <= m) & (end[others] > m)).sum()) for m in moments)
    return out


def _options_label(options: dict, keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k}={options[k]}" for k in keys if options.get(k, FAITHFUL[k]) != FAITHFUL[k])


def _group_variant(options: dict) -> str:
    """The variant of the options every method has: "faithful", or e.g. "fast (precision=bf16)"."""
    spec_level = {k: options.get(k, FAITHFUL[k]) for k in SPEC_OPTIONS}
    label = _options_label(spec_level, SPEC_OPTIONS)
    mode = variant_mode(spec_level)
    return f"{mode} ({label})" if label else mode


def _column_names(runs: pd.DataFrame) -> pd.Series:
    """Method name, with what sets its runs apart in brackets: "ICLRec (kmeans_init=fresh)", "SASRec (ce)",
    "ICSRec (on gru4rec)". A loss is named where it is not the method's published one, an encoder where it is
    not the default, a config source where the method has several in the group: each is one key of a run's
    identity (completed_runs), so two columns of one method never share a name."""
    several_sources = runs.groupby([*GROUP, "method"])["config_source"].transform("nunique") > 1
    names = []
    for i, r in runs.iterrows():
        parts = [r["config_source"]] if several_sources[i] else []
        parts += [r["method_options"]] if r["method_options"] else []
        parts += [r["rec_loss"]] if r["rec_loss"] != faithful_values(r["method"])["rec_loss"] else []
        parts += [f"on {r['encoder']}"] if r["encoder"] != DEFAULT_ENCODER else []
        name = METHOD_NAMES.get(r["method"], r["method"])
        names.append(f"{name} ({', '.join(parts)})" if parts else name)
    return pd.Series(names, index=runs.index, dtype=object)


def completed_runs(records: pd.DataFrame) -> pd.DataFrame:
    """The ok runs, one per (group, column, dataset, seed), with `column` (their name in a table)."""
    records = records.assign(in_flight_seen=in_flight_from_times(records))
    runs = records[records["status"] == "ok"].copy()
    runs["context"] = runs["context"].map(lambda c: c if isinstance(c, dict) else None)  # never NaN
    options = runs["variant_options"].map(lambda o: o if isinstance(o, dict) else {})
    runs["variant"] = options.map(_group_variant)
    runs["method_options"] = options.map(lambda o: _options_label(o, METHOD_OPTIONS))
    for key in [*GROUP, "config_source", "device_name"]:
        runs[key] = runs[key].fillna("unknown")  # NaN keys would silently vanish from groupby
    runs["encoder"] = runs["encoder"].fillna(DEFAULT_ENCODER)  # an ok run's config always resolved
    # A rerun of the same seed (new config or code) supersedes the older record instead of counting twice.
    runs = runs.sort_values(["finished_at", "path"], na_position="first")
    identity = [*GROUP, "config_source", "method_options", "rec_loss", "encoder", "method", "dataset", "seed"]
    runs = runs.drop_duplicates(identity, keep="last")
    runs["column"] = _column_names(runs)
    runs["converged"] = converged(runs)
    return ordered(runs, [*GROUP, "method", "config_source", "method_options", "rec_loss", "encoder", "dataset", "seed"])


def converged(runs: pd.DataFrame) -> pd.Series:
    """Whether each run converged: a profile meant to converge, and the run stopped by patience (no better
    valid NDCG@20 for `patience` epochs after its best) or at its full epoch budget. An ok record of the
    paper profile always does; the check keeps a record that ended otherwise (a budget cut short by hand,
    a record written by an older harness) off the front page."""
    epochs, best = runs["epochs_run"], runs["best_epoch"]
    by_patience = (epochs - 1 - best) >= runs["spec_patience"]
    by_budget = epochs >= runs["spec_epochs"]
    return (runs["profile"].isin(CONVERGING_PROFILES) & (by_patience | by_budget)).fillna(False).astype(bool)


def converged_group(runs: pd.DataFrame, key: tuple) -> bool:
    """Whether a group's runs all converged (a paper-profile group does; a smoke or quick one never)."""
    g = runs[in_group(runs, key)]
    return bool(len(g)) and bool(g["converged"].all())


def stop_reason(run: pd.Series) -> str:
    """Why a converged run stopped: `patience` or `budget` (its full epoch budget)."""
    if run["epochs_run"] - 1 - run["best_epoch"] >= run["spec_patience"]:
        return "patience"
    return "budget"


def columns_of(frame: pd.DataFrame) -> list[str]:
    """The columns of a group in table order: methods in registry order, then their variants."""
    return list(dict.fromkeys(ordered(frame, ["method", "config_source", "method_options", "rec_loss", "encoder"])["column"]))


def paper_command(datasets: list[str] | tuple[str, ...], methods: tuple[str, ...] = (),
                  seeds: tuple[int, ...] = (1, 2, 3), overrides: tuple[str, ...] = ()) -> str:
    """The grid command that produces converged runs (the paper profile) of `methods` (all when empty) on
    `datasets`: resumable and checkpointed, as a campaign runs it (docs/campaigns.md)."""
    parts = ["python -m bench run --all --profile paper"]
    parts += [f"--methods {' '.join(methods)}"] if methods else []
    parts += [f"--datasets {' '.join(datasets)}", f"--seeds {' '.join(map(str, seeds))}"]
    parts += [f"--set {o}" for o in overrides]
    return " ".join([*parts, "--checkpoint-every 1"])


def budget_kind(profile: str) -> str:
    """What a profile's runs are, in words, for a profile not meant to converge."""
    if profile in CONVERGING_PROFILES:
        return "converged runs"
    if profile in ("smoke", "quick"):
        return "pipeline check at a few epochs, not converged (no verdict on which method is more accurate)"
    return "a custom budget, not one meant to converge (no verdict on which method is more accurate)"


def budget_banner(g: pd.DataFrame) -> str | None:
    """One line for a group whose budget is not the paper's: users, epochs, seeds, and the caveat."""
    if g["profile"].iloc[0] == PAPER_PROFILE:
        return None
    parts = []
    # A dataset with fewer users than the cap (a small dataset of one's own) was run on all of them.
    capped = g["max_users"].notna() & ~(g["num_users"] < g["max_users"])
    for (users, epochs, patience, cap), b in g.assign(capped=capped).groupby(
            ["max_users", "spec_epochs", "spec_patience", "capped"], dropna=False):
        pat = "" if pd.isna(patience) else f" (patience {int(patience)})"
        parts.append(f"{_users(users if cap else np.nan)}, {_epochs(epochs)}{pat} on {', '.join(datasets_of(b))}")
    profile = g["profile"].iloc[0]
    return (
        f"Budget: {profile} profile, {budget_kind(profile)}: {'; '.join(parts)}; {seeds_text(g)} seed(s) per"
        f" cell. Not comparable with the published numbers (paper: {PAPER_BUDGET}), which are therefore not shown."
    )


def _users(users: float) -> str:
    return "all users" if pd.isna(users) else f"{int(users):,} users sampled"


def _epochs(epochs: float) -> str:
    return "? epochs" if pd.isna(epochs) else f"{int(epochs)} epoch{'s' if epochs != 1 else ''}"


def seeds_text(g: pd.DataFrame) -> str:
    seeds = g.groupby(["column", "dataset"])["seed"].nunique()
    return f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"


def group_brief(key: tuple, g: pd.DataFrame) -> str:
    """A short name of a group and its budget for the answers: `smoke, cpu, faithful: 2,000 users, ...`."""
    profile, protocol, device, variant = key
    where = f"{profile}, {device}, {variant}" + ("" if protocol == "reference" else f", protocol {protocol}")
    users = g["max_users"].dropna()
    who = "all users" if users.empty else f"{int(users.max()):,} users"
    epochs = g["spec_epochs"].dropna()
    budget = f"{who}, {_epochs(epochs.max() if not epochs.empty else np.nan)}"
    return f"{where} ({budget}, {seeds_text(g)} seed(s))"


_FALLBACK_COLORS = ("#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#17becf", "#bcbd22")


def column_colors(runs: pd.DataFrame) -> dict[str, str]:
    """A colour per column: its method's own, or for a method not registered one that no method uses."""
    free = [c for c in _FALLBACK_COLORS if c not in METHOD_COLORS.values()] or list(_FALLBACK_COLORS)
    unknown = sorted({m for m in runs["method"] if m not in METHOD_COLORS})
    extra = {m: free[i % len(free)] for i, m in enumerate(unknown)}
    pairs = runs[["column", "method"]].drop_duplicates("column")
    # A method's other columns (another loss, encoder, options) get shades of its colour: in one plot
    # "SASRec" and "SASRec (ce)" must not be the same line.
    nth = pairs.groupby("method").cumcount()
    return {c: _shade(METHOD_COLORS.get(m) or extra[m], k) for c, m, k in zip(pairs["column"], pairs["method"], nth)}


def _shade(color: str, k: int) -> str:
    """The k-th shade of `color`: itself, then alternately lighter and darker, further each time."""
    from matplotlib.colors import to_hex, to_rgb  # plotting only: the tables never need it

    if k == 0:
        return color
    rgb = np.array(to_rgb(color))
    amount = min(0.45 + 0.15 * ((k - 1) // 2), 0.75)
    target = np.ones(3) if k % 2 else np.zeros(3)
    return to_hex(rgb + (target - rgb) * amount)
