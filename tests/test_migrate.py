"""`bench records migrate` (bench/core/migrate.py): records of an older schema upgraded once to the current one,
ids recomputed from their spec and config (never guessed), every field the readers use filled in."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main
from bench.core import context as run_context
from bench.core import identity, records, train
from bench.core.errors import BenchError
from bench.core.migrate import SCHEMA_1_FAITHFUL, recorded_spec
from bench.reporting.leaderboard import build
from tests.conftest import synthetic_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"num_layers": 1, "hidden_size": 16, "batch_size": 100, "max_len": 20}


def _run(method: str, tiny_data, **overrides) -> dict:
    intents = {"num_intents": 8} if method in ("iclrec", "elcrec") else {}
    spec = synthetic_spec(method, epochs=1, patience=1, overrides={**TINY, **intents, **overrides})
    return train.run(spec, data=tiny_data, progress=False)


def _copy(record: dict) -> dict:
    return json.loads(json.dumps(record))


def _old_context(context: dict) -> dict:
    """A context as schema 1 of the context wrote it: no `recorded`, no `segments`."""
    return {"schema": 1, **{k: v for k, v in context.items() if k not in ("schema", "recorded", "segments")}}


def _as_schema_1(record: dict) -> dict:
    """A record as schema 1 wrote it: no kmeans_init (nor rec_loss, which came later) anywhere, the id computed
    without it."""
    old = _copy(record)
    old["schema"] = 1
    for key in ("kmeans_init", "rec_loss"):
        old["config"].pop(key, None)
        old["variant"].pop(key, None)
    if old["variant"]["mode"] == "modified":
        old["variant"]["mode"] = "faithful"
    old["context"] = _old_context(old["context"])
    spec = recorded_spec(old)
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

    assert main(["records", "migrate", "--results", str(tmp_path)]) == 1  # one refused
    out = capsys.readouterr()
    assert f"2 migrated to schema {records.RECORD_SCHEMA}, 0 already current, 1 not migrated" in out.out
    assert f"{bad_path}: its run id does not follow" in out.err
    upgraded = {r["method"]: r for r in map(records.read_record, (tmp_path / "runs").glob("*.json")) if r}
    assert upgraded["iclrec"]["run_id"] == fresh["run_id"]  # the id a fresh run gets today
    assert upgraded["iclrec"]["config"] == fresh["config"]  # kmeans_init fresh, rec_loss bce
    assert upgraded["iclrec"]["variant"] == fresh["variant"]
    assert upgraded["iclrec"]["context"] == fresh["context"]  # recorded, as the run took it
    assert upgraded["sasrec"]["run_id"] == sasrec["run_id"] and upgraded["sasrec"]["schema"] == records.RECORD_SCHEMA
    assert records.read_record(bad_path) is None  # still schema 1: unreadable until fixed, not half-used
    assert not records.record_path(tmp_path, old_iclrec).exists()  # moved, not copied

    assert main(["records", "migrate", "--results", str(tmp_path)]) == 1  # again: nothing more to do
    assert f"0 migrated to schema {records.RECORD_SCHEMA}, 2 already current, 1 not migrated" in capsys.readouterr().out


def _as_schema_2(record: dict, *, before_options: bool = False, before_context: bool = False) -> dict:
    """A record as schema 2 wrote it: no rec_loss anywhere (records of the four original methods from before
    it existed), a context without `recorded`; `before_options`: no variant, no precision or compile in the
    spec, no view_encoding (made before execution options existed); `before_context`: no context nor ranks."""
    old = _copy(record)
    old["schema"] = 2
    old["config"].pop("rec_loss")
    old["variant"].pop("rec_loss")
    old["context"] = _old_context(old["context"])
    if before_options:
        del old["variant"]
        old["config"].pop("view_encoding", None)
        for key in ("precision", "compile"):
            del old["spec"][key]
    if before_context:
        del old["context"], old["ranks"]
    return old


def test_schema_2_records_get_every_field_and_keep_their_ids(tiny_data, tmp_path, capsys):
    made = {m: _run(m, tiny_data) for m in ("sasrec", "iclrec", "elcrec")}
    olds = {
        "sasrec": _as_schema_2(made["sasrec"], before_options=True, before_context=True),
        "iclrec": _as_schema_2(made["iclrec"]),
        "elcrec": _as_schema_2(made["elcrec"], before_options=True, before_context=True),
    }
    paths = {}
    for method, old in olds.items():
        assert old["run_id"] == made[method]["run_id"]  # a faithful value filled in later never enters the id
        paths[method] = records.record_path(tmp_path, old)
        records.write_record_atomic(paths[method], old)
    # A schema-2 record is refused by the tables with one line naming the migration, not skipped.
    with pytest.raises(BenchError, match=rf"3 record\(s\) under .* older schema than {records.RECORD_SCHEMA} .* records migrate --results"):
        build(tmp_path)

    assert main(["records", "migrate", "--results", str(tmp_path)]) == 0
    assert f"3 migrated to schema {records.RECORD_SCHEMA}, 0 already current, 0 not migrated" in capsys.readouterr().out
    for method, new in made.items():
        up = records.read_record(paths[method])  # same file name: the run id did not change
        assert up is not None and up["schema"] == records.RECORD_SCHEMA and up["run_id"] == new["run_id"]
        spec = recorded_spec(up)
        assert identity.identity_of(spec, up["config"]) == up["run_id"]  # recomputed from its spec and config
        assert up["config"] == new["config"] and up["config"]["rec_loss"] == "bce"
        assert up["variant"] == new["variant"]  # rebuilt whole: mode, precision, compile, the method's options
        assert list(up) == list(new)  # in the order a run writes its record
    recorded = records.read_record(paths["iclrec"])
    assert recorded["context"] == made["iclrec"]["context"] and run_context.recorded(recorded["context"])
    assert recorded["ranks"] == made["iclrec"]["ranks"]
    for method in ("sasrec", "elcrec"):  # made before the context and the ranks were recorded
        up = records.read_record(paths[method])
        assert up["ranks"] is None
        ctx = up["context"]
        assert ctx == run_context.not_recorded("cpu", made[method]["env"]) and not run_context.recorded(ctx)
        assert ctx["threads"] == made[method]["env"]["torch_threads"] and ctx["concurrency"] is None
        assert ctx["torch"] == made[method]["env"]["torch"] and ctx["cpu_model"] is None
    rows = records.load_records(tmp_path).set_index("method")
    assert rows.loc["sasrec", "machine"] == "cpu (model not recorded)" and pd.isna(rows.loc["sasrec", "concurrency"])
    assert rows.loc["sasrec", "threads"] == made["sasrec"]["env"]["torch_threads"] and not rows.loc["sasrec", "has_ranks"]
    assert rows.loc["iclrec", "machine"] == made["iclrec"]["context"]["cpu_model"]
    assert rows.loc["iclrec", "concurrency"] == 1 and rows.loc["iclrec", "has_ranks"]
    assert set(rows["rec_loss"]) == {"bce"} and set(rows["variant"]) == {"faithful"}

    assert main(["records", "migrate", "--results", str(tmp_path)]) == 0  # again: nothing more to do
    assert f"0 migrated to schema {records.RECORD_SCHEMA}, 3 already current, 0 not migrated" in capsys.readouterr().out


def test_a_variant_that_disagrees_with_its_spec_is_refused(tiny_data, tmp_path, capsys):
    old = _as_schema_2(_run("sasrec", tiny_data))
    old["variant"]["precision"] = "bf16"  # the spec says fp32: which one ran is not known
    path = records.record_path(tmp_path, old)
    records.write_record_atomic(path, old)
    assert main(["records", "migrate", "--results", str(tmp_path)]) == 1
    assert f"{path}: its variant" in capsys.readouterr().err
    assert json.loads(path.read_text())["schema"] == 2  # left as it was


def _as_schema_3(record: dict, resumed_from_epoch: int | None = None) -> dict:
    """A record as schema 3 wrote it: a context (schema 2) without segments."""
    old = _copy(record)
    old["schema"] = 3
    old["context"] = {**{k: v for k, v in old["context"].items() if k != "segments"}, "schema": 2}
    if resumed_from_epoch is not None:
        old["resumed_from_epoch"] = resumed_from_epoch
    return old


def test_schema_3_records_get_segments_and_a_resumed_one_an_unknown_start(tiny_data, tmp_path, capsys):
    made = train.run(synthetic_spec("sasrec", epochs=3, patience=3, overrides=TINY), data=tiny_data, progress=False)
    assert made["context"]["segments"] == [run_context.segment(made["context"], 0)]  # one invocation
    once = _as_schema_3(made)
    resumed = _as_schema_3({**made, "seed": 2, "run_id": "resumed00001"}, resumed_from_epoch=2)
    for old in (once, resumed):
        records.write_record_atomic(records.record_path(tmp_path, old), old)
    assert main(["records", "migrate", "--results", str(tmp_path)]) == 0
    assert f"2 migrated to schema {records.RECORD_SCHEMA}" in capsys.readouterr().out
    up = {r["seed"]: r for r in map(records.read_record, (tmp_path / "runs").glob("*.json"))}
    assert up[1]["context"] == made["context"]  # what the run itself would write today
    segments = up[2]["context"]["segments"]
    assert [s["first_epoch"] for s in segments] == [0, 2] and not run_context.recorded(segments[0])
    assert segments[1] == run_context.segment(made["context"], 2)
    key = run_context.comparable_key(made["context"])
    assert run_context.epoch_keys(up[2]["context"], up[2]["epochs"]) == [None, None, key]
