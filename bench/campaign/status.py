"""`python -m bench status`: where a protocol stands, run by run, and the GPU time it still needs.

Every run of the protocol (method x dataset x seed of the profile, on the device and compile mode asked,
default the paper profile on this machine's device: CUDA when torch sees one, else the CPU) is one of

- done: a record with status ok (best epoch, test NDCG@20),
- running: in training now, by a live process on this machine (it holds the run's checkpoint lock; epoch e
  of max at its last checkpoint),
- interrupted: an interrupted record or a mid-run checkpoint (epoch e of max; the next grid resumes it),
- failed: a failed record (its one-line error; the next grid retries it),
- pending: nothing yet.

The time left is the scheduler's estimate (bench/campaign/schedule.py) summed over the runs not done, one run after
the other at their maximum epochs: an upper bound, since early stopping ends most runs sooner, and one
that packing several runs on a GPU divides by its measured speed-up (`bench packing`). Estimates come from
the results folder's records of the same kind, else the repository's committed ones (results/runs:
quick-profile runs on an H100, 10 epochs each, one run at a time, eager fp32, faiss-cpu k-means).
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.campaign.schedule import (
    PACKING_DIR,
    ROUGH_BELOW_EPOCHS,
    format_duration,
    kind_of,
    load_estimates,
    packed_speedups,
    projected_seconds,
)
from bench.core import checkpoints, records
from bench.core.devices import device_kind
from bench.core.spec import COMMITTED_RESULTS
from bench.core.train import SELECTION_METRIC


def _latest_records(results_dir: Path) -> dict[str, dict]:
    """The newest record of each run id under `<results_dir>/runs/`."""
    latest: dict[str, dict] = {}
    for path in sorted((Path(results_dir) / "runs").glob("*.json")):
        record = records.read_record(path)
        if record is None or not record.get("run_id"):
            continue
        old = latest.get(record["run_id"])
        if old is None or str(record.get("finished_at") or "") >= str(old.get("finished_at") or ""):
            latest[record["run_id"]] = record
    return latest


def protocol_status(
    results_dir: Path | str,
    *,
    profile: str | None = None,
    epochs: int | None = None,
    patience: int | None = None,
    max_users: int | None = None,
    max_steps: int | None = None,
    methods: list[str] | None = None,
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    device: str = "auto",
    compile: str = "off",
    checkpoint_dir: Path | str | None = None,
) -> dict:
    """Rows (one per run of the protocol) and totals, as plain data (`bench status --json` prints it).

    `device` "auto" counts the runs of this machine's device (cuda when torch sees one, else cpu)."""
    from bench.campaign.grid import grid_specs
    from bench.core.devices import check_device

    check_device(device)
    device = device_kind(device) if device == "auto" else device
    results_dir = Path(results_dir).expanduser().resolve()
    folder = Path(checkpoint_dir).expanduser().resolve() if checkpoint_dir else checkpoints.default_folder()
    specs = grid_specs(methods, datasets, seeds, profile=profile, device=device, compile=compile, epochs=epochs,
                       patience=patience, max_users=max_users, max_steps=max_steps)
    latest = _latest_records(results_dir)
    estimates = load_estimates(results_dir, COMMITTED_RESULTS)
    rows = [_row(spec, spec.run_id, latest, folder, estimates) for spec in specs]
    left_s = sum(r["expected_left_s"] or 0.0 for r in rows if r["status"] != "ok")
    unknown = sum(r["status"] != "ok" and r["expected_left_s"] is None for r in rows)
    whole, whole_unknown = projected_seconds(specs, estimates)
    per_100 = sum(100 * estimates[kind_of(s)].epoch_s for s in specs if kind_of(s) in estimates)
    sources = sorted({estimates[kind_of(s)].source for s in specs if kind_of(s) in estimates})
    counts = {k: sum(r["status"] == k for r in rows) for k in ("ok", "running", "interrupted", "failed", "pending")}
    packed = []
    for found in packed_speedups(device_kind(device), compile, [results_dir / "benchmarks", PACKING_DIR]):
        ratio = found["gain"][0]
        packed.append({**found, "expected_left_s": left_s / ratio, "protocol_upper_bound_s": whole / ratio})
    return {
        "results": str(results_dir),
        "unreadable": [str(p) for p in records.find_corrupt(results_dir)],
        "profile": specs[0].profile if specs else profile,
        "device": device,
        "compile": compile,
        "rows": rows,
        "counts": counts,
        "expected_left_s": left_s,
        "runs_without_estimate": unknown,
        "protocol_upper_bound_s": whole,
        "protocol_per_100_epochs_s": per_100,
        "protocol_runs_without_estimate": len(whole_unknown),
        "estimates_from": sources,
        "packed": packed,
    }


def _row(spec, rid: str, latest: dict[str, dict], folder: Path, estimates: dict) -> dict:
    """One run of the protocol: its state, how far it got, and the time it is expected to need still."""
    record = latest.get(rid)
    status = (record or {}).get("status", "pending")
    saved = checkpoints.progress(folder, rid)
    in_checkpoint = None if saved is None else saved["epochs_done"]
    row = {"method": spec.method, "dataset": spec.dataset, "seed": spec.seed, "run_id": rid, "status": status,
           "max_epochs": spec.epochs, "patience": spec.patience, "epochs_done": None, "best_epoch": None,
           f"test_{SELECTION_METRIC}": None, f"best_valid_{SELECTION_METRIC}": None, "error": None,
           "expected_left_s": None, "expected_rough": False, "left_if_no_better_s": None}
    if status == "ok":
        row["best_epoch"] = record.get("best_epoch")
        row[f"test_{SELECTION_METRIC}"] = (record.get("test") or {}).get(SELECTION_METRIC)
        row["epochs_done"] = len(record.get("epochs") or [])
        return row
    if status == "failed":
        row["error"] = record.get("error")
    if in_checkpoint is not None and status == "pending":
        row["status"] = "interrupted"  # the grid died with it in flight: its checkpoint remains
    holder = checkpoints.in_training(folder, rid) if status != "ok" else None
    if holder is not None:
        row["status"], row["holder"] = "running", holder
    if row["status"] in ("interrupted", "running"):
        row["epochs_done"] = in_checkpoint if in_checkpoint is not None else len((record or {}).get("epochs") or [])
        row["resumable"] = in_checkpoint is not None  # without a checkpoint it starts over
        if saved is not None:
            row["best_epoch"], row[f"best_valid_{SELECTION_METRIC}"] = saved["best_epoch"], saved["best_valid"]
    estimate = estimates.get(kind_of(spec))
    if estimate is not None:
        row["expected_left_s"] = estimate.expected(spec.epochs - (in_checkpoint or 0))
        row["expected_rough"] = estimate.rough
        if row["best_epoch"] is not None:  # early stopping ends it at best + patience unless it improves
            stop_at = min(spec.epochs, row["best_epoch"] + spec.patience + 1)
            row["left_if_no_better_s"] = estimate.expected(stop_at - in_checkpoint)
    return row


def _cell(row: dict) -> str:
    status = row["status"]
    if status == "ok":
        score = row[f"test_{SELECTION_METRIC}"]
        return f"done: best epoch {row['best_epoch']}, test {SELECTION_METRIC} {score:.4f}" if score is not None else "done"
    if status in ("interrupted", "running"):
        done = row["epochs_done"]
        again = "" if row.get("resumable") or status == "running" else " (no checkpoint: starts over)"
        best = row.get(f"best_valid_{SELECTION_METRIC}")
        so_far = f", best valid {SELECTION_METRIC} {best:.4f} at epoch {row['best_epoch']}" if best is not None else ""
        if row.get("left_if_no_better_s") is not None:
            so_far += f" ({format_duration(row['left_if_no_better_s'])} left if no better epoch comes)"
        where = f" ({row['holder']})" if status == "running" else ""
        return f"{status}{where}: epoch {done if done is not None else '?'} of {row['max_epochs']}{so_far}{again}"
    if status == "failed":
        return f"failed: {(row['error'] or '')[:60]}"
    return "pending"


def expected_left(row: dict) -> str:
    """The time a run not done is expected to need still; `*` where the estimate is a rough guess."""
    if row["status"] == "ok":
        return ""
    return format_duration(row["expected_left_s"]) + ("*" if row.get("expected_rough") else "")


def print_rough_note(rows: list[dict]) -> None:
    """The footnote to `*`, where a run not done has a time left that is a rough guess."""
    if any(r["status"] != "ok" and r.get("expected_rough") for r in rows):
        print(f"* estimated from fewer than {ROUGH_BELOW_EPOCHS} epochs of records of its kind: a rough guess, "
              "swayed by whatever else the machine ran then")


def print_status(status: dict) -> None:
    """The table (method x dataset x seed) and the totals, in plain text."""
    rows = status["rows"]
    print(f"{status['profile']} protocol on {status['device']} (compile {status['compile']}), records in {status['results']}")
    # The state, of any length, comes last, so that the columns before it stay aligned in a narrow terminal.
    print(f"{'method':<8} {'dataset':<20} {'seed':>4}  {'expected left':>13}  state")
    for r in rows:
        print(f"{r['method']:<8} {r['dataset']:<20} {r['seed']:>4}  {expected_left(r):>13}  {_cell(r)}")
    print_rough_note(rows)
    c = status["counts"]
    print(f"{c['ok']} done, {c['running']} running, {c['interrupted']} interrupted, {c['failed']} failed,"
          f" {c['pending']} pending")
    unknown = status["runs_without_estimate"]
    print(
        f"expected {status['device']} time left: {format_duration(status['expected_left_s'])} "
        "(one run at a time, every run to its maximum epochs: an upper bound)"
        + (f"; {unknown} run(s) without an estimate not counted" if unknown else "")
    )
    whole = status["protocol_upper_bound_s"]
    if whole and math.isfinite(whole):
        print(
            f"whole protocol: {format_duration(whole)} at the maximum epochs, "
            f"{format_duration(status['protocol_per_100_epochs_s'])} per 100 epochs of every run "
            f"(estimates from {', '.join(status['estimates_from'])})"
            + (f"; {status['protocol_runs_without_estimate']} run(s) without an estimate not counted"
               if status["protocol_runs_without_estimate"] else "")
        )
    for p in status.get("packed") or []:
        low, high = p["gain"][1], p["gain"][2]
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
        print(
            f"packed as measured on {p['machine']} ({p['concurrency']} runs at once, "
            f"{p['gain'][0]:.2f}x{interval} the throughput of one): time left {format_duration(p['expected_left_s'])}, "
            f"whole protocol {format_duration(p['protocol_upper_bound_s'])} ({p['file']})"
        )
