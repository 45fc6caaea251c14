"""Optuna studies: persistence and resuming, export to tuned configs, parallel workers, search-space checks,
pruning. Runs are tiny (300 Beauty users, 2-3 epochs of SASRec) so the file stays around a minute."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import optuna
import pytest

from bench.core.errors import BenchError
from bench.core.profiles import Profile
from bench.tuning import search_space, studies, tune
from methods import REGISTRY
from tests.conftest import run_cli

TINY = Profile("tiny", max_users=300, epochs=3, patience=3, seeds=(1,))
TINIER = Profile("tinier", max_users=300, epochs=2, patience=2, seeds=(1,))


def _trials(results: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    storage = studies.open_storage(str(studies.journal_path(results, study)), create=False)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A 4-trial study with the median pruner on, then the final run of its best config."""
    results = tmp_path_factory.mktemp("tune")
    summary = tune.tune("sasrec", "Beauty", profile=TINY, trials=4, results=results)
    return results, summary


# ------------------------------------------------------------------------------- persistence, resume
def test_study_persists_reports_and_resumes(study_dir):
    results, summary = study_dir
    name = "sasrec-Beauty-tiny"
    assert studies.journal_path(results, name).is_file()
    first = _trials(results, name)
    assert len(first) == 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in first)
    # every trial reported one valid NDCG@20 per epoch it ran, and the objective is their maximum
    for t in first:
        assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(max(t.intermediate_values.values()))

    out = results / "studies" / name
    best = json.loads((out / "best.json").read_text())
    n = best["counts"]
    assert n["complete"] + n["pruned"] + n["failed"] == n["total"] == 4
    assert best["best_trial"]["value"] == pytest.approx(max(t.value for t in first if t.value is not None))
    # Paths inside the results folder are written relative to it: reports are committed, machines differ.
    assert results / best["storage"] == studies.journal_path(results, name)
    assert (out / "trials.csv").read_text().count("\n") == 5  # header + 4 trials
    assert (out / "importances.csv").read_text().startswith("param,importance")
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the only test evaluation: the final run, saved as a record with the best params
    final = best["final_run"]
    assert not Path(final["record"]).is_absolute()
    record = json.loads((results / final["record"]).read_text())
    assert record["status"] == "ok" and set(record["test"]) == set(final["test"])
    assert {k: record["config"][k] for k in best["best_trial"]["params"]} == pytest.approx(best["best_trial"]["params"])

    tune.tune("sasrec", "Beauty", profile=TINY, trials=2, results=results, run_final=False)
    again = _trials(results, name)
    assert len(again) == 6
    assert [t.number for t in again] == list(range(6))
    # resuming draws new points: the random start-up stream is seeded by the study's size
    assert again[4].params != first[0].params


def test_study_with_other_budget_is_refused(study_dir):
    results, _ = study_dir
    other = Profile("tiny", max_users=200, epochs=3, patience=3, seeds=(1,))
    with pytest.raises(BenchError, match=r"max_users 300 \(now 200\)"):
        tune.tune("sasrec", "Beauty", profile=other, trials=1, results=results, run_final=False)


# ------------------------------------------------------------------------------------------- export
def test_export_is_used_by_run_configs_tuned(study_dir, tmp_path, monkeypatch, capsys):
    results, _ = study_dir
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    # an entry for another dataset must survive the export
    (tuned / "sasrec.toml").write_text('[datasets.Yelp]\nlr = 0.002\n\n[datasets.Yelp.provenance]\nstudy = "x"\n')
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tuned))

    assert run_cli(["tune", "--export", "--results", results], capsys).code == 0
    doc = tomllib.loads((tuned / "sasrec.toml").read_text())
    assert doc["datasets"]["Yelp"]["lr"] == 0.002
    entry = doc["datasets"]["Beauty"]
    prov = entry.pop("provenance")
    study = optuna.load_study(
        study_name="sasrec-Beauty-tiny", storage=studies.open_storage(str(studies.journal_path(results, "sasrec-Beauty-tiny")))
    )
    assert entry == pytest.approx(study.best_params)
    assert prov["study"] == "sasrec-Beauty-tiny" and prov["trial"] == study.best_trial.number
    assert prov["value"] == pytest.approx(study.best_value) and prov["profile"] == "tiny" and prov["date"]

    argv = ["run", "--method", "sasrec", "--dataset", "Beauty", "--configs", "tuned", "--epochs", "1",
            "--max-users", "300", "--json", "--results", str(tmp_path / "results")]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err[-2000:]
    record = json.loads(out.strip().splitlines()[-1])
    assert record["config_source"] == "tuned"
    assert {k: record["config"][k] for k in entry} == pytest.approx(entry)


def test_export_without_studies_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "tuned"))
    code, _, err = run_cli(["tune", "--export", "--results", tmp_path], capsys)
    assert code == 2 and err.startswith("error: "), err


# ----------------------------------------------------------------------------------------- parallel
def test_parallel_workers_share_the_study_without_losing_trials(tmp_path):
    # Two spawned processes append to one journal at the same time: every trial must arrive, numbered once.
    tune.tune(
        "sasrec", "Beauty", profile=TINIER, trials=4, parallel=2, executor="local", results=tmp_path,
        study="par", run_final=False,
    )
    trials = _trials(tmp_path, "par")
    assert len(trials) == 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    assert json.loads((tmp_path / "studies" / "par" / "best.json").read_text())["parallel"] == 2


def test_split_trials_adds_exactly_n():
    assert tune.split_trials(5, 2) == [3, 2]
    assert tune.split_trials(1, 4) == [1]
    assert tune.split_trials(0, 3) == []
    assert sum(tune.split_trials(7, 3)) == 7


# ------------------------------------------------------------------------------------------- pruning
class FakeTrial:
    def __init__(self, prune: bool) -> None:
        self.prune = prune
        self.reported: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return self.prune


def _row(epoch: int, ndcg: float) -> dict:
    return {"epoch": epoch, "valid": {"NDCG@20": ndcg}}


def test_reporter_prunes_after_reporting():
    trial = FakeTrial(prune=True)
    reporter = tune.EpochReporter(trial)
    with pytest.raises(optuna.TrialPruned):
        reporter(0, _row(0, 0.01))
    assert trial.reported == [(0.01, 0)]


def test_reporter_tracks_the_best_epoch_and_leaves_stopping_to_the_loop():
    reporter = tune.EpochReporter(FakeTrial(prune=False))
    for epoch, value in enumerate((0.05, 0.04, 0.05, 0.03)):
        reporter(epoch, _row(epoch, value))  # never raises: patience is the training loop's
    assert reporter.best == 0.05 and reporter.best_epoch == 0 and reporter.epochs_run == 4


def test_objective_is_pruned_by_the_study_pruner(tmp_path):
    # A real trial through the training loop, with a pruner that prunes any value below 1 from epoch 0.
    from bench.core.data import SequenceData

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    setup = studies.StudySetup("sasrec", "Beauty", TINY, "p", "unused", str(tmp_path), device="cpu")
    space = search_space.load("sasrec")
    data = SequenceData.load("Beauty", max_users=TINY.max_users)
    study.optimize(lambda t: tune.objective(t, setup, space, data), n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [0] and trial.user_attrs["epochs_run"] == 1


# -------------------------------------------------------------------------------------- search space
@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_shipped_search_spaces_are_valid(method):
    space = search_space.load(method)
    assert space and all(isinstance(d, search_space.Dimension) for d in space.values())


def test_suggest_maps_to_optuna():
    space = search_space.load("elcrec")
    trial = optuna.create_study().ask()
    values = search_space.suggest(trial, space)
    assert set(values) == set(space)
    assert 1e-4 <= values["lr"] <= 5e-3 and isinstance(values["num_layers"], int)
    assert values["num_intents"] in (64, 128, 256, 512) and values["prototype"] in ("shift", "concat")
    assert isinstance(trial.distributions["lr"], optuna.distributions.FloatDistribution) and trial.distributions["lr"].log


@pytest.mark.parametrize(
    "entry, problem",
    [
        ('lr_rate = { type = "float", low = 0.1, high = 0.2 }', r"\[search_space\]\.lr_rate: unknown key"),
        ('lr = { type = "float", low = 0.01, high = 0.001 }', r"\.lr: low must be < high"),
        ('lr = { type = "float", low = 0.0, high = 0.1, log = true }', r"\.lr: log = true needs low > 0"),
        ('lr = { type = "uniform", low = 0.0, high = 0.1 }', r"\.lr: type must be one of"),
        ('num_layers = { type = "int", low = 1.5, high = 3 }', r"\.num_layers: an int range needs integer"),
        ('num_layers = { type = "float", low = 1, high = 3 }', r"\.num_layers: a float range cannot set a int"),
        ('num_layers = { type = "categorical", choices = [] }', r"\.num_layers: choices must be a non-empty"),
        ('num_layers = { type = "categorical", choices = [1, "two"] }', r"\.num_layers: choice\(s\) \['two'\]"),
        ('lr = { type = "float", low = 0.1, high = 0.2, choices = [1] }', r"\.lr: choices not allowed"),
        ('lr = 0.1', r"\.lr: expected a table"),
    ],
)
def test_bad_search_space_names_file_key_and_problem(tmp_path, entry, problem):
    path = tmp_path / "sasrec.toml"
    path.write_text(f"[defaults]\nnum_layers = 2\n\n[search_space]\n{entry}\n")
    with pytest.raises(BenchError, match=problem) as info:
        search_space.load("sasrec", path)
    assert str(path) in str(info.value)


def test_missing_search_space_is_an_error(tmp_path):
    path = tmp_path / "sasrec.toml"
    path.write_text("[defaults]\nnum_layers = 2\n")
    with pytest.raises(BenchError, match="no \\[search_space\\] table"):
        search_space.load("sasrec", path)


# ------------------------------------------------------------------------------------------ helpers
def test_study_names_and_storage_urls():
    assert studies.check_study_name("sasrec-Beauty-quick") == "sasrec-Beauty-quick"
    with pytest.raises(BenchError):
        studies.check_study_name("../evil")
    shown = studies.public_storage("postgresql://bench:s3cret@db.example:5432/optuna")
    assert "s3cret" not in shown and "db.example" in shown
    with pytest.raises(BenchError, match="cannot open Optuna storage"):
        studies.open_storage("nosuchdialect://host/db")
