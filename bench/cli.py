"""`python -m bench`: the only module that sees argparse; every other module takes typed arguments.

    data download|stats   fetch and verify datasets; print their statistics
    run                   one run (--method, --dataset) or the grid (--all), through Ray or in process
    evaluate              score a checkpoint in the published layout
    tune                  an Optuna study over a method's search space; its workers run through Ray or as
                          local processes (bench/tuning/tune.py says why not through Ray Tune)
    leaderboard           tables and plots in results/ from the run records
    status                a protocol's runs: done, interrupted, failed, pending, and the GPU time left
    packing               throughput of concurrent runs on one GPU through Ray (writes results/benchmarks/)
    profile               seconds per phase and the top operators of the training step
    scaling               ICLRec's E-step against ELCRec's clustering terms as the user count grows
    records migrate       upgrade run records of an older schema (bench/core/migrate.py)

User errors (BenchError) print one line `error: ...` on stderr and exit 2, without a traceback. A run
that fails (a diverging loss, a crash) is recorded as failed and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.core import termination
from bench.core.errors import BenchError
from bench.core.spec import DEFAULT_RESULTS

METHOD_HELP = "method name: sasrec, cl4srec, iclrec, elcrec (or any method registered in methods/__init__.py)"
DATASET_HELP = "dataset name: Beauty, Sports_and_Outdoors, Toys_and_Games, Yelp"
DEVICE_HELP = "auto (CUDA when torch sees it) | cpu | cuda"
RESULTS_HELP = "results folder: records go to <results>/runs/ (default $BENCH_RESULTS, else results/ in the repository)"


# ---------------------------------------------------------------------------------------------- parser
def _add_budget_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        help="budget: smoke (2,000 users, 3 epochs) | quick (all users, 10 epochs) | paper (300 epochs, "
        "patience 40, seeds 1-3; the default)",
    )
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the profile's)")
    p.add_argument("--patience", type=int, help="early-stopping patience on valid NDCG@20 (default: the profile's)")
    p.add_argument("--max-users", type=int, help="train on a deterministic sample of this many users (default: the profile's)")


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", default="fp32",
        help="fp32 (faithful, default) | tf32 (CUDA matmuls in TF32) | bf16 (autocast of the training step: fast mode)",
    )
    p.add_argument(
        "--compile", default="off",
        help="torch.compile the training step: off (default) | default | reduce-overhead (CUDA graphs) | "
        "max-autotune-no-cudagraphs",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help=METHOD_HELP)
    p.add_argument("--dataset", help=DATASET_HELP)
    _add_budget_options(p)
    p.add_argument("--seed", type=int, help="seed of a single run (default: the profile's first seed, 1)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--protocol", default="reference", help="evaluation protocol: reference (published, default) | strict")
    p.add_argument("--configs", default="paper", help="configuration source: paper (default) | tuned (methods/configs/tuned)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a config value (repeatable); in a grid, method.key=value scopes it to one method")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON line at the end")
    p.add_argument("--save-checkpoint", metavar="FILE", help="write the best parameters (published layout) to FILE")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: torch's; in a Ray grid, --cpus-per-run)")
    _add_execution_options(p)
    grid = p.add_argument_group("the grid (--all)")
    grid.add_argument("--all", action="store_true", help="run the grid of methods x datasets x seeds, resumable")
    grid.add_argument("--methods", nargs="+", help="methods of the grid (default: all)")
    grid.add_argument("--datasets", nargs="+", help="datasets of the grid (default: all four)")
    grid.add_argument("--seeds", nargs="+", type=int, help="seeds of the grid (default: the profile's)")
    grid.add_argument("--executor", default="ray", help="ray (default) | local (in this process, one run at a time)")
    grid.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    grid.add_argument("--cpus-per-run", type=float, help="CPUs each run reserves on Ray (default 1)")
    grid.add_argument("--gpus-per-run", type=float,
                      help="GPUs each run reserves on Ray (0.25 packs 4 runs on a GPU; default: as `bench packing` measured on this GPU model, else 1)")
    camp = p.add_argument_group("campaigns (time budget, mid-run checkpoints)")
    camp.add_argument(
        "--time-budget", metavar="DURATION",
        help="with --all: time-box the grid (90s, 25m, 1h, 1.5h): longest expected runs first, none started that "
        "is not expected to finish, runs in flight at the budget recorded interrupted and resumed next time",
    )
    camp.add_argument("--checkpoint-every", type=int, metavar="E",
                      help="save a mid-run checkpoint every E epochs; running the same spec again continues from it")
    camp.add_argument("--checkpoint-dir", type=Path,
                      help="folder of mid-run checkpoints, <dir>/<run_id>/last.pt (default $BENCH_CHECKPOINTS, else "
                      "~/.cache/intent-bench/checkpoints: outside the working copy, so a fresh clone resumes)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="intent-bench: intent-learning recommenders, compared")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="download and inspect datasets (offline: export BENCH_DATA_MIRROR=<folder>)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch datasets into the cache and verify their checksums")
    dl.add_argument("names", nargs="*", help="datasets to fetch (default: all)")
    dl.add_argument("--all", action="store_true", help="every dataset (the default when no name is given)")
    dl.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    st = data_sub.add_parser("stats", help="users, items, interactions, lengths per dataset")
    st.add_argument("names", nargs="*", help="datasets (default: all)")
    st.add_argument("--json", action="store_true", help="print one JSON list instead of a table")

    _add_run_options(sub.add_parser("run", help="train and evaluate one run, or the grid with --all"))

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint in the published layout")
    ev.add_argument("--method", required=True, help=METHOD_HELP)
    ev.add_argument("--dataset", required=True, help=DATASET_HELP)
    ev.add_argument("--checkpoint", required=True, help="a state_dict file in the published layout")
    ev.add_argument("--split", default="test", choices=("test", "valid"), help="split to score (default test)")
    ev.add_argument("--protocol", default="reference", help="reference (published, default) | strict")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    tu = sub.add_parser("tune", help="Optuna study over a method's search space (workers through Ray or local processes)")
    tu.add_argument("--method", help="method to tune")
    tu.add_argument("--dataset", help="dataset to tune on")
    tu.add_argument("--trials", type=int, default=20, help="trials to add to the study (default 20)")
    tu.add_argument("--profile", default="quick", help="data and epoch budget of each trial (default quick)")
    tu.add_argument("--parallel", type=int, default=1, help="trials running at once (default 1)")
    tu.add_argument("--storage", help="Optuna storage URL (default: a journal file under <results>/studies/)")
    tu.add_argument("--study", help="study name (default <method>-<dataset>-<profile>)")
    tu.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    tu.add_argument("--executor", default="ray", help="where parallel workers run: ray (default) | local")
    tu.add_argument("--address", help="with --executor ray: Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    tu.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0); trials train with the profile's seed")
    tu.add_argument("--device", default="auto", help=DEVICE_HELP)
    tu.add_argument("--export", action="store_true", help="write the best config of each study to methods/configs/tuned")

    stt = sub.add_parser("status", help="the state of a protocol's runs: done, interrupted, failed, pending; GPU time left")
    stt.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    _add_budget_options(stt)
    stt.add_argument("--methods", nargs="+", help="methods (default: all)")
    stt.add_argument("--datasets", nargs="+", help="datasets (default: all four)")
    stt.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the profile's)")
    stt.add_argument("--device", default="cuda", help="device of the runs counted: cuda (default: a campaign's) | cpu")
    stt.add_argument("--compile", default="off", help="compile mode of the runs counted (default off)")
    stt.add_argument("--checkpoint-dir", type=Path, help="folder of mid-run checkpoints (default $BENCH_CHECKPOINTS, else ~/.cache/intent-bench/checkpoints)")
    stt.add_argument("--json", action="store_true", help="print the rows and totals as one JSON object")

    pk = sub.add_parser("packing", help="throughput of 1, 2, 4, 8 concurrent runs on one GPU (or the CPU's cores) through Ray")
    pk.add_argument("--method", default="iclrec", help=METHOD_HELP + " (default iclrec)")
    pk.add_argument("--dataset", default="Beauty", help=DATASET_HELP + " (default Beauty)")
    pk.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 8], help="runs at once (default 1 2 4 8)")
    pk.add_argument("--compile", nargs="+", dest="compile_modes",
                    help="compile modes to measure (default: off reduce-overhead on a GPU, off on a CPU)")
    pk.add_argument("--epochs", type=int, default=5, help="epochs of each run (default 5; throughput counts epochs 2+)")
    pk.add_argument("--max-users", type=int, help="train on a sample of this many users (default: all)")
    pk.add_argument("--device", default="cuda", help="cuda (default) | cpu (c runs share the cores, cpus/c threads each)")
    pk.add_argument("--cpus", type=float, help="CPUs to share between the runs (default: all the machine's)")
    pk.add_argument("--out", type=Path, help="output folder (default results/benchmarks)")

    lb = sub.add_parser("leaderboard", help="write leaderboard and cost tables and plots from run records")
    lb.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    lb.add_argument("--out", type=Path, help="output folder (default: the results folder)")

    pr = sub.add_parser("profile", help="seconds per phase and the top operators of the training step")
    pr.add_argument("--method", required=True, help=METHOD_HELP)
    pr.add_argument("--dataset", required=True, help=DATASET_HELP)
    pr.add_argument("--epochs", type=int, default=1, help="epochs of the timed run (default 1; no early stop)")
    pr.add_argument("--max-users", type=int, help="train on a deterministic sample of this many users")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--steps", type=int, default=10, help="training steps under the torch profiler (default 10)")
    pr.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config value")
    _add_execution_options(pr)

    rec = sub.add_parser("records", help="maintain run records")
    rec_sub = rec.add_subparsers(dest="records_command", required=True)
    mig = rec_sub.add_parser("migrate", help="upgrade records of an older schema to the current one, in place")
    mig.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)

    sc = sub.add_parser("scaling", help="where alternating k-means stops scaling: ICLRec vs ELCRec cost against N")
    sc.add_argument("--dataset", default="Beauty", help="dataset whose sequences are resampled (default Beauty)")
    sc.add_argument("--users", nargs="+", type=float, metavar="N", help="population sizes (default 1e4 3e4 1e5 3e5 1e6 3e6)")
    sc.add_argument("--device", default="auto", help=DEVICE_HELP)
    sc.add_argument("--kmeans", nargs="+", default=["faiss", "torch"], metavar="BACKEND", help="faiss and/or torch (default both)")
    sc.add_argument("--repeats", type=int, default=3, help="repeats per N below 1e6 (default 3)")
    sc.add_argument("--repeats-large", type=int, default=1, help="repeats per N from 1e6 on (default 1)")
    sc.add_argument("--steps", type=int, default=8, help="training steps timed per method and repeat (default 8)")
    sc.add_argument("--validate", type=int, default=2, help="real full epochs at this many of the smallest N (default 2)")
    sc.add_argument("--threads", type=int, help="torch CPU threads")
    sc.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "scaling", help="output folder (default <default results>/scaling)")
    sc.add_argument("--from-csv", action="store_true", help="only regenerate the table and plots from the CSV")
    return parser


# ------------------------------------------------------------------------------------------------ data
def cmd_data(args) -> int:
    from bench.core import data

    names = data.dataset_names() if (getattr(args, "all", False) or not args.names) else args.names
    if args.data_command == "download":
        for name in names:
            path = data.download(name, force=args.force)
            print(f"{name}: {path} (sha256 verified)")
        return 0
    rows = []
    for name in names:
        manifest = data.load_manifest(name)
        stats = data.sequence_stats(data.parse_sequences(data.dataset_path(name)))
        rows.append({"dataset": name, **stats, "matches_manifest": stats == manifest.expected})
    if args.json:
        print(json.dumps(rows))
    else:
        print(f"{'dataset':<22}{'users':>9}{'items':>9}{'interactions':>14}{'avg len':>9}{'longest':>9}")
        for r in rows:
            print(
                f"{r['dataset']:<22}{r['users']:>9,}{r['items']:>9,}{r['interactions']:>14,}"
                f"{r['avg_length']:>9.2f}{r['longest']:>9}" + ("" if r["matches_manifest"] else "  (differs from manifest!)")
            )
    return 0


# ------------------------------------------------------------------------------------------------- run
def _print_metrics(title: str, metrics: dict) -> None:
    print(title)
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _spec_options(args) -> dict:
    """The `make_spec` keywords that single runs and grids share, from argv."""
    from bench.core.configs import parse_overrides

    return {
        "profile": args.profile,
        "epochs": args.epochs,
        "patience": args.patience,
        "max_users": args.max_users,
        "protocol": args.protocol,
        "config_source": args.configs,
        "precision": args.precision,
        "compile": args.compile,
        "device": args.device,
        "num_threads": args.threads,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_dir": _checkpoint_dir(args),
    } | ({} if args.all else {"overrides": parse_overrides(args.overrides)})


def _checkpoint_dir(args) -> str | None:
    """Mid-run checkpoints: asked for by --checkpoint-every or --checkpoint-dir (a time-boxed grid sets them
    itself); the default folder is the persistent cache of bench/core/checkpoints.py."""
    from bench.core.checkpoints import default_folder

    if args.checkpoint_dir is None and args.checkpoint_every is None:
        return None
    folder = args.checkpoint_dir if args.checkpoint_dir is not None else default_folder()
    return str(folder.expanduser().resolve())


def _check_checkpoint_path(path: str) -> None:
    """The checkpoint file must be writable before training: a run is not spent to lose its output."""
    from bench.core.records import check_writable

    target = Path(path).expanduser()
    if target.is_dir():
        raise BenchError(f"--save-checkpoint {path} is a folder; give a file name")
    check_writable(target.resolve().parent, "checkpoint folder")


def single_run_spec(args):
    """The spec of `run --method M --dataset D ...`."""
    from bench.core.spec import make_spec

    for flag, value in (("--methods", args.methods), ("--datasets", args.datasets), ("--seeds", args.seeds)):
        if value:
            raise BenchError(f"{flag} belongs to the grid: add --all, or use --method/--dataset/--seed")
    return make_spec(args.method, args.dataset, seed=args.seed, save_checkpoint=args.save_checkpoint, **_spec_options(args))


def cmd_run(args) -> int:
    if args.all:
        return cmd_grid(args)
    if not args.method or not args.dataset:
        raise BenchError("run needs --method and --dataset (or --all for the grid)")
    from bench.core import identity, outcomes, records, train

    if args.time_budget is not None:
        raise BenchError("--time-budget time-boxes a grid: add --all")
    spec = single_run_spec(args)
    records.check_writable(args.results / "runs")
    if spec.checkpoint_dir:
        from bench.core import checkpoints

        records.check_writable(Path(spec.checkpoint_dir), "checkpoint folder")
        rid = identity.run_identity(spec)[0]
        done = checkpoints.epochs_done(spec.checkpoint_dir, rid)
        if done is not None:
            print(f"resuming from {checkpoints.checkpoint_path(spec.checkpoint_dir, rid)} at epoch {done}", file=sys.stderr)
    if spec.save_checkpoint:
        _check_checkpoint_path(spec.save_checkpoint)
    try:
        record = train.run(spec, progress=True)  # the bars go to stderr; stdout stays clean for --json
    except BenchError:
        raise
    except Exception as exc:  # a diverged or crashed run: recorded as failed, with its reason
        record = outcomes.failure_record(spec, exc)
        path = records.save(args.results, record)
        print(f"error: run failed: {record['error']} (record: {path})", file=sys.stderr)
        return 1
    path = records.save(args.results, record)
    print(f"record: {path}", file=sys.stderr)
    if record["status"] == "interrupted":  # a SIGTERM (bench/core/termination.py)
        stop = record["interrupted"]
        kept = f"checkpoint {stop['checkpoint']}" if stop.get("checkpoint") else "no checkpoint (no --checkpoint-every)"
        print(f"error: {stop['reason']} after {stop['epochs_done']} of {stop['max_epochs']} epochs; kept: {kept}; "
              "run the same command again to resume", file=sys.stderr)
        return termination.EXIT_CODE
    if args.json:
        print(json.dumps(record))
    else:
        t = record["totals"]
        _print_metrics(f"test metrics at best epoch {record['best_epoch']}:", record["test"])
        print(
            f"time: estep {t['estep_s']:.1f}s, train {t['train_s']:.1f}s, eval {t['eval_s']:.1f}s over "
            f"{t['epochs_run']} epochs; peak memory {record['peak_memory_bytes'] / 2**20:.0f} MiB"
        )
    return 0


def cmd_grid(args) -> int:
    """`run --all`: 0 when every run is ok (or was already), 1 when any failed."""
    from bench.campaign import grid

    if args.save_checkpoint:
        raise BenchError("--save-checkpoint names one file: it cannot be used with --all")
    if args.json:
        raise BenchError("--json prints one run's record: with --all, read the records under --results")
    from bench.campaign.schedule import parse_duration

    time_budget = None if args.time_budget is None else parse_duration(args.time_budget)
    methods = args.methods or ([args.method] if args.method else None)
    datasets = args.datasets or ([args.dataset] if args.dataset else None)
    seeds = args.seeds or ([args.seed] if args.seed is not None else None)
    specs = grid.grid_specs(methods, datasets, seeds, set_pairs=args.overrides, **_spec_options(args))
    summary = grid.run_grid(
        specs,
        args.results,
        executor=args.executor,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        progress=True,
        time_budget=time_budget,
    )
    print(
        f"grid: {summary.ok} ok, {len(summary.failed)} failed, {summary.skipped} skipped"
        + (f", {len(summary.interrupted)} interrupted, {len(summary.not_started)} not started"
           if time_budget or summary.interrupted else "")
        + f" in {summary.wall_s:.1f} s"
    )
    for line in summary.not_started:
        print(line)
    for i in summary.interrupted:
        print(f"interrupted: {i['method']} {i['dataset']} seed {i['seed']} at epoch {i.get('epochs_done')} of "
              f"{i.get('max_epochs')} ({i.get('reason')}); run the same command again to resume it")
    if summary.claimed_elsewhere or summary.done_elsewhere:
        print(
            f"grid: {len(summary.claimed_elsewhere)} runs left to another grid that holds them, "
            f"{summary.done_elsewhere} finished by another grid meanwhile"
        )
        for c in summary.claimed_elsewhere:
            print(f"held elsewhere: {c['method']} {c['dataset']} seed {c['seed']} by {c['holder']}", file=sys.stderr)
    print(f"records: {summary.results_dir / 'runs'}")
    for f in summary.failed:
        print(f"failed: {f['method']} {f['dataset']} seed {f['seed']}: {f['error']}", file=sys.stderr)
    if termination.requested():
        print(f"error: {termination.reason()}: {len(summary.interrupted)} run(s) recorded interrupted at their last "
              "epoch boundary, no further run started; run the same command again to resume", file=sys.stderr)
        return termination.EXIT_CODE
    return summary.exit_code


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from bench.core import weights
    from bench.core.evaluate import evaluate

    method, data = weights.method_from_checkpoint(args.method, args.dataset, args.checkpoint, args.device)
    metrics = evaluate(method, data, args.split, args.protocol)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(f"{args.method} checkpoint on {args.dataset} {args.split} ({args.protocol} protocol):", metrics)
    return 0


# ------------------------------------------------------------------------------------------------ tune
def cmd_tune(args) -> int:
    from bench.core.profiles import get_profile
    from bench.tuning import tune

    if args.export:
        tune.export(args.results, storage=args.storage, study=args.study, method=args.method, dataset=args.dataset)
        return 0
    if not args.method or not args.dataset:
        raise BenchError("tune needs --method and --dataset (or --export to write tuned configs)")
    summary = tune.tune(
        args.method,
        args.dataset,
        profile=get_profile(args.profile),
        trials=args.trials,
        parallel=args.parallel,
        executor=args.executor,
        storage=args.storage,
        study=args.study,
        results=args.results,
        device=args.device,
        seed=args.seed,
        address=args.address,
    )
    if summary.get("stopped"):  # a SIGTERM (bench/core/termination.py)
        print(f"error: {termination.reason()}: {summary['stopped']}; run the same command again to resume",
              file=sys.stderr)
        return termination.EXIT_CODE
    return 0


# ------------------------------------------------------------------------------------ leaderboard, profile
def cmd_leaderboard(args) -> int:
    from bench.core.records import check_writable, find_corrupt
    from bench.reporting.leaderboard import write_leaderboard

    if not (args.results / "runs").is_dir():
        raise BenchError(f"no run records under {args.results / 'runs'}: run `python -m bench run` first")
    check_writable(args.out or args.results, "leaderboard output folder")
    for path in find_corrupt(args.results):  # skipped by the tables; said here too, not only inside them
        print(f"warning: skipped unreadable record {path}", file=sys.stderr)
    for path in write_leaderboard(args.results, args.out):
        print(path)
    return 0


def cmd_profile(args) -> int:
    from bench.core.configs import parse_overrides
    from bench.core.spec import check_positive, make_spec
    from bench.tools.profiling import profile_run

    check_positive("--steps", args.steps)
    spec = make_spec(
        args.method,
        args.dataset,
        profile=None,
        epochs=args.epochs,
        patience=args.epochs,  # never stop early: every asked epoch is timed
        max_users=args.max_users,
        overrides=parse_overrides(args.overrides),
        device=args.device,
        precision=args.precision,
        compile=args.compile,
    )
    return profile_run(spec, args.steps)


# ---------------------------------------------------------------------------------------- status, packing
def cmd_status(args) -> int:
    from bench.campaign.status import print_status, protocol_status

    status = protocol_status(
        args.results, profile=args.profile, methods=args.methods, datasets=args.datasets, seeds=args.seeds,
        device=args.device, compile=args.compile, checkpoint_dir=args.checkpoint_dir,
        epochs=args.epochs, patience=args.patience, max_users=args.max_users,
    )
    if args.json:
        print(json.dumps(status))
    else:
        print_status(status)
    return 0


def cmd_packing(args) -> int:
    from bench.campaign.packing import measure_packing

    for path in measure_packing(
        args.method, args.dataset, concurrency=args.concurrency, compile_modes=args.compile_modes,
        epochs=args.epochs, max_users=args.max_users, device=args.device, cpus=args.cpus, out_dir=args.out,
    ):
        print(path)
    return 0


def cmd_scaling(args) -> int:
    from bench.tools import scaling

    if args.from_csv:
        paths = scaling.write_outputs(args.results)
    else:
        spec = scaling.ScalingSpec(
            dataset=args.dataset,
            users=tuple(args.users) if args.users else scaling.DEFAULT_USERS,
            device=args.device,
            backends=tuple(args.kmeans),
            repeats=args.repeats,
            repeats_large=args.repeats_large,
            step_sample=args.steps,
            validate_smallest=args.validate,
            threads=args.threads,
            results=args.results,
        )
        paths = scaling.run_study(spec, progress=True)
    for path in paths:
        print(path)
    return 0


# --------------------------------------------------------------------------------------------- records
def cmd_records(args) -> int:
    from bench.core.migrate import migrate
    from bench.core.records import RECORD_SCHEMA

    if not (args.results / "runs").is_dir():
        raise BenchError(f"no records to migrate: {args.results / 'runs'} is not a folder")
    done = migrate(args.results)
    for old, new in done.migrated:
        print(f"migrated {old.name}" + (f" -> {new.name}" if new != old else ""))
    for line in done.refused:
        print(f"not migrated: {line}", file=sys.stderr)
    print(f"records: {len(done.migrated)} migrated to schema {RECORD_SCHEMA}, {done.current} already current, "
          f"{len(done.refused)} not migrated")
    return 1 if done.refused else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "data": cmd_data,
        "run": cmd_run,
        "evaluate": cmd_evaluate,
        "tune": cmd_tune,
        "leaderboard": cmd_leaderboard,
        "profile": cmd_profile,
        "status": cmd_status,
        "packing": cmd_packing,
        "scaling": cmd_scaling,
        "records": cmd_records,
    }
    if args.command in ("run", "tune"):  # the commands that train stop gracefully on SIGTERM
        termination.install()
    try:
        return handlers[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
