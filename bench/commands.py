"""What each `python -m bench` command does, given its parsed arguments (bench/cli.py builds the parser).

Each `cmd_<name>(args)` returns the exit code. User errors raise BenchError, which the command line turns
into one line `error: ...` and exit 2.
"""

from __future__ import annotations

import json
import sys

from bench.core import termination
from bench.core.errors import BenchError


# ------------------------------------------------------------------------------------------------ data
def cmd_data(args) -> int:
    from bench.core import data

    if args.data_command in ("add", "list", "info"):
        return _cmd_user_data(args)
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


def _cmd_user_data(args) -> int:
    """`data add`, `data list`, `data info` (bench/core/userdata.py)."""
    from bench.core import userdata

    if args.data_command == "add":
        added = userdata.add_dataset(
            args.name, args.file, fmt=args.fmt, user_col=args.user_col, item_col=args.item_col,
            time_col=args.time_col, columns=args.columns, k_core=args.k_core, force=args.force, progress=True,
            log=lambda line: print(line, file=sys.stderr),
        )
        if args.json:
            print(json.dumps(added.manifest))
        else:
            _print_info(userdata.info(added.name))
        return 0
    if args.data_command == "list":
        rows = userdata.listing()
        if args.json:
            print(json.dumps(rows))
            return 0
        print(f"{'dataset':<22}{'kind':<9}{'users':>10}{'items':>10}{'interactions':>14}  source")
        for r in rows:
            print(f"{r['dataset']:<22}{r['kind']:<9}{r['users']:>10,}{r['items']:>10,}{r['interactions']:>14,}  "
                  f"{r['source']}")
        return 0
    described = userdata.info(args.name)
    if args.json:
        print(json.dumps(described))
    else:
        _print_info(described)
    return 0


def _print_info(d: dict) -> None:
    s = d["statistics"]
    rows = [("users", f"{s['users']:,}"), ("items", f"{s['items']:,}"), ("interactions", f"{s['interactions']:,}"),
            ("mean length", f"{s['mean_length']:.2f}"), ("median length", f"{s['median_length']:g}"),
            ("shortest", f"{s['min_length']:,}"), ("longest", f"{s['max_length']:,}"), ("density", f"{s['density']:.3g}"),
            ("file", d["file"]), ("sha256", d["sha256"])]
    if d["kind"] == "added":
        src, p = d["source"], d["processing"]
        rounds = p.get("k_core_rounds", [])
        rows += [("source", src.get("file", "")), ("source sha256", src.get("sha256", "")),
                 ("source rows", f"{src.get('rows', 0):,}"),
                 ("options", ", ".join(f"{k} {v}" for k, v in d["options"].items())),
                 ("duplicates dropped", f"{p.get('duplicates_dropped', 0):,}"),
                 ("k-core rounds", "; ".join(f"{i}: removed {r['users_removed']:,} users, {r['items_removed']:,} items"
                                             for i, r in enumerate(rounds, start=1)) or "none needed"),
                 ("added at", d.get("added_at") or "")]
    else:
        rows += [("source", d["source"].get("url", "")), ("description", d.get("description", ""))]
    print(f"{d['dataset']} ({d['kind']})")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


# ------------------------------------------------------------------------------------------------- run
def _print_metrics(title: str, metrics: dict) -> None:
    print(title)
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


def _spec_options(args) -> dict:
    """The `make_spec` keywords that single runs and grids share, from argv."""
    from bench.api import checkpoint_folder

    return {
        "profile": args.profile,
        "epochs": args.epochs,
        "patience": args.patience,
        "max_users": args.max_users,
        "max_steps": args.max_steps,
        "protocol": args.protocol,
        "config_source": args.configs,
        "precision": args.precision,
        "compile": args.compile,
        "device": args.device,
        "num_threads": args.threads,
        "checkpoint_every": args.checkpoint_every,
        "checkpoint_dir": checkpoint_folder(args.checkpoint_every, args.checkpoint_dir),
    }


def single_run_spec(args):
    """The spec of `run --method M --dataset D ...`."""
    from bench.core.configs import parse_overrides
    from bench.core.spec import make_spec

    return make_spec(args.method, args.dataset, seed=args.seed, save_checkpoint=args.save_checkpoint,
                     overrides=parse_overrides(args.overrides), **_spec_options(args))


def cmd_run(args) -> int:
    """`run`: bench.api.execute_run (what `bench.run` calls too), then the record printed."""
    from bench.api import RunFailed, execute_run

    if args.all:
        return cmd_grid(args)
    # The grid's flags first: `run --methods X --datasets Y` is a grid with --all forgotten, not a run without a method.
    for flag, value in (("--methods", args.methods), ("--datasets", args.datasets), ("--seeds", args.seeds)):
        if value:
            raise BenchError(f"{flag} belongs to the grid: add --all, or use --method/--dataset/--seed")
    if not args.method or not args.dataset:
        raise BenchError("run needs --method and --dataset (or --all for the grid)")
    if args.time_budget is not None:
        raise BenchError("--time-budget time-boxes a grid: add --all")
    spec = single_run_spec(args)
    try:
        record, path = execute_run(spec, args.results, progress=True)  # bars on stderr; stdout clean for --json
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"record: {path}", file=sys.stderr)
    if record["status"] == "interrupted":  # SIGTERM or Ctrl-C (bench/core/termination.py)
        stop = record["interrupted"]
        kept = f"checkpoint {stop['checkpoint']}" if stop.get("checkpoint") else "no checkpoint (no --checkpoint-every)"
        print(f"error: {stop['reason']} after {stop['epochs_done']} of {stop['max_epochs']} epochs; kept: {kept}; "
              "run the same command again to resume", file=sys.stderr)
        return termination.exit_code()
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
    """`run --all`: bench.api.execute_grid (what `bench.grid` calls too), then its summary printed; 0 when
    every run is ok (or was already), 1 when any failed."""
    from bench.api import execute_grid

    if args.save_checkpoint:
        raise BenchError("--save-checkpoint names one file: it cannot be used with --all")
    if args.json:
        raise BenchError("--json prints one run's record: with --all, read the records under --results")
    methods = args.methods or ([args.method] if args.method else None)
    datasets = args.datasets or ([args.dataset] if args.dataset else None)
    seeds = args.seeds or ([args.seed] if args.seed is not None else None)
    _, summary = execute_grid(
        methods, datasets, seeds, results=args.results, overrides=args.overrides, executor=args.executor,
        address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
        time_budget=args.time_budget, progress=True, **_spec_options(args),
    )
    timed = args.time_budget is not None
    print(
        f"grid: {summary.ok} ok, {len(summary.failed)} failed, {summary.skipped} skipped"
        + (f", {len(summary.interrupted)} interrupted, {len(summary.not_started)} not started"
           if timed or summary.interrupted else "")
        + f" in {summary.wall_s:.1f} s"
    )
    for line in summary.not_started:
        print(line)
    for i in summary.interrupted:
        again = ("run the same command again to resume it" if i.get("checkpoint")
                 else "no checkpoint (add --checkpoint-every): the same command runs it again from the start")
        print(f"interrupted: {i['method']} {i['dataset']} seed {i['seed']} at epoch {i.get('epochs_done')} of "
              f"{i.get('max_epochs')} ({i.get('reason')}); {again}")
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
        return termination.exit_code()
    return summary.exit_code


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from bench.core import weights
    from bench.core.configs import parse_overrides
    from bench.core.evaluate import evaluate

    method, data = weights.method_from_checkpoint(
        args.method, args.dataset, args.checkpoint, args.device, parse_overrides(args.overrides)
    )
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
    """`leaderboard`: bench.api.leaderboard (what `bench.leaderboard` is), then the files written."""
    from bench.api import leaderboard

    for path in leaderboard(args.results, out=args.out, readme=args.readme):
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
        epochs=args.epochs, patience=args.patience, max_users=args.max_users, max_steps=args.max_steps,
    )
    for path in status["unreadable"]:  # a run whose record is damaged would otherwise show as pending
        print(f"warning: skipped unreadable record {path}", file=sys.stderr)
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
            backends=tuple(args.kmeans) if args.kmeans else scaling.TIMED_BACKENDS,
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
    if args.records_command == "list":
        return _cmd_records_list(args)
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


def _cmd_records_list(args) -> int:
    import pandas as pd

    from bench.api import records

    table = records(args.results)
    for column, wanted in (("method", args.methods), ("dataset", args.datasets), ("profile", args.profile),
                           ("status", args.status)):
        if wanted is not None:
            table = table[table[column].isin([wanted] if isinstance(wanted, str) else wanted)]
    table = table.sort_values(["method", "dataset", "profile", "seed"], kind="stable")
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return 0
    if table.empty:
        print(f"no record under {args.results / 'runs'} matches", file=sys.stderr)
        return 0

    def cells(column: str, form) -> list[str]:  # blank where a run has no value (a failed run's metrics)
        return ["" if pd.isna(v) else form(v) for v in table[column]]

    shown = table[["method", "dataset", "seed", "profile", "loss", "variant", "device", "status"]].copy()
    shown["test NDCG@20"] = cells("test_NDCG@20", "{:.4f}".format)
    shown["best epoch"] = cells("best_epoch", str)
    shown["epochs"] = cells("epochs", str)
    shown["train s"] = cells("train_s", "{:,.0f}".format)
    shown["peak MiB"] = cells("peak_memory_bytes", lambda v: f"{v / 2**20:,.0f}")
    shown["record"] = [str(p).rsplit("/", 1)[-1] for p in table["path"]]
    print(shown.to_string(index=False))
    print(f"{len(shown)} record(s) in {args.results / 'runs'}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------- campaign
def cmd_campaign(args) -> int:
    from bench.campaign import plan as campaign
    from bench.campaign.schedule import parse_duration

    plan = campaign.load_plan(args.plan, args.results)
    if args.status:
        campaign.print_plan_status(plan)
        return 0
    if args.collect is not None:
        copied = campaign.collect(plan, args.collect)
        for path in copied:
            print(f"collected: {path}")
        print(f"{len(copied)} finished record(s) copied into {args.collect / 'runs'}"
              + ("; regenerate the tables with `python -m bench leaderboard`" if copied else ""))
        return 0
    if args.dry_run:
        for step in plan.steps:
            print(" ".join(campaign.step_command(plan, step)))
        return 0
    budget = None if args.time_budget is None else parse_duration(args.time_budget)
    return campaign.run_campaign(plan, lanes=args.lanes, niceness=args.nice, time_budget=budget)
