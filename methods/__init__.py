"""The methods the benchmark compares, by registry name.

Adding a method: one file in this folder (a `Method` subclass), one line below, one `configs/<name>.toml`.
"""

from __future__ import annotations

from methods.base import REC_LOSSES, TRAINING_EXAMPLES, Batch, DatasetInfo, Method, MethodConfig, TrainingSet
from methods.cl4srec import CL4SRec
from methods.duorec import DuoRec
from methods.elcrec import ELCRec
from methods.iclrec import ICLRec
from methods.icsrec import ICSRec
from methods.sasrec import SASRec

REGISTRY: dict[str, type[Method]] = {
    "sasrec": SASRec,
    "cl4srec": CL4SRec,
    "iclrec": ICLRec,
    "elcrec": ELCRec,
    "icsrec": ICSRec,
    "duorec": DuoRec,
}

__all__ = [
    "REC_LOSSES", "REGISTRY", "TRAINING_EXAMPLES", "Batch", "DatasetInfo", "Method", "MethodConfig", "TrainingSet",
]
