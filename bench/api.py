"""The Python API: `import bench`, then `bench.run`, `bench.grid`, `bench.records`, `bench.leaderboard` and
`bench.add_dataset` (docs/api.md lists their arguments).

The command line is a thin layer over these same functions: `python -m bench run` calls `execute_run`,
`run --all` calls `execute_grid`, `leaderboard` calls `leaderboard`; argv is parsed in bench/cli.py and
printed in bench/commands.py, and nothing is implemented twice. A problem the user can fix raises
`BenchError` with the one-line message the command line prints after `error:`; a run that crashes is
recorded as failed and raises `RunFailed` (a BenchError) naming its record.

Imports are inside the functions: `import bench` must stay cheap (no torch, no pandas) for a notebook that
only reads records, and for `python -m bench --help`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError


class RunFailed(BenchError):
    """A run raised (diverged, crashed): its record is written with status failed; `record` and `path` say
    which. The command line exits 1 for it rather than 2: the input was valid, the run was not."""

    def __init__(self, message: str, record: dict, path: Path) -> None:
        super().__init__(message)
        self.record, self.path = record, path


# ------------------------------------------------------------------------------------------- a run's record
@dataclass(frozen=True)
class Run:
    """A run's record (docs/records.md) with attribute access; `raw` is the record as stored, `path` its file."""

    raw: dict
    path: Path | None = None

    run_id = property(lambda self: self.raw.get("run_id"))
    method = property(lambda self: self.raw.get("method"))
    dataset = property(lambda self: self.raw.get("dataset"))
    seed = property(lambda self: self.raw.get("seed"))
    profile = property(lambda self: self.raw.get("profile"))
    status = property(lambda self: self.raw.get("status"))
    error = property(lambda self: self.raw.get("error"))
    best_epoch = property(lambda self: self.raw.get("best_epoch"))
    config = property(lambda self: self.raw.get("config") or {})

    @property
    def test(self) -> dict | None:
        """Test metrics at the best epoch (HR/NDCG@5/10/20); None unless the run finished."""
        return self.raw.get("test")

    @property
    def valid(self) -> dict | None:
        """Valid metrics of the best epoch (the one selected on valid NDCG@20)."""
        return self.raw.get("best_valid")

    @property
    def epochs(self) -> int:
        """Epochs run."""
        return len(self.raw.get("epochs") or [])

    @property
    def costs(self) -> dict:
        """Seconds by phase (estep_s, train_s, eval_s, test_eval_s, wall_s, time_to_best_s), epochs_run and
        peak_memory_bytes."""
        return {**(self.raw.get("totals") or {}), "peak_memory_bytes": self.raw.get("peak_memory_bytes")}

    @property
    def curves(self) -> dict[str, list]:
        """Per-epoch lists: valid NDCG@20, the training loss and seconds by phase."""
        rows = self.raw.get("epochs") or []
        curves: dict[str, list] = {"valid_NDCG@20": [(r.get("valid") or {}).get("NDCG@20") for r in rows],
                                   "loss": [(r.get("losses") or {}).get("loss") for r in rows]}
        for phase in ("estep_s", "train_s", "eval_s"):
            curves[phase] = [r.get(phase) for r in rows]
        return curves

    def __repr__(self) -> str:
        score = f", test NDCG@20 {self.test['NDCG@20']:.4f}" if self.test else ""
        return f"Run({self.method} on {self.dataset}, seed {self.seed}, {self.profile}: {self.status}{score})"


class Results(list):
    """The runs of a grid (a list of `Run`), with the results folder they were written to (`folder`) and the
    grid's summary (ok, failed, skipped, interrupted, wall seconds)."""

    def __init__(self, runs: Iterable[Run], folder: Path, summary=None) -> None:
        super().__init__(runs)
        self.folder, self.summary = folder, summary


# ------------------------------------------------------------------------------------- the shared steps
def results_folder(results: Path | str | None) -> Path:
    """`results` (default $BENCH_RESULTS, else ./results); tuned configs are read from it too."""
    from bench.core import configs
    from bench.core.spec import DEFAULT_RESULTS

    folder = DEFAULT_RESULTS if results is None else Path(results).expanduser()
    configs.use_results_folder(folder)
    return folder


def checkpoint_folder(checkpoint_every: int | None, checkpoint_dir: Path | str | None) -> str | None:
    """Mid-run checkpoints: asked for by checkpoint_every or checkpoint_dir (a time-boxed grid sets them
    itself); the default folder is the persistent cache of bench/core/checkpoints.py."""
    from bench.core.checkpoints import default_folder

    if checkpoint_dir is None and checkpoint_every is None:
        return None
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else default_folder()
    return str(folder.expanduser().resolve())


def _check_checkpoint_path(path: str) -> None:
    """The checkpoint file must be writable before training: a run is not spent to lose its output."""
    from bench.core.files import check_writable

    target = Path(path).expanduser()
    if target.is_dir():
        raise BenchError(f"--save-checkpoint {path} is a folder; give a file name")
    check_writable(target.resolve().parent, "checkpoint folder")


def execute_run(spec, results: Path, *, progress: bool = True) -> tuple[dict, Path]:
    """Train and evaluate the run of `spec`, write its record under `results`; returns (record, path).

    Raises BenchError before any training for a folder that cannot be written, and RunFailed (after writing
    the failed record) when the run itself raises.
    """
    from bench.core import files, outcomes, records, train

    files.check_writable(results / "runs")
    if spec.checkpoint_dir:
        from bench.core import checkpoints

        files.check_writable(Path(spec.checkpoint_dir), "checkpoint folder")
        done = checkpoints.epochs_done(spec.checkpoint_dir, spec.run_id)
        if done is not None and progress:
            print(f"resuming from {checkpoints.checkpoint_path(spec.checkpoint_dir, spec.run_id)} at epoch {done}",
                  file=sys.stderr)
    if spec.save_checkpoint:
        _check_checkpoint_path(spec.save_checkpoint)
    try:
        record = train.run(spec, progress=progress)  # the bars go to stderr
    except BenchError:
        raise
    except Exception as exc:  # a diverged or crashed run: recorded as failed, with its reason
        record = outcomes.failure_record(spec, exc)
        path = records.save(results, record)
        raise RunFailed(f"run failed: {record['error']} (record: {path})", record, path) from None
    return record, records.save(results, record)


def execute_grid(
    methods: list[str] | None, datasets: list[str] | None, seeds: list[int] | None, *, results: Path,
    overrides: list[str] | dict | None = None, executor: str = "ray", address: str | None = None,
    cpus_per_run: float | None = None, gpus_per_run: float | None = None, time_budget: float | str | None = None,
    progress: bool = True, **spec_options,
):
    """The grid's specs (`grid_specs`: every name and value checked first), run where not yet done
    (`run_grid`); returns (specs, GridSummary). `time_budget`: seconds, or a duration such as "25m"."""
    from bench.campaign import grid
    from bench.campaign.schedule import parse_duration

    if isinstance(time_budget, str):
        time_budget = parse_duration(time_budget)
    specs = grid.grid_specs(methods, datasets, seeds, set_pairs=overrides, **spec_options)
    summary = grid.run_grid(specs, results, executor=executor, address=address, cpus_per_run=cpus_per_run,
                            gpus_per_run=gpus_per_run, progress=progress, time_budget=time_budget)
    return specs, summary


def warn_unreadable(results: Path) -> None:
    """One stderr line per record file under `results`/runs that cannot be read (the tables skip it)."""
    from bench.core.records import find_corrupt

    for path in find_corrupt(results):
        print(f"warning: skipped unreadable record {path}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------ the API
def run(
    method: str, dataset: str, *, profile: str | None = None, seed: int | None = None,
    results: Path | str | None = None, epochs: int | None = None, patience: int | None = None,
    max_users: int | None = None, max_steps: int | None = None, protocol: str = "reference",
    configs: str = "paper", device: str = "auto", threads: int | None = None, precision: str = "fp32",
    compile: str = "off", checkpoint_every: int | None = None, checkpoint_dir: Path | str | None = None,
    save_checkpoint: Path | str | None = None, progress: bool = True, **config: Any,
) -> Run:
    """Train and evaluate one run, as `python -m bench run --method M --dataset D` does, and return its record.

    `**config` overrides the method's config (`--set key=value`), e.g. `lr=0.002`. The record is written
    under `results`/runs like the command's.
    """
    from bench.core.spec import make_spec

    folder = results_folder(results)
    spec = make_spec(
        method, dataset, profile=profile, seed=seed, epochs=epochs, patience=patience, max_users=max_users,
        max_steps=max_steps, protocol=protocol, config_source=configs, overrides=config, precision=precision,
        compile=compile, device=device, num_threads=threads,
        save_checkpoint=None if save_checkpoint is None else str(save_checkpoint),
        checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_folder(checkpoint_every, checkpoint_dir),
    )
    record, path = execute_run(spec, folder, progress=progress)
    return Run(record, path)


def grid(
    methods: list[str] | None = None, datasets: list[str] | None = None, seeds: list[int] | None = None, *,
    profile: str | None = None, results: Path | str | None = None, epochs: int | None = None,
    patience: int | None = None, max_users: int | None = None, max_steps: int | None = None,
    protocol: str = "reference", configs: str = "paper", device: str = "auto", threads: int | None = None,
    precision: str = "fp32", compile: str = "off", executor: str = "ray", address: str | None = None,
    cpus_per_run: float | None = None, gpus_per_run: float | None = None, time_budget: float | str | None = None,
    checkpoint_every: int | None = None, checkpoint_dir: Path | str | None = None, progress: bool = True,
    overrides: dict | None = None, **config: Any,
) -> Results:
    """Run the grid methods x datasets x seeds (defaults: all methods, all datasets, the profile's seeds), as
    `python -m bench run --all` does: runs already done in `results` are skipped, each record is written as
    its run ends. Returns the grid's runs that have a record (failed ones included).

    `**config` applies to every method whose config has the key; `overrides` may also scope a key to one
    method (`{"iclrec.num_intents": 256}`), as `--set method.key=value`.
    """
    from bench.core import records as stored

    folder = results_folder(results)
    specs, summary = execute_grid(
        methods, datasets, seeds, results=folder, overrides={**(overrides or {}), **config}, executor=executor,
        address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, time_budget=time_budget,
        progress=progress, profile=profile, epochs=epochs, patience=patience, max_users=max_users,
        max_steps=max_steps, protocol=protocol, config_source=configs, precision=precision, compile=compile,
        device=device, num_threads=threads, checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_folder(checkpoint_every, checkpoint_dir),
    )
    written = {}
    for path in summary.paths:
        record = stored.read_record(path)
        if record is not None:
            written[record["run_id"]] = Run(record, path)
    runs = []
    for spec in specs:  # grid order; a skipped run's record is the one already in the folder
        found = written.get(spec.run_id)
        if found is None:
            meta = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "profile": spec.profile,
                    "run_id": spec.run_id}
            path = stored.record_path(folder, meta)
            record = stored.read_record(path)
            found = Run(record, path) if record is not None else None
        if found is not None:
            runs.append(found)
    return Results(runs, folder, summary)


# The columns of `records`, renamed from the records' table (bench/core/records.py) where the name differs.
RECORD_COLUMNS = {
    "run_id": "run_id", "method": "method", "dataset": "dataset", "seed": "seed", "profile": "profile",
    "rec_loss": "loss", "status": "status", "variant": "variant", "device": "device",
}


def records(results: Path | str | Run | Iterable[Run] | None = None):
    """A pandas DataFrame, one row per run: method, dataset, seed, profile, loss (the recommendation loss),
    status, test_<metric> and valid_<metric> (at the best epoch), best_epoch, epochs, seconds by phase
    (estep_s, train_s, eval_s, test_eval_s, wall_s, time_to_best_s), peak_memory_bytes, error and path.

    `results`: a results folder (every record under its runs/; default $BENCH_RESULTS, else ./results), what
    `grid` returned, a `Run`, or a list of them.
    """
    import pandas as pd

    from bench.core import records as stored
    from bench.core.evaluate import METRICS

    if isinstance(results, Run):
        results = [results]
    if results is None or isinstance(results, (str, Path)):
        folder = results_folder(results)
        if not (folder / "runs").is_dir():
            raise BenchError(f"no run records under {folder / 'runs'}: run `python -m bench run` first")
        warn_unreadable(folder)
        table = stored.load_records(folder)
    else:
        runs = list(results)
        if not all(isinstance(r, Run) for r in runs):
            raise BenchError("records() takes a results folder, a Run or a list of them")
        table = stored.records_table([(r.raw, r.path) for r in runs])
    columns = dict(RECORD_COLUMNS)
    columns.update({f"test_{m}": f"test_{m}" for m in METRICS})
    columns.update({f"best_valid_{m}": f"valid_{m}" for m in METRICS})
    columns.update({"best_epoch": "best_epoch", "epochs_run": "epochs"})
    columns.update({k: k for k in ("estep_s", "train_s", "eval_s", "test_eval_s", "wall_s", "time_to_best_s",
                                   "peak_memory_bytes", "error", "path")})
    out = pd.DataFrame(table[list(columns)].rename(columns=columns)).reset_index(drop=True)
    # Counts stay integers where a run has none (a failed run's best epoch, memory): pandas' nullable int.
    for count in ("seed", "best_epoch", "epochs", "peak_memory_bytes"):
        out[count] = pd.to_numeric(out[count], errors="coerce").round().astype("Int64")
    return out


def leaderboard(results: Path | str | Results | None = None, *, out: Path | str | None = None,
                readme: Path | str | None = None) -> list[Path]:
    """Write the leaderboard and cost tables, plots and index.html from the records under `results` (a folder,
    or what `grid` returned) into `out` (default: the results folder), as `python -m bench leaderboard`;
    returns the files written. The answers also rewrite the marked block of `readme` when given (default:
    the README.md beside the results folder, when writing into it; one without the markers is left alone).
    """
    from bench.core.files import check_writable
    from bench.core.records import check_schemas
    from bench.reporting.leaderboard import write_leaderboard

    folder = results_folder(results.folder if isinstance(results, Results) else results)
    out_dir = None if out is None else Path(out).expanduser()
    if not (folder / "runs").is_dir():
        raise BenchError(f"no run records under {folder / 'runs'}: run `python -m bench run` first")
    check_schemas(folder)  # one line naming the migration, not a warning per record of an older schema
    check_writable(out_dir or folder, "leaderboard output folder")
    warn_unreadable(folder)  # skipped by the tables; said here too, not only inside them
    readme_path = Path(readme) if readme is not None else (folder.parent / "README.md" if out_dir is None else None)
    return write_leaderboard(folder, out_dir, readme_path)


def add_dataset(name: str, path: Path | str, *, fmt: str | None = None, user_col: str | None = None,
                item_col: str | None = None, time_col: str | None = None, columns: list[str] | str | None = None,
                k_core: int = 5, force: bool = False, progress: bool = False, log=None):
    """Add a dataset of one's own interactions under `name`, as `python -m bench data add NAME FILE` does
    (the same function): every command and `bench.run` then take `name` as a dataset. Returns what was
    written (`.name`, `.path`, `.manifest`); `log` (e.g. `print`) receives one line per processing step.
    `columns` names the columns of a csv or tsv file without a header line, in order."""
    from bench.core.userdata import add_dataset as add

    return add(name, path, fmt=fmt, user_col=user_col, item_col=item_col, time_col=time_col, columns=columns,
               k_core=k_core, force=force, progress=progress, log=log)
