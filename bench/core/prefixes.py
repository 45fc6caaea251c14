"""Prefix examples: one training example per prefix of each user's training part, and their batches.

ICSRec's published code writes, for every raw line `u i_1 ... i_n` and every end e = 4..n, a line of the
last (at most) L + 3 items ending at i_e; each line w is one example, input w[:-3] and target w[-3]
(docs/methods.md, "Prefix examples"). Here the same examples come from the split's `full` tensor by
gathers, with no file written and no loop over users: for user u and t = 1..n_u - 3, input
s_u[max(0, t - L):t] (left-padded to L) and target s_u[t], users in file order, then t ascending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from methods import Batch

# A prefix method's choice of positives: (examples [B], the data, generator) -> same-target examples [B].
SameTarget = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]
PREFIX_CHUNK_ROWS = 1 << 16  # prefix examples gathered at a time: bounds the [rows, L] index tensors


@dataclass
class PrefixExamples:
    """One training example per prefix (docs/methods.md, "Prefix examples"): for user u and t = 1..n_u - 3,
    input s_u[max(0, t - L):t] (left-padded to L) and target s_u[t]; users in file order, then t ascending,
    which is the order of the lines ICSRec's published code writes."""

    user: torch.Tensor  # [P]
    input: torch.Tensor  # [P, L]
    target: torch.Tensor  # [P]


def build_prefix_examples(full: torch.Tensor, lengths: torch.Tensor, max_len: int) -> PrefixExamples:
    """The prefix examples of the whole sequences `full` [N, n_max] (left-aligned) of lengths [N]."""
    device = full.device
    counts = (lengths - 3).clamp(min=0)  # targets s[1..n-3]: the training part's positions after the first
    user = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)  # [P]
    first = torch.cumsum(counts, 0) - counts  # [N] index of each user's first example
    t = torch.arange(len(user), device=device) - first[user] + 1  # [P] position of the target
    flat, width = full.reshape(-1), full.shape[1]
    columns = torch.arange(max_len, device=device) - max_len  # [L] offsets -L..-1 from the target
    inputs = []
    for start in range(0, len(user), PREFIX_CHUNK_ROWS):  # chunks of rows, not a loop over users
        u, end = user[start : start + PREFIX_CHUNK_ROWS], t[start : start + PREFIX_CHUNK_ROWS]
        pos = end[:, None] + columns  # [rows, L] source columns; < 0 before the sequence starts
        picked = flat[u[:, None] * width + pos.clamp(min=0)]
        inputs.append(torch.where(pos >= 0, picked, 0))
    empty = torch.zeros(0, max_len, dtype=full.dtype, device=device)
    return PrefixExamples(user=user, input=torch.cat(inputs) if inputs else empty, target=full[user, t])


def prefix_batches(
    data, batch_size: int, generator: torch.Generator, same_target: SameTarget | None = None
) -> Iterator[Batch]:
    """One epoch of the prefix examples of `data` (a SequenceData), each once in a fresh random order; the
    last batch is smaller.

    Targets follow every input position (the input shifted by one, then the example's target), so bce
    and ce apply as on user examples and ce_last reads the last column. `same_target(examples, data,
    generator)`, the method's choice of a same-target example for each one, gives `batch.positives`.
    """
    prefixes = data.prefixes
    order = torch.randperm(len(prefixes.target), generator=generator, device=data.device)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        users, inputs, target = prefixes.user[rows], prefixes.input[rows], prefixes.target[rows]
        following = torch.cat([inputs[:, 1:], target[:, None]], dim=1)  # [B, L]
        target_pos = torch.where(inputs > 0, following, 0)
        negatives = torch.where(target_pos > 0, data.sample_negatives(users, data.max_len, generator), 0)
        positives = prefixes.input[same_target(rows, data, generator)] if same_target is not None else None
        yield Batch(users, inputs, target_pos, negatives, examples=rows, positives=positives)
