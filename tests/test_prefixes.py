"""Prefix examples (bench/core/prefixes.py) against the rule of docs/methods.md, "Prefix examples", and the
same-target positives of ICSRec and DuoRec (methods/same_target.py) against loops over the published rules."""

from __future__ import annotations

import pytest
import torch

from bench.core.data import SequenceData, parse_sequences
from bench.core.errors import BenchError
from methods.same_target import SameTargetIndex, fixed_partners


def prefix_lines(users: list[list[int]], max_len: int) -> list[list[int]]:
    """The published rule: for every end e = 4..n, the last (at most) max_len + 3 items ending at i_e; users
    in file order, then e ascending."""
    return [items[max(0, e - (max_len + 3)) : e] for items in users for e in range(4, len(items) + 1)]


def unpadded(row: torch.Tensor) -> list[int]:
    return [int(x) for x in row if x > 0]


@pytest.mark.parametrize("max_len", [50, 5])
def test_prefix_examples_follow_the_published_rule_on_a_small_file(tmp_path, max_len):
    users = [list(range(1, 61)), [7, 3, 9, 3, 2], [4, 5, 6], [8, 1, 8, 1, 8, 1, 8, 1], list(range(40, 95))]
    path = tmp_path / "small.txt"
    path.write_text("".join(f"{u + 11} {' '.join(map(str, items))}\n" for u, items in enumerate(users)))
    seqs = parse_sequences(path)
    data = SequenceData("small", seqs, item_size=int(seqs.items.max()) + 2, max_len=max_len)
    lines = prefix_lines(users, max_len)
    assert data.num_examples("prefixes") == len(lines) == sum(len(s) - 3 for s in users)
    prefixes = data.prefixes
    for p, w in enumerate(lines):  # each line w: input w[:-3] (left-padded), target w[-3]
        assert unpadded(prefixes.input[p]) == w[:-3], p
        assert prefixes.input[p, : max_len - len(w[:-3])].eq(0).all()
        assert int(prefixes.target[p]) == w[-3]
    owners = [u for u, items in enumerate(users) for _ in range(4, len(items) + 1)]
    assert prefixes.user.tolist() == owners


def test_beauty_has_one_example_per_prefix_and_289_partners_of_their_own(beauty):
    assert beauty.num_examples("prefixes") == 131_413  # interactions - 3 x users
    assert beauty.num_examples("users") == 22_363
    partners = fixed_partners(beauty.prefix_input, beauty.prefix_target)
    assert torch.equal(beauty.prefix_target[partners], beauty.prefix_target)
    assert int((partners == torch.arange(len(partners))).sum()) == 289


# ----------------------------------------------------------------------------------------------- batches
def test_prefix_batches_cover_every_example_once_with_aligned_targets(small_data):
    g = torch.Generator().manual_seed(0)
    chosen = []

    def same_target(examples, data, generator):  # any method's choice: here, each example's own
        chosen.append(len(examples))
        return examples

    batches = list(small_data.train_batches(256, g, examples="prefixes", same_target=same_target))
    rows = torch.cat([b.examples for b in batches])
    total = small_data.num_examples("prefixes")
    assert sorted(rows.tolist()) == list(range(total))
    assert [len(b.users) for b in batches] == [256] * (total // 256) + [total % 256]
    assert chosen == [len(b.users) for b in batches]
    prefixes = small_data.prefixes
    for b in batches:
        assert torch.equal(b.users, prefixes.user[b.examples]) and torch.equal(b.input_ids, prefixes.input[b.examples])
        assert torch.equal(b.target_pos[:, -1], prefixes.target[b.examples])  # ce_last reads the last column
        shifted = torch.where(b.input_ids[:, :-1] > 0, b.input_ids[:, 1:], 0)
        assert torch.equal(b.target_pos[:, :-1], shifted)  # the next item at every earlier position
        assert torch.equal(b.target_neg > 0, b.target_pos > 0)
        assert torch.equal(b.positives, b.input_ids)


def test_prefixes_with_views_or_users_with_positives_are_errors(small_data):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(BenchError, match="not from prefix examples"):
        next(small_data.train_batches(8, g, lambda *a: (), examples="prefixes"))
    with pytest.raises(BenchError, match="among prefix examples, not users"):
        next(small_data.train_batches(8, g, same_target=lambda e, d, g: e))
    with pytest.raises(BenchError, match="unknown kind of training examples 'sessions'"):
        next(small_data.train_batches(8, g, examples="sessions"))


# ---------------------------------------------------------------------------------- same-target partners
def partners_by_loops(inputs: list[list[int]], targets: list[int]) -> list[int]:
    """ICSRec's published loop: over every example with the anchor's target, in file order, the last whose
    input differs from the anchor's; none: the anchor's own input."""
    out = []
    for i, target in enumerate(targets):
        partner = i
        for j, other in enumerate(targets):
            if other == target and inputs[j] != inputs[i]:
                partner = j
        out.append(partner)
    return out


def test_fixed_partners_by_hand():
    inputs = torch.tensor([[1, 2], [0, 3], [1, 2], [1, 2], [0, 5], [0, 5], [0, 6]])
    targets = torch.tensor([4, 4, 4, 4, 9, 9, 7])
    # target 4: the last example (3) has [1, 2]; example 1 differs from it, so the anchors with [1, 2] pair
    # with 1 and 1 pairs with 3. Target 9: one input twice, target 7: alone: their own input.
    assert fixed_partners(inputs, targets).tolist() == [1, 3, 1, 1, 4, 5, 6]


def test_fixed_partners_match_the_published_loop(small_data):
    prefixes = small_data.prefixes
    keep = torch.arange(0, len(prefixes.target), 3)  # a third of the set keeps the loop quick
    inputs, targets = prefixes.input[keep], prefixes.target[keep]
    expected = partners_by_loops([unpadded(r) for r in inputs], targets.tolist())
    assert fixed_partners(inputs, targets).tolist() == expected


def test_drawn_positives_share_the_target_and_never_are_the_anchor_unless_alone():
    targets = torch.tensor([1, 1, 1, 2, 3, 3])
    index = SameTargetIndex(targets)
    g = torch.Generator().manual_seed(0)
    anchors = torch.tensor([0, 3, 4] * 3000)
    drawn = index.draw(anchors, g)
    assert torch.equal(targets[drawn], targets[anchors])
    assert set(drawn[anchors == 3].tolist()) == {3}  # alone with its target
    assert set(drawn[anchors == 4].tolist()) == {5}
    first = drawn[anchors == 0]
    assert set(first.tolist()) == {1, 2}  # the others with target 1, uniformly
    assert abs(float((first == 1).double().mean()) - 0.5) < 0.04
