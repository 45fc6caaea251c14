"""The encoders every method can run on, by the name `--set encoder=<name>` gives (docs/methods.md,
"Encoders"). Adding an encoder: one file in this folder (an `Encoder` subclass), one line below."""

from __future__ import annotations

from methods.encoder import Encoder, SASRecEncoder
from methods.gru4rec import GRU4RecEncoder

ENCODERS: dict[str, type[Encoder]] = {
    "sasrec": SASRecEncoder,  # the default (MethodConfig.encoder), every published number's
    "gru4rec": GRU4RecEncoder,
}
