"""From the measured rows to the answer: each phase's cost fitted against N, the extrapolation to the
paper's scale (marked as such), one summary row per N, and the N from which ELCRec's epoch is faster."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.tools.scaling.table import EPOCH_PHASES, Row, frame_of

EXTRAPOLATE_TO = (100_000_000, 130_000_000)


def fit_line(n: np.ndarray, y: np.ndarray, cap: float | None) -> tuple[float, float]:
    """Least squares in relative error of y = a + b * x, x = N (or min(N, cap)); a, b >= 0."""
    x = np.minimum(n, cap) if cap else n.astype(float)
    y = np.asarray(y, dtype=float)
    if np.all(y <= 0):
        return 0.0, 0.0
    w = 1.0 / np.where(y > 0, y, np.max(y))
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    a, b = np.linalg.lstsq(design, y * w, rcond=None)[0]
    if a < 0:  # refit through the origin
        a, b = 0.0, float(np.sum(x * y * w * w) / np.sum(x * x * w * w))
    if b < 0:  # flat
        a, b = float(np.sum(y * w * w) / np.sum(w * w)), 0.0
    return float(a), float(b)


def _kmeans_cap(g: pd.DataFrame) -> float | None:
    """The k-means cap of a phase's rows: k-means trains on at most this many points, whatever N."""
    cap = g["kmeans_cap"].iloc[0]
    return None if pd.isna(cap) else float(cap)


def phase_fits(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, device, backend, method, phase): the fit of seconds and of peak bytes against N, and
    its largest relative error on the measured points."""
    out = []
    measured = frame[frame["kind"].isin(["measured", "estimated", "computed"]) & (frame["phase"] != "train_real_epoch")]
    keys = ["dataset", "device", "kmeans", "method", "phase"]
    for key, g in measured.groupby(keys, sort=False):
        g = g.sort_values("N")
        n = g["N"].to_numpy(dtype=float)
        cap = _kmeans_cap(g)
        row = dict(zip(keys, key))
        row["seconds_cap"] = cap if cap else np.nan
        row["model"] = f"a + b*min(N, {cap:,.0f})" if cap else "a + b*N"
        for what in ("seconds", "peak_bytes"):
            y = g[what].to_numpy(dtype=float)
            if np.all(np.isnan(y)) or len(y) < 2:
                row[f"{what}_a"] = row[f"{what}_b"] = row[f"{what}_max_err_pct"] = np.nan
                continue
            ok = ~np.isnan(y)
            a, b = fit_line(n[ok], y[ok], cap if what == "seconds" else None)
            pred = a + b * (np.minimum(n[ok], cap) if (cap and what == "seconds") else n[ok])
            err = np.abs(pred - y[ok]) / np.where(y[ok] > 0, y[ok], 1)
            row[f"{what}_a"], row[f"{what}_b"] = a, b
            row[f"{what}_max_err_pct"] = float(100 * np.max(np.where(y[ok] > 0, err, 0)))
        row["points"] = len(g)
        out.append(row)
    return pd.DataFrame(out)


def _extrapolated_rows(fit: pd.DataFrame) -> list[Row]:
    rows = []
    for r in fit.itertuples(index=False):
        for n in EXTRAPOLATE_TO:
            x_s = n if math.isnan(r.seconds_cap) else min(n, r.seconds_cap)
            secs = r.seconds_a + r.seconds_b * x_s if not math.isnan(r.seconds_a) else np.nan
            mem = r.peak_bytes_a + r.peak_bytes_b * n if not math.isnan(r.peak_bytes_a) else np.nan
            rows.append(Row(dataset=r.dataset, N=n, method=r.method, device=r.device, kmeans=r.kmeans, phase=r.phase,
                            seconds=secs, seconds_min=np.nan, seconds_max=np.nan, peak_bytes=mem, kind="extrapolated",
                            repeats=0, note=f"fit {r.model} on {r.points} points, max error {r.seconds_max_err_pct:.1f}% (seconds)"))
    return rows


def with_extrapolation(frame: pd.DataFrame) -> pd.DataFrame:
    """The measured rows and, for each phase, its fit's values at the paper's scale (EXTRAPOLATE_TO)."""
    frame = frame[frame["kind"] != "extrapolated"]
    ext = frame_of(_extrapolated_rows(phase_fits(frame)))
    # The totals of extrapolated phases: seconds add up; memory is data + largest working set, as measured.
    for key, g in ext.groupby(["dataset", "N", "method", "device", "kmeans"], sort=False):
        per_epoch = g[g["phase"].isin(EPOCH_PHASES[key[2]])]
        data = g[g["phase"] == "data"]["peak_bytes"]
        total = g["phase"] == "total"
        ext.loc[total.index[total], "seconds"] = per_epoch["seconds"].sum()
        if len(data):
            ext.loc[total.index[total], "peak_bytes"] = float(data.iloc[0]) + per_epoch["peak_bytes"].max()
        ext.loc[total.index[total], "note"] = "sum of the phases extrapolated by their fits; memory: data + largest phase"
    return pd.concat([frame, ext], ignore_index=True)


def pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    """The rows whose columns equal the given values."""
    mask = pd.Series(True, index=frame.index)
    for k, v in where.items():
        mask &= frame[k] == v
    return frame[mask]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, device, backend, N, kind): both methods' seconds per epoch and memory."""
    rows = []
    totals = frame[frame["phase"] == "total"]
    for (dataset, device, backend, n, kind), _ in totals.groupby(["dataset", "device", "kmeans", "N", "kind"], sort=True):
        w = {"dataset": dataset, "device": device, "kmeans": backend, "N": n}
        kw = "extrapolated" if kind == "extrapolated" else None
        def v(method, phase, what="seconds", w=w, kw=kw):
            sub = pick(frame, **w, method=method, phase=phase)
            if kw:
                sub = sub[sub["kind"] == kw]
            else:
                sub = sub[sub["kind"] != "extrapolated"]
            return float(sub[what].iloc[0]) if len(sub) else np.nan
        estep = v("iclrec", "estep_encode") + v("iclrec", "estep_copy") + v("iclrec", "estep_kmeans")
        it, et = v("iclrec", "total"), v("elcrec", "total")
        im, em = v("iclrec", "total", "peak_bytes"), v("elcrec", "total", "peak_bytes")
        iw = max(v("iclrec", p, "peak_bytes") for p in EPOCH_PHASES["iclrec"])
        ew = max(v("elcrec", p, "peak_bytes") for p in EPOCH_PHASES["elcrec"])
        rows.append({
            "dataset": dataset, "device": device, "kmeans": backend, "N": int(n), "kind": kind,
            "iclrec_encode_s": v("iclrec", "estep_encode"), "iclrec_copy_s": v("iclrec", "estep_copy"),
            "iclrec_kmeans_s": v("iclrec", "estep_kmeans"), "iclrec_train_s": v("iclrec", "train"),
            "iclrec_total_s": it, "estep_share_pct": 100 * estep / it if it else np.nan,
            "elcrec_train_other_s": v("elcrec", "train_other"), "elcrec_cluster_s": v("elcrec", "cluster_terms"),
            "elcrec_total_s": et, "elcrec_init_once_s": v("elcrec", "init_once"),
            "time_diff_pct": 100 * (et - it) / it if it else np.nan,
            "iclrec_working_bytes": iw, "elcrec_working_bytes": ew,
            "iclrec_peak_bytes": im, "elcrec_peak_bytes": em,
            "memory_diff_pct": 100 * (em - im) / im if im else np.nan,
            "data_bytes": v("iclrec", "data", "peak_bytes"),
        })
    return pd.DataFrame(rows)


def crossover(summ: pd.DataFrame) -> dict:
    """Per (dataset, device, backend): the smallest measured N from which ELCRec's epoch is faster on
    every larger measured N, or None."""
    out = {}
    for key, g in summ[summ["kind"] != "extrapolated"].groupby(["dataset", "device", "kmeans"], sort=False):
        g = g.sort_values("N")
        faster = (g["elcrec_total_s"] < g["iclrec_total_s"]).to_numpy()
        n_from = None
        for i in range(len(g)):
            if faster[i:].all():
                n_from = int(g["N"].iloc[i])
                break
        out["/".join(map(str, key))] = n_from
    return out
