"""`python -m bench records migrate`: bring run records of an older schema to the current one, once.

Schema 1 -> 2: ICLRec's k-means became warm-started by default (methods/clustering.py). A schema-1 ICLRec
record ran a fresh k-means at every E-step, so it gets `config.kmeans_init = "fresh"` and the variant that
says so (mode "modified"), and its run id is recomputed from its spec and config, as a run with
`--set kmeans_init=fresh` would get today: the plain id then belongs to the published (warm) behaviour. Every
other record only changes its schema number, keeping its id.

Schema 2 -> 3: every field the readers use is in the record, so that they need no branch for records written
before a field existed. Filled from what the record itself holds, never guessed, and keeping every run id (the
filled values are the faithful ones the id leaves out, which is checked):

- `config.rec_loss` "bce" for SASRec, CL4SRec, ICLRec and ELCRec, which all trained with bce before the option
  existed (a record of another method without it is refused); `config.view_encoding` "separate" for ICLRec and
  ELCRec, the only encoding before the option existed;
- `variant` rebuilt from the spec and that config (bench/core/identity.variant_of: mode, precision, compile and
  the method's options); a spec without precision or compile is one from before they existed: fp32, eager. A
  stored variant that disagrees with the rebuilt one is refused;
- an ok record without `context` gets `context.not_recorded` (device, GPU name, torch threads, CPU count,
  versions from its own `env`; CPU model, runs in flight and load null; `recorded` false), and one without
  `ranks` gets `"ranks": null` (its paired tests stay unavailable). A recorded context gets `recorded` true and
  the context schema 2. Failed and interrupted runs keep the sections they never reached absent or null.

Schema 3 -> 4: a run continued from checkpoints may have run its epochs in several contexts, so the context
lists them: `context.segments`, each invocation's first epoch and context (bench/core/context.segment). A
schema-3 record knows only its last invocation's context: a run that was not resumed gets the one segment
that context describes; a resumed one (`resumed_from_epoch`) gets an unknown segment from epoch 0 and its
context from the epoch it resumed at. The context schema becomes 3. Run ids are unchanged.

Before changing anything, each record's stored id is recomputed from its own spec and config under the old
rule; a record whose id does not match is left as it is and named, so that no id is ever guessed. Files are
written atomically (new file first, then the old one removed), so an interrupted migration leaves every
record readable in one schema or the other, and running the command again finishes it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

from bench.core import context as run_context
from bench.core import records
from bench.core.spec import RunSpec

FRESH_KMEANS_METHODS = ("iclrec",)  # methods whose schema-1 records ran a fresh k-means every E-step
# What every run of these methods did before the config key existed (the faithful value, left out of the id).
BEFORE_OPTION = {
    "rec_loss": ("bce", ("sasrec", "cl4srec", "iclrec", "elcrec")),
    "view_encoding": ("separate", ("iclrec", "elcrec")),
}
# A record's fields in the order train.py writes them; others (traceback, interrupted, ...) follow.
FIELD_ORDER = ("schema", "run_id", "method", "dataset", "seed", "profile", "protocol", "config_source", "config",
               "variant", "spec", "status", "error", "device", "env", "started_at", "finished_at", "num_users",
               "best_epoch", "best_valid", "test", "epochs", "totals", "peak_memory_bytes", "memory", "ranks",
               "context")


@dataclass
class Migration:
    migrated: list[tuple[Path, Path]] = field(default_factory=list)  # (old path, new path)
    current: int = 0  # records already at the current schema
    refused: list[str] = field(default_factory=list)  # "path: why" lines


def recorded_spec(record: dict) -> SimpleNamespace:
    """The fields of the RunSpec a record was made from (its `spec` section; RunSpec's defaults where an
    older record lacks one), as `identity_of` reads them. Not a RunSpec: that would resolve today's config."""
    defaults = {f.name: f.default for f in fields(RunSpec) if f.default is not MISSING}
    saved = record.get("spec") or {}
    return SimpleNamespace(**{**defaults, **saved})


def _id_of(record: dict, config: dict, *, faithful: dict) -> str:
    from bench.core.identity import identity_of

    return identity_of(recorded_spec(record), config, faithful=faithful)


SCHEMA_1_FAITHFUL = {"precision": "fp32", "compile": "off", "view_encoding": "separate"}


def _upgrade_1_to_2(record: dict) -> dict:
    """The schema-2 form of a schema-1 record (a new dict; the run id recomputed where the config changed)."""
    if _id_of(record, record["config"], faithful=SCHEMA_1_FAITHFUL) != record["run_id"]:
        raise ValueError("its run id does not follow from its spec and config")
    new = dict(record)
    if record["method"] in FRESH_KMEANS_METHODS and "kmeans_init" not in record["config"]:
        new["config"] = {**record["config"], "kmeans_init": "fresh"}
        variant = {**(record.get("variant") or {}), "kmeans_init": "fresh"}
        if variant.get("mode", "faithful") == "faithful":
            variant["mode"] = "modified"
        new["variant"] = variant
        new["run_id"] = _id_of(record, new["config"], faithful=records.faithful_values(record["method"]))
    new["schema"] = 2
    return new


def _has_option(method: str, key: str) -> bool:
    """Whether `method`'s config has the field `key` (ValueError for a method this harness does not know)."""
    cls = records.REGISTRY.get(method)
    if cls is None:
        raise ValueError(f"method {method!r} is not registered here: its config's fields are unknown")
    return key in {f.name for f in fields(cls.Config)}


def _upgrade_2_to_3(record: dict) -> dict:
    """The schema-3 form of a schema-2 record (a new dict, the run id kept): see the module's docstring."""
    from bench.core.identity import variant_of

    method, config = record["method"], dict(record["config"])
    faithful = records.faithful_values(method)
    if config and _id_of(record, config, faithful=faithful) != record["run_id"]:
        raise ValueError("its run id does not follow from its spec and config")
    if config:  # empty only for a failed run whose config never resolved: nothing to fill
        for key, (value, methods) in BEFORE_OPTION.items():
            if key in config or not _has_option(method, key):
                continue
            if method not in methods:
                raise ValueError(f"its config has no {key}, and {method} did not exist before {key} did")
            config[key] = value
        if _id_of(record, config, faithful=faithful) != record["run_id"]:
            raise ValueError("filling its config would change its run id")  # never: the filled values are faithful
    variant = variant_of(recorded_spec(record), config)
    stored = record.get("variant") or {}
    if any(stored[k] != variant.get(k) for k in stored):
        raise ValueError(f"its variant {stored} disagrees with its spec and config ({variant})")
    new = {**record, "schema": 3, "config": config, "variant": variant}
    if record["status"] == "ok":
        new.setdefault("ranks", None)
        if new.get("context") is None:
            new["context"] = run_context.not_recorded(record["device"], record["env"])
    if new.get("context") is not None and "recorded" not in new["context"]:
        ctx = new["context"]
        new["context"] = {"schema": run_context.CONTEXT_SCHEMA, "recorded": True,
                          **{k: v for k, v in ctx.items() if k != "schema"}}
    return {**{k: new[k] for k in FIELD_ORDER if k in new}, **{k: v for k, v in new.items() if k not in FIELD_ORDER}}


def _upgrade_3_to_4(record: dict) -> dict:
    """The schema-4 form of a schema-3 record (a new dict, the run id kept): its context's segments."""
    new = {**record, "schema": 4}
    ctx = record.get("context")
    if ctx is not None:
        resumed = record.get("resumed_from_epoch")
        known = run_context.segment(ctx, resumed or 0)
        earlier = [run_context.unknown_segment(ctx["device"])] if resumed else []
        new["context"] = {**ctx, "schema": run_context.CONTEXT_SCHEMA, "segments": [*earlier, known]}
    return new


# schema -> the function that lifts it by one
UPGRADES = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3, 3: _upgrade_3_to_4}


def migrate(results_dir: Path) -> Migration:
    """Upgrade every record under `<results_dir>/runs/` to records.RECORD_SCHEMA."""
    out = Migration()
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out.refused.append(f"{path}: not readable JSON")
            continue
        schema = record.get("schema") if isinstance(record, dict) else None
        if schema == records.RECORD_SCHEMA:
            out.current += 1
            continue
        if schema not in UPGRADES:
            out.refused.append(f"{path}: schema {schema!r} has no migration")
            continue
        try:
            new = record
            while new["schema"] != records.RECORD_SCHEMA:
                new = UPGRADES[new["schema"]](new)
        except (ValueError, KeyError, TypeError) as exc:
            out.refused.append(f"{path}: {exc}")
            continue
        # Same order as records.finalise writes: schema and run id first.
        new = {"schema": new.pop("schema"), "run_id": new.pop("run_id"), **new}
        target = records.record_path(results_dir, new)
        records.write_record_atomic(target, new)
        if target != path:
            path.unlink()
        out.migrated.append((path, target))
    return out
