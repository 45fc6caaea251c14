"""Batched augmentations (methods/augment.py) against the reference's per-list semantics (docs/methods.md, "Losses")."""

from __future__ import annotations

import itertools

import pytest
import torch

from methods.augment import augment, crop, mask, reorder, right_align


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(lengths: list[int], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned rows whose item at position j is j + 1, so positions can be read back from items."""
    lens = torch.tensor(lengths)
    width = max(lengths + [1]) if width is None else width
    pos = torch.arange(width)
    seqs = torch.where(pos < lens[:, None], pos + 1, 0)
    return seqs, lens


def test_crop_length_contiguity_and_start_range() -> None:
    ms = list(range(0, 26))
    seqs, lens = batch(ms * 300)
    out, out_len = crop(seqs, lens, gen())
    starts: dict[int, set[int]] = {m: set() for m in ms}
    for row, length, m in zip(out.tolist(), out_len.tolist(), lens.tolist()):
        c = int(0.2 * m)
        assert length == min(max(c, 1), m)
        assert all(v == 0 for v in row[length:])
        if m == 0:
            continue
        start = row[0] - 1
        assert row[:length] == list(range(start + 1, start + 1 + length))  # a contiguous run of the input
        assert 0 <= start <= m - c - 1
        starts[m].add(start)
    for m in ms[1:]:  # 300 draws: every allowed start is hit, both ends included, nothing beyond
        c = int(0.2 * m)
        assert starts[m] == set(range(m - c)), m


def test_mask_counts_positions_and_uniformity() -> None:
    ms = list(range(0, 26))
    seqs, lens = batch(ms * 20)
    out, out_len = mask(seqs, lens, gen())
    assert torch.equal(out_len, lens)
    for row, orig, m in zip(out.tolist(), seqs.tolist(), lens.tolist()):
        assert sum(v == 0 for v in row[:m]) == int(0.7 * m)
        assert all(v == o for v, o in zip(row, orig) if v != 0)  # unmasked items untouched
        assert all(v == 0 for v in row[m:])
    # Python's int(0.7 * 90) is 62, not 63 (0.7 * 90 = 62.99999999999999): the sizes follow the float quirk.
    seqs, lens = batch([90, 170])
    out, _ = mask(seqs, lens, gen())
    assert (out[0, :90] == 0).sum().item() == 62 and (out[1] == 0).sum().item() == 118
    # Each of 10 positions is masked with probability 7/10; 4000 rows give a std of 0.007 per frequency.
    seqs, lens = batch([10] * 4000)
    out, _ = mask(seqs, lens, gen(1))
    freq = (out == 0).double().mean(0)
    assert torch.all((freq - 0.7).abs() < 0.05), freq


def test_reorder_shuffles_one_run() -> None:
    ms = list(range(0, 26))
    seqs, lens = batch(ms * 100)
    out, out_len = reorder(seqs, lens, gen())
    assert torch.equal(out_len, lens)
    touched: dict[int, set[int]] = {m: set() for m in ms}
    for row, orig, m in zip(out.tolist(), seqs.tolist(), lens.tolist()):
        c = int(0.2 * m)
        assert sorted(row[:m]) == orig[:m] and row[m:] == orig[m:]  # same multiset, padding untouched
        changed = [j for j in range(m) if row[j] != orig[j]]
        if changed:  # all moves stay inside one window of c consecutive positions, never the last item
            assert changed[-1] - changed[0] < c and changed[-1] <= m - 2
            touched[m].update(changed)
    assert touched[10] == set(range(9))  # c = 2: a swap can start at 0 up to m - c - 1 = 7


def test_reorder_is_a_uniform_permutation() -> None:
    # beta 0.75 on m = 4 gives c = 3 and start 0 always, so the 6 orders of items 1..3 are each 1/6.
    seqs, lens = batch([4] * 6000)
    out, _ = reorder(seqs, lens, gen(), beta=0.75)
    assert torch.all(out[:, 3] == 4)
    counts = {p: 0 for p in itertools.permutations([1, 2, 3])}
    for row in out[:, :3].tolist():
        counts[tuple(row)] += 1
    for p, n in counts.items():
        assert abs(n / 6000 - 1 / 6) < 0.05, (p, n)


def reference_right_align(seq: list[int], max_len: int) -> list[int]:
    return ([0] * (max_len - len(seq)) + seq)[-max_len:]


def test_right_align_truncates_and_pads() -> None:
    ms = [0, 1, 7, 49, 50, 51, 63]
    seqs, lens = batch(ms)
    out = right_align(seqs, lens, 50)
    assert out.shape == (len(ms), 50)
    for row, orig, m in zip(out.tolist(), seqs.tolist(), ms):
        assert row == reference_right_align(orig[:m], 50)
    assert out[-1].tolist() == list(range(14, 64))  # m = 63: the last 50 items
    assert out[2].tolist() == [0] * 43 + list(range(1, 8))
    # Zeros inside a sequence (masked items) count as items, as in the reference's lists.
    holes = torch.tensor([[5, 0, 7, 0, 0]])
    assert right_align(holes, torch.tensor([3]), 4).tolist() == [[0, 5, 0, 7]]


def test_augment_picks_each_operator_a_third_of_the_time() -> None:
    # m = 20 tells the operators apart by the number of items left: crop 4, mask 6, reorder 20.
    seqs, lens = batch([20] * 4000)
    out = augment(seqs, lens, 50, gen())
    assert out.shape == (4000, 50)
    kept = (out != 0).sum(1)
    assert set(kept.tolist()) <= {4, 6, 20}
    for n in (4, 6, 20):  # binomial std 0.0075, so +-0.05 cannot flake
        assert abs((kept == n).double().mean().item() - 1 / 3) < 0.05


def test_augment_is_seeded() -> None:
    seqs, lens = batch(list(range(0, 40)) * 3)
    a = augment(seqs, lens, 50, gen(7))
    b = augment(seqs, lens, 50, gen(7))
    c = augment(seqs, lens, 50, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("op", [crop, mask, reorder])
def test_short_and_empty_rows(op) -> None:
    seqs, lens = batch([0, 1, 2] * 200, width=3)
    out, out_len = op(seqs, lens, gen())
    assert torch.all(out[lens == 0] == 0) and torch.all(out_len[lens == 0] == 0)
    one, two = out[lens == 1], out[lens == 2]
    if op is crop:  # c = 0: a single item, from any start 0..m-1
        assert torch.all(one[:, 0] == 1) and torch.all(out_len[lens == 1] == 1)
        assert set(two[:, 0].tolist()) == {1, 2} and torch.all(out_len[lens == 2] == 1)
        assert torch.all(out[:, 1:] == 0)
    elif op is mask:  # floor(0.7) = 0 items masked for m = 1, floor(1.4) = 1 for m = 2
        assert torch.all(one[:, 0] == 1)
        assert torch.all((two[:, :2] == 0).sum(1) == 1)
    else:  # c = 0: identity
        assert torch.equal(out, seqs)
    views = augment(seqs, lens, 5, gen())
    assert torch.all(views[lens == 0] == 0)
    assert torch.all(views[lens == 1, -1] == 1)
