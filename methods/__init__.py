"""The methods the benchmark compares, by registry name.

Adding a method: one file in this folder (a `Method` subclass), one line below, one `configs/<name>.toml`.
Adding an encoder: one file in this folder (an `Encoder` subclass), one line in `encoders.py`; every method
then runs on it with `--set encoder=<name>`.
"""

from __future__ import annotations

from methods.base import (
    REC_LOSSES,
    TRAINING_EXAMPLES,
    Batch,
    DatasetInfo,
    Method,
    MethodConfig,
    TrainingSet,
    encoder_class,
    encoder_of_state,
)
from methods.cl4srec import CL4SRec
from methods.clustering import BACKENDS as KMEANS_BACKENDS
from methods.clustering import kmeans
from methods.duorec import DuoRec
from methods.elcrec import ELCRec
from methods.encoder import Encoder
from methods.encoders import ENCODERS
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
    "ENCODERS", "KMEANS_BACKENDS", "REC_LOSSES", "REGISTRY", "TRAINING_EXAMPLES", "Batch", "DatasetInfo", "Encoder", "Method", "MethodConfig",
    "TrainingSet", "encoder_class", "encoder_of_state", "kmeans",
]
