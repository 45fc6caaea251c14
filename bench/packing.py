"""`python -m bench packing`: how many runs to pack on one GPU, measured (issue 15, item 1).

For each compile mode and each concurrency c (default 1, 2, 4, 8) it runs c copies of one run (seeds
1..c, same method, dataset and epochs) through the Ray executor of the grid, each reserving 1/c of the GPU
(`--gpus-per-run`) and an equal share of the CPUs (torch and faiss threads = that share, so that runs do
not fight over the cores), in a scratch results folder. Throughput is finished epochs per second summed
over the runs:

- steady: each run's epochs after its first (compiling, warm-up) over the seconds they took, summed over
  the runs (they run side by side the whole time);
- wall: every epoch of every run over the grid's wall time (start-up, data loading and compiling included).

The table goes to `<out>/packing-<device>-<method>-<dataset>.md` and `.json` (default results/benchmarks/),
with the packing of the best steady throughput per compile mode. Run it on the GPU machine the campaign
will use; on a CPU (`--device cpu`) it only checks that the command works.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from bench import records
from bench.errors import BenchError
from bench.spec import REPO_ROOT, check_positive, device_kind

DEFAULT_OUT = REPO_ROOT / "results" / "benchmarks"


def _throughput(recs: list[dict], wall_s: float) -> dict:
    steady, epochs_total = 0.0, 0
    for r in recs:
        times = [e["estep_s"] + e["train_s"] + e["eval_s"] for e in r.get("epochs") or []]
        epochs_total += len(times)
        if len(times) > 1 and sum(times[1:]) > 0:
            steady += (len(times) - 1) / sum(times[1:])
    return {
        "runs_ok": sum(r["status"] == "ok" for r in recs),
        "epochs": epochs_total,
        "steady_epochs_per_s": steady,
        "wall_epochs_per_s": epochs_total / wall_s if wall_s > 0 else None,
        "wall_s": wall_s,
        "peak_memory_mib_max": max((r.get("peak_memory_bytes") or 0) for r in recs) / 2**20 if recs else None,
    }


def measure_packing(
    method: str,
    dataset: str,
    *,
    concurrency: list[int],
    compile_modes: list[str],
    epochs: int = 5,
    max_users: int | None = None,
    device: str = "cuda",
    cpus: float | None = None,
    out_dir: Path | None = None,
) -> list[Path]:
    """Measure every (compile mode, concurrency) and write the table; returns the paths written."""
    from bench.grid import grid_specs, run_grid

    for c in concurrency:
        check_positive("--concurrency", c)
    check_positive("--epochs", epochs)
    kind = device_kind(device)
    if kind == "cuda" and not torch.cuda.is_available():
        raise BenchError("bench packing measures a GPU: torch sees none here (use --device cpu to check the command)")
    cpus = float(cpus or os.cpu_count() or 1)
    out_dir = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    records.check_writable(out_dir, "benchmark output folder")
    rows = []
    for mode in compile_modes:
        for c in concurrency:
            specs = grid_specs([method], [dataset], list(range(1, c + 1)), profile="quick", epochs=epochs,
                               patience=epochs, max_users=max_users, compile=mode, device=kind)
            with tempfile.TemporaryDirectory(prefix="bench-packing-") as scratch:
                summary = run_grid(specs, scratch, executor="ray", cpus_per_run=max(cpus / c, 1.0),
                                   gpus_per_run=(1.0 / c) if kind == "cuda" else None, progress=False)
                recs = [records.read_record(p) for p in summary.paths]
                row = {"compile": mode, "concurrency": c, "gpus_per_run": round(1.0 / c, 4) if kind == "cuda" else 0,
                       "threads_per_run": max(1, int(cpus / c)), **_throughput([r for r in recs if r], summary.wall_s)}
            rows.append(row)
            print(f"packing: compile {mode}, {c} run(s): {row['steady_epochs_per_s']:.3f} epochs/s steady, "
                  f"{row['wall_epochs_per_s'] or 0:.3f} epochs/s wall", flush=True)
    best = {}
    for mode in compile_modes:
        mine = [r for r in rows if r["compile"] == mode and r["runs_ok"] == r["concurrency"]]
        if mine:
            top = max(mine, key=lambda r: r["steady_epochs_per_s"])
            best[mode] = {"concurrency": top["concurrency"], "gpus_per_run": top["gpus_per_run"]}
    name = torch.cuda.get_device_name(0) if kind == "cuda" else (platform.processor() or "cpu")
    meta = {"method": method, "dataset": dataset, "epochs": epochs, "max_users": max_users, "device": kind,
            "device_name": name, "cpus": cpus, "torch": torch.__version__,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    stem = f"packing-{kind}-{method}-{dataset}"
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    records.write_text_atomic(json_path, json.dumps({"meta": meta, "rows": rows, "best": best}, indent=1) + "\n")
    lines = [
        f"# Packing {method} on {dataset}: {name} ({kind}), {epochs} epochs per run, {cpus:g} CPUs shared",
        "",
        "Generated by `python -m bench packing`; finished epochs per second summed over the concurrent runs.",
        "",
        "| compile | runs at once | GPUs per run | threads per run | epochs/s (steady) | epochs/s (wall) | peak MiB per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['compile']} | {r['concurrency']} | {r['gpus_per_run']:g} | {r['threads_per_run']} | "
            f"{r['steady_epochs_per_s']:.3f} | {r['wall_epochs_per_s'] or 0:.3f} | {r['peak_memory_mib_max'] or 0:.0f} |"
        )
    lines += ["", "Best steady throughput: " + "; ".join(
        f"compile {m}: {b['concurrency']} runs at once (--gpus-per-run {b['gpus_per_run']:g})" for m, b in best.items()
    ), ""]
    records.write_text_atomic(md_path, "\n".join(lines))
    return [md_path, json_path]
