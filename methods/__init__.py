"""The methods the benchmark compares, by registry name.

Adding a method: one file in this folder (a `Method` subclass), one line in REGISTRY, one
`configs/<name>.toml`. Adding an encoder: one file in this folder (an `Encoder` subclass), one line in
ENCODERS; every method then runs on it with `--set encoder=<name>`.
"""

from __future__ import annotations

from methods.base import REC_LOSSES, TRAINING_EXAMPLES, Batch, DatasetInfo, Method, MethodConfig, TrainingSet
from methods.cl4srec import CL4SRec
from methods.clustering import BACKENDS as KMEANS_BACKENDS
from methods.clustering import kmeans
from methods.duorec import DuoRec
from methods.elcrec import ELCRec
from methods.encoder import Encoder, SASRecEncoder
from methods.gru4rec import GRU4RecEncoder
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

ENCODERS: dict[str, type[Encoder]] = {
    "sasrec": SASRecEncoder,  # the default (MethodConfig.encoder)
    "gru4rec": GRU4RecEncoder,
}

# kmeans and KMEANS_BACKENDS: the k-means of the intent methods' E-step, for tools that time it apart.
__all__ = [
    "ENCODERS", "KMEANS_BACKENDS", "REC_LOSSES", "REGISTRY", "TRAINING_EXAMPLES", "Batch", "DatasetInfo", "Encoder", "Method", "MethodConfig",
    "TrainingSet", "kmeans",
]
