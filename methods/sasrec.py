"""SASRec as the S3-Rec/ICLRec papers run it: the shared encoder trained with the recommendation loss alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Method, MethodConfig


@dataclass(frozen=True)
class SASRecConfig(MethodConfig):
    pass


class SASRec(Method):
    name = "sasrec"
    display_name = "SASRec"
    color = "#4c72b0"
    Config = SASRecConfig

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        hidden = self(batch.input_ids)  # [B, L, H]
        rec = self.rec_loss(hidden, batch)
        return {"rec": rec, "loss": rec}
