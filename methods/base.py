"""The contract between a method and the harness, in one place.

A method is an encoder plus whatever its training adds (losses, cluster centers). The encoder is a part
chosen by config, `encoder` (`methods/encoders.py`: "sasrec", the default, `methods/encoder.py`; "gru4rec",
`methods/gru4rec.py`); a method file never names it. It subclasses `Method` (or `AugmentedMethod` when it trains on augmented views), declares
a typed config dataclass (frozen: a run's resolved config never changes after it is resolved), and is listed in `methods/__init__.py`; `methods/configs/<name>.toml` holds its
published settings and search space. That is all a new method needs (README, "Adding a method").

What the harness calls, and when (`bench/core/train.py`, `bench/core/evaluate.py`):

    check_config(config)                when a config is resolved, before any data is loaded: ValueError
                                        for what the method's training data cannot give (ce_last on users)
    Method(config, DatasetInfo, seed)   once per run, after `torch.manual_seed(seed)`
    on_epoch_start(epoch, data)         before each epoch, timed as the **estep** phase; optional
                                        (ICLRec's k-means every epoch, ELCRec's one-off initialisation)
    training_examples                   a class attribute: "users" (one example per user: input s[:-3],
                                        a target at every position) or "prefixes" (one example per prefix
                                        of s[:-3], docs/methods.md "Prefix examples"); the harness serves
                                        batches of that set
    same_target_examples(examples, data, generator)
                                        prefix methods only, optional: for each example of the batch (rows
                                        of `data.prefix_input`) the index of another example with the same
                                        target, whose input arrives as `batch.positives`
    make_views(seqs, lengths, max_len, generator)
                                        only when `num_views > 0`: the batch's augmented views, built by the
                                        method itself from each user's training part (`AugmentedMethod` has
                                        the published crop/mask/reorder); they arrive as `batch.views`
    training_step(batch)                named loss terms plus "loss", the total; timed as **train**; the
                                        harness backpropagates "loss" and steps Adam
    item_table() / user_repr(inputs)    evaluation ranks every item by the dot product of the user vector
                                        [B, H] with the item table [item_size, H], timed as **eval**
    score_items(inputs)                 override for any other scoring ([B, item_size]); `item_table()` then
                                        returns None and evaluation ranks from the whole score matrix
    run_info()                          facts for the run record (e.g. which k-means backend ran)
    state_dict()                        the checkpoint, in the published layout

What a method may override: `on_epoch_start`, `make_views`, `same_target_examples`, `user_repr`,
`score_items`, `run_info`, `config_from_checkpoint`; it must implement `training_step`. Everything else is
the harness's.

The recommendation loss is a config option of every method, `rec_loss` (docs/methods.md, "Recommendation
losses"): "bce" (one sampled negative per position; the published loss of SASRec, CL4SRec, ICLRec and
ELCRec), "ce" (full softmax at every position with a target) or "ce_last" (full softmax at the last
position; prefix examples only). `Method.rec_loss(hidden, batch)` computes whichever the config names.

A method built with `Method(config, info, seed)` is an instance of its class combined with the encoder
class the config names (`with_encoder`: the class `ICSRec` on `GRU4RecEncoder`, named `ICSRec`), rather
than a wrapper around an encoder, so that its `state_dict` has the published layout of that encoder (plus
the method's own tensors, e.g. ELCRec's `cluster_centers`) with no renaming: published checkpoints load as
they are, and the encoder's methods (`forward`, `encode_last`, `item_embeddings`) are the method's.
"""

from __future__ import annotations

import dataclasses
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn

from methods.augment import augment
from methods.encoder import Encoder, SASRecEncoder
from methods.encoders import ENCODERS
from methods.losses import full_softmax_ce, rec_bce_loss, rec_ce_loss


@dataclass
class Batch:
    """One training batch, as the harness hands it to `training_step`. All tensors [B, L] (left-padded)
    unless noted."""

    users: torch.Tensor  # [B] row indices into the dataset (for prefix examples: each example's user)
    input_ids: torch.Tensor  # users: s[:-3], last L items; prefixes: the L items before the example's target
    target_pos: torch.Tensor  # the next item at every position of input_ids; 0 where there is no target
    target_neg: torch.Tensor  # one sampled negative per position with a target, else 0
    views: tuple[torch.Tensor, ...] = ()  # augmented views of s[:-3], each [B, L]
    examples: torch.Tensor | None = None  # [B] prefix examples only: rows of `TrainingSet.prefix_input`
    positives: torch.Tensor | None = None  # [B, L] inputs of the same-target examples a method chose


class TrainingSet(Protocol):
    """What `on_epoch_start` and `same_target_examples` see of the data: the encoder input of every training
    user and of every prefix example (the prefix set is built on first use)."""

    num_users: int
    train_input: torch.Tensor  # [N, L] left-padded item ids, what `Batch.input_ids` rows are drawn from
    prefix_input: torch.Tensor  # [P, L] one row per prefix example, users in file order, then targets in order
    prefix_target: torch.Tensor  # [P] each prefix example's target item


TRAINING_EXAMPLES = ("users", "prefixes")
REC_LOSSES = ("bce", "ce", "ce_last")


@dataclass(frozen=True)
class MethodConfig:
    """Hyperparameters every method has: the shared encoder and the optimiser (docs/methods.md, "Encoder")."""

    num_layers: int = 2
    hidden_size: int = 64
    num_heads: int = 2
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    max_len: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    rec_loss: str = "bce"  # bce (published for the first four methods) | ce | ce_last (prefix examples)
    encoder: str = "sasrec"  # a name in methods/encoders.py

    def validate(self) -> None:
        """Raise ValueError naming the first invalid value. Subclasses extend it."""
        encoder_class(self.encoder).check_config(self)
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be {', '.join(REC_LOSSES[:-1])} or {REC_LOSSES[-1]}, got {self.rec_loss!r}")
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


@dataclass(frozen=True)
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



def encoder_class(name: str) -> type[Encoder]:
    """The encoder registered under `name`; ValueError for an unknown one."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_of_state(state_dict: dict[str, torch.Tensor]) -> type[Encoder]:
    """The encoder whose layout a checkpoint has, from its keys (SASRec's when no layout's own key is there,
    so that a damaged SASRec file is told what it lacks)."""
    held = [cls for cls in ENCODERS.values() if cls.holds(state_dict)]
    if len(held) > 1:
        raise ValueError(f"it has keys of several encoder layouts ({', '.join(cls.name for cls in held)})")
    return held[0] if held else ENCODERS[MethodConfig.encoder]


_COMBINED: dict[tuple[type, type], type] = {}


def with_encoder(method_cls: type[Method], encoder_cls: type[Encoder]) -> type[Method]:
    """`method_cls` on `encoder_cls`: a class that is both, named as the method, made once per pair."""
    method_cls = method_cls.__dict__.get("method_class", method_cls)  # a combined class: its method
    key = (method_cls, encoder_cls)
    if key not in _COMBINED:
        namespace = {"__module__": method_cls.__module__, "__qualname__": method_cls.__qualname__,
                     "__doc__": method_cls.__doc__, "method_class": method_cls}
        _COMBINED[key] = type(method_cls.__name__, (method_cls, encoder_cls), namespace)
    return _COMBINED[key]


@dataclass(frozen=True)
class DatasetInfo:
    """What a method may know about the dataset when it is built."""

    name: str
    item_size: int  # number of item ids including padding 0 and the unused mask id
    num_users: int


CPU_CHUNK_ROWS = SASRecEncoder.cpu_chunk_rows  # rows per SASRec call on CPU (see Method.encode_separately)


class Method(nn.Module, metaclass=ABCMeta):
    """Base class of all methods. Subclasses set `name`, `display_name`, `color`, `Config` and implement
    `training_step`; the encoder comes from the config (`with_encoder`)."""

    name: ClassVar[str]  # registry name, used on the command line and in run ids
    display_name: ClassVar[str] = ""  # in tables and plots (default: `name`)
    color: ClassVar[str] = "#8172b3"  # its colour in every plot
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    num_views: ClassVar[int] = 0  # augmented views per user that the harness adds to every batch
    training_examples: ClassVar[str] = "users"  # or "prefixes" (see the module doc)

    def __new__(cls, *args, **kwargs):
        # Built from a config: the method on the encoder it names. Without arguments (copy.deepcopy's
        # protocol) the class is already a combined one.
        config = args[0] if args else kwargs.get("config")
        if config is not None:
            cls = with_encoder(cls, encoder_class(config.encoder))
        return super().__new__(cls)

    def __init__(self, config: MethodConfig, info: DatasetInfo, seed: int = 1):
        self.check_config(config)
        super().__init__(item_size=info.item_size, **self.encoder_args(config))  # the combined encoder's
        self.config = config
        self.info = info
        self.seed = seed

    @classmethod
    def check_config(cls, config: MethodConfig) -> None:
        """Raise ValueError when `config` asks for something this method's training data cannot give. The
        harness calls it when it resolves a config, before any data is loaded."""
        if config.rec_loss == "ce_last" and cls.training_examples != "prefixes":
            raise ValueError(
                f"rec_loss ce_last needs prefix examples, and {cls.__name__} trains on one example per user "
                "(use bce or ce)"
            )

    # -- hooks the harness calls ---------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, data: TrainingSet) -> None:  # noqa: B027 - optional by design
        """Work before an epoch, timed as the E-step. Methods without an E-step do not override it."""

    @abstractmethod
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms of one batch as {"rec": ..., ..., "loss": total}; the harness backpropagates "loss"."""

    def user_repr(self, inputs: torch.Tensor) -> torch.Tensor:
        """The user representation [B, H]: encoder output at the last position of the padded input."""
        return self.encode_last(inputs)

    def score_items(self, inputs: torch.Tensor) -> torch.Tensor:
        """Scores of every item id [B, item_size] by dot product with the item table.

        `inputs` [B, L'] may be narrower than max_len: evaluation cuts off leading columns that are padding
        in every row, and the encoder right-aligns positions, so the scores are those of the full width.
        Evaluation does not call this method as long as a subclass keeps it: it then computes the same
        products itself, chunk by chunk of items (`bench/core/evaluate.py`). Override it for another scoring.
        """
        return self.user_repr(inputs) @ self.item_embeddings.weight.T

    def item_table(self) -> torch.Tensor | None:
        """The [item_size, H] table that scores are dot products with, or None for a method that overrides
        `score_items` (its scores are then taken as they are)."""
        if type(self).score_items is not Method.score_items:
            return None
        return self.item_embeddings.weight

    @property
    def view_maker(self):
        """What the harness's batch maker applies to each batch: `make_views`, or None without views."""
        return self.make_views if self.num_views else None

    def make_views(
        self, seqs: torch.Tensor, lengths: torch.Tensor, max_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        """`num_views` augmented views [B, L] of each user's training part (`seqs` [B, n_max], left-aligned,
        `lengths` [B]); draws only from `generator`. Methods with `num_views > 0` implement it."""
        raise NotImplementedError(f"{type(self).__name__} declares num_views={self.num_views} but no make_views")

    @property
    def positive_maker(self):
        """What the harness's batch maker calls for `batch.positives`: `same_target_examples`, or None."""
        if self.training_examples != "prefixes" or type(self).same_target_examples is Method.same_target_examples:
            return None
        return self.same_target_examples

    def same_target_examples(
        self, examples: torch.Tensor, data: TrainingSet, generator: torch.Generator
    ) -> torch.Tensor:
        """For each prefix example [B] of a batch, the index of an example with the same target [B] (a
        positive); draws only from `generator`. Prefix methods that contrast such pairs implement it."""
        raise NotImplementedError(f"{type(self).__name__} chooses no same-target examples")

    def run_info(self) -> dict:
        """Facts about how the run executed that belong in its record (e.g. which k-means backend ran)."""
        return {}

    # -- helpers shared by methods --------------------------------------------------------------------
    def rec_loss(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The recommendation loss the config names, from the rec pass: `hidden` [B, L, H], or [B, H] (the
        last position only) when the loss is ce_last (docs/methods.md, "Recommendation losses")."""
        table = self.item_embeddings.weight
        kind = self.config.rec_loss
        if kind == "bce":
            return rec_bce_loss(hidden, table, batch.target_pos, batch.target_neg)
        if kind == "ce":
            return rec_ce_loss(hidden, table, batch.target_pos)
        last = hidden if hidden.dim() == 2 else hidden[:, -1]
        return full_softmax_ce(last, table, batch.target_pos[:, -1])

    def encode_separately(self, *inputs: torch.Tensor, last_only: bool = False) -> tuple[torch.Tensor, ...]:
        """Independent encoder passes over several inputs: [B_i, L, H] each, or [B_i, H] with `last_only`
        (the output at the last position, `encode_last`: same numbers, the last layer computes one row).

        Every row gets its own dropout draw, exactly as if each input had its own forward pass (the
        published code's passes per batch). How the rows are grouped only changes speed: on a GPU one large
        call keeps the device busy; on a CPU chunks of 128 rows keep activations in cache (measured on 2
        cores: 128-row chunks 0.35 s, three separate passes 0.39 s, one call 0.49 s per ICLRec step).
        """
        encode = self.encode_last if last_only else self
        rows = torch.cat(inputs)  # [sum B_i, L]
        chunk = len(rows) if rows.is_cuda or self.cpu_chunk_rows is None else self.cpu_chunk_rows
        out = torch.cat([encode(part) for part in rows.split(chunk)]) if len(rows) > chunk else encode(rows)
        return out.split([len(x) for x in inputs])

    def encode_rec_and_last(self, rec_input: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Independent passes: the rec pass over `rec_input` ([B, L, H]; [B, H] when the loss is ce_last,
        which reads the last position only) and a pass over each of `inputs`, read at the last position."""
        if self.config.rec_loss == "ce_last":
            return self.encode_separately(rec_input, *inputs, last_only=True)  # [B_i, H] each
        (hidden,) = self.encode_separately(rec_input)
        return (hidden, *self.encode_separately(*inputs, last_only=True))

    @torch.no_grad()
    def encode_mean_pooled(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Eval-mode (no dropout) encoding of every row, mean-pooled over all L positions: [N, H]."""
        was_training = self.training
        self.eval()
        pooled = torch.cat([self(inputs[i : i + batch_size]).mean(dim=1) for i in range(0, len(inputs), batch_size)])
        self.train(was_training)
        return pooled

    @torch.no_grad()
    def encode_last_eval(self, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Eval-mode (no dropout) encoding of every row at its last position: [N, H].

        Rows go through in order of their width (columns from the first item on), each block cut to its
        widest row, as evaluation does (bench/core/evaluate.py), when the encoder's last output does not
        depend on leading padding (`cuts_leading_padding`; SASRec: padded keys weigh exactly 0 and
        positions are right-aligned): the outputs are then those of the full width (equal up to float
        rounding), for a fraction of the work (ICSRec's Beauty prefixes fill 8.4 of 50 columns on average).
        """
        was_training = self.training
        self.eval()
        width = inputs.shape[1] - (inputs > 0).int().argmax(dim=1)  # [N]; a row of padding only: full width
        if not self.cuts_leading_padding():
            width = torch.full_like(width, inputs.shape[1])
        order = torch.argsort(width)
        widths = torch.stack([w.max() for w in width[order].split(batch_size)]).tolist()  # one host sync
        last = torch.empty(len(inputs), self.item_embeddings.embedding_dim, device=inputs.device)
        for block, w in zip(order.split(batch_size), widths):
            last[block] = self.encode_last(inputs[block, inputs.shape[1] - w :])
        self.train(was_training)
        return last

    @classmethod
    def config_from_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        """Config values a checkpoint fixes by its keys and shapes: the encoder whose layout it has, that
        encoder's sizes (layers, hidden size...); methods add theirs (e.g. K)."""
        encoder = encoder_of_state(state_dict)
        return {"encoder": encoder.name, **encoder.config_from_state(state_dict)}


class AugmentedMethod(Method):
    """A method that also trains on two augmented views per user (CL4SRec, ICLRec, ELCRec).

    Each view applies one of crop / mask / reorder per user, chosen uniformly, with the config's ratios
    (docs/methods.md, "Augmentations").
    """

    Config: ClassVar[type[MethodConfig]] = AugmentedConfig
    num_views = 2

    def make_views(
        self, seqs: torch.Tensor, lengths: torch.Tensor, max_len: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, ...]:
        c = self.config
        return tuple(
            augment(seqs, lengths, max_len, generator, tao=c.tao, gamma=c.gamma, beta=c.beta)
            for _ in range(self.num_views)
        )
