"""`bench records migrate` (bench/core/migrate.py): schema-1 records upgraded once, ids recomputed, never guessed."""

from __future__ import annotations

import json

import pytest

from bench.core import identity, records, train
from bench.core.migrate import SCHEMA_1_FAITHFUL
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"num_layers": 1, "hidden_size": 16, "batch_size": 100, "max_len": 20}


def _run(method: str, tiny_data, **overrides) -> dict:
    intents = {"num_intents": 8} if method in ("iclrec", "elcrec") else {}
    spec = train.RunSpec(method=method, dataset="synthetic", epochs=1, patience=1, device="cpu",
                         overrides={**TINY, **intents, **overrides})
    return train.run(spec, data=tiny_data, progress=False)


def _as_schema_1(record: dict) -> dict:
    """A record as schema 1 wrote it: no kmeans_init (nor rec_loss, which came later) anywhere, the id computed
    without it."""
    old = json.loads(json.dumps(record))
    old["schema"] = 1
    for key in ("kmeans_init", "rec_loss"):
        old["config"].pop(key, None)
        old["variant"].pop(key, None)
    if old["variant"]["mode"] == "modified":
        old["variant"]["mode"] = "faithful"
    spec = train.RunSpec(**{k: v for k, v in old["spec"].items()})
    old["run_id"] = identity.identity_of(spec, old["config"], faithful=SCHEMA_1_FAITHFUL)
    return old


def test_schema_1_records_are_upgraded_and_iclrec_gets_the_fresh_kmeans_id(tiny_data, tmp_path, capsys):
    fresh = _run("iclrec", tiny_data, kmeans_init="fresh")  # what a schema-1 ICLRec record ran
    warm = _run("iclrec", tiny_data)
    sasrec = _run("sasrec", tiny_data)
    assert fresh["variant"]["mode"] == "modified" and warm["variant"]["mode"] == "faithful"
    assert fresh["run_id"] != warm["run_id"]
    old_iclrec, old_sasrec = _as_schema_1(fresh), _as_schema_1(sasrec)
    assert old_iclrec["run_id"] == warm["run_id"]  # the collision the migration removes
    assert old_sasrec["run_id"] == sasrec["run_id"]  # nothing about SASRec's id changed
    for old in (old_iclrec, old_sasrec):
        records.write_record_atomic(records.record_path(tmp_path, old), old)
    bad = {**old_sasrec, "seed": 7}  # an id that does not follow from the record: never guessed
    bad_path = records.record_path(tmp_path, {**bad, "run_id": "0123456789ab"})
    records.write_record_atomic(bad_path, {**bad, "run_id": "0123456789ab"})

    out = run_cli(["records", "migrate", "--results", tmp_path], capsys)
    assert out.code == 1  # one refused
    assert "2 migrated to schema 2, 0 already current, 1 not migrated" in out.out
    assert f"{bad_path}: its run id does not follow" in out.err
    upgraded = {r["method"]: r for r in map(records.read_record, (tmp_path / "runs").glob("*.json")) if r}
    assert upgraded["iclrec"]["run_id"] == fresh["run_id"]  # the id a fresh run gets today
    assert upgraded["iclrec"]["config"]["kmeans_init"] == "fresh"
    assert upgraded["iclrec"]["variant"] == {k: v for k, v in fresh["variant"].items() if k != "rec_loss"}
    assert upgraded["sasrec"]["run_id"] == sasrec["run_id"] and upgraded["sasrec"]["schema"] == 2
    assert records.read_record(bad_path) is None  # still schema 1: unreadable until fixed, not half-used
    assert not records.record_path(tmp_path, old_iclrec).exists()  # moved, not copied

    again = run_cli(["records", "migrate", "--results", tmp_path], capsys)
    assert again.code == 1  # again: nothing more to do
    assert "0 migrated to schema 2, 2 already current, 1 not migrated" in again.out
