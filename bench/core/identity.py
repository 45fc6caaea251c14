"""A run's identity: its run id (what determines the result) and its variant (how faithful it ran).

The run id is the first 12 hex digits of the sha256 of everything that determines a result
(bench/core/records.py `run_id`): method, dataset, seed, budget, protocol, the resolved config, and for a
dataset added with `bench data add` the sha256 of its file. Execution
options at their faithful (published) value are left out, so a faithful run keeps the id it had before an
option existed; any other value enters the id, so a variant never shares an id with the faithful run.
`RunSpec` (bench/core/spec.py) computes its id here when it is made.
"""

from __future__ import annotations

from typing import Protocol

from bench.core import data, records
from bench.core.devices import device_kind


class SpecFields(Protocol):
    """What the id reads of a run's spec: a `RunSpec`, or the `spec` section of a stored record (the record
    migration, bench/core/migrate.py, recomputes ids from those)."""

    method: str
    dataset: str
    seed: int
    profile: str
    protocol: str
    epochs: int
    patience: int
    max_users: int | None
    max_steps: int | None
    precision: str
    compile: str
    device: str

# Execution options that are RunSpec fields; the rest of records.FAITHFUL are config keys. At their faithful
# values all are left out of the run id, so records made before an option existed keep their ids.
SPEC_OPTIONS = ("precision", "compile")


def execution_options(spec: SpecFields) -> dict:
    """How a run executes, where that differs from the default (CPU, fp32, eager): part of its identity.

    A GPU run is a different measurement of cost from a CPU run of the same spec, so both records are kept
    (and neither is skipped because the other exists). "auto" is resolved where the id is computed.
    """
    options = {k: getattr(spec, k) for k in SPEC_OPTIONS if getattr(spec, k) != records.FAITHFUL[k]}
    if device_kind(spec.device) == "cuda":
        options["device"] = "cuda"
    return options


def variant_of(spec: SpecFields, config: dict) -> dict:
    """What a record says about how faithful the run was: mode "faithful", "fast" or "modified", and every
    option."""
    faithful = records.faithful_values(spec.method)
    options = {k: getattr(spec, k) for k in SPEC_OPTIONS}
    options.update({k: config[k] for k in faithful if k in config})  # config keys (of some or all methods)
    return {"mode": records.variant_mode(options, faithful["rec_loss"]), **options}


def identity_of(spec: SpecFields, config, faithful: dict | None = None) -> str:
    """The run id of `spec` trained with the resolved `config` (a method config or its dict).

    `faithful` (default records.faithful_values(spec.method)): the config values left out of the id; the
    record migration passes an older schema's. A method's published rec_loss is left out like the
    execution options, so that the ids of runs made before rec_loss existed stay what they were; so is the
    default encoder (SASRec), for the runs made before the encoder was an option.
    """
    budget = {"epochs": spec.epochs, "patience": spec.patience, "max_users": spec.max_users}
    if getattr(spec, "max_steps", None) is not None:  # left out when unbounded: earlier runs keep their ids
        budget["max_steps"] = spec.max_steps
    budget.update(execution_options(spec))
    if data.is_added(spec.dataset):
        # An added dataset can be replaced (`data add --force`): its content enters the id, so that runs on
        # the new data are never taken for the old data's. Shipped datasets are fixed by their manifests and
        # keep the ids they always had.
        budget["data_sha256"] = data.load_manifest(spec.dataset).sha256
    faithful = records.faithful_values(spec.method) if faithful is None else faithful
    faithful_config = {k: v for k, v in faithful.items() if k not in SPEC_OPTIONS}
    values = config if isinstance(config, dict) else config.to_dict()
    values = {k: v for k, v in values.items() if not (k in faithful_config and faithful_config[k] == v)}
    if values.get("encoder") == records.DEFAULT_ENCODER:  # the id of a run on the default encoder is unchanged
        del values["encoder"]
    return records.run_id(spec.method, spec.dataset, spec.seed, spec.profile, spec.protocol, values, budget)
