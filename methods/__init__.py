"""The methods the benchmark compares, by registry name.

Adding a method: one file in this folder (a `Method` subclass), one line below, one `configs/<name>.toml`.
"""

from __future__ import annotations

from methods.base import REC_LOSSES, TRAINING_EXAMPLES, Batch, DatasetInfo, Method, MethodConfig, TrainingSet
from methods.cl4srec import CL4SRec
from methods.clustering import BACKENDS as KMEANS_BACKENDS
from methods.clustering import kmeans
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

# kmeans and KMEANS_BACKENDS: the k-means of the intent methods' E-step, for tools that time it apart.
__all__ = [
    "KMEANS_BACKENDS", "REC_LOSSES", "REGISTRY", "TRAINING_EXAMPLES", "Batch", "DatasetInfo", "Method", "MethodConfig",
    "TrainingSet", "kmeans",
]
