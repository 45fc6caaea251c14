"""`python -m bench packing`: how many runs to pack on one device, measured.

For each compile mode and each concurrency c (default 1, 2, 4, 8 on a GPU) it runs c copies of one run
(seeds 1..c, same method, dataset and epochs) through the Ray executor of the grid, each reserving 1/c of
the GPU (`--gpus-per-run`) and an equal share of the CPUs (torch and faiss threads = that share, so that
runs do not fight over the cores), in a scratch results folder. On a CPU (`--device cpu`) the same
measurement splits the cores: c runs with cpus/c threads each.

Throughput is finished epochs per second summed over the runs:

- steady: each run's epochs after its first (compiling, warm-up) over the seconds they took, summed over
  the runs (they run side by side the whole time);
- wall: every epoch of every run over the grid's wall time (start-up, data loading and compiling included);
- gain vs 1 run: steady throughput against one run alone, with the 95% interval of the per-epoch time
  ratio (Welch t on log seconds, `bench/core/stats.py`), so that a packing is chosen for a gain the
  measurement shows, not for noise.

The packing chosen per compile mode starts at 1 run and moves to a larger c only when c's throughput
beats the packing chosen so far with the whole interval above 1. The table goes to
`<out>/packing-<device>-<method>-<dataset>.md` and `.json` (default results/benchmarks/).

The grid reads these files back (`bench/schedule.measured_packing`): on a GPU, `run --all` without `--gpus-per-run`
packs as the measurements of the same GPU model chose for compile mode `off` (the faithful default; CUDA
graphs stay an explicit option), the smallest packing where several methods were measured, and says which
file it followed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.campaign.schedule import FAITHFUL_COMPILE, epoch_seconds, machine_name
from bench.core import files, records
from bench.core.devices import device_kind
from bench.core.errors import BenchError
from bench.core.spec import DEFAULT_RESULTS, check_positive
from bench.core.stats import per_epoch_interval


def _steady_epoch_seconds(record: dict) -> list[float]:
    """Seconds of each epoch after the first (the first carries compiling and warm-up)."""
    return [epoch_seconds(e) for e in record.get("epochs") or []][1:]


def _throughput(recs: list[dict], wall_s: float) -> dict:
    steady, epochs_total = 0.0, 0
    for r in recs:
        epochs_total += len(r.get("epochs") or [])
        later = _steady_epoch_seconds(r)
        if later and sum(later) > 0:
            steady += len(later) / sum(later)
    return {
        "runs_ok": sum(r["status"] == "ok" for r in recs),
        "epochs": epochs_total,
        "steady_epochs_per_s": steady,
        "wall_epochs_per_s": epochs_total / wall_s if wall_s > 0 else None,
        "wall_s": wall_s,
        "peak_memory_mib_max": max((r.get("peak_memory_bytes") or 0) for r in recs) / 2**20 if recs else None,
    }


@dataclass(frozen=True)
class Gain:
    """Throughput of c runs at once against c0 runs at once: a ratio with its 95% interval (or none)."""

    ratio: float | None
    low: float | None
    high: float | None
    basis: str

    def text(self) -> str:
        if self.ratio is None:
            return "n/a"
        if self.low is None or self.high is None:
            return f"{self.ratio:.2f}x (no interval: {self.basis})"
        return f"{self.ratio:.2f}x [{self.low:.2f}, {self.high:.2f}]"


def packing_gain(epochs_c: list[list[float]], c: int, epochs_c0: list[list[float]], c0: int) -> Gain:
    """Throughput gain of c runs at once over c0 runs at once, from their steady per-epoch seconds.

    Throughput is runs / seconds per epoch, so the gain is (c / c0) / (t_c / t_c0), and the interval of
    the time ratio t_c / t_c0 (per_epoch_interval) maps to the gain's interval, ends swapped.
    """
    iv = per_epoch_interval(epochs_c, epochs_c0)
    if iv.change_pct is None:
        return Gain(None, None, None, iv.reason or "")
    scale = c / c0
    ratio = scale / (1 + iv.change_pct / 100)
    if not iv.has_interval:
        return Gain(ratio, None, None, iv.reason or "")
    return Gain(ratio, scale / (1 + iv.high_pct / 100), scale / (1 + iv.low_pct / 100), iv.basis)


def choose_packing(epochs_by_c: dict[int, list[list[float]]]) -> tuple[int, list[str]]:
    """The packing to use: from 1 run at once upwards, take a larger c only when its gain over the
    packing taken so far has its whole 95% interval above 1. Returns c and the reasons, one per step."""
    levels = sorted(c for c, runs in epochs_by_c.items() if runs)
    if not levels:
        raise BenchError("no packing level finished its runs: nothing to choose from")
    chosen, why = levels[0], []
    for c in levels[1:]:
        gain = packing_gain(epochs_by_c[c], c, epochs_by_c[chosen], chosen)
        if gain.low is not None and gain.low > 1:
            why.append(f"{c} over {chosen}: {gain.text()}, taken")
            chosen = c
        else:
            why.append(f"{c} over {chosen}: {gain.text()}, not shown to be faster")
    return chosen, why


@dataclass(frozen=True)
class _Plan:
    """A packing measurement's options, checked, with the defaults that depend on the device filled in."""

    method: str
    dataset: str
    epochs: int
    max_users: int | None
    kind: str  # "cuda" or "cpu"
    cpus: float  # shared among the runs at once
    compile_modes: list[str]
    levels: list[int]  # the concurrencies, each once, in increasing order
    out_dir: Path

    def share(self, c: int) -> dict:
        """What each of c runs at once gets."""
        return {"gpus_per_run": round(1.0 / c, 4) if self.kind == "cuda" else 0,
                "threads_per_run": max(1, int(self.cpus / c))}

    def command(self) -> str:
        """The command line that repeats this measurement."""
        users = f" --max-users {self.max_users}" if self.max_users else ""
        return (f"python -m bench packing --method {self.method} --dataset {self.dataset} --device {self.kind} "
                f"--concurrency {' '.join(map(str, self.levels))} --compile {' '.join(self.compile_modes)} "
                f"--epochs {self.epochs}{users} --cpus {self.cpus:g}")


def measure_packing(
    method: str,
    dataset: str,
    *,
    concurrency: list[int],
    compile_modes: list[str] | None = None,
    epochs: int = 5,
    max_users: int | None = None,
    device: str = "cuda",
    cpus: float | None = None,
    out_dir: Path | None = None,
) -> list[Path]:
    """Measure every (compile mode, concurrency) and write the table; returns the paths written."""
    plan = _checked_plan(method, dataset, concurrency, compile_modes, epochs, max_users, device, cpus, out_dir)
    rows, epochs_by = [], {}
    for mode in plan.compile_modes:
        for c in plan.levels:
            row, finished = _measure_level(plan, mode, c)
            if row["runs_ok"] == c:
                epochs_by[(mode, c)] = finished
            rows.append(row)
    best = _choose_per_mode(plan, rows, epochs_by)
    return _write_table(plan, rows, best)


def _checked_plan(
    method: str, dataset: str, concurrency: list[int], compile_modes: list[str] | None, epochs: int,
    max_users: int | None, device: str, cpus: float | None, out_dir: Path | None,
) -> _Plan:
    """Refuse what cannot be measured before any run starts, and fill in the device's defaults."""
    for c in concurrency:
        check_positive("--concurrency", c)
    check_positive("--epochs", epochs)
    if epochs < 3:
        raise BenchError(f"--epochs must be >= 3 for a packing measurement (epochs after the first are timed), got {epochs}")
    kind = device_kind(device)
    if kind == "cuda" and not torch.cuda.is_available():
        raise BenchError("bench packing --device cuda: torch sees no GPU here (use --device cpu to measure the cores)")
    if compile_modes is None:  # CUDA graphs exist on a GPU only
        compile_modes = [FAITHFUL_COMPILE, "reduce-overhead"] if kind == "cuda" else [FAITHFUL_COMPILE]
    cpus = float(cpus or os.cpu_count() or 1)
    check_positive("--cpus", cpus)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_RESULTS / "benchmarks"
    files.check_writable(out_dir, "benchmark output folder")
    return _Plan(method, dataset, epochs, max_users, kind, cpus, compile_modes, sorted(set(concurrency)), out_dir)


def _measure_level(plan: _Plan, mode: str, c: int) -> tuple[dict, list[list[float]]]:
    """Run c copies of the run at once in a scratch grid; returns the table's row and the steady epoch
    seconds of each run that finished."""
    from bench.campaign.grid import grid_specs, run_grid

    specs = grid_specs([plan.method], [plan.dataset], list(range(1, c + 1)), profile="quick", epochs=plan.epochs,
                       patience=plan.epochs, max_users=plan.max_users, compile=mode, device=plan.kind)
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as scratch:
        # cpus / c each (fractions allowed): c runs must really be in flight at once, and each
        # run's torch and faiss use int(cpus / c) threads, at least 1.
        summary = run_grid(specs, scratch, executor="ray", cpus_per_run=plan.cpus / c,
                           gpus_per_run=(1.0 / c) if plan.kind == "cuda" else None, progress=False)
        recs = [r for r in (records.read_record(p) for p in summary.paths) if r]
    row = {"compile": mode, "concurrency": c, **plan.share(c), **_throughput(recs, summary.wall_s)}
    finished = [_steady_epoch_seconds(r) for r in recs if r["status"] == "ok"]
    row["epoch_s_per_run"] = [[round(x, 4) for x in runs] for runs in finished]
    print(f"packing: compile {mode}, {c} run(s) at once: {row['steady_epochs_per_s']:.3f} epochs/s steady, "
          f"{row['wall_epochs_per_s'] or 0:.3f} epochs/s wall, {row['runs_ok']}/{c} ok", flush=True)
    return row, finished


def _choose_per_mode(plan: _Plan, rows: list[dict], epochs_by: dict[tuple[str, int], list[list[float]]]) -> dict:
    """Add each row's gain over one run alone, and choose the packing of every compile mode with a level
    whose runs all finished."""
    best = {}
    for mode in plan.compile_modes:
        mine = {c: epochs_by[(mode, c)] for c in plan.levels if (mode, c) in epochs_by}
        solo = mine.get(1)
        for row in rows:
            if row["compile"] == mode and solo and row["concurrency"] in mine and row["concurrency"] != 1:
                row["gain_vs_1"] = packing_gain(mine[row["concurrency"]], row["concurrency"], solo, 1).__dict__
        if mine:
            chosen, why = choose_packing(mine)
            best[mode] = {"concurrency": chosen, **plan.share(chosen), "why": why}
    return best


def _write_table(plan: _Plan, rows: list[dict], best: dict) -> list[Path]:
    """Write the measurement as JSON (read back by the grid) and Markdown; returns the paths written."""
    meta = {"method": plan.method, "dataset": plan.dataset, "epochs": plan.epochs, "max_users": plan.max_users,
            "device": plan.kind, "device_name": machine_name(plan.kind), "cpus": plan.cpus, "torch": torch.__version__,
            "load_avg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": plan.command()}
    stem = f"packing-{plan.kind}-{plan.method}-{plan.dataset}"
    json_path, md_path = plan.out_dir / f"{stem}.json", plan.out_dir / f"{stem}.md"
    files.write_text_atomic(json_path, json.dumps({"meta": meta, "rows": rows, "best": best}, indent=1) + "\n")
    files.write_text_atomic(md_path, render_markdown(meta, rows, best))
    return [md_path, json_path]


def render_markdown(meta: dict, rows: list[dict], best: dict) -> str:
    users = f"{meta['max_users']:,} users" if meta.get("max_users") else "all users"
    lines = [
        f"# Packing {meta['method']} on {meta['dataset']} ({users}): {meta['device_name']} ({meta['device']}), "
        f"{meta['epochs']} epochs per run, {meta['cpus']:g} CPUs shared",
        "",
        f"Generated by `{meta['command']}` at {meta['measured_at']}. Throughput: finished epochs per second"
        " summed over the runs at once; steady = epochs after each run's first. Gain vs 1 run: steady"
        " throughput against one run alone [95% interval of the per-epoch time ratio, Welch t on log seconds].",
        "",
        "| compile | runs at once | GPUs per run | threads per run | epochs/s (steady) | gain vs 1 run | epochs/s (wall) | peak MiB per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gain = Gain(**r["gain_vs_1"]).text() if r.get("gain_vs_1") else ("reference" if r["concurrency"] == 1 else "n/a")
        lines.append(
            f"| {r['compile']} | {r['concurrency']} | {r['gpus_per_run']:g} | {r['threads_per_run']} | "
            f"{r['steady_epochs_per_s']:.3f} | {gain} | {r['wall_epochs_per_s'] or 0:.3f} | "
            f"{r['peak_memory_mib_max'] or 0:.0f} |"
        )
    lines.append("")
    for mode, b in best.items():
        lines.append(f"Chosen for compile {mode}: **{b['concurrency']} run(s) at once** "
                     f"({'; '.join(b['why']) or 'the only level measured'}).")
    if not best:
        lines.append("No level finished all its runs: nothing chosen.")
    return "\n".join(lines) + "\n"
