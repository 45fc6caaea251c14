"""CL4SRec as the ICLRec code runs it: rec loss + instance contrastive loss between two augmented views.

Each view is the whole encoder output flattened to L*H values ("concatenate"), contrasted with NCE
(temperature 1 by default) against every other view in the batch (docs/methods.md, "Losses", "The methods").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import AugmentedConfig, AugmentedMethod
from methods.losses import nce_loss


@dataclass(frozen=True)
class CL4SRecConfig(AugmentedConfig):
    pass


class CL4SRec(AugmentedMethod):
    name = "cl4srec"
    display_name = "CL4SRec"
    color = "#dd8452"
    Config = CL4SRecConfig

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        # Two independent encodings (rec pass, instance pass), each with its own dropout.
        hidden, views = self.encode_separately(batch.input_ids, torch.cat(batch.views))  # [B|2B, L, H]
        rec = self.rec_loss(hidden, batch)
        view1, view2 = views.flatten(1).chunk(2)  # [B, L*H] each
        instance = nce_loss(view1, view2, self.config.temperature)
        loss = rec + self.config.cl_weight * instance
        return {"rec": rec, "instance": instance, "loss": loss}
