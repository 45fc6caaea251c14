"""The scaling study (`bench scaling`): population builder, bookkeeping of phases and kinds, bad input.

Timings themselves are not tested (a benchmark, not a timed test): the study runs on tiny N here.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.core.errors import BenchError
from bench.tools import scaling
from bench.tools.scaling import fits, population, spec, table
from tests.conftest import run_cli, synthetic_sequences

REPO = Path(__file__).resolve().parent.parent
TINY = {"num_intents": 4, "hidden_size": 16, "num_heads": 2, "num_layers": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def beauty_seqs():
    from bench.core.data import dataset_path, parse_sequences

    return parse_sequences(dataset_path("Beauty"))


def test_population_is_seeded_and_resamples_real_sequences(beauty_seqs):
    a = population.build_population(beauty_seqs, 5000, seed=3)
    b = population.build_population(beauty_seqs, 5000, seed=3)
    c = population.build_population(beauty_seqs, 5000, seed=4)
    assert a.num_users == 5000
    assert np.array_equal(a.items, b.items) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.lengths, c.lengths)
    # every synthetic user is one real user's whole sequence
    idx = population.resample_users(beauty_seqs.num_users, 5000, 3)
    for u in (0, 17, 4999):
        real = beauty_seqs.items[beauty_seqs.offsets[idx[u]] : beauty_seqs.offsets[idx[u] + 1]]
        assert np.array_equal(a.items[a.offsets[u] : a.offsets[u + 1]], real)


def test_population_matches_lengths_and_item_frequencies(beauty_seqs):
    n = 100_000
    pop = population.build_population(beauty_seqs, n, seed=0)
    real_len = beauty_seqs.lengths.astype(float)
    # mean length within 4 standard errors of the dataset's
    assert abs(pop.lengths.mean() - real_len.mean()) < 4 * real_len.std() / np.sqrt(n)
    # item frequencies: total variation distance to the dataset's is small, and no new item appears
    size = int(beauty_seqs.items.max()) + 1
    p = np.bincount(beauty_seqs.items, minlength=size) / len(beauty_seqs.items)
    q = np.bincount(pop.items, minlength=size) / len(pop.items)
    assert pop.items.max() <= beauty_seqs.items.max()
    assert 0.5 * np.abs(p - q).sum() < 0.08


def test_population_train_input_is_rows_of_the_real_one():
    import torch

    real = torch.randint(0, 100, (50, 7))
    idx = population.resample_users(50, 300, 1)
    got = population.population_train_input(real, idx, torch.device("cpu"))
    assert got.dtype == torch.int32 and got.shape == (300, 7)
    assert torch.equal(got.long(), real[torch.from_numpy(idx)])


STDERR: dict[str, str] = {}  # what a module fixture's study printed


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling")
    study = scaling.ScalingSpec(
        dataset="synthetic", users=(40, 80, 160), device="cpu", backends=("faiss", "torch"), repeats=1,
        step_sample=2, pool_users=64, results=out, overrides=TINY,
    )
    said = io.StringIO()
    with contextlib.redirect_stderr(said):  # the phase lines and the bars
        paths = scaling.run_study(study, progress=True, sequences=synthetic_sequences(300))
    STDERR["tiny_study"] = said.getvalue()
    return out, paths, pd.read_csv(out / scaling.CSV_NAME)


def test_every_phase_says_what_it_does_and_how_far_it_is(tiny_study):
    said = STDERR["tiny_study"]
    phases = ["scaling: set-up: ", "scaling: warm-up: ", "scaling: sweep: 100%", "scaling: real epochs: 100%",
              "scaling: writing scaling.csv"]
    at = [said.find(p) for p in phases]
    assert -1 not in at and at == sorted(at), said[-2000:]
    # per method, the real epochs (validate_smallest 2: N 40 and 80, batch 16: 3 and 5 steps) and the 2 x 2
    # timed steps around each: the bar counts every step and ends at its total, 2 x (7 + 9)
    assert re.search(r"scaling: real epochs: 100%\|[^|]*\| 32/32 ", said), said[-2000:]


def test_study_writes_its_outputs(tiny_study):
    out, paths, _ = tiny_study
    names = {p.name for p in paths}
    assert {"scaling.csv", "scaling.md", "context.json", "scaling_time_synthetic_cpu.png",
            "scaling_memory_synthetic_cpu.png"} <= names
    for name in ("scaling.csv", "scaling.md", "context.json"):
        text = (out / name).read_text()
        assert str(out) not in text and "/work/" not in text  # no absolute paths in generated files
    md = (out / "scaling.md").read_text()
    assert "extrapolated" in md and "Crossover" in md


def test_phases_add_up_to_totals(tiny_study):
    _, _, frame = tiny_study
    for kind_is_extrapolated in (False, True):
        part = frame[(frame["kind"] == "extrapolated") == kind_is_extrapolated]
        for (_n, method, _backend), g in part.groupby(["N", "method", "kmeans"]):
            phases = g[g["phase"].isin(scaling.EPOCH_PHASES[method])]
            assert len(phases) == len(scaling.EPOCH_PHASES[method])
            total = g[g["phase"] == "total"]["seconds"].iloc[0]
            assert phases["seconds"].sum() == pytest.approx(total, rel=1e-4)
            # memory: the harness data plus the largest phase working set
            data = g[g["phase"] == "data"]["peak_bytes"].iloc[0]
            peak = g[g["phase"] == "total"]["peak_bytes"].iloc[0]
            assert peak == pytest.approx(data + phases["peak_bytes"].max(), rel=1e-4)


def test_estimates_and_extrapolations_are_labelled(tiny_study):
    _, _, frame = tiny_study
    measured = frame[frame["kind"] != "extrapolated"]
    assert set(measured["N"]) == {40, 80, 160}
    assert (measured[measured["phase"].isin(["train", "train_other", "cluster_terms", "total"])]["kind"] == "estimated").all()
    assert (measured[measured["phase"].str.startswith("estep")]["kind"] == "measured").all()
    ext = frame[frame["kind"] == "extrapolated"]
    assert set(ext["N"]) == set(scaling.EXTRAPOLATE_TO)
    assert ext["note"].str.contains("fit").all()
    real = frame[frame["phase"] == "train_real_epoch"]
    assert set(real["N"]) == {40, 80} and (real["kind"] == "measured").all()  # the two smallest N
    assert real["note"].str.contains("estimate").all()
    # ELCRec's initialisation is reported, but not inside its per-epoch total
    assert len(measured[(measured["method"] == "elcrec") & (measured["phase"] == "init_once")]) == 3 * 2
    assert "init_once" not in scaling.EPOCH_PHASES["elcrec"]


def test_the_kmeans_cap_is_a_column_of_the_kmeans_rows(tiny_study):
    _, _, frame = tiny_study
    kmeans_rows = (frame["phase"] == "estep_kmeans") & (frame["kind"] == "measured")
    assert (frame.loc[kmeans_rows, "kmeans_cap"] == TINY["num_intents"] * 4096).all()
    assert frame.loc[~kmeans_rows, "kmeans_cap"].isna().all()
    fit = fits.phase_fits(table.read_table(tiny_study[0] / scaling.CSV_NAME))
    assert (fit[fit["phase"] == "estep_kmeans"]["seconds_cap"] == TINY["num_intents"] * 4096).all()


def test_a_table_without_the_cap_column_gets_it_from_the_kmeans_notes():
    legacy = REPO / "results" / "scaling" / scaling.CSV_NAME
    assert "kmeans_cap" not in pd.read_csv(legacy, nrows=0).columns  # written before the column existed
    frame = table.read_table(legacy)
    kmeans_rows = (frame["phase"] == "estep_kmeans") & (frame["kind"] == "measured")
    assert kmeans_rows.any() and (frame.loc[kmeans_rows, "kmeans_cap"] == 1_048_576).all()
    assert frame.loc[~kmeans_rows, "kmeans_cap"].isna().all()


def test_the_committed_table_regenerates_byte_identically(tmp_path):
    committed = REPO / "results" / "scaling"
    for name in (scaling.CSV_NAME, "context.json"):
        shutil.copy(committed / name, tmp_path / name)
    scaling.write_outputs(tmp_path)
    assert (tmp_path / "scaling.md").read_bytes() == (committed / "scaling.md").read_bytes()


def test_the_tool_writes_no_attribute_of_the_methods():
    """Methods are used through their public calls only: the tool assigns attributes of its own objects
    (`self.x = ...`) and nothing else, and never calls setattr."""
    for path in sorted((REPO / "bench" / "tools" / "scaling").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign | ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Attribute):
                    assert isinstance(target.value, ast.Name) and target.value.id == "self", (path.name, ast.unparse(target))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "setattr", path.name


def test_outputs_regenerate_from_the_csv(tiny_study, capsys):
    out, _, _ = tiny_study
    (out / "scaling.md").unlink()
    assert run_cli(["scaling", "--from-csv", "--results", out], capsys).code == 0
    assert (out / "scaling.md").is_file()


def test_fit_is_linear_and_capped():
    n = np.array([1e3, 1e4, 1e5, 1e6, 3e6])
    a, b = fits.fit_line(n, 2 + 0.001 * n, None)
    assert a == pytest.approx(2, rel=1e-6) and b == pytest.approx(0.001, rel=1e-6)
    capped = 1 + 1e-5 * np.minimum(n, 1_048_576)
    a, b = fits.fit_line(n, capped, 1_048_576)
    assert a == pytest.approx(1, rel=1e-6) and b == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--users", "100"], "below K=256"),
        (["--users", "1e12"], "GiB"),
        (["--users", "1e4", "--kmeans", "sklearn"], "unknown k-means backend"),
        (["--users", "1e4", "--device", "tpu"], "unknown device"),
        (["--users", "1.5e4", "--repeats", "0"], "must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, message, capsys, tmp_path):
    code, _, err = run_cli(["scaling", *argv, "--results", tmp_path], capsys)
    assert code == 2
    err = err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / scaling.CSV_NAME).exists()


def test_user_counts_are_checked():
    with pytest.raises(BenchError, match="not a positive whole number"):
        spec.check_users((1e4 + 0.5,), 4)
    assert spec.check_users((3e4, 1e4, 1e4), 4) == (10_000, 30_000)
