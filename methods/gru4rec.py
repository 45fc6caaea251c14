"""The GRU4Rec encoder as ICSRec publishes it (`GRUEncoder`, `--encoder GRU`; docs/methods.md, "Encoders").

Item embedding, embedding dropout (`hidden_dropout`), a GRU without biases whose hidden size is twice the
embedding size and whose layer count is the config's `num_layers - 1`, then a linear layer from the GRU's
output back to the embedding size at every position. No position embeddings and no layer norm; PyTorch's
default initialisation (the published encoder has no `init_weights`). Attribute names are the published
checkpoint's: `item_embeddings`, `gru_layers`, `dense`. `num_heads` and `attn_dropout` have no meaning here.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from methods.encoder import Dropout, Encoder

_LAYER_KEY = re.compile(r"gru_layers\.weight_ih_l(\d+)$")


class GRU4RecEncoder(Encoder):
    """Item sequence [B, L] (left-padded with 0) -> outputs [B, L, H], one per position."""

    name = "gru4rec"
    # One call per input group: the GRU steps through the positions, and each call pays that per step.
    cpu_chunk_rows = None
    layout_prefixes = ("gru_layers.",)
    required_keys = ("item_embeddings.weight", "gru_layers.weight_ih_l0", "gru_layers.weight_hh_l0", "dense.weight")

    def __init__(
        self, item_size: int, hidden: int = 64, num_layers: int = 2, hidden_dropout: float = 0.5, max_len: int = 50
    ):
        super().__init__()
        self.max_len = max_len
        if num_layers < 2:  # the published code builds num_layers - 1 GRU layers
            raise ValueError(f"encoder gru4rec needs num_layers >= 2 (it has num_layers - 1 GRU layers), got {num_layers}")
        self.item_embeddings = nn.Embedding(item_size, hidden, padding_idx=0)
        self.emb_dropout = Dropout(hidden_dropout)
        # The fused nn.GRU: one call runs every position (no Python loop), as the published code.
        self.gru_layers = nn.GRU(hidden, 2 * hidden, num_layers=num_layers - 1, bias=False, batch_first=True)
        self.dense = nn.Linear(2 * hidden, hidden)

    @staticmethod
    def encoder_args(config) -> dict:
        return {"hidden": config.hidden_size, "num_layers": config.num_layers, "hidden_dropout": config.hidden_dropout,
                "max_len": config.max_len}

    @classmethod
    def check_config(cls, config) -> None:
        if config.num_layers < 2:
            raise ValueError(
                f"encoder gru4rec needs num_layers >= 2 (it has num_layers - 1 GRU layers), got "
                f"{config.num_layers}: set num_layers=2 for one GRU layer"
            )

    @classmethod
    def config_from_state(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        """Hidden size from the item table, layers from the GRU's stored layers (+ 1, the published count)."""
        layers = {int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))}
        return {"hidden_size": int(state_dict["item_embeddings.weight"].shape[1]), "num_layers": max(layers) + 2}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dense(self._gru(ids))  # [B, L, H]

    def encode_last(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dense(self._gru(ids)[:, -1])  # [B, H]: the linear layer on the last position only

    def _gru(self, ids: torch.Tensor) -> torch.Tensor:
        """GRU outputs [B, L, 2H] of `ids` [B, L] as the columns of its full-width (max_len) left-padded form.

        The padding row is an embedding like any other (the full-softmax losses train it; the published Beauty
        file's is not zero), so leading padding moves the state. An input with leading columns cut off
        (evaluation cuts those that are padding in every row) starts from the state those padding steps
        reach: in eval mode one state for every row (same input, no dropout), from a GRU pass over the
        padding alone; in training (dropout per row and position) the padding is put back.
        """
        width, cut = ids.shape[1], self.max_len - ids.shape[1]
        if cut > 0 and self.training:
            ids, cut = F.pad(ids, (cut, 0)), 0  # padding id 0
        state = None
        if cut > 0:
            padding = self.item_embeddings(ids.new_zeros(1, cut))  # [1, cut, H]
            state = self.gru_layers(padding)[1].expand(-1, ids.shape[0], -1).contiguous()  # [layers, B, 2H]
        output, _ = self.gru_layers(self.emb_dropout(self.item_embeddings(ids)), state)  # [B, max_len or L, 2H]
        return output[:, -width:]

    def cuts_leading_padding(self) -> bool:
        return True  # `_gru` starts a cut input from the state its leading padding reaches
