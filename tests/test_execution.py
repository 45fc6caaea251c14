"""Execution options (precision, compile, the shared-view fast mode): validated, recorded, part of the run id
only where they differ from the faithful defaults; and the training loop's memory staying flat across epochs.

Runs here use a tiny model (one layer, hidden 32, batch 64) on a 300-user synthetic sample with max_len 20:
what is checked (records, ids, encoder passes, dtypes, memory growth) does not depend on the model's size.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from bench.core import identity, records, train
from bench.core.configs import resolve_config
from bench.core.data import SequenceData
from bench.core.errors import BenchError
from bench.core.migrate import recorded_spec
from bench.core.step import build_method, step_function
from methods.base import CPU_CHUNK_ROWS
from tests.conftest import REPO, run_cli, synthetic_spec

MIB = 2**20
INTENT_METHODS = ("iclrec", "elcrec")
MAX_LEN = 20  # the synthetic sequences are 5-19 items long
TINY = {"num_layers": 1, "hidden_size": 32, "batch_size": 64, "max_len": MAX_LEN}
# One torch thread for the subprocesses too: on a 2-core machine that is also running something else, two
# OpenMP threads per process spin against each other and one run took 20-60x longer (3 s -> 60-190 s).
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process training on one thread (tests/conftest.py)


def overrides_for(method: str, **extra) -> dict:
    # "synthetic" has no paper entry, so the method's [defaults] apply; a small K keeps k-means instant.
    intents = {"num_intents": 16} if method in INTENT_METHODS else {}
    return {**TINY, **intents, **extra}


def spec(method: str, epochs: int = 1, overrides: dict | None = None, **kwargs) -> train.RunSpec:
    return synthetic_spec(method, epochs=epochs, patience=epochs, overrides=overrides_for(method, **(overrides or {})),
                          **kwargs)


def budget_of(s: train.RunSpec, **options) -> dict:
    return {"epochs": s.epochs, "patience": s.patience, "max_users": s.max_users, **options}


def bench_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` in a fresh process (the memory test); other CLI tests call `run_cli` in this one."""
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          env=ONE_THREAD_ENV)


# ------------------------------------------------------------------------------------- faithful run ids
def test_faithful_run_is_recorded_as_faithful_and_keeps_the_id_it_had_before_the_options(tiny_data):
    s = spec("iclrec")
    record = train.run(s, progress=False, data=tiny_data)
    assert record["variant"] == {"mode": "faithful", "precision": "fp32", "compile": "off", "view_encoding": "separate",
                                 "kmeans_init": "warm", "rec_loss": "bce"}
    assert record["spec"]["precision"] == "fp32" and record["spec"]["compile"] == "off"
    assert record["config"]["view_encoding"] == "separate" and record["config"]["kmeans_init"] == "warm"
    assert record["config"]["rec_loss"] == "bce"
    # Faithful values of the execution options (and the method's published rec_loss) stay out of the hash
    # (and precision/compile out of the budget): the id of the faithful run is exactly the hash of the config
    # without them ...
    config_without = {k: v for k, v in record["config"].items() if k not in ("view_encoding", "kmeans_init", "rec_loss", "encoder")}
    assert record["run_id"] == records.run_id("iclrec", "synthetic", 1, "custom", "reference", config_without, budget_of(s))
    # ... and not the hash of the config as it is now (else the check above could not tell the two apart).
    assert record["run_id"] != records.run_id("iclrec", "synthetic", 1, "custom", "reference", record["config"], budget_of(s))
    # The id a resume computes before running (to skip finished runs) is the id the record got.
    assert s.run_id == record["run_id"]


def test_every_committed_record_id_follows_from_its_spec_and_config():
    # Run ids are what a grid skips on: if the id rule changed, committed runs would silently be re-run.
    # Schema 3 records carry every config key (rec_loss, view_encoding) that later options added.
    paths = sorted((REPO / "results" / "runs").glob("*.json"))
    assert paths
    for path in paths:
        record = records.read_record(path)
        assert "rec_loss" in record["config"], path.name
        # The device the run resolved to ("auto" would resolve to this machine's device).
        s = recorded_spec({**record, "spec": {**record["spec"], "device": record["device"]}})
        assert identity.identity_of(s, record["config"]) == record["run_id"], path.name


def test_sasrec_with_ce_is_recorded_as_a_modified_run_with_its_own_id(tiny_data):
    faithful = train.run(spec("sasrec"), progress=False, data=tiny_data)
    s = spec("sasrec", overrides={"rec_loss": "ce"})
    record = train.run(s, progress=False, data=tiny_data)
    assert record["config"]["rec_loss"] == "ce" and record["variant"]["rec_loss"] == "ce"
    assert record["variant"]["mode"] == "modified" and records.variant_label(record) == "modified (rec_loss=ce)"
    assert records.variant_label(faithful) == "faithful"
    hashed = {k: v for k, v in record["config"].items() if k != "encoder"}  # the default encoder is left out
    assert record["run_id"] == records.run_id("sasrec", "synthetic", 1, "custom", "reference", hashed, budget_of(s))
    config_without = {k: v for k, v in faithful["config"].items() if k not in ("rec_loss", "encoder")}
    assert faithful["run_id"] == records.run_id("sasrec", "synthetic", 1, "custom", "reference", config_without, budget_of(s))
    assert record["run_id"] != faithful["run_id"]


# ----------------------------------------------------------------------------------- shared view encoding
def _rows_encoded_in_one_step(method_name: str, view_encoding: str, data: SequenceData) -> tuple[int, int, set]:
    """(rows through the encoder in one training step, batch size B, names of the loss terms)."""
    config, _ = resolve_config(method_name, "synthetic", overrides=overrides_for(method_name, view_encoding=view_encoding))
    method = build_method(spec(method_name), config, data, torch.device("cpu"))
    method.train()
    method.on_epoch_start(0, data)  # the E-step's own (eval-mode) encoding happens before the hook
    batch = next(data.train_batches(config.batch_size, torch.Generator().manual_seed(0), method.view_maker))
    rows: list[int] = []
    # The method is the encoder: every pass is a call of the module. On CPU a pass is split into calls of
    # CPU_CHUNK_ROWS rows, so rows, not calls, count the passes.
    handle = method.register_forward_pre_hook(lambda _module, inputs: rows.append(inputs[0].shape[0]))
    try:
        terms = method.training_step(batch)
    finally:
        handle.remove()
    assert max(rows) <= CPU_CHUNK_ROWS
    assert all(torch.isfinite(v) for v in terms.values())
    return sum(rows), len(batch.input_ids), set(terms)


@pytest.mark.parametrize("method_name", INTENT_METHODS)
def test_shared_view_encoding_saves_one_encoder_pass_and_is_a_fast_run_with_its_own_id(method_name, tiny_data):
    separate, b, separate_terms = _rows_encoded_in_one_step(method_name, "separate", tiny_data)
    shared, b_shared, shared_terms = _rows_encoded_in_one_step(method_name, "shared", tiny_data)
    assert b == b_shared == TINY["batch_size"]
    assert separate == b + 2 * b + 2 * b  # rec pass, instance pass over both views, intent pass over both
    assert shared == b + 2 * b  # the intent term reuses the instance term's encoding of the views
    assert shared_terms == separate_terms  # same loss terms, intent included: one pass fewer, not one term

    s = spec(method_name, overrides={"view_encoding": "shared"})
    record = train.run(s, progress=False, data=tiny_data)
    expected = {"mode": "fast", "precision": "fp32", "compile": "off", "view_encoding": "shared"}
    if method_name == "iclrec":
        expected["kmeans_init"] = "warm"
    assert record["variant"] == {**expected, "rec_loss": "bce"}
    assert record["config"]["view_encoding"] == "shared" and record["config_source"] == "custom"
    # A non-default value stays in the hash, so the fast run never shares an id with the faithful one.
    hashed = {k: v for k, v in record["config"].items() if k not in ("kmeans_init", "rec_loss", "encoder")}  # faithful: left out
    assert record["run_id"] == records.run_id(method_name, "synthetic", 1, "custom", "reference", hashed, budget_of(s))
    assert record["run_id"] != spec(method_name).run_id


# ------------------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("method_name", ["sasrec", "cl4srec", *INTENT_METHODS])
def test_bf16_runs_on_cpu_end_to_end_as_a_fast_run_with_its_own_id(method_name, tiny_data):
    s = spec(method_name, precision="bf16")
    record = train.run(s, progress=False, data=tiny_data)
    expected = {"mode": "fast", "precision": "bf16", "compile": "off"}
    if method_name in INTENT_METHODS:
        expected["view_encoding"] = "separate"
    if method_name == "iclrec":
        expected["kmeans_init"] = "warm"
    assert record["variant"] == {**expected, "rec_loss": "bce"}
    assert record["spec"]["precision"] == "bf16"
    losses = record["epochs"][0]["losses"]
    assert "loss" in losses and all(math.isfinite(v) for v in losses.values()), losses
    assert all(math.isfinite(v) for v in record["test"].values())
    assert record["run_id"] == records.run_id(
        method_name, "synthetic", 1, "custom", "reference",
        {k: v for k, v in record["config"].items() if k not in ("view_encoding", "kmeans_init", "rec_loss", "encoder")},
        budget_of(s, precision="bf16"),
    )
    assert record["run_id"] != spec(method_name).run_id


def test_bf16_step_really_computes_in_bf16_and_fp32_does_not(tiny_data):
    config, _ = resolve_config("iclrec", "synthetic", overrides=overrides_for("iclrec"))
    method = build_method(spec("iclrec"), config, tiny_data, torch.device("cpu"))
    method.train()
    method.on_epoch_start(0, tiny_data)
    batch = next(tiny_data.train_batches(config.batch_size, torch.Generator().manual_seed(0), method.view_maker))
    linears = [m for m in method.modules() if isinstance(m, torch.nn.Linear)]  # the encoder's projections
    assert linears
    dtypes: dict[str, set] = {}
    for precision in ("fp32", "bf16"):
        seen = dtypes.setdefault(precision, set())
        handles = [m.register_forward_hook(lambda _m, _i, output, seen=seen: seen.add(output.dtype)) for m in linears]
        try:
            step = step_function(method, spec("iclrec", precision=precision), torch.device("cpu"))
            terms = step(batch)
        finally:
            for handle in handles:
                handle.remove()
        assert torch.isfinite(terms["loss"])
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}


# ---------------------------------------------------------------------------------------- user errors
@pytest.mark.parametrize("args, message", [
    (["--method", "sasrec", "--dataset", "Beauty", "--precision", "fp16"], "error: unknown precision 'fp16'"),
    (["--method", "sasrec", "--dataset", "Beauty", "--compile", "sometimes"], "error: unknown compile mode 'sometimes'"),
    # the grid checks before any run starts: no failed record per run
    (["--all", "--executor", "local", "--results", "/nonexistent/never-written", "--precision", "fp16"],
     "error: unknown precision 'fp16'"),
])
def test_unknown_precision_or_compile_mode_is_a_one_line_error_exit_2(capsys, args, message):
    code, out, err = run_cli(["run", *args], capsys)
    assert code == 2, err
    assert err.startswith(message), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out == ""


def test_unknown_view_encoding_is_a_user_error_naming_it():
    # The config is resolved and checked where the spec is made: before a run, a grid or a resume starts.
    for method in ("iclrec", "elcrec"):
        with pytest.raises(BenchError, match=r"view_encoding must be separate or shared, got 'bogus'"):
            spec(method, overrides={"view_encoding": "bogus"})


# --------------------------------------------------------------------------------------------- memory
def test_memory_held_at_the_end_of_each_epoch_does_not_grow():
    """RSS at the end of each epoch stays flat: nothing is kept from one step or epoch to the next.

    A fresh process (the CLI, on a 500-user Beauty sample), so that no heap freed by earlier tests absorbs a
    leak. The statistic is the least RSS held at the end of the last two epochs minus the most held at the
    end of the first two: one epoch's wobble at either end is tolerated, while a leak grows every epoch.
    Measured with this exact command on 2 cores, five clean runs gave -13..+13 MiB (the allocator and the
    per-epoch k-means and evaluation buffers settle at slightly different sizes each epoch), while a loop
    that kept every step's loss terms (and so their autograd graphs) alive gave 139-282 MiB. 64 MiB is
    about five times the clean wobble and under half the smallest leak seen.
    """
    proc = bench_cli(
        "run", "--method", "iclrec", "--dataset", "Beauty", "--max-users", "500", "--epochs", "6", "--patience", "6",
        "--device", "cpu", "--threads", "1", "--json",
        "--set", "num_intents=16", "--set", "num_layers=1", "--set", "hidden_size=32",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    held = [row["memory_bytes"] for row in record["epochs"]]
    assert len(held) == 6 and all(isinstance(h, int) and h > 0 for h in held), held
    assert max(held) <= record["peak_memory_bytes"]  # the peak is never below a reading taken during the run
    growth = min(held[-2:]) - max(held[:2])
    assert growth < 64 * MIB, f"held MiB per epoch: {[round(h / MIB) for h in held]}"


# -------------------------------------------------------------------------------------------- profile
def test_profile_command_prints_phases_operators_and_step_split(capsys):
    code, out, err = run_cli(["profile", "--method", "iclrec", "--dataset", "Beauty", "--max-users", "200",
                              "--epochs", "1", "--steps", "2", "--set", "num_intents=8", "--set", "view_encoding=shared"],
                             capsys)
    assert code == 0, err[-2000:]
    assert "estep s" in out and "train s" in out and "peak memory" in out
    assert "top operators by self_cpu_time_total" in out and "aten::" in out
    split = out.split("share of a training step", 1)[1]
    shares = {line.split()[0] for line in split.splitlines()[2:] if line.strip()}
    assert {"batch", "encoder", "losses", "backward", "optimizer"} <= shares, split
