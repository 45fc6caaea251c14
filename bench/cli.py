"""`python -m bench`: the only module that sees argparse; every other module takes typed arguments.

    data download|stats   fetch and verify datasets; print their statistics
    data add|list|info    make a dataset from an interactions file; list datasets; one dataset's statistics
    run                   one run (--method, --dataset) or the grid (--all), through Ray or in process
    evaluate              score a checkpoint in the published layout
    tune                  an Optuna study over a method's search space; its workers run through Ray or as
                          local processes (bench/tuning/tune.py says why not through Ray Tune)
    leaderboard           tables and plots in results/ from the run records
    status                a protocol's runs: done, interrupted, failed, pending, and the GPU time left
    packing               throughput of concurrent runs on one GPU through Ray (writes results/benchmarks/)
    profile               seconds per phase and the top operators of the training step
    scaling               ICLRec's E-step against ELCRec's clustering terms as the user count grows
    campaign              a plan of long runs (campaigns/*.toml) in niced lanes, continued from checkpoints
    records list          one line per recorded run (--csv: every column)
    records migrate       upgrade run records of an older schema (bench/core/migrate.py)

User errors (BenchError) print one line `error: ...` on stderr and exit 2, without a traceback. A run
that fails (a diverging loss, a crash) is recorded as failed and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.core import configs, termination
from bench.core.errors import BenchError
from bench.core.spec import DEFAULT_RESULTS
from methods import KMEANS_BACKENDS, REGISTRY

METHOD_HELP = f"method name: {', '.join(REGISTRY)} (any method registered in methods/__init__.py)"
DATASET_HELP = "dataset name: Beauty, Sports_and_Outdoors, Toys_and_Games, Yelp, or one added with `data add`"
DEVICE_HELP = "auto (CUDA when torch sees it) | cpu | cuda"
RESULTS_HELP = "results folder: records go to <results>/runs/ (default $BENCH_RESULTS, else results/ in the repository)"


# ---------------------------------------------------------------------------------------------- parser
def _add_budget_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--profile",
        help="budget: smoke (1,200 users, 2 epochs of one step) | quick (all users, 10 epochs) | paper (300 epochs, "
        "patience 40, seeds 1-3; the default)",
    )
    p.add_argument("--epochs", type=int, help="maximum epochs (default: the profile's)")
    p.add_argument("--patience", type=int, help="early-stopping patience on valid NDCG@20 (default: the profile's)")
    p.add_argument("--max-users", type=int, help="train on a deterministic sample of this many users (default: the profile's)")
    p.add_argument("--max-steps", type=int, help="training steps per epoch at most, each epoch a fresh random sample of "
                   "the examples (default: the profile's; every example once)")


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
    p.add_argument("--configs", default="paper", help="configuration source: paper (default) | tuned (<results>/tuned, written by tune --export)")
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
    grid.add_argument("--datasets", nargs="+", help="datasets of the grid, shipped or added (default: the four shipped)")
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
    _add_data_command(sub)
    _add_run_command(sub)
    _add_evaluate_command(sub)
    _add_tune_command(sub)
    _add_status_command(sub)
    _add_packing_command(sub)
    _add_leaderboard_command(sub)
    _add_profile_command(sub)
    _add_records_command(sub)
    _add_scaling_command(sub)
    _add_campaign_command(sub)
    return parser


def _add_data_command(sub) -> None:
    data = sub.add_parser("data", help="download, add and inspect datasets (offline: export BENCH_DATA_MIRROR=<folder>)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("download", help="fetch datasets into the cache and verify their checksums")
    dl.add_argument("names", nargs="*", help="datasets to fetch (default: all)")
    dl.add_argument("--all", action="store_true", help="every dataset (the default when no name is given)")
    dl.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    st = data_sub.add_parser("stats", help="users, items, interactions, lengths per dataset")
    st.add_argument("names", nargs="*", help="datasets (default: all)")
    st.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    from bench.core.userdata import DEFAULT_K_CORE, FORMAT_HELP

    add = data_sub.add_parser(
        "add", help="make a dataset from your own interactions file (docs/datasets.md)",
        description="Make dataset NAME from an interactions file, processed as the shipped datasets were made: "
        "time order per user (ties in file order), (user, item, time) duplicates dropped, iterative k-core, "
        "users and items renumbered from 1. Written to the data folder ($BENCH_DATA_DIR), with a manifest.")
    add.add_argument("name", help="the new dataset's name: letters, digits, '_', '-', '.'; not a shipped one's")
    add.add_argument("file", type=Path, help="the interactions file")
    add.add_argument("--format", dest="fmt", metavar="FORMAT",
                     help="; ".join(f"{k}: {v}" for k, v in FORMAT_HELP.items()) + ". Default: from the extension "
                     "and the first line (.inter or a name:type header: inter; .tsv: tsv; .csv: amazon when its "
                     "first line is four fields ending in two numbers, else csv; otherwise four fields separated by '::' "
                     "ending in two numbers: movielens, tabs: tsv, commas: csv, neither: sequence)")
    add.add_argument("--user-col", help="user column of a csv/tsv/inter file (default: user_id, user, userId, ...)")
    add.add_argument("--item-col", help="item column of a csv/tsv/inter file (default: item_id, item, itemId, ...)")
    add.add_argument("--time-col", help="timestamp column of a csv/tsv/inter file (default: timestamp, time, ...): "
                     "numbers, or ISO 8601 date-times")
    add.add_argument("--columns", metavar="NAMES", help="the file has no header line: its columns' names, in "
                     "order, separated by commas (a csv or tsv file; such as user,item,rating,time); --user-col, "
                     "--item-col, --time-col then choose among them")
    add.add_argument("--k-core", type=int, default=DEFAULT_K_CORE, metavar="K",
                     help=f"keep users and items with at least K interactions, filtering until both hold (default "
                     f"{DEFAULT_K_CORE}; 0 keeps all; users always need 3, for the train/valid/test split)")
    add.add_argument("--force", action="store_true", help="replace a dataset of this name added from another file "
                     "or with other options")
    add.add_argument("--json", action="store_true", help="print the manifest as one JSON object")
    ls = data_sub.add_parser("list", help="every dataset: the shipped ones and those added with `data add`")
    ls.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    inf = data_sub.add_parser("info", help="one dataset's statistics, source and (added ones) processing")
    inf.add_argument("name", help="a shipped or added dataset")
    inf.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_run_command(sub) -> None:
    _add_run_options(sub.add_parser("run", help="train and evaluate one run, or the grid with --all"))


def _add_evaluate_command(sub) -> None:
    ev = sub.add_parser("evaluate", help="evaluate a checkpoint in the published layout")
    ev.add_argument("--method", required=True, help=METHOD_HELP)
    ev.add_argument("--dataset", required=True, help=DATASET_HELP)
    ev.add_argument("--checkpoint", required=True, help="a state_dict file in the published layout")
    ev.add_argument("--split", default="test", choices=("test", "valid"), help="split to score (default test)")
    ev.add_argument("--protocol", default="reference", help="reference (published, default) | strict")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                    help="a config value, e.g. encoder=gru4rec (default: the encoder whose layout the file has); "
                    "one the file fixes by its keys or shapes must agree with it")
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object")


def _add_tune_command(sub) -> None:
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
    tu.add_argument("--export", action="store_true", help="write the best config of each study to <results>/tuned")


def _add_status_command(sub) -> None:
    stt = sub.add_parser("status", help="the state of a protocol's runs: done, interrupted, failed, pending; GPU time left")
    stt.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    _add_budget_options(stt)
    stt.add_argument("--methods", nargs="+", help="methods (default: all)")
    stt.add_argument("--datasets", nargs="+", help="datasets, shipped or added (default: the four shipped)")
    stt.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the profile's)")
    stt.add_argument("--device", default="auto", help="device of the runs counted: cpu | cuda (default: this machine's, "
                     "cuda when torch sees one)")
    stt.add_argument("--compile", default="off", help="compile mode of the runs counted (default off)")
    stt.add_argument("--checkpoint-dir", type=Path, help="folder of mid-run checkpoints (default $BENCH_CHECKPOINTS, else ~/.cache/intent-bench/checkpoints)")
    stt.add_argument("--json", action="store_true", help="print the rows and totals as one JSON object")


def _add_packing_command(sub) -> None:
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
    pk.add_argument("--out", type=Path, help="output folder (default <default results>/benchmarks)")


def _add_leaderboard_command(sub) -> None:
    lb = sub.add_parser("leaderboard", help="write leaderboard and cost tables and plots from run records")
    lb.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    lb.add_argument("--out", type=Path, help="output folder (default: the results folder)")
    lb.add_argument("--readme", type=Path, help="README.md whose marked blocks (first screen, headline questions) to"
                    " rewrite (default: the README.md beside the results folder, when writing into it; a README"
                    " without the markers is left alone)")


def _add_profile_command(sub) -> None:
    pr = sub.add_parser("profile", help="seconds per phase and the top operators of the training step")
    pr.add_argument("--method", required=True, help=METHOD_HELP)
    pr.add_argument("--dataset", required=True, help=DATASET_HELP)
    pr.add_argument("--epochs", type=int, default=1, help="epochs of the timed run (default 1; no early stop)")
    pr.add_argument("--max-users", type=int, help="train on a deterministic sample of this many users")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--steps", type=int, default=10, help="training steps under the torch profiler (default 10)")
    pr.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="override a config value")
    _add_execution_options(pr)


def _add_records_command(sub) -> None:
    rec = sub.add_parser("records", help="list run records, or upgrade older ones")
    rec_sub = rec.add_subparsers(dest="records_command", required=True)
    ls = rec_sub.add_parser("list", help="one line per recorded run: what ran, its test NDCG@20, epochs, "
                            "training seconds, peak memory and status",
                            description="One line per run record of the results folder, in the order method, "
                            "dataset, profile, seed. --csv prints every column of `bench.records()` instead.")
    ls.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)
    ls.add_argument("--methods", nargs="+", metavar="METHOD", help="only these methods")
    ls.add_argument("--datasets", nargs="+", metavar="DATASET", help="only these datasets")
    ls.add_argument("--profile", help="only runs of this budget (smoke, quick, paper, custom)")
    ls.add_argument("--status", help="only runs of this status (ok, failed, interrupted)")
    ls.add_argument("--csv", action="store_true", help="every column, as CSV on standard output")
    mig = rec_sub.add_parser("migrate", help="upgrade records of an older schema to the current one, in place")
    mig.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help=RESULTS_HELP)


def _add_scaling_command(sub) -> None:
    sc = sub.add_parser("scaling", help="where alternating k-means stops scaling: ICLRec vs ELCRec cost against N")
    sc.add_argument("--dataset", default="Beauty", help="dataset whose sequences are resampled (default Beauty)")
    sc.add_argument("--users", nargs="+", type=float, metavar="N", help="population sizes (default 1e4 3e4 1e5 3e5 1e6 3e6)")
    sc.add_argument("--device", default="auto", help=DEVICE_HELP)
    timed = [b for b in KMEANS_BACKENDS if b != "auto"]  # the study times backends; auto only picks one
    sc.add_argument("--kmeans", nargs="+", metavar="BACKEND", help=f"k-means backends to time: {', '.join(timed)} (default all)")
    sc.add_argument("--repeats", type=int, default=3, help="repeats per N below 1e6 (default 3)")
    sc.add_argument("--repeats-large", type=int, default=1, help="repeats per N from 1e6 on (default 1)")
    sc.add_argument("--steps", type=int, default=8, help="training steps timed per method and repeat (default 8)")
    sc.add_argument("--validate", type=int, default=2, help="real full epochs at this many of the smallest N (default 2)")
    sc.add_argument("--threads", type=int, help="torch CPU threads")
    sc.add_argument("--results", type=Path, default=DEFAULT_RESULTS / "scaling", help="output folder (default <default results>/scaling)")
    sc.add_argument("--from-csv", action="store_true", help="only regenerate the table and plots from the CSV")


def _add_campaign_command(sub) -> None:
    ca = sub.add_parser("campaign", help="run a campaign plan (campaigns/*.toml) in niced lanes, one thread per run, "
                        "continued from checkpoints; or show its state, or collect its finished records")
    ca.add_argument("plan", type=Path, help="the plan: a TOML file of [campaign] budget and [[step]] grids")
    ca.add_argument("--lanes", type=int, default=2, help="runs in flight at once, one grid process each (default 2)")
    ca.add_argument("--nice", type=int, default=10, help="niceness of the lanes' processes (default 10; 0: not niced)")
    ca.add_argument("--time-budget", metavar="DURATION", help="stop the campaign after this long (90s, 25m, 2h): runs "
                    "in flight are checkpointed and continued next time (default: until the plan is done)")
    ca.add_argument("--results", type=Path, help="the campaign's results folder (default: the plan's, else "
                    "~/.cache/intent-bench/campaign: outside the working copy, like the checkpoints)")
    what = ca.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="each step's runs: done, interrupted, failed, pending")
    what.add_argument("--collect", type=Path, metavar="DIR",
                      help="copy the plan's finished (ok) records into DIR/runs, skipping those already there")
    what.add_argument("--dry-run", action="store_true", help="print each step's grid command and exit")


def main(argv: list[str] | None = None) -> int:
    from bench import commands

    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {
        "data": commands.cmd_data,
        "run": commands.cmd_run,
        "evaluate": commands.cmd_evaluate,
        "tune": commands.cmd_tune,
        "leaderboard": commands.cmd_leaderboard,
        "profile": commands.cmd_profile,
        "status": commands.cmd_status,
        "packing": commands.cmd_packing,
        "scaling": commands.cmd_scaling,
        "records": commands.cmd_records,
        "campaign": commands.cmd_campaign,
    }
    if args.command in ("run", "tune"):  # the commands that train stop gracefully on SIGTERM
        # and `run` on Ctrl-C too (tune's workers record their trials on their own KeyboardInterrupt)
        termination.install(interrupt=args.command == "run")
    # tuned configs live in the results folder, beside the studies they come from (docs/tuned-configs.md)
    configs.use_results_folder(getattr(args, "results", None))
    try:
        return handlers[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
