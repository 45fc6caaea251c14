"""`python -m bench records migrate`: bring run records of an older schema to the current one, once.

Schema 1 -> 2: ICLRec's k-means became warm-started by default (methods/clustering.py). A schema-1 ICLRec
record ran a fresh k-means at every E-step, so it gets `config.kmeans_init = "fresh"` and the variant that
says so (mode "modified"), and its run id is recomputed from its spec and config, as a run with
`--set kmeans_init=fresh` would get today: the plain id then belongs to the published (warm) behaviour. Every
other record only changes its schema number, keeping its id.

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

from bench.core import records
from bench.core.spec import RunSpec

FRESH_KMEANS_METHODS = ("iclrec",)  # methods whose schema-1 records ran a fresh k-means every E-step


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
        if schema != 1:
            out.refused.append(f"{path}: schema {schema!r} has no migration")
            continue
        try:
            new = _upgrade_1_to_2(record)
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
