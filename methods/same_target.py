"""Positives among prefix examples: another training example with the same target item.

ICSRec and DuoRec contrast an example with another one that predicts the same next item (docs/methods.md,
"ICSRec", "DuoRec"); they differ in which one:

- ICSRec's partner is fixed (`fixed_partners`): the *last* example in file order whose input differs from
  the anchor's, else the anchor itself;
- DuoRec draws one uniformly at every batch (`SameTargetIndex.draw`) among the other examples with that
  target, else the anchor itself.

Both work on the whole set at once (sorts, scatters and gathers), never looping over examples or targets.
"""

from __future__ import annotations

import torch


def fixed_partners(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ICSRec's same-target partner of every example: an index [P] into the same set.

    inputs [P, L] (left-padded; equal rows are equal inputs), targets [P], rows in file order. The partner
    is the last example (largest index) with the same target whose input differs from the anchor's; if every
    example of that target has the anchor's input, the anchor itself.
    """
    p = len(targets)
    index = torch.arange(p, device=targets.device)
    _, group = torch.unique(targets, return_inverse=True)  # [P] one id per target
    groups = int(group.max()) + 1 if p else 0
    last = torch.zeros(groups, dtype=torch.long, device=targets.device).scatter_reduce(
        0, group, index, "amax", include_self=False
    )  # [G] the last example of each target
    same_as_last = (inputs == inputs[last[group]]).all(dim=1)  # [P]
    # For an anchor whose input equals the last one's, the examples that differ from it are those that
    # differ from the last one: the latest of them is its partner.
    differing = torch.where(same_as_last, -1, index)
    last_differing = torch.full((groups,), -1, dtype=torch.long, device=targets.device).scatter_reduce(
        0, group, differing, "amax"
    )  # [G], -1 where every input of the target is the same
    fallback = torch.where(last_differing[group] >= 0, last_differing[group], index)
    return torch.where(same_as_last, fallback, last[group])


class SameTargetIndex:
    """The examples grouped by target, for drawing a random same-target example at every batch (DuoRec)."""

    def __init__(self, targets: torch.Tensor):
        self.targets = targets  # [P]; kept so that a caller can tell which set this index was built for
        self.order = torch.sort(targets, stable=True).indices  # [P] examples grouped by target
        self.place = torch.empty_like(self.order)
        self.place[self.order] = torch.arange(len(targets), device=targets.device)  # [P] rank in `order`
        _, self.group, counts = torch.unique(targets, return_inverse=True, return_counts=True)
        self.size = counts[self.group]  # [P] examples sharing each example's target, itself included
        self.start = (torch.cumsum(counts, 0) - counts)[self.group]  # [P] where its group begins in `order`

    def draw(self, examples: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """For each example [B], one of the other examples with its target, uniformly; itself if it is alone."""
        size, start = self.size[examples], self.start[examples]  # [B]
        own = self.place[examples] - start  # [B] the anchor's rank within its group
        u = torch.rand(len(examples), generator=generator, device=examples.device)
        others = (size - 1).clamp(min=1)
        pick = torch.minimum((u * others).long(), others - 1)  # uniform in 0..size-2
        pick = pick + (pick >= own).long()  # skip the anchor's own rank
        drawn = self.order[start + pick.clamp(max=size - 1)]
        return torch.where(size > 1, drawn, examples)
