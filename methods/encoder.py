"""The encoder contract (`Encoder`), and the SASRec transformer, every method's default encoder
(docs/methods.md, "Encoder").

A method is an encoder plus its training terms: `--set encoder=<name>` picks the encoder from
`methods/encoders.py` (README, "Adding an encoder"). The SASRec encoder is the S3-Rec / ICLRec re-implementation of SASRec: post-LayerNorm blocks, GELU (erf form), LayerNorm
eps 1e-12, additive -10000 attention mask, N(0, 0.02) initialisation. Attribute names follow the published
checkpoints (`item_embeddings`, `item_encoder.layer.{i}.attention.query`, ...), so a published `state_dict`
loads as it is and ours load into the published code.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-12
MASKED_LOGIT = -10000.0  # the published code adds -10000, not -inf; fully padded rows then stay finite


_HALF_SCALE_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def dropout_scale(shape: torch.Size, p: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """keep / (1 - p) with independent Bernoulli(1 - p) keep decisions: what nn.Dropout multiplies by.

    On CPU, `bernoulli_` costs ~20 ms per [512, 50, 64] tensor and was 38% of an ICLRec training step. For
    p = 0.5 (the published rates) each uniformly random byte gives 8 independent fair bits, and a lookup
    table [256, 8] turns a byte straight into its 8 scale values (0 or 2): one random byte per 8 elements
    and one gather, cheaper on a CPU than shifting and masking the bits. For any other p, a uniform draw
    compared with p (also cheaper than bernoulli_).
    Same distribution as nn.Dropout, other random stream.
    """
    n = math.prod(shape)
    if p == 0.5:
        table = _HALF_SCALE_TABLES.get((device, dtype))
        if table is None:
            bits = (torch.arange(256, device=device)[:, None] >> torch.arange(8, device=device)) & 1  # [256, 8]
            table = _HALF_SCALE_TABLES[(device, dtype)] = bits.to(dtype) * 2.0
        random_bytes = torch.randint(0, 256, ((n + 7) // 8,), device=device)  # int64: embedding's index type
        return F.embedding(random_bytes, table).view(-1)[:n].view(shape)
    return (torch.rand(shape, device=device) >= p).to(dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Inverted dropout with the published rate; native on CUDA (Philox is fast there), `dropout_scale` on CPU."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, training=True)
        return x * dropout_scale(x.shape, self.p, x.device, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    """Multi-head self-attention followed by output projection, dropout and a residual LayerNorm."""

    def __init__(self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_dropout = Dropout(attn_dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.out_dropout = Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x [B, L, H] -> [B, L, H]; with `last_only`, only the last query position: [B, 1, H]."""
        b, length, hidden = x.shape

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, hidden // self.heads).transpose(1, 2)  # [B, h, L, H/h]

        residual = x[:, -1:] if last_only else x
        if last_only:
            mask_bias = mask_bias[:, :, -1:]  # [B, 1, 1, L]
        q, k, v = split_heads(self.query(residual)), split_heads(self.key(x)), split_heads(self.value(x))
        # softmax(QK^T / sqrt(d) + bias) with dropout on the probabilities: exactly the published math.
        dropout = self.attn_dropout.p if self.training else 0.0
        if dropout == 0.0 or x.is_cuda:  # fused kernels (flash / memory-efficient, with their own dropout)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias, dropout_p=dropout)
        else:  # CPU training: SDPA would fall back to this math anyway, with the slow bernoulli_ mask
            scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(q.shape[-1])) + mask_bias  # [B, h, Lq, L]
            context = self.attn_dropout(scores.softmax(dim=-1)) @ v  # [B, h, Lq, H/h]
        context = context.transpose(1, 2).reshape(b, residual.shape[1], hidden)
        return self.LayerNorm(self.out_dropout(self.dense(context)) + residual)


class FeedForward(nn.Module):
    """Position-wise FFN (H -> 4H -> H, GELU) with dropout and a residual LayerNorm."""

    def __init__(self, hidden: int, inner: int, hidden_dropout: float):
        super().__init__()
        self.dense_1 = nn.Linear(hidden, inner)
        self.dense_2 = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dense_2(F.gelu(self.dense_1(x)))  # erf GELU, as the published code
        return self.LayerNorm(self.dropout(h) + x)


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float):
        super().__init__()
        self.attention = SelfAttention(hidden, heads, attn_dropout, hidden_dropout)
        self.intermediate = FeedForward(hidden, 4 * hidden, hidden_dropout)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return self.intermediate(self.attention(x, mask_bias, last_only))


class LayerStack(nn.Module):
    """Holds the layers under the name `layer`, which gives the published `item_encoder.layer.{i}` keys."""

    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        for i, layer in enumerate(self.layer):
            x = layer(x, mask_bias, last_only=last_only and i == len(self.layer) - 1)
        return x


class Encoder(nn.Module):
    """What a method needs of its encoder; every encoder subclasses this.

    An encoder maps item ids [B, L] (left-padded with 0) to one output per position [B, L, H] (`forward`)
    and holds the item table `item_embeddings` (nn.Embedding [item_size, H]) that the losses and evaluation
    score against. A method class is combined with the encoder its config names (methods/base.py), so the
    encoder's parameters are the method's own, under the names the published checkpoints use: a published
    `state_dict` of that layout loads as it is.
    """

    name: ClassVar[str]  # registry name: `--set encoder=<name>`, run ids, tables
    layout_prefixes: ClassVar[tuple[str, ...]]  # state_dict key prefixes that only this encoder's layout has
    required_keys: ClassVar[tuple[str, ...]]  # keys a checkpoint of this layout cannot lack
    # Rows per encoder call on CPU when a method encodes several inputs (Method.encode_separately); None: one
    # call. Only speed depends on it.
    cpu_chunk_rows: ClassVar[int | None] = None
    item_embeddings: nn.Embedding

    @staticmethod
    def encoder_args(config) -> dict:
        """The constructor's keyword arguments (all but `item_size`) from a method config."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config) -> None:  # noqa: B027 - optional by design
        """Raise ValueError for a config value this encoder cannot be built with (checked with the config)."""

    @classmethod
    def holds(cls, state_dict: dict[str, torch.Tensor]) -> bool:
        """Whether `state_dict` is in this encoder's layout (it has a key only this layout has)."""
        return any(key.startswith(cls.layout_prefixes) for key in state_dict)

    @classmethod
    def config_from_state(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        """Config values that a checkpoint of this layout fixes by its tensor shapes."""
        raise NotImplementedError

    def encode_last(self, ids: torch.Tensor) -> torch.Tensor:
        """The output at the last position only, [B, H]: what evaluation ranks with."""
        return self(ids)[:, -1]

    def cuts_leading_padding(self) -> bool:
        """Whether leading columns that are padding in every row may be cut off an input without changing
        its last output (evaluation cuts them: most users fill few of the L slots)."""
        return False


class SASRecEncoder(Encoder):
    """Item sequence [B, L] (left-padded with 0) -> hidden states [B, L, H]."""

    name = "sasrec"
    cpu_chunk_rows = 128  # activations stay in cache (Method.encode_separately)
    layout_prefixes = ("position_embeddings.", "item_encoder.")
    required_keys = ("item_embeddings.weight", "position_embeddings.weight")

    def __init__(
        self,
        item_size: int,
        hidden: int = 64,
        num_layers: int = 2,
        heads: int = 2,
        max_len: int = 50,
        hidden_dropout: float = 0.5,
        attn_dropout: float = 0.5,
    ):
        super().__init__()
        self.max_len = max_len
        self.item_embeddings = nn.Embedding(item_size, hidden, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_len, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(hidden_dropout)
        self.item_encoder = LayerStack(
            [Layer(hidden, heads, attn_dropout, hidden_dropout) for _ in range(num_layers)]
        )
        # Causal mask, built once; padding keys are removed per batch.
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) for every Linear and Embedding weight; this overwrites the padding row too, which then
        # keeps its random value because padding_idx gives it no gradient (a published-code quirk).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()
        if isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    def attention_bias(self, ids: torch.Tensor) -> torch.Tensor:
        """Additive mask [B, 1, L, L]: 0 where the key is a real item in the past, -10000 elsewhere."""
        length = ids.shape[1]
        allowed = (ids > 0)[:, None, None, :] & self.causal[:length, :length]
        return (~allowed).to(self.item_embeddings.weight.dtype) * MASKED_LOGIT

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self._encode(ids, last_only=False)  # [B, L, H]

    def encode_last(self, ids: torch.Tensor) -> torch.Tensor:
        """The output at the last position only, [B, H]: what evaluation ranks with.

        Earlier layers still run on every position (the last query attends to them), but the last layer
        computes one query row instead of L: the same numbers as `forward(ids)[:, -1]` for a fraction of
        the work.
        """
        return self._encode(ids, last_only=True)[:, -1]

    def _encode(self, ids: torch.Tensor, last_only: bool) -> torch.Tensor:
        length = ids.shape[1]  # ids: [B, L], L <= max_len
        # Positions are right-aligned: the last column is always position max_len - 1, as in a full-width
        # left-padded input. So an input whose leading all-padding columns were cut off (evaluation does
        # that) gets exactly the positions it had at full width.
        positions = torch.arange(self.max_len - length, self.max_len, device=ids.device)
        x = self.item_embeddings(ids) + self.position_embeddings(positions)[None]  # [B, L, H]
        x = self.dropout(self.LayerNorm(x))
        return self.item_encoder(x, self.attention_bias(ids), last_only)

    @staticmethod
    def encoder_args(config) -> dict:
        return {
            "hidden": config.hidden_size, "num_layers": config.num_layers, "heads": config.num_heads,
            "max_len": config.max_len, "hidden_dropout": config.hidden_dropout, "attn_dropout": config.attn_dropout,
        }

    @classmethod
    def config_from_state(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        return {
            "num_layers": cls.num_layers_in(state_dict),
            "hidden_size": int(state_dict["item_embeddings.weight"].shape[1]),
            "max_len": int(state_dict["position_embeddings.weight"].shape[0]),
        }

    def cuts_leading_padding(self) -> bool:
        # Padded keys get a -10000 attention bias (a softmax weight of exactly 0 in fp32) and positions are
        # right-aligned (`_encode`), so a cut input gives the numbers of the full width.
        return True

    @staticmethod
    def num_layers_in(state_dict: dict[str, torch.Tensor]) -> int:
        """Number of transformer layers stored in a checkpoint in the published layout."""
        prefix = "item_encoder.layer."
        indices = {int(k[len(prefix) :].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
        return max(indices) + 1 if indices else 0

