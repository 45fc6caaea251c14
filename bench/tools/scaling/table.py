"""`scaling.csv`, the study's one table, in long format: a `Row` per (dataset, device, k-means backend, N,
method, phase). Every other output is regenerated from it (`bench scaling --from-csv`).

Phases: ICLRec's epoch is `estep_encode` + `estep_copy` + `estep_kmeans` + `train`; ELCRec's is `train_other`
(its steps without the clustering terms) + `cluster_terms`. Beside them: `total` (the epoch), `data` (the
harness's tensors for N users), ELCRec's `init_once` (its one k-means, not per epoch) and `train_real_epoch`
(a real full epoch, to check the step estimate). Kinds: measured (timed at that N), estimated (steps x the
median step), computed (from tensor shapes), extrapolated (from a fit).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

CSV_NAME = "scaling.csv"
# Phases that add up to a method's seconds per epoch.
EPOCH_PHASES = {
    "iclrec": ("estep_encode", "estep_copy", "estep_kmeans", "train"),
    "elcrec": ("train_other", "cluster_terms"),
}


class Spread(NamedTuple):
    """A quantity over repeats: its median, minimum and maximum."""

    mid: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values) -> Spread:
        arr = np.asarray(values, dtype=float)
        return cls(float(np.median(arr)), float(arr.min()), float(arr.max()))

    def times(self, factor: float) -> Spread:
        return Spread(self.mid * factor, self.lo * factor, self.hi * factor)


@dataclass(frozen=True)
class Row:
    """One row of scaling.csv."""

    dataset: str
    N: int  # users in the population
    method: str
    device: str
    kmeans: str  # the k-means backend of this sweep's E-step
    phase: str
    seconds: float  # per epoch: median over repeats (NaN where a phase has no time, e.g. `data`)
    seconds_min: float
    seconds_max: float
    peak_bytes: float  # the phase's working memory; for `total`, the harness data plus the largest phase
    kind: str  # measured | estimated | computed | extrapolated
    repeats: int
    note: str = ""
    kmeans_cap: int | None = None  # the most points k-means trains on (K x max points per centroid); k-means rows only

    @classmethod
    def timed(cls, where: dict, method: str, phase: str, seconds: Spread, peak_bytes: float, kind: str,
              note: str = "", kmeans_cap: int | None = None) -> Row:
        """A row whose seconds are a spread; `where` holds dataset, device, kmeans, N and repeats."""
        return cls(**where, method=method, phase=phase, seconds=seconds.mid, seconds_min=seconds.lo,
                   seconds_max=seconds.hi, peak_bytes=peak_bytes, kind=kind, note=note, kmeans_cap=kmeans_cap)


CSV_COLUMNS = [f.name for f in fields(Row)]


def frame_of(rows: list[Row]) -> pd.DataFrame:
    frame = pd.DataFrame([astuple(r) for r in rows], columns=CSV_COLUMNS)
    return frame.astype({"kmeans_cap": "Int64"})


def kmeans_cap_from_notes(notes: pd.Series) -> pd.Series:
    """The k-means cap of a table written before it had a `kmeans_cap` column: there, only the note of the
    k-means rows held it ("sample of at most 1,048,576 points ...")."""
    found = notes.astype(str).str.extract(r"sample of at most ([\d,]+) points", expand=False)
    return found.str.replace(",", "", regex=False).astype("Int64")


def read_table(path: Path) -> pd.DataFrame:
    """scaling.csv as written, with empty notes as "" and the `kmeans_cap` column present."""
    frame = pd.read_csv(path, keep_default_na=True)
    frame["note"] = frame["note"].fillna("")
    if "kmeans_cap" not in frame:
        frame["kmeans_cap"] = kmeans_cap_from_notes(frame["note"])
    return frame.astype({"kmeans_cap": "Int64"})


def table_text(frame: pd.DataFrame) -> str:
    """The CSV text of the table: floats to 6 significant digits, the cap as a whole number."""
    return frame.astype({"kmeans_cap": "Int64"}).to_csv(index=False, float_format="%.6g")

