"""`python -m bench`: the only place that parses argv.

    data download|stats   fetch and verify datasets; print their statistics
    run                   one run (--method, --dataset) or the whole grid (--all) through Ray
    evaluate              score a checkpoint in the published layout
    tune                  Optuna hyperparameter study, trials in parallel through Ray Tune
    leaderboard           tables and plots in results/ from the run records
    profile               seconds per phase and the training step's top operators
    scaling               ICLRec's E-step against ELCRec's clustering terms as the user count grows

User errors (BenchError) print one line `error: ...` on stderr and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.errors import BenchError

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "results"


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method name (sasrec, cl4srec, iclrec, elcrec)")
    p.add_argument("--dataset", help="dataset name (Beauty, Sports_and_Outdoors, Toys_and_Games, Yelp)")
    p.add_argument("--profile", default=None, help="smoke | quick | paper (run --all defaults to paper)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the profile's, else 300)")
    p.add_argument("--patience", type=int, help="early-stopping patience on valid NDCG@20 (default 40)")
    p.add_argument("--seed", type=int, default=None, help="seed of a single run (default 1)")
    p.add_argument("--max-users", type=int, help="train on a deterministic sample of this many users")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--protocol", default="reference", help="evaluation protocol: reference | strict")
    p.add_argument("--configs", default="paper", help="configuration source: paper | tuned")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--json", action="store_true", help="print the run record as one JSON line at the end")
    p.add_argument("--save-checkpoint", metavar="FILE", help="write the best parameters (published layout)")
    p.add_argument("--results", type=Path, help="directory of run records (run --all: default results/)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run")
    _add_execution_options(p)
    # the grid
    p.add_argument("--all", action="store_true", help="run the grid of methods x datasets x seeds")
    p.add_argument("--methods", nargs="+", help="with --all: methods (default all four)")
    p.add_argument("--datasets", nargs="+", help="with --all: datasets (default all four)")
    p.add_argument("--seeds", nargs="+", type=int, help="with --all: seeds (default the profile's)")
    p.add_argument("--executor", default="ray", help="with --all: ray | local")
    p.add_argument("--address", help="with --all: Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=None, help="with --all: CPUs each run reserves")
    p.add_argument("--gpus-per-run", type=float, default=None, help="with --all: GPUs each run reserves (0.25 packs 4)")


def _add_execution_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", help="fp32 (faithful) | tf32 (CUDA matmuls) | bf16 (autocast, fast mode)")
    p.add_argument(
        "--compile", default="off",
        help="torch.compile the training step: off | default | reduce-overhead (CUDA graphs) | max-autotune-no-cudagraphs",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="intent-bench: intent-learning recommenders, compared")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="download and inspect datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch datasets into the cache and verify their checksums")
    dl.add_argument("names", nargs="*")
    dl.add_argument("--all", action="store_true")
    dl.add_argument("--mirror", help="directory (or URL prefix) holding the files; default $BENCH_DATA_MIRROR")
    dl.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    st = data_sub.add_parser("stats", help="users, items, interactions, lengths per dataset")
    st.add_argument("names", nargs="*")
    st.add_argument("--json", action="store_true")

    _add_run_options(sub.add_parser("run", help="train and evaluate one run, or the grid with --all"))

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint in the published layout")
    ev.add_argument("--method", required=True)
    ev.add_argument("--dataset", required=True)
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--split", default="test", choices=("test", "valid"))
    ev.add_argument("--protocol", default="reference")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true")

    tu = sub.add_parser("tune", help="Optuna study over a method's search space, trials through Ray Tune")
    tu.add_argument("--method", help="method to tune")
    tu.add_argument("--dataset", help="dataset to tune on")
    tu.add_argument("--trials", type=int, default=20, help="trials to add to the study (default 20)")
    tu.add_argument("--profile", default="quick", help="data and epoch budget of each trial (default quick)")
    tu.add_argument("--parallel", type=int, default=1, help="trials running at once (default 1)")
    tu.add_argument("--storage", help="Optuna storage URL (default: a journal file under results/studies/)")
    tu.add_argument("--study", help="study name (default <method>-<dataset>-<profile>)")
    tu.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    tu.add_argument("--executor", default="ray", help="ray | local")
    tu.add_argument("--address", help="with --executor ray: Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    tu.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0); trials train with the profile's seed")
    tu.add_argument("--device", default="auto")
    tu.add_argument("--export", action="store_true", help="write the best config of each study to configs/tuned")

    lb = sub.add_parser("leaderboard", help="write leaderboard and cost tables and plots from run records")
    lb.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    lb.add_argument("--out", type=Path, help="output directory (default: the results directory)")

    pr = sub.add_parser("profile", help="seconds per phase and the top operators of the training step")
    pr.add_argument("--method", required=True)
    pr.add_argument("--dataset", required=True)
    pr.add_argument("--epochs", type=int, default=1)
    pr.add_argument("--max-users", type=int)
    pr.add_argument("--device", default="auto")
    pr.add_argument("--steps", type=int, default=10, help="training steps under the torch profiler")
    pr.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE")
    _add_execution_options(pr)

    sc = sub.add_parser("scaling", help="where alternating k-means stops scaling: ICLRec vs ELCRec cost against N")
    sc.add_argument("--dataset", default="Beauty", help="dataset whose sequences are resampled (default Beauty)")
    sc.add_argument("--users", nargs="+", type=float, metavar="N", help="population sizes (default 1e4 3e4 1e5 3e5 1e6 3e6)")
    sc.add_argument("--device", default="auto", help="auto | cpu | cuda")
    sc.add_argument("--kmeans", nargs="+", default=["faiss", "torch"], metavar="BACKEND", help="faiss and/or torch (default both)")
    sc.add_argument("--repeats", type=int, default=3, help="repeats per N below 1e6 (default 3)")
    sc.add_argument("--repeats-large", type=int, default=1, help="repeats per N from 1e6 on (default 1)")
    sc.add_argument("--steps", type=int, default=8, help="training steps timed per method and repeat (default 8)")
    sc.add_argument("--validate", type=int, default=2, help="real full epochs at this many of the smallest N (default 2)")
    sc.add_argument("--threads", type=int, help="torch CPU threads")
    sc.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "scaling", help="output directory (default results/scaling)")
    sc.add_argument("--from-csv", action="store_true", help="only regenerate the table and plots from the CSV")
    return parser


# ------------------------------------------------------------------------------------------------ data
def cmd_data(args) -> int:
    from bench import data

    names = data.dataset_names() if (getattr(args, "all", False) or not args.names) else args.names
    if args.data_command == "download":
        for name in names:
            path = data.download(name, mirror=args.mirror, force=args.force)
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


def cmd_run(args) -> int:
    if args.all:
        from bench import grid

        return grid.run_grid_from_args(args)
    if not args.method or not args.dataset:
        raise BenchError("run needs --method and --dataset (or --all for the grid)")
    from bench import configs, records, train
    from bench.profiles import get_profile

    profile = get_profile(args.profile) if args.profile else None
    spec = train.RunSpec(
        method=args.method,
        dataset=args.dataset,
        seed=args.seed if args.seed is not None else 1,
        profile=profile.name if profile else "custom",
        epochs=args.epochs or (profile.epochs if profile else 300),
        patience=args.patience or (profile.patience if profile else 40),
        max_users=args.max_users if args.max_users is not None else (profile.max_users if profile else None),
        protocol=args.protocol,
        config_source=args.configs,
        overrides=configs.parse_overrides(args.overrides),
        device=args.device,
        num_threads=args.threads,
        save_checkpoint=args.save_checkpoint,
        precision=args.precision,
        compile=args.compile,
    )
    configs.method_class(spec.method)  # fail fast on an unknown method, before loading data
    record = train.run(spec, progress=True)  # the bar goes to stderr; stdout stays clean for --json
    if args.results:
        path = records.save(args.results, record)
        print(f"record: {path}", file=sys.stderr)
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


# -------------------------------------------------------------------------------------------- evaluate
def cmd_evaluate(args) -> int:
    from bench import configs, train
    from bench.data import SequenceData
    from bench.evaluate import evaluate

    cls = configs.method_class(args.method)
    state = train.load_checkpoint(args.checkpoint)
    device = train.resolve_device(args.device)
    data = SequenceData.load(args.dataset, device=str(device))
    rows = state["item_embeddings.weight"].shape[0]
    if rows != data.item_size:
        raise BenchError(
            f"checkpoint {args.checkpoint} has {rows} item rows but {args.dataset} needs {data.item_size}: "
            "was it trained on another dataset?"
        )
    values = {**configs.paper_values(args.method, args.dataset), **cls.config_from_checkpoint(state)}
    config = configs.build_config(cls.Config, values, f"checkpoint {args.checkpoint}")
    from methods import DatasetInfo

    method = cls(config, DatasetInfo(args.dataset, data.item_size, data.num_users))
    missing, unexpected = method.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BenchError(
            f"checkpoint {args.checkpoint} does not fit {args.method}: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    metrics = evaluate(method.to(device), data, args.split, args.protocol)
    if args.json:
        print(json.dumps(metrics))
    else:
        _print_metrics(f"{args.method} checkpoint on {args.dataset} {args.split} ({args.protocol} protocol):", metrics)
    return 0


def cmd_leaderboard(args) -> int:
    from bench.leaderboard import write_leaderboard

    for path in write_leaderboard(args.results, args.out):
        print(path)
    return 0


def cmd_profile(args) -> int:
    from bench.profiling import profile_from_args

    return profile_from_args(args)


def cmd_scaling(args) -> int:
    from bench import scaling

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "data": cmd_data,
        "run": cmd_run,
        "evaluate": cmd_evaluate,
        "leaderboard": cmd_leaderboard,
        "profile": cmd_profile,
        "scaling": cmd_scaling,
    }
    try:
        if args.command == "tune":
            from bench.tune import cmd_tune

            return cmd_tune(args)
        return handlers[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
