"""ICSRec: intent contrastive learning with subsequences (Qin et al., WSDM 2024), as its published code runs.

It trains on one example per prefix of each user's training part (`training_examples = "prefixes"`), with
full-softmax cross-entropy at the last position (rec_loss "ce_last"). Every example has a fixed
same-target partner x+ (methods/same_target.py). Three encoder passes per batch, each with its own dropout,
each read at the last position only: h = f(x) (rec), a = f(x) again, p = f(x+).

- coarse intent term (CICL): InfoNCE(a, p) with false-negative masking by target item;
- fine intent term (FICL): InfoNCE(a, c(a)) + InfoNCE(p, c(p)), a sum, masked by cluster id, where c(v) is
  the normalised centroid nearest (L2, un-normalised centroids) to v;
- loss = rec_weight * rec + coarse_weight * CICL + fine_weight * FICL.

k-means before every epoch, epoch 0 included: eval-mode encodings of every training example at the last
position (ICLRec mean-pools), faiss k-means with seed 1 whatever the run's seed, warm-started from the
previous epoch's centroids as a reused faiss.Clustering is (methods/clustering.py).
Formulas and settings: docs/methods.md, "ICSRec".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import Method, MethodConfig
from methods.clustering import BACKENDS, INITS, kmeans, nearest_centroid, resolve_backend
from methods.losses import masked_nce_loss, nce_loss
from methods.same_target import fixed_partners


@dataclass(frozen=True)
class ICSRecConfig(MethodConfig):
    """Defaults are the published code's argparse defaults; methods/configs/icsrec.toml holds the settings
    of its published scripts per dataset."""

    rec_loss: str = "ce_last"
    rec_weight: float = 1.0
    coarse_weight: float = 0.1  # lambda_0, CICL
    fine_weight: float = 0.1  # beta_0, FICL
    temperature: float = 1.0
    false_negative_masking: bool = False  # the code's --f_neg, which every published script passes
    num_intents: int = 512  # K
    kmeans_backend: str = "auto"  # faiss | torch | auto (faiss when installed)
    kmeans_seed: int = 1  # fixed in the published code, whatever the run's seed
    kmeans_niter: int = 20
    kmeans_nredo: int = 5
    kmeans_max_points_per_centroid: int = 4096
    kmeans_init: str = "warm"  # E-steps after the first: warm (published) | fresh

    def validate(self) -> None:
        super().validate()
        for name in ("rec_weight", "coarse_weight", "fine_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("num_intents", "kmeans_niter", "kmeans_nredo", "kmeans_max_points_per_centroid"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.kmeans_backend not in BACKENDS:
            raise ValueError(f"kmeans_backend must be {', '.join(BACKENDS)}, got {self.kmeans_backend!r}")
        if self.kmeans_init not in INITS:
            raise ValueError(f"kmeans_init must be {' or '.join(INITS)}, got {self.kmeans_init!r}")


# Datasets whose settings come from a published script; on the others (Yelp) the toml gives the code's defaults.
PUBLISHED_SETTINGS = ("Beauty", "Sports_and_Outdoors", "Toys_and_Games")


class ICSRec(Method):
    name = "icsrec"
    display_name = "ICSRec"
    color = "#937860"
    Config = ICSRecConfig
    training_examples = "prefixes"

    def __init__(self, config: ICSRecConfig, info, seed: int = 1):
        super().__init__(config, info, seed)
        if config.num_intents > info.num_users:  # every user has at least one prefix example
            raise ValueError(f"num_intents {config.num_intents} exceeds the {info.num_users} training users")
        # Not persistent: the published checkpoints hold only the encoder; a mid-run checkpoint keeps them.
        self.register_buffer("centroids", torch.zeros(config.num_intents, config.hidden_size), persistent=False)
        self.register_buffer("prototypes", torch.zeros(config.num_intents, config.hidden_size), persistent=False)
        self._partners: tuple[torch.Tensor, torch.Tensor] | None = None  # (targets it was built for, [P])

    def on_epoch_start(self, epoch: int, data) -> None:
        c = self.config
        warm = epoch > 0 and c.kmeans_init == "warm"  # epoch 0: no previous centroids yet
        centroids = kmeans(
            self.encode_last_eval(data.prefix_input), c.num_intents, seed=c.kmeans_seed, niter=c.kmeans_niter,
            nredo=c.kmeans_nredo, max_points_per_centroid=c.kmeans_max_points_per_centroid,
            backend=c.kmeans_backend, init=self.centroids if warm else None,
        )  # [K, H]
        self.centroids.copy_(centroids)
        self.prototypes.copy_(F.normalize(centroids, p=2, dim=1))

    def same_target_examples(self, examples: torch.Tensor, data, generator: torch.Generator) -> torch.Tensor:
        """The fixed partner of each example (no randomness): built once per training set, then looked up."""
        if self._partners is None or self._partners[0] is not data.prefix_target:
            self._partners = (data.prefix_target, fixed_partners(data.prefix_input, data.prefix_target))
        return self._partners[1][examples]

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        c = self.config
        # Three independent passes (rec, anchor, partner), each with its own dropout.
        hidden, anchor, partner = self.encode_rec_and_last(batch.input_ids, batch.input_ids, batch.positives)
        rec = self.rec_loss(hidden, batch)
        coarse = self.contrast(anchor, partner, batch.target_pos[:, -1])
        fine = self.fine_term(anchor) + self.fine_term(partner)
        loss = c.rec_weight * rec + c.coarse_weight * coarse + c.fine_weight * fine
        return {"rec": rec, "coarse": coarse, "fine": fine, "loss": loss}

    def contrast(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the pairs (a_i, b_i): masked by `labels` with false-negative masking, else NCE."""
        if self.config.false_negative_masking:
            return masked_nce_loss(a, b, labels, self.config.temperature)
        return nce_loss(a, b, self.config.temperature)

    def fine_term(self, vectors: torch.Tensor) -> torch.Tensor:
        """Each vector [B, H] against its intent: the normalised centroid nearest to it (a constant)."""
        intent_ids = nearest_centroid(vectors.detach(), self.centroids)  # [B]
        return self.contrast(vectors, self.prototypes[intent_ids], intent_ids)

    def run_info(self) -> dict:
        return {
            "kmeans_backend": resolve_backend(self.config.kmeans_backend),
            "kmeans_init": self.config.kmeans_init,
            "published_settings": self.info.name in PUBLISHED_SETTINGS,
        }
