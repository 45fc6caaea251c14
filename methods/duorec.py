"""DuoRec (Qiu et al., WSDM 2022) on this harness's data and protocol: not the original RecBole runs.

The original trains RecBole's SASRec (right padding, its own data files, selection by valid MRR@10 over at
most 50 epochs) with full-softmax cross-entropy and a contrastive term between two views of a sequence:
its dropout re-encoding and another training sequence with the same next item. Here the same training
objective runs on the harness's prefix examples, left-padded encoder, split and evaluation
(docs/methods.md, "DuoRec"):

- three passes per batch, each with its own dropout, read at the last position: h = f(x) (rec),
  h' = f(x) again (dropout is the only augmentation), h_s = f(x_s), where x_s is the input of another
  example with the same target, drawn uniformly at every batch (methods/same_target.py);
- loss = rec ("ce_last") + 0.1 * NCE(h', h_s), the section-5 NCE on [B, H] vectors (temperature 1, dot
  product, no false-negative masking).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Method, MethodConfig
from methods.losses import nce_loss
from methods.same_target import SameTargetIndex


@dataclass(frozen=True)
class DuoRecConfig(MethodConfig):
    rec_loss: str = "ce_last"
    cl_weight: float = 0.1  # lmd_sem, the supervised contrastive term's weight
    temperature: float = 1.0  # tau

    def validate(self) -> None:
        super().validate()
        if self.cl_weight < 0:
            raise ValueError(f"cl_weight must be >= 0, got {self.cl_weight}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class DuoRec(Method):
    name = "duorec"
    display_name = "DuoRec (harness protocol)"
    color = "#da8bc3"
    Config = DuoRecConfig
    training_examples = "prefixes"

    def __init__(self, config: DuoRecConfig, info, seed: int = 1):
        super().__init__(config, info, seed)
        self._same_target: SameTargetIndex | None = None

    def same_target_examples(self, examples: torch.Tensor, data, generator: torch.Generator) -> torch.Tensor:
        """A same-target example drawn uniformly for each one, anew at every batch (the anchor excluded)."""
        if self._same_target is None or self._same_target.targets is not data.prefix_target:
            self._same_target = SameTargetIndex(data.prefix_target)
        return self._same_target.draw(examples, generator)

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        c = self.config
        # Three independent passes (rec, the same input again, the positive), each with its own dropout.
        hidden, again, positive = self.encode_rec_and_last(batch.input_ids, batch.input_ids, batch.positives)
        rec = self.rec_loss(hidden, batch)
        contrastive = nce_loss(again, positive, c.temperature)
        loss = rec + c.cl_weight * contrastive
        return {"rec": rec, "contrastive": contrastive, "loss": loss}
