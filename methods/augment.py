"""Random sequence augmentations of CL4SRec / ICLRec / ELCRec (docs/methods.md, "Losses"), batched.

The published code augments one Python list at a time with the `random` module. Here a whole batch of
LEFT-aligned sequences (row i holds its `lengths[i]` items at positions 0..m-1, zeros after) is augmented
with tensor ops on its own device, drawing every random number from the `torch.Generator` passed in (it must
live on the same device as `seqs`), so that a seeded run repeats exactly. Each operator draws from the same
distribution as the reference's per-list version, including its quirks (crop never starts at the last
possible position; a crop of length 0 keeps one item).
"""

from __future__ import annotations

import torch


def _floor_frac(lengths: torch.Tensor, frac: float) -> torch.Tensor:
    # The reference computes int(frac * m) on Python floats (float64); a float64 product here rounds the same
    # way (0.7 * 10 = 7.000000000000001, 0.2 * m just under an integer, ...), so the sizes match exactly.
    return torch.floor(lengths.to(torch.float64) * frac).long()  # [B]


def _uniform_below(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniform integer in 0..high-1 per row, like random.randint(0, high - 1); 0 where high <= 0."""
    u = torch.rand(high.shape, generator=generator, device=high.device, dtype=torch.float64)  # [B]
    # u < 1, yet u * high can round up to high in float64: the minimum undoes only that rounding.
    return torch.minimum((u * high).long(), high - 1).clamp(min=0)  # [B]


def crop(
    seqs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, tao: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep floor(tao*m) consecutive items (one item when that is 0) from a start uniform in 0..m-c-1."""
    width = seqs.shape[1]
    c = _floor_frac(lengths, tao)  # [B]
    start = _uniform_below(lengths - c, generator)  # [B]
    out_len = torch.minimum(c.clamp(min=1), lengths)  # [B]; 0 only for an empty row
    pos = torch.arange(width, device=seqs.device)  # [M]
    src = (start[:, None] + pos).clamp(max=max(width - 1, 0))  # [B, M]; slots past the run are zeroed below
    out = seqs.gather(1, src).masked_fill(pos >= out_len[:, None], 0)  # [B, M]
    return out, out_len


def mask(
    seqs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, gamma: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Set floor(gamma*m) distinct positions, a uniform random subset of 0..m-1, to 0 (padding id)."""
    b, width = seqs.shape
    k = _floor_frac(lengths, gamma)  # [B]
    pos = torch.arange(width, device=seqs.device)  # [M]
    # Ranking i.i.d. uniform keys gives a uniform random order of the real positions; padding gets a key
    # above every real one so it ranks last, and the k lowest ranks are a uniform subset of size k.
    keys = torch.rand(seqs.shape, generator=generator, device=seqs.device, dtype=torch.float64)  # [B, M]
    keys = keys.masked_fill(pos >= lengths[:, None], 2.0)
    order = keys.argsort(dim=1)  # [B, M]
    rank = torch.empty_like(order).scatter_(1, order, pos.expand(b, width))  # [B, M]
    return seqs.masked_fill(rank < k[:, None], 0), lengths


def reorder(
    seqs: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator, beta: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the run of floor(beta*m) consecutive items starting at a uniform position in 0..m-c-1."""
    width = seqs.shape[1]
    c = _floor_frac(lengths, beta)  # [B]
    start = _uniform_below(lengths - c, generator)  # [B]
    pos = torch.arange(width, device=seqs.device)  # [M]
    inside = (pos >= start[:, None]) & (pos < (start + c)[:, None])  # [B, M]
    # Sort key: the position itself outside the run, start + u (u uniform in [0, 1)) inside it. The run's
    # keys all fall between those of the items before it (< start) and after it (>= start + c >= start + 1),
    # so it stays in place, and within it the order of the u's is a uniform random permutation. float64
    # keeps the u's distinct even next to start values in the hundreds.
    u = torch.rand(seqs.shape, generator=generator, device=seqs.device, dtype=torch.float64)  # [B, M]
    keys = torch.where(inside, start[:, None] + u, pos.to(torch.float64))  # [B, M]
    return seqs.gather(1, keys.argsort(dim=1, stable=True)), lengths


def right_align(seqs: torch.Tensor, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Keep each row's last max_len items and left-pad with 0, as `([0] * pad + seq)[-max_len:]`."""
    b, width = seqs.shape
    if width == 0:
        return seqs.new_zeros(b, max_len)
    src = lengths[:, None] - max_len + torch.arange(max_len, device=seqs.device)  # [B, max_len]
    out = seqs.gather(1, src.clamp(min=0, max=width - 1))  # [B, max_len]
    return out.masked_fill(src < 0, 0)


def augment(
    seqs: torch.Tensor,
    lengths: torch.Tensor,
    max_len: int,
    generator: torch.Generator,
    tao: float = 0.2,
    gamma: float = 0.7,
    beta: float = 0.2,
) -> torch.Tensor:
    """One augmented view [B, max_len]: each row applies crop, mask or reorder (uniform choice), then pads."""
    # The operator index follows the reference's list order [Crop, Mask, Reorder]. All three run on the
    # whole batch and torch.where picks per row: cheaper than splitting the batch, and free of syncs.
    which = torch.randint(0, 3, lengths.shape, generator=generator, device=seqs.device)[:, None]  # [B, 1]
    cropped, crop_len = crop(seqs, lengths, generator, tao)
    masked, _ = mask(seqs, lengths, generator, gamma)
    reordered, _ = reorder(seqs, lengths, generator, beta)
    out = torch.where(which == 0, cropped, torch.where(which == 1, masked, reordered))  # [B, M]
    out_len = torch.where(which[:, 0] == 0, crop_len, lengths)  # [B]
    return right_align(out, out_len, max_len)
