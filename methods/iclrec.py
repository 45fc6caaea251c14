"""ICLRec: intent contrastive learning with k-means intents, alternating (EM) as published.

E-step, at the start of every epoch: encode every training input in eval mode, mean-pool over the L
positions, and run k-means (K intents). The prototypes are the L2-normalised centroids. As published, the
k-means of every epoch after the first starts from the previous epoch's centroids (`kmeans_init = "warm"`:
the published code reuses one faiss.Clustering object, methods/clustering.py); "fresh" re-initialises it.
M-step, every batch: rec loss + 0.1 * instance NCE between two views + 0.1 * intent loss, where each user's
intent is the nearest *un-normalised* centroid to the (detached) mean-pooled output of the rec pass, and the
intent loss contrasts the mean-pooled views with the *normalised* prototype (docs/methods.md, "The methods").

Faithful and faster at once: the published code copies every batch to the host for a faiss query; the same
nearest-centroid assignment is computed here on the device (`nearest_centroid`), which changes no number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.clustering import INITS, nearest_centroid
from methods.intent import IntentConfig, IntentMethod
from methods.losses import intent_loss, nce_loss


@dataclass(frozen=True)
class ICLRecConfig(IntentConfig):
    kmeans_init: str = "warm"  # E-steps after the first: warm (published) | fresh

    def validate(self) -> None:
        super().validate()
        if self.kmeans_init not in INITS:
            raise ValueError(f"kmeans_init must be {' or '.join(INITS)}, got {self.kmeans_init!r}")


class ICLRec(IntentMethod):
    name = "iclrec"
    display_name = "ICLRec"
    color = "#55a868"
    Config = ICLRecConfig

    def __init__(self, config: ICLRecConfig, info, seed: int = 1):
        super().__init__(config, info, seed)
        # Not persistent: the published checkpoints hold only the encoder. A mid-run checkpoint keeps them
        # (bench/core/checkpoints.py saves every buffer), so a resumed run warm-starts from the same centroids.
        self.register_buffer("centroids", torch.zeros(config.num_intents, config.hidden_size), persistent=False)
        self.register_buffer("prototypes", torch.zeros(config.num_intents, config.hidden_size), persistent=False)

    def on_epoch_start(self, epoch: int, data) -> None:
        warm = epoch > 0 and self.config.kmeans_init == "warm"  # epoch 0: no previous centroids yet
        centroids = self.kmeans_of_training_set(data, init=self.centroids if warm else None)  # [K, H], every epoch
        self.centroids.copy_(centroids)
        self.prototypes.copy_(F.normalize(centroids, p=2, dim=1))

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        c = self.config
        # Three independent encodings (rec pass, instance pass, intent pass), each with its own dropout.
        hidden, instance_views, intent_views = self.encode_step_inputs(batch)
        rec = self.rec_loss(hidden, batch)  # [B, L, H]

        view1, view2 = instance_views.flatten(1).chunk(2)  # [B, L*H] each
        instance = nce_loss(view1, view2, c.temperature)

        intent_ids = nearest_centroid(hidden.detach().mean(dim=1), self.centroids)  # [B]
        pooled1, pooled2 = intent_views.mean(dim=1).chunk(2)  # [B, H] each
        intent = intent_loss(pooled1, pooled2, self.prototypes[intent_ids], c.temperature)

        loss = rec + c.cl_weight * instance + c.intent_weight * intent
        return {"rec": rec, "instance": instance, "intent": intent, "loss": loss}

    def run_info(self) -> dict:
        return {**super().run_info(), "kmeans_init": self.config.kmeans_init}

