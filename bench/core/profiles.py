"""Run profiles: how much data, how many epochs and which seeds a grid uses.

- smoke: a deterministic sample of at most 1,200 users per dataset (ICSRec's 1,024 intents need more
  users than that), 2 epochs of one training step each (256 examples, a fresh random sample every
  epoch): the step cap bounds every method alike, ICSRec and DuoRec included, whose one example per prefix
  would otherwise make about 6x more steps than the others' one per user. Its grid adds one GRU4Rec column
  (ICSRec on `encoder=gru4rec`), so that the second encoder stays tested end to end: 28 runs, about 3
  minutes on 2 CPU cores. For checking that everything runs, not for conclusions.
- quick: full data, a small epoch budget; enough to compare per-epoch costs and early accuracy.
- paper: the published protocol: up to 300 epochs, patience 40 on valid NDCG@20, seeds 1, 2, 3.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.core.errors import BenchError


@dataclass(frozen=True)
class Profile:
    name: str
    max_users: int | None  # None: every user
    epochs: int
    patience: int
    seeds: tuple[int, ...]
    max_steps: int | None = None  # training steps per epoch at most (None: every example once)
    # Columns a grid of this profile adds beside each method's own: (method, config values), run where the
    # grid has that method. One GRU4Rec column in the smoke grid: ICSRec, the published GRU pairing, whose
    # prefix examples and k-means intents cover the paths the others take on an encoder's output (every
    # method on each encoder is trained by tests/test_encoders.py); four runs more keep the first command short.
    extra_columns: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()


GRU4REC_COLUMN = (("icsrec", (("encoder", "gru4rec"),)),)

PROFILES = {
    "smoke": Profile("smoke", max_users=1200, epochs=2, patience=2, seeds=(1,), max_steps=1,
                     extra_columns=GRU4REC_COLUMN),
    "quick": Profile("quick", max_users=None, epochs=10, patience=5, seeds=(1,)),
    "paper": Profile("paper", max_users=None, epochs=300, patience=40, seeds=(1, 2, 3)),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise BenchError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
