"""The intent family: methods whose K intents come from k-means on the encoded training set.

ICLRec runs that k-means (the E-step) before every epoch; ELCRec runs it once, to initialise its learnable
cluster centers. Both train on two augmented views per user (`AugmentedMethod`) and encode a step's inputs
the same way, so the shared parts live here; the method files hold what differs. The formulas and the
published code's quirks are written down in docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from methods.base import AugmentedConfig, AugmentedMethod, Batch, DatasetInfo, MethodConfig, TrainingSet
from methods.clustering import BACKENDS, kmeans, resolve_backend


@dataclass(frozen=True)
class IntentConfig(AugmentedConfig):
    """Config of the intent-learning methods (ICLRec, ELCRec): K intents found by k-means."""

    num_intents: int = 256  # K
    intent_weight: float = 0.1
    kmeans_backend: str = "auto"  # one of methods.clustering.BACKENDS; auto: faiss when installed, else torch
    kmeans_niter: int = 20
    kmeans_nredo: int = 5
    kmeans_max_points_per_centroid: int = 4096
    # separate (published): the instance term and the intent term each encode the two views, with their own
    # dropout draws (3 encoder passes per step). shared (a fast, non-published variant): one encoding of the
    # views serves both terms (2 passes); run records then say mode "fast".
    view_encoding: str = "separate"

    def validate(self) -> None:
        super().validate()
        for name in ("num_intents", "kmeans_niter", "kmeans_nredo", "kmeans_max_points_per_centroid"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.kmeans_backend not in BACKENDS:
            raise ValueError(f"kmeans_backend must be one of {', '.join(BACKENDS)}, got {self.kmeans_backend!r}")
        if self.view_encoding not in ("separate", "shared"):
            raise ValueError(f"view_encoding must be separate or shared, got {self.view_encoding!r}")
        if self.intent_weight < 0:
            raise ValueError(f"intent_weight must be >= 0, got {self.intent_weight}")


class IntentMethod(AugmentedMethod):
    """Base of the methods whose K intents come from k-means on the encoded training set (ICLRec, ELCRec)."""

    Config: ClassVar[type[MethodConfig]] = IntentConfig

    def __init__(self, config: IntentConfig, info: DatasetInfo, seed: int = 1):
        super().__init__(config, info, seed)
        if config.num_intents > info.num_users:
            raise ValueError(f"num_intents {config.num_intents} exceeds the {info.num_users} training users")

    def encode_step_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encodings a step of ICLRec / ELCRec uses: (rec pass [B, L, H], instance views [2B, L, H],
        intent views [2B, L, H]); views are ordered view 1 then view 2.

        Published: three independent passes, each with its own dropout. With view_encoding "shared" the
        intent term reuses the instance term's encoding of the views (one pass fewer).
        """
        views = torch.cat(batch.views)  # [2B, L]
        if self.config.view_encoding == "shared":
            hidden, encoded_views = self.encode_separately(batch.input_ids, views)
            return hidden, encoded_views, encoded_views
        return self.encode_separately(batch.input_ids, views, views)

    def kmeans_of_training_set(self, data: TrainingSet, init: torch.Tensor | None = None) -> torch.Tensor:
        """The published E-step: encode every training input (eval mode), mean-pool, k-means: [K, H].

        `init` [K, H]: warm start from these centroids (methods/clustering.py).
        """
        return self.intent_kmeans(self.encode_mean_pooled(data.train_input), init=init)  # [N, H] -> [K, H]

    def intent_kmeans(self, pooled: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
        """K-means of the mean-pooled encodings [N, H] with the config's settings: un-normalised [K, H]."""
        c = self.config
        return kmeans(
            pooled, c.num_intents, seed=self.seed, niter=c.kmeans_niter, nredo=c.kmeans_nredo,
            max_points_per_centroid=c.kmeans_max_points_per_centroid, backend=c.kmeans_backend, init=init,
        )

    def run_info(self) -> dict:
        return {"kmeans_backend": resolve_backend(self.config.kmeans_backend)}
