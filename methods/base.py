"""The interface every method implements, in one place.

A method is the shared SASRec encoder plus whatever its training adds (losses, cluster centers). It
subclasses `Method`, declares a typed config dataclass, and is listed in `methods/__init__.py`. The harness
(`bench/train.py`) owns the loop and drives a method through four calls:

    on_epoch_start(epoch, data)   optional work before an epoch, timed as the **estep** phase
                                  (ICLRec's k-means every epoch, ELCRec's one-off initialisation)
    training_step(batch)          named loss terms plus "loss", the total; timed as **train**
    score_items(inputs)           scores of every item id [B, item_size] for evaluation; timed as **eval**
    state_dict()                  the published checkpoint layout (the encoder's keys at the top level)

A method is an `SASRecEncoder` subclass rather than a wrapper around one so that its `state_dict` has
exactly the published keys (`item_embeddings.weight`, ..., ELCRec's `cluster_centers`) with no renaming.
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from methods.encoder import SASRecEncoder

if TYPE_CHECKING:
    from bench.data import Batch, SequenceData


@dataclass
class MethodConfig:
    """Hyperparameters every method has: the shared encoder and the optimiser (SPEC section 4)."""

    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 2
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    max_len: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256

    def validate(self) -> None:
        """Raise ValueError naming the first invalid value. Subclasses extend it."""
        positive = ("num_layers", "hidden_size", "num_heads", "max_len", "batch_size", "lr")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("hidden_dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class AugmentedConfig(MethodConfig):
    """Config of methods that also train on two augmented views per user (CL4SRec, ICLRec, ELCRec)."""

    cl_weight: float = 0.1  # weight of the instance contrastive term
    temperature: float = 1.0  # NCE temperature
    tao: float = 0.2  # crop ratio
    gamma: float = 0.7  # mask ratio
    beta: float = 0.2  # reorder ratio

    def validate(self) -> None:
        super().validate()
        for name in ("tao", "gamma", "beta"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.cl_weight < 0:
            raise ValueError(f"cl_weight must be >= 0, got {self.cl_weight}")

    def augment_args(self) -> dict:
        return {"tao": self.tao, "gamma": self.gamma, "beta": self.beta}


@dataclass
class IntentConfig(AugmentedConfig):
    """Config of the intent-learning methods (ICLRec, ELCRec): K intents found by k-means."""

    num_intents: int = 256  # K
    intent_weight: float = 0.1
    kmeans_backend: str = "auto"  # faiss | torch | auto (faiss when installed)
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
        if self.kmeans_backend not in ("auto", "faiss", "torch"):
            raise ValueError(f"kmeans_backend must be auto, faiss or torch, got {self.kmeans_backend!r}")
        if self.view_encoding not in ("separate", "shared"):
            raise ValueError(f"view_encoding must be separate or shared, got {self.view_encoding!r}")
        if self.intent_weight < 0:
            raise ValueError(f"intent_weight must be >= 0, got {self.intent_weight}")


@dataclass(frozen=True)
class DatasetInfo:
    """What a method may know about the dataset when it is built."""

    name: str
    item_size: int  # number of item ids including padding 0 and the unused mask id
    num_users: int


CPU_CHUNK_ROWS = 128  # rows per encoder call on CPU (see Method.encode_separately)


class Method(SASRecEncoder, metaclass=ABCMeta):
    """Base class of all methods. Subclasses set `name`, `Config` and implement `training_step`."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    num_views: ClassVar[int] = 0  # augmented views per user that the harness adds to every batch

    def __init__(self, config: MethodConfig, info: DatasetInfo, seed: int = 1):
        super().__init__(
            item_size=info.item_size,
            hidden=config.hidden_size,
            num_layers=config.num_layers,
            heads=config.num_heads,
            max_len=config.max_len,
            hidden_dropout=config.hidden_dropout,
            attn_dropout=config.attn_dropout,
        )
        self.config = config
        self.info = info
        self.seed = seed

    # -- hooks the harness calls ---------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, data: SequenceData) -> None:  # noqa: B027 - optional by design
        """Work before an epoch, timed as the E-step. Methods without an E-step do not override it."""

    @abstractmethod
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms of one batch as {"rec": ..., ..., "loss": total}; the harness backpropagates "loss"."""

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        """The user representation [B, H]: encoder output at the last position of the padded input."""
        return self.encode_last(inputs)

    def score_items(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scores of every item id [B, item_size] by dot product with the item embedding table.

        `inputs` [B, L'] may be narrower than max_len: evaluation cuts off leading columns that are padding
        in every row, and the encoder right-aligns positions, so the scores are those of the full width.
        Evaluation does not call this method as long as a subclass keeps it: it then computes the same
        products itself, chunk by chunk of items (`bench/evaluate.py`). Override it for another scoring.
        """
        return self.user_repr(inputs) @ self.item_embeddings.weight.T

    def run_info(self) -> dict:
        """Facts about how the run executed that belong in its record (e.g. which k-means backend ran)."""
        return {}

    # -- helpers shared by methods --------------------------------------------------------------------
    def encode_separately(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Independent encoder passes over several inputs: [B_i, L, H] each.

        Every row gets its own dropout draw, exactly as if each input had its own forward pass (the
        published code's passes per batch). How the rows are grouped only changes speed: on a GPU one large
        call keeps the device busy; on a CPU chunks of 128 rows keep activations in cache (measured on 2
        cores: 128-row chunks 0.35 s, three separate passes 0.39 s, one call 0.49 s per ICLRec step).
        """
        rows = torch.cat(inputs)  # [sum B_i, L]
        chunk = len(rows) if rows.is_cuda else CPU_CHUNK_ROWS
        out = torch.cat([self(part) for part in rows.split(chunk)]) if len(rows) > chunk else self(rows)
        return out.split([len(x) for x in inputs])

    @torch.no_grad()
    def encode_mean_pooled(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Eval-mode (no dropout) encoding of every row, mean-pooled over all L positions: [N, H]."""
        was_training = self.training
        self.eval()
        pooled = torch.cat([self(inputs[i : i + batch_size]).mean(dim=1) for i in range(0, len(inputs), batch_size)])
        self.train(was_training)
        return pooled

    @classmethod
    def config_from_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        """Config values a checkpoint fixes by its shapes (layer count; methods add theirs, e.g. K)."""
        return {
            "num_layers": SASRecEncoder.num_layers_in(state_dict),
            "hidden_size": int(state_dict["item_embeddings.weight"].shape[1]),
            "max_len": int(state_dict["position_embeddings.weight"].shape[0]),
        }


class IntentMethod(Method):
    """Base of the methods whose K intents come from k-means on the encoded training set (ICLRec, ELCRec)."""

    Config: ClassVar[type[MethodConfig]] = IntentConfig
    num_views = 2

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

    def kmeans_of_training_set(self, data: SequenceData) -> torch.Tensor:
        """The published E-step: encode every training input (eval mode), mean-pool, k-means: [K, H]."""
        from methods.clustering import kmeans

        c = self.config
        pooled = self.encode_mean_pooled(data.train_input)  # [N, H]
        return kmeans(
            pooled, c.num_intents, seed=self.seed, niter=c.kmeans_niter, nredo=c.kmeans_nredo,
            max_points_per_centroid=c.kmeans_max_points_per_centroid, backend=c.kmeans_backend,
        )  # [K, H], un-normalised

    def run_info(self) -> dict:
        from methods.clustering import resolve_backend

        return {"kmeans_backend": resolve_backend(self.config.kmeans_backend)}
