"""One run identity whichever command builds the run, and the method contract as a newcomer meets it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from bench.campaign import grid
from bench.cli import build_parser
from bench.commands import single_run_spec
from bench.core import records, train
from bench.core.errors import BenchError
from bench.core.profiles import get_profile
from bench.core.spec import make_spec
from bench.tuning import tune
from methods import REGISTRY
from methods.base import Method, MethodConfig
from methods.losses import rec_bce_loss


def _run_args(*argv: str):
    return build_parser().parse_args(["run", *argv])


def test_one_run_gets_one_id_through_run_the_grid_and_tune():
    from_run = single_run_spec(_run_args("--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke",
                                         "--set", "lr=0.002"))
    from_grid = grid.grid_specs(["sasrec"], ["Beauty"], profile="smoke", set_pairs=["lr=0.002"])
    setup = tune.StudySetup("sasrec", "Beauty", get_profile("smoke"), "s", "unused.journal", "unused")
    from_tune = tune.trial_spec(setup, {"lr": 0.002})  # the final run of a study with this best trial
    assert len(from_grid) == 1
    ids = {s.run_id for s in (from_run, from_grid[0], from_tune)}
    assert len(ids) == 1
    assert {s.profile for s in (from_run, from_grid[0], from_tune)} == {"smoke"}


def test_a_budget_has_one_label_whatever_the_command():
    # The old bug: `run --profile smoke --epochs 1` was labelled smoke by `run` and custom by the grid.
    single = single_run_spec(_run_args("--method", "sasrec", "--dataset", "Beauty", "--profile", "smoke", "--epochs", "1"))
    in_grid = grid.grid_specs(["sasrec"], ["Beauty"], profile="smoke", epochs=1)[0]
    assert single.profile == in_grid.profile == "custom"
    assert single.run_id == in_grid.run_id
    # A bare run has the paper budget, so it is the paper run the grid would skip as done.
    bare = single_run_spec(_run_args("--method", "sasrec", "--dataset", "Beauty"))
    paper = grid.grid_specs(["sasrec"], ["Beauty"], [1])[0]
    assert bare.profile == "paper" and bare.run_id == paper.run_id
    # The smoke budget spelled out without --profile is the smoke run.
    spelled = make_spec("sasrec", "Beauty", epochs=2, patience=2, max_users=1200, max_steps=1)
    assert spelled.profile == "smoke"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dataset": "../pyproject"}, "unknown dataset"),
        ({"method": "nope"}, "unknown method"),
        ({"seed": 2**63}, "--seed must be in"),
        ({"max_users": 0}, "--max-users must be >= 1"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"patience": 0}, "--patience must be >= 1"),
        ({"num_threads": -1}, "--threads must be >= 1"),
        ({"device": "tpu"}, "unknown device"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"overrides": {"lr": "nan"}}, "not a finite number"),
        ({"overrides": {"lr": "inf"}}, "not a finite number"),
        ({"profile": "huge"}, "unknown profile"),
    ],
)
def test_make_spec_refuses_bad_values_in_one_line(kwargs, message):
    args = {"method": "sasrec", "dataset": "Beauty", **kwargs}
    with pytest.raises(BenchError, match=message) as info:
        make_spec(args.pop("method"), args.pop("dataset"), **args)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- a fifth method
@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    num_layers: int = 1
    shrink: float = 0.5  # a method-specific value, checked like every config value


class ToyMethod(Method):
    """Written from README's "Adding a method" alone: rec loss on a shrunk encoder output."""

    name = "toy"
    Config = ToyConfig

    def training_step(self, batch) -> dict[str, torch.Tensor]:
        hidden = self(batch.input_ids) * self.config.shrink
        rec = rec_bce_loss(hidden, self.item_embeddings.weight, batch.target_pos, batch.target_neg)
        return {"rec": rec, "loss": rec}


def test_a_fifth_method_runs_through_the_harness(monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "toy", ToyMethod)
    spec = make_spec("toy", "Beauty", profile="smoke", epochs=1, max_users=300, device="cpu", overrides={"shrink": "0.25"})
    record = train.run(spec, progress=False)
    assert record["status"] == "ok" and record["config"]["shrink"] == 0.25
    assert set(record["epochs"][0]["losses"]) == {"rec", "loss"}
    assert record["test"]["HR@20"] >= 0.0 and record["run_id"] == spec.run_id
    path = records.save(tmp_path, record)
    assert records.read_record(path)["method"] == "toy"
    with pytest.raises(BenchError, match="unknown key"):
        make_spec("toy", "Beauty", overrides={"num_intents": "4"})


def test_trials_end_before_the_test_split(monkeypatch):
    seen = []
    spec = make_spec("sasrec", "Beauty", profile="smoke", epochs=2, max_users=300, device="cpu")
    from bench.core import evaluate as evaluate_module

    real = evaluate_module.evaluate

    def spy(method, data, split="test", *args, **kwargs):
        seen.append(split)
        return real(method, data, split, *args, **kwargs)

    monkeypatch.setattr(train, "evaluate", spy)
    record = train.run(spec, progress=False, evaluate_test=False)
    assert record["test"] is None and seen == ["valid", "valid"]


def test_a_record_names_no_home_folder_of_the_machine_that_ran_it():
    from pathlib import Path

    spec = make_spec("sasrec", "Beauty", checkpoint_dir=str(Path.home() / ".cache" / "x"), save_checkpoint="/data/w.pt")
    assert spec.fields()["checkpoint_dir"] == "~/.cache/x" and spec.fields()["save_checkpoint"] == "/data/w.pt"
