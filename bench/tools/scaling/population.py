"""The study's synthetic populations: N users whose sequences are the dataset's real training sequences,
drawn with replacement, and the inputs the harness would hold for them."""

from __future__ import annotations

import numpy as np
import torch

from bench.core.data import Sequences

ROWS_PER_CHUNK = 1 << 20  # population rows gathered per step, so the index tensor stays small


def resample_users(num_real: int, n: int, seed: int) -> np.ndarray:
    """Indices of the N synthetic users into the real ones: seeded, uniform, with replacement."""
    return np.random.default_rng([seed, n]).integers(0, num_real, size=n)


def build_population(seqs: Sequences, n: int, seed: int) -> Sequences:
    """A population of N users whose sequences are real training sequences drawn with replacement.

    Lengths and item popularity follow the dataset's (up to sampling error); item ids are unchanged, so the
    item table is the dataset's.
    """
    idx = resample_users(seqs.num_users, n, seed)
    lengths = seqs.lengths[idx]
    starts = seqs.offsets[idx]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Sequences(items=seqs.items[gather], offsets=offsets)


def population_train_input(real_train_input: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, L] int32 encoder inputs of the population (rows of the real ones), built in chunks.

    The harness holds int64; int32 halves the one [N, L] matrix the E-step needs and is converted back per
    chunk, so the encoder sees exactly the harness's inputs.
    """
    n, length = len(idx), real_train_input.shape[1]
    out = torch.empty((n, length), dtype=torch.int32, device=device)
    src = real_train_input.to(device=device, dtype=torch.int32)
    index = torch.from_numpy(idx)
    for start in range(0, n, ROWS_PER_CHUNK):
        out[start : start + ROWS_PER_CHUNK] = src[index[start : start + ROWS_PER_CHUNK].to(device)]
    return out


def harness_data_bytes(n: int, n_max: int, max_len: int) -> int:
    """Bytes of the tensors `SequenceData` holds for N users (int64): full and negative gaps [N, n_max],
    four [N, L] windows, six [N] vectors. Both methods hold them; they are the same for both."""
    return 8 * n * (2 * n_max + 4 * max_len + 6)
