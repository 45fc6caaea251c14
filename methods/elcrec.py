"""ELCRec: end-to-end learnable clustering of intents (docs/methods.md, "The methods").

The K cluster centers are a parameter, initialised once by the same k-means as ICLRec's E-step and then
learnt by gradient. Per batch:
1. instance term: each position of the two encoded views gets its nearest center (squared L2, with the
   centers as the last optimiser step left them) added ("shift") or concatenated ("concat"); NCE on the
   flattened result, so gradients reach the gathered centers;
2. the centers are projected onto the unit sphere in place (no gradient through the projection); the
   clustering loss pulls the normalised mean-pooled rec output z towards all centers and pushes centers
   apart;
3. intent term: each user's intent is the center nearest to z (gradient reaches the center), contrasted
   with a second encoding of the same two views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.clustering import nearest_centroid
from methods.intent import IntentConfig, IntentMethod
from methods.losses import elcrec_cluster_loss, intent_loss, nce_loss


@dataclass(frozen=True)
class ELCRecConfig(IntentConfig):
    trade_off: float = 1.0  # weight of the clustering loss
    prototype: str = "concat"  # how a view's positions use their nearest center: shift | concat

    def validate(self) -> None:
        super().validate()
        if self.prototype not in ("shift", "concat"):
            raise ValueError(f"prototype must be shift or concat, got {self.prototype!r}")
        if self.trade_off < 0:
            raise ValueError(f"trade_off must be >= 0, got {self.trade_off}")


class ELCRec(IntentMethod):
    name = "elcrec"
    display_name = "ELCRec"
    color = "#c44e52"
    Config = ELCRecConfig

    def __init__(self, config: ELCRecConfig, info, seed: int = 1):
        super().__init__(config, info, seed)
        self.cluster_centers = nn.Parameter(torch.zeros(config.num_intents, config.hidden_size))  # [K, H]

    def on_epoch_start(self, epoch: int, data) -> None:
        if epoch > 0:  # the only k-means is the initialisation; afterwards the centers are learnt
            return
        centroids = self.kmeans_of_training_set(data)  # [K, H]
        with torch.no_grad():
            self.cluster_centers.copy_(F.normalize(centroids, p=2, dim=1))

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        c = self.config
        # Three independent encodings (rec pass, instance pass, intent pass), each with its own dropout.
        hidden, instance_views, intent_views = self.encode_step_inputs(batch)
        rec = self.rec_loss(hidden, batch)  # [B, L, H]

        with_centers, cluster, user_centers = self.clustering_terms(hidden, instance_views)
        view1, view2 = with_centers.flatten(1).chunk(2)
        instance = nce_loss(view1, view2, c.temperature)

        pooled1, pooled2 = intent_views.mean(dim=1).chunk(2)  # [B, H] each
        intent = intent_loss(pooled1, pooled2, user_centers, c.temperature)

        loss = rec + c.cl_weight * instance + c.trade_off * cluster + c.intent_weight * intent
        return {"rec": rec, "instance": instance, "cluster": cluster, "intent": intent, "loss": loss}

    def clustering_terms(
        self, hidden: torch.Tensor, instance_views: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What learning the clusters adds to a step, given the rec pass [B, L, H] and the encoded views
        [2B, L, H]: (the views with their nearest centers, the clustering loss, each user's center [B, H]).

        Steps 1-3 of the module doc, in the published order: the prototypes are gathered with the centers as
        the last optimiser step left them, then the centers are projected onto the unit sphere in place, and
        the clustering loss and each user's center use the projected ones. The scaling study
        (bench/tools/scaling/measurement.py) times exactly this call.
        """
        centers = self.cluster_centers  # [K, H]
        with_centers = self.with_prototypes(instance_views)
        with torch.no_grad():  # in-place projection onto the unit sphere, as the published code does
            centers.div_(centers.norm(dim=1, keepdim=True))
        z = F.normalize(hidden.mean(dim=1), p=2, dim=1)  # [B, H], with gradient
        cluster = elcrec_cluster_loss(z, centers)
        intent_ids = nearest_centroid(z.detach(), centers.detach())  # [B]
        return with_centers, cluster, centers.index_select(0, intent_ids)

    def with_prototypes(self, encoded: torch.Tensor) -> torch.Tensor:
        """Each position's nearest center added ("shift": [N, L, H]) or appended ("concat": [N, L, 2H])."""
        centers = self.cluster_centers
        nearest = nearest_centroid(encoded.detach().flatten(0, 1), centers.detach())  # [N*L]
        # index_select rather than centers[nearest]: the same values and gradient, but its backward is an
        # index_add (on the GPU 0.75 ms of a 13 ms step went to the sort-based backward of advanced indexing).
        gathered = centers.index_select(0, nearest).view_as(encoded)  # [N, L, H], gradient reaches the centers
        if self.config.prototype == "shift":
            return encoded + gathered
        return torch.cat([encoded, gathered], dim=-1)


    @classmethod
    def config_from_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        fixed = super().config_from_checkpoint(state_dict)
        if "cluster_centers" in state_dict:
            fixed["num_intents"] = int(state_dict["cluster_centers"].shape[0])
        return fixed
