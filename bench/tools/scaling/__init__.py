"""The scaling study (`python -m bench scaling`): at what number of users does ELCRec save time or memory?

ICLRec pays an E-step every epoch (encode all N users, copy the [N, H] matrix to the host, k-means);
ELCRec pays one k-means at initialisation and then clustering terms inside every training step. Both
methods' training steps are batch-sized, so an epoch costs ceil(N / B) of them whatever N is. The study
measures each part at growing N on a synthetic population made by resampling the dataset's real training
sequences, fits each part's cost against N, and extrapolates (marked as such) to the paper's scale.

What is measured and what is estimated:
- the E-step is measured whole at every N: encoding (eval mode, mean-pooled, as the harness does it), the
  device-to-host copy (faiss needs host data), and k-means per backend;
- a training step does not depend on N, so it is timed on a sample of steps (batches of a pool of a few
  thousand resampled users, built by the harness's own batch iterator) and multiplied by ceil(N / B): that
  epoch time is an **estimate**, checked against real full epochs at the smallest N;
- ELCRec's clustering terms (nearest center of all 2*B*L view positions, prototype gather, center
  projection, clustering loss, intent assignment, and their backward) are timed apart on the same shapes;
- memory: the measured high-water mark of each phase above what was held before it (RSS on a CPU, torch's
  allocator on a GPU), plus the harness's data tensors for N users, computed from their shapes.

The modules, by concern:
- `spec`: what an invocation measures (`ScalingSpec`) and the checks made before any data is loaded;
- `population`: resampled users and the inputs the harness would hold for them;
- `measurement`: clocks, peak memory, the E-step's parts, the training step, ELCRec's clustering terms;
- `sweep`: the study loop (`run_study`), from the checked spec to the rows of scaling.csv;
- `table`: scaling.csv, its row record (`Row`) and columns;
- `fits`: fits against N, the extrapolation, the per-N summary and the crossover;
- `report`: scaling.md and the plots, regenerated from the CSV (`write_outputs`).

Only `bench/cli.py` parses arguments; it calls `run_study` with a `ScalingSpec` or `write_outputs`.
"""

from __future__ import annotations

from bench.tools.scaling.fits import EXTRAPOLATE_TO
from bench.tools.scaling.report import write_outputs
from bench.tools.scaling.spec import DEFAULT_USERS, TIMED_BACKENDS, ScalingSpec
from bench.tools.scaling.sweep import run_study
from bench.tools.scaling.table import CSV_NAME, EPOCH_PHASES

__all__ = ["CSV_NAME", "DEFAULT_USERS", "EPOCH_PHASES", "EXTRAPOLATE_TO", "TIMED_BACKENDS", "ScalingSpec",
           "run_study", "write_outputs"]
