"""Verdicts: every rule is checked on records built here, one case inside the noise and one clearly outside.

The records are written with `records.save`, so that the per-user ranks and the execution context take the
same path to the tables as those of a real run.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.core import context as run_context
from bench.core import records
from bench.core import stats as verdicts
from bench.core.evaluate import rank_gains
from bench.reporting.comparisons import (
    cost_comparison,
    epoch_seconds_in,
    per_epoch_change,
    with_training_seconds,
)
from bench.reporting.leaderboard import write_leaderboard
from bench.reporting.runs import completed_runs

CONTEXT = {
    "schema": 4, "recorded": True, "device": "cpu", "cpu_model": "Test CPU", "cpu_count": 2, "gpu_name": None, "threads": 1,
    "interop_threads": 1, "concurrency": 1, "in_flight_counted": "host", "loadavg_start": [0.5, 0.5, 0.5], "loadavg_end": [1.0, 0.8, 0.6],
    "torch": "2.13.0", "faiss": "1.9.0",
}


def _metrics(ranks: np.ndarray) -> dict[str, float]:
    return {m: float(rank_gains(ranks, m).mean()) for m in records.METRICS}


def make_record(
    method: str,
    seed: int = 1,
    train_s: tuple[float, ...] = (12.0, 10.0, 10.0, 10.0),
    ranks: np.ndarray | None = None,
    context: dict | None = CONTEXT,
    profile: str = "smoke",
    memory_mb: float = 500.0,
    dataset: str = "Beauty",
    hour: int = 10,
) -> dict:
    ranks = np.full(1000, 20, dtype=np.uint8) if ranks is None else ranks
    test = _metrics(ranks)
    epochs = [
        {"epoch": i, "valid": {**test, "NDCG@20": test["NDCG@20"] * (i + 1) / len(train_s)}, "estep_s": 0.0,
         "train_s": t, "eval_s": 0.5, "losses": {"loss": 1.0}, "memory_bytes": int(memory_mb * 2**20)}
        for i, t in enumerate(train_s)
    ]
    record = {
        "method": method, "dataset": dataset, "seed": seed, "profile": profile, "protocol": "reference",
        "config_source": "paper", "config": {"lr": 0.001, "rec_loss": "bce"},
        "variant": {"mode": "faithful", "precision": "fp32", "compile": "off", "view_encoding": "separate",
                    "rec_loss": "bce"},
        "spec": {"epochs": len(train_s), "patience": 3, "max_users": 1000 if profile != "paper" else None},
        "status": "ok", "error": None, "device": "cpu", "env": {"device_name": "cpu", "hostname": "test"},
        # Each run in its own hour: the records' own times show no overlap.
        "started_at": f"2026-11-24T{hour:02d}:{seed:02d}:00+00:00",
        "finished_at": f"2026-11-24T{hour:02d}:{seed:02d}:30+00:00",
        "num_users": len(ranks), "best_epoch": len(train_s) - 1, "best_valid": test, "test": test,
        "epochs": epochs,
        "totals": {"estep_s": 0.0, "train_s": sum(train_s), "eval_s": 0.5 * len(train_s), "test_eval_s": 0.5,
                   "wall_s": sum(train_s) + 3, "time_to_best_s": sum(train_s), "epochs_run": len(train_s)},
        "peak_memory_bytes": int(memory_mb * 2**20),
        "ranks": records.encode_ranks({"test": ranks}),
    }
    # context=None: a run that recorded none, as `bench records migrate` fills it in from the record's env.
    if context is not None:  # one invocation, unless the test gives its segments
        record["context"] = {**context, "segments": context.get("segments", [run_context.segment(context, 0)])}
    else:
        record["context"] = run_context.not_recorded("cpu", record["env"])
    rid = f"{method[:4]}{seed}{profile[:3]}{hour:02d}{dataset[:2]}".ljust(12, "0")[:12]
    return records.finalise(record, rid)


def _write(tmp_path, recs: list[dict]):
    for r in recs:
        records.save(tmp_path, r)
    write_leaderboard(tmp_path, tmp_path / "out")
    return (tmp_path / "out" / "cost.md").read_text(), (tmp_path / "out" / "leaderboard.md").read_text()


def _bullet(md: str, start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"- {start}"))


# ------------------------------------------------------------------------------------------------- cost
def test_cost_difference_inside_the_noise_is_no_verdict(tmp_path) -> None:
    icl = make_record("iclrec", train_s=(20.0, 10.0, 12.0, 9.0, 11.0, 10.5))
    elc = make_record("elcrec", train_s=(15.0, 10.4, 11.0, 9.6, 10.7, 9.9))
    cost, _ = _write(tmp_path, [icl, elc])
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    verdict = line.split("training s/epoch after the first: ", 1)[1].split(";")[0]
    assert verdict.startswith("no difference detectable (±") and "[" in verdict, verdict
    assert "saves" not in line and "costs more" not in line
    # Totals and memory are measured once per run: with one seed there is no interval, so no verdict.
    assert "total training time: no verdict: one run per method" in line
    assert "same context: Test CPU, 1 thread(s), 1 in flight" in line


def test_cost_difference_outside_the_noise_is_a_saving_with_its_interval(tmp_path) -> None:
    icl = make_record("iclrec", train_s=(20.0, 10.0, 10.4, 9.8, 10.2))
    elc = make_record("elcrec", train_s=(30.0, 5.0, 5.2, 4.9, 5.1))
    cost, _ = _write(tmp_path, [icl, elc])
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    assert "training s/epoch after the first: ELCRec saves: -50" in line
    iv = verdicts.per_epoch_interval([[5.0, 5.2, 4.9, 5.1]], [[10.0, 10.4, 9.8, 10.2]])
    assert iv.high_pct < 0 and iv.low_pct < iv.change_pct < iv.high_pct
    assert verdicts.interval_text(iv) in line and "(4+4 epochs after the first)" in line
    # The first epoch (ELCRec's 30 s, larger) is in its own column and does not enter the per-epoch verdict.
    table = cost.split("| dataset | method |", 1)[1]
    assert "| 30.00 |" in table and "| 5.05 |" in table


def test_seeds_give_the_between_run_spread(tmp_path) -> None:
    recs = []
    for seed, (a, b) in enumerate([(10.0, 8.0), (11.0, 8.6), (9.6, 7.9)], start=1):
        recs.append(make_record("iclrec", seed=seed, train_s=(15.0, a, a * 1.01, a * 0.99)))
        recs.append(make_record("elcrec", seed=seed, train_s=(15.0, b, b * 1.01, b * 0.99), memory_mb=400 + seed))
    cost, _ = _write(tmp_path, recs)
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    assert "ELCRec saves" in line and "(3+3 seeds)" in line
    assert "peak memory: ELCRec saves" in line  # 401-403 MB against 500 MB in every seed


def test_peak_memory_is_compared_whatever_else_ran_beside_the_runs(tmp_path) -> None:
    # A run's peak is its own process's: a second run beside ELCRec seed 1 changes its seconds, not its memory.
    beside = {**CONTEXT, "concurrency": 2}
    recs = []
    for seed in (1, 2, 3):
        recs.append(make_record("iclrec", seed=seed))
        recs.append(make_record("elcrec", seed=seed, memory_mb=400 + seed, context=beside if seed == 1 else CONTEXT))
    row = cost_comparison(_saved_runs(tmp_path / "beside", recs)).iloc[0]
    assert row["total_verdict"].startswith("not compared: contexts differ")
    assert row["memory_verdict"].startswith("ELCRec saves") and row["memory_basis"] == "3+3 seeds"
    # Other torch threads (their buffers) or another machine: not compared, and the line says what differs.
    recs[1] = make_record("elcrec", seed=1, memory_mb=401, context={**CONTEXT, "threads": 2})
    row = cost_comparison(_saved_runs(tmp_path / "threads", recs)).iloc[0]
    assert row["memory_verdict"] == ("not compared: contexts differ (ELCRec: cpu, Test CPU, 1 thread(s); "
                                     "cpu, Test CPU, 2 thread(s) vs ICLRec: cpu, Test CPU, 1 thread(s))")


def test_one_epoch_after_warm_up_gives_no_interval_and_no_verdict(tmp_path) -> None:
    cost, _ = _write(tmp_path, [make_record("iclrec", train_s=(20.0, 10.0)), make_record("elcrec", train_s=(20.0, 17.0))])
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    assert "no verdict: one epoch after warm-up: no spread to measure (ELCRec +70.0%)" in line
    one = verdicts.per_epoch_interval([[]], [[]])
    assert one.change_pct is None and verdicts.cost_verdict(one) == "no verdict: no epoch after warm-up"


def _saved_runs(tmp_path, recs: list[dict]):
    for r in recs:
        records.save(tmp_path, r)
    return completed_runs(records.load_records(tmp_path))


def test_epochs_run_in_another_context_are_left_out_of_the_per_epoch_comparison(tmp_path) -> None:
    # ICLRec's first three epochs ran on a slower machine (its campaign moved): 30 s an epoch there, 10 s here.
    elsewhere = {**CONTEXT, "cpu_model": "Slow CPU"}
    moved = {**CONTEXT, "segments": [run_context.segment(elsewhere, 0), run_context.segment(CONTEXT, 3)]}
    icl = make_record("iclrec", train_s=(40.0, 30.0, 30.0, 10.0, 10.2, 9.8, 10.1), context=moved)
    elc = make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 5.0, 5.2, 4.8))
    runs = _saved_runs(tmp_path, [icl, elc])
    row = cost_comparison(runs).iloc[0]
    # per epoch: ELCRec's 6 later epochs against ICLRec's epochs 3-6, ~-50%; with epochs 1-2 it would be ~-67%
    assert -52 < row["per_epoch_change_pct"] < -48 and row["per_epoch_basis"].startswith("6+4 epochs")
    assert row["context"].startswith("same context: Test CPU, 1 thread(s), 1 in flight; per epoch: the epochs run in")
    assert "(not ICLRec seed 1 epochs 0-2, which totals and times to a target include)" in row["context"]
    key = run_context.comparable_key(CONTEXT)
    assert epoch_seconds_in(runs[runs["method"] == "iclrec"].iloc[0], key) == [10.0, 10.2, 9.8, 10.1]


def test_runs_that_ended_on_different_machines_compare_per_epoch_where_both_ran(tmp_path) -> None:
    # ELCRec's campaign finished on another machine; both made epochs 1-3 on the test CPU.
    other = {**CONTEXT, "cpu_model": "Other CPU"}
    finished_elsewhere = {**other, "segments": [run_context.segment(CONTEXT, 0), run_context.segment(other, 4)]}
    icl = make_record("iclrec", train_s=(20.0, 10.0, 10.2, 9.8, 10.1, 10.0))
    elc = make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 1.0, 1.0), context=finished_elsewhere)
    row = cost_comparison(_saved_runs(tmp_path, [icl, elc])).iloc[0]
    assert row["per_epoch_not_compared"] is None and row["per_epoch_verdict"].startswith("ELCRec saves: -50")
    assert row["per_epoch_basis"].startswith("3+5 epochs")
    assert row["total_verdict"].startswith("not compared: contexts differ")
    assert row["memory_verdict"].startswith("not compared: contexts differ")
    assert "per epoch: the epochs run in Test CPU, 1 thread(s), 1 in flight (not ELCRec seed 1 epochs 4-5" in row["context"]


def test_runs_in_flight_counted_in_a_grid_only_are_said_with_the_per_epoch_interval(tmp_path) -> None:
    # Records written before runs were counted on the host: another grid's run may have shared the cores.
    grid_only = {k: v for k, v in CONTEXT.items() if k != "in_flight_counted"}
    icl = make_record("iclrec", train_s=(20.0, 10.0, 10.2, 9.8, 10.1), context=grid_only)
    elc = make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 5.0), context=grid_only)
    row = cost_comparison(_saved_runs(tmp_path / "grid", [icl, elc])).iloc[0]
    assert row["per_epoch_verdict"].startswith("ELCRec saves")
    assert "runs in flight counted in each run's grid only" in row["per_epoch_basis"]
    assert "1 in flight in its grid (other runs on the host not counted)" in row["context"]
    counted = cost_comparison(_saved_runs(tmp_path / "host", [make_record("iclrec", train_s=(20.0, 10.0, 10.2, 9.8, 10.1)),
                                                             make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 5.0))]))
    assert "grid" not in counted.iloc[0]["per_epoch_basis"] and "grid" not in counted.iloc[0]["context"]


def test_epochs_are_compared_where_they_shared_the_host_alike(tmp_path) -> None:
    # ICLRec's epochs 1-2 ran beside another run (2 in flight, 20 s), 3-4 alone (10 s); ELCRec's all alone.
    icl = make_record("iclrec", train_s=(20.0, 20.0, 20.4, 10.0, 10.2), context=CONTEXT)
    for e, n in zip(icl["epochs"], (1, 2, 2, 1, 1)):
        e["in_flight"] = n
    elc = make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 5.0))
    row = cost_comparison(_saved_runs(tmp_path, [icl, elc])).iloc[0]
    assert -52 < row["per_epoch_change_pct"] < -48 and row["per_epoch_basis"].startswith("4+2 epochs")
    assert "(not ICLRec seed 1 epochs 1-2" in row["context"]


def test_cpu_seconds_per_epoch_are_compared_beside_the_wall_seconds(tmp_path) -> None:
    # ICLRec waited for a core half of each epoch: 20 s of wall clock, 10 s of CPU; ELCRec used 10 s of each.
    icl = make_record("iclrec", train_s=(30.0, 20.0, 20.4, 19.6, 20.2, 19.8))
    elc = make_record("elcrec", train_s=(15.0, 10.0, 10.2, 9.8, 10.1, 9.9))
    for rec in (icl, elc):
        for e in rec["epochs"]:
            e["training_cpu_s"] = e["train_s"] / (2.0 if rec is icl else 1.0)
    cost, _ = _write(tmp_path, [icl, elc])
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    assert "training s/epoch after the first: ELCRec saves: -50" in line
    assert "its CPU seconds (waiting for a core not counted): no difference detectable" in line
    assert "change in CPU s per epoch" in cost
    # Records made before the CPU seconds were recorded: no such column, no such words.
    for rec in (icl, elc):
        for e in rec["epochs"]:
            del e["training_cpu_s"]
    cost, _ = _write(tmp_path / "older", [icl, elc])
    assert "CPU seconds" not in _bullet(cost, "Beauty: ELCRec vs ICLRec") and "change in CPU s" not in cost


def test_the_machines_speed_probe_is_said_and_a_speed_gap_is_a_caution(tmp_path) -> None:
    # Same model name, same threads and runs in flight: one context. ELCRec's machine took 30 ms for the probe,
    # ICLRec's 20 ms: ELCRec's epochs look 50% dearer, and the note says the machines may be why.
    slow, fast = {**CONTEXT, "speed_probe_s": 0.030}, {**CONTEXT, "speed_probe_s": 0.020}
    icl = make_record("iclrec", train_s=(20.0, 10.0, 10.2, 9.8, 10.1), context=fast)
    elc = make_record("elcrec", train_s=(20.0, 15.0, 15.1, 14.9, 15.0), context=slow)
    runs = _saved_runs(tmp_path / "gap", [icl, elc])
    row = cost_comparison(runs).iloc[0]
    assert row["per_epoch_verdict"].startswith("ELCRec costs more: +49.6%")
    assert "median over these epochs: ELCRec 30.0 ms, ICLRec 20.0 ms (+50%); caution" in row["context"]
    # Any other pair of columns (the loss question's) gets the same note beside its per-epoch change.
    timed = with_training_seconds(runs)
    iv, why, probes = per_epoch_change(timed[timed["method"] == "elcrec"], timed[timed["method"] == "iclrec"])
    assert why is None and round(iv.change_pct, 1) == 49.6 and probes in row["context"] and "caution" in probes
    # Machines alike: the probes are said, with no caution.
    alike = make_record("elcrec", train_s=(20.0, 15.0, 15.1, 14.9, 15.0), context={**CONTEXT, "speed_probe_s": 0.021})
    row = cost_comparison(_saved_runs(tmp_path / "alike", [icl, alike])).iloc[0]
    assert "ELCRec 21.0 ms, ICLRec 20.0 ms (+5%)" in row["context"] and "caution" not in row["context"]
    # One side made before the probe: its machines' speed is not compared; neither side probed: nothing said.
    row = cost_comparison(_saved_runs(tmp_path / "half", [make_record("iclrec", train_s=(20.0, 10.0, 10.2, 9.8, 10.1)),
                                                          elc])).iloc[0]
    assert "probe taken for 4 of 4 ELCRec and 0 of 4 ICLRec epochs" in row["context"]
    row = cost_comparison(_saved_runs(tmp_path / "none", [make_record("iclrec"), make_record("elcrec")])).iloc[0]
    assert "probe" not in row["context"]


def test_a_run_records_the_speed_probe_of_each_invocation() -> None:
    probe = run_context.speed_probe()
    assert probe is not None and 0 < probe < 5
    context = {**CONTEXT, "speed_probe_s": 0.02}
    segments = [run_context.segment({**CONTEXT, "speed_probe_s": 0.03}, 0), run_context.segment(context, 2)]
    assert run_context.epoch_speed_probes({**context, "segments": segments}, [{}] * 4) == [0.03, 0.03, 0.02, 0.02]


def test_different_or_unknown_context_is_not_compared(tmp_path) -> None:
    two = {**CONTEXT, "concurrency": 2}
    icl = make_record("iclrec", train_s=(20.0, 10.0, 10.1, 9.9))
    elc = make_record("elcrec", train_s=(20.0, 17.0, 17.1, 16.9), context=two)
    cost, _ = _write(tmp_path, [icl, elc])
    line = _bullet(cost, "Beauty: ELCRec vs ICLRec")
    assert "not compared: contexts differ" in line and "1 in flight" in line and "2 in flight" in line
    assert "+70" not in line
    # Runs that recorded no context (made before it existed) and overlapped in time: unknown, not compared,
    # and the overlap is shown.
    old_icl = make_record("iclrec", dataset="Yelp", context=None, hour=11)
    old_elc = make_record("elcrec", dataset="Yelp", context=None, hour=11)
    cost, _ = _write(tmp_path / "old", [old_icl, old_elc])
    line = _bullet(cost, "Yelp: ELCRec vs ICLRec")
    assert "not compared: context unknown" in line and "up to 2 runs were in flight" in line
    assert "unknown (≥2 by record times)" in cost


# --------------------------------------------------------------------------------------------- accuracy
def _ranks(hit_share: float, n: int = 2000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < hit_share, rng.integers(0, 20, n), 20).astype(np.uint8)


def test_accuracy_difference_outside_the_noise_is_marked_with_its_p_value(tmp_path) -> None:
    base = _ranks(0.10, seed=1)
    better = base.copy()
    better[:600] = np.minimum(better[:600], 2)  # ELCRec puts 600 users' answers in the top 3
    recs = [("sasrec", _ranks(0.02, seed=2)), ("iclrec", base), ("elcrec", better)]
    _, md = _write(tmp_path, [make_record(m, ranks=r, profile="paper") for m, r in recs])
    row = _leader_row(md, "Beauty", "NDCG@20")
    assert row["ELCRec"].startswith("**") and row["ICLRec"].startswith("<u>")
    assert row["ELCRec p (paired test)"].startswith("p=<1e-4 (Wilcoxon, 2,000 users)")
    # The difference with its 95% interval over users, entirely above zero here.
    assert re.fullmatch(r"\+0\.\d{4} \[\+0\.\d{4}, \+0\.\d{4}\] vs ICLRec \(\+\d+\.\d%\)", row["ELCRec vs best baseline"])
    # The same runs as a pipeline check (smoke: a few epochs) keep their numbers and tests, but no mark: a few
    # epochs rank the methods by how fast they start, and the banner says so.
    _, md = _write(tmp_path / "smoke", [make_record(m, ranks=r) for m, r in recs])
    row = _leader_row(md, "Beauty", "NDCG@20")
    assert not any(v.startswith(("**", "<u>")) for v in row.values())
    assert row["ELCRec p (paired test)"].startswith("p=<1e-4 (Wilcoxon, 2,000 users)")
    assert "smoke profile, pipeline check at a few epochs, not converged" in md


def test_accuracy_difference_inside_the_noise_gets_no_mark(tmp_path) -> None:
    base = _ranks(0.10, seed=1)
    close = base.copy()
    close[:3] = 0  # three users more at rank 0: a difference well under what 2,000 users resolve
    _, md = _write(tmp_path, [make_record("iclrec", ranks=base), make_record("elcrec", ranks=close)])
    row = _leader_row(md, "Beauty", "NDCG@20")
    assert "**" not in row["ELCRec"] and "<u>" not in row["ICLRec"]
    p = float(row["ELCRec p (paired test)"].split("p=", 1)[1].split(" ", 1)[0])
    assert p > verdicts.ALPHA


def test_ties_and_tiny_baselines(tmp_path) -> None:
    none = np.full(2000, 20, dtype=np.uint8)  # nobody in the top 20: every metric 0.0000
    one = none.copy()
    one[0] = 5
    _, md = _write(tmp_path, [make_record("sasrec", ranks=none), make_record("iclrec", ranks=none),
                              make_record("elcrec", ranks=one)])
    row = _leader_row(md, "Beauty", "NDCG@20")
    assert not any("**" in v or "<u>" in v for v in row.values())  # 0.0000 ties and one user: no marks
    assert "(no %: baseline < 0.01)" in row["ELCRec vs best baseline"]
    assert "-100" not in md and "%)" not in row["ELCRec vs best baseline"]


def test_paper_budget_shows_published_numbers_and_no_banner(tmp_path) -> None:
    recs = [make_record(m, profile="paper", ranks=_ranks(0.1, seed=i)) for i, m in enumerate(("iclrec", "elcrec"))]
    cost, md = _write(tmp_path, recs)
    assert "Budget:" not in md.split("## profile `paper`", 1)[1]
    row = _leader_row(md, "Beauty", "NDCG@20")
    assert "ELCRec published" not in row  # beside ours in a table of their own, with their source
    published = _leader_row(md.split("### Published numbers", 1)[1], "Beauty", "NDCG@20")
    ours = {m: float(row[m].split(" ")[0]) for m in ("ICLRec", "ELCRec")}
    assert published["ELCRec"] == f"0.0509 / {ours['ELCRec'] - 0.0509:+.4f}"
    assert published["ICLRec"] == f"0.0491 / {ours['ICLRec'] - 0.0491:+.4f}"
    assert "Sources: ICLRec: ELCRec paper, Table 1 (mean over 3 seeds); ELCRec: ELCRec paper, Table 1" in md
    smoke_cost, smoke_md = _write(tmp_path / "smoke", [make_record("iclrec"), make_record("elcrec")])
    for text in (smoke_cost, smoke_md):
        section = text.split("## profile `smoke`", 1)[1]
        assert section.split("\n", 2)[2].startswith("> **Budget: smoke profile, pipeline check at a few epochs, not"
                                                     " converged (no verdict on which method is more accurate):"
                                                     " 1,000 users sampled, 4 epochs")
        assert "| ELCRec published" not in section and "paper change" not in section


def test_seed_level_paired_t_with_three_seeds(tmp_path) -> None:
    recs = []
    for seed in (1, 2, 3):
        recs.append(make_record("iclrec", seed=seed, ranks=_ranks(0.10, seed=seed)))
        recs.append(make_record("elcrec", seed=seed, ranks=_ranks(0.10, seed=seed + 10)))
    _, md = _write(tmp_path, recs)
    assert "(paired t, 3 seeds)" in _leader_row(md, "Beauty", "NDCG@20")["ELCRec p (paired test)"]


def _leader_row(md: str, dataset: str, metric: str) -> dict[str, str]:
    lines = [x for x in md.splitlines() if x.startswith("|")]
    header = next(x for x in lines if x.startswith("| dataset | metric"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [dataset, metric]:
            return dict(zip(cols, cells))
    raise AssertionError(f"no row {dataset} {metric}")


# ------------------------------------------------------------------------------------- the statistics
def test_wilcoxon_and_ranks_roundtrip() -> None:
    ranks = _ranks(0.2, n=5000)
    stored = records.encode_ranks({"test": ranks})
    assert len(stored["test"]) < 5000  # compact: most answers rank 20 or worse
    assert np.array_equal(records.decode_ranks({"ranks": stored}), ranks)
    assert records.decode_ranks({}) is None
    assert verdicts.wilcoxon_users(np.ones(10), np.ones(10)) == 1.0
    shifted = rank_gains(np.maximum(ranks.astype(int) - 3, 0), "NDCG@20")
    assert verdicts.wilcoxon_users(shifted, rank_gains(ranks, "NDCG@20")) < 1e-6
    assert rank_gains(np.array([0, 1, 19, 20]), "HR@20").tolist() == [1, 1, 1, 0]
    assert rank_gains(np.array([0, 20]), "NDCG@5").tolist() == [1.0, 0.0]


def test_a_mean_outside_zero_that_the_rank_test_does_not_reject_is_called_borderline() -> None:
    """Per-user differences mostly zero: a few users gain a lot, more lose a little. The mean's interval
    excludes zero; the Wilcoxon test, on ranks, does not reject. The verdict keeps the rule (not significant)
    and the text says the two disagree."""
    d = np.zeros(10_000)
    d[:80], d[80:280] = 0.5, -0.125  # exact in binary: equal magnitudes stay tied, as gains of one rank do
    base = np.full(10_000, 0.25)
    t = verdicts.paired_test(base + d, base, np.array([0.3]), np.array([0.3]))
    assert t.ci_low > 0 and t.p_users > verdicts.ALPHA and not t.significant and t.borderline
    assert t.describe().endswith("borderline: the 95% interval of the mean difference over users excludes zero, "
                                 "but the Wilcoxon test does not reject at p < 0.05")
    clear = verdicts.paired_test(base + np.where(d > 0, d, 0.0), base, np.array([0.3]), np.array([0.3]))
    assert clear.significant and not clear.borderline and "borderline" not in clear.describe()
    noise = verdicts.paired_test(base + np.tile([0.125, -0.125], 5000), base, np.array([0.3]), np.array([0.3]))
    assert not noise.significant and not noise.borderline


def test_per_run_interval_needs_two_runs() -> None:
    assert verdicts.per_run_interval([100.0], [110.0]).low_pct is None
    iv = verdicts.per_run_interval([100.0, 101.0, 99.0], [110.0, 111.0, 109.0])
    assert iv.high_pct < 0 and iv.change_pct == pytest.approx(-9.09, abs=0.05)
    assert verdicts.paired_t_seeds(np.array([0.1, 0.2]), np.array([0.1, 0.1])) is None  # < 3 seeds


# ------------------------------------------------------------------------------ time to a target quality
def test_time_to_target_from_valid_curves_and_phase_times(tmp_path) -> None:
    import pandas as pd

    from bench.reporting.comparisons import time_to_target

    a = pd.DataFrame({"column": ["A"], "valid_curve": [[0.1, 0.2, 0.3]], "epoch_training_s": [[10.0, 10.0, 10.0]]})
    b = pd.DataFrame({"column": ["B"], "valid_curve": [[0.05, 0.1, 0.2, 0.25]], "epoch_training_s": [[5.0] * 4]})
    # B is the weaker (best 0.25): targets 0.125, 0.225, 0.25, first reached by A after 2, 3, 3 epochs and
    # by B after 3, 4, 4.
    out = time_to_target(a, b)
    assert [(t.fraction, t.weaker) for t in out] == [(0.5, "B"), (0.9, "B"), (1.0, "B")]
    assert [(t.seconds_a, t.seconds_b) for t in out] == [((20.0,), (15.0,)), ((30.0,), (20.0,)), ((30.0,), (20.0,))]
    assert verdicts.cost_verdict(out[-1].interval, "A") == "no verdict: one run per method: no spread to measure (A +50.0%)"
    # Two seeds each (A 30 and 33 s, B 20 and 22 s): an interval between seeds, entirely above zero.
    a2 = pd.concat([a, a.assign(epoch_training_s=[[11.0] * 3])])
    b2 = pd.concat([b, b.assign(epoch_training_s=[[5.5] * 4])])
    iv = time_to_target(a2, b2)[-1].interval
    assert iv.has_interval and iv.low_pct > 0 and verdicts.cost_verdict(iv, "A").startswith("A costs more: +50.0%")
    # In cost.md, labelled with its profile: ELCRec, twice as accurate at every epoch and with half the epoch
    # time, reaches ICLRec's best sooner in each of 2 seeds.
    recs = [make_record("iclrec", seed=s, train_s=(10.0, 10.0 + s, 10.0, 10.0), ranks=_ranks(0.1, seed=s)) for s in (1, 2)]
    recs += [make_record("elcrec", seed=s, train_s=(5.0, 5.0 + s, 5.0, 5.0), ranks=_ranks(0.2, seed=s)) for s in (1, 2)]
    cost, _ = _write(tmp_path, recs)
    section = cost.split("### Time to a target quality (valid NDCG@20), at the smoke profile's budget", 1)[1]
    row = next(line for line in section.splitlines() if line.startswith("| Beauty | 100% of the best of ICLRec"))
    assert "| ELCRec saves: -" in row and "(2+2 seeds)" in row


def test_time_to_target_names_the_epochs_a_campaign_ran_in_another_context(tmp_path) -> None:
    # ICLRec's campaign made epochs 0-2 on a slower machine: its time to a target counts them, and says so.
    elsewhere = {**CONTEXT, "cpu_model": "Slow CPU"}
    moved = {**CONTEXT, "segments": [run_context.segment(elsewhere, 0), run_context.segment(CONTEXT, 3)]}
    icl = make_record("iclrec", train_s=(40.0, 30.0, 30.0, 10.0, 10.2), context=moved, ranks=_ranks(0.1))
    sas = make_record("sasrec", train_s=(10.0, 5.0, 5.1, 4.9, 5.0), ranks=_ranks(0.1, seed=2))
    elc = make_record("elcrec", train_s=(20.0, 5.0, 5.1, 4.9, 5.0), ranks=_ranks(0.2, seed=3))
    runs = _saved_runs(tmp_path, [icl, sas, elc])
    from bench.reporting.comparisons import time_to_target_table

    table = time_to_target_table(runs)
    spans = "ICLRec seed 1: epochs 0-2 Slow CPU, 1 thread(s), 1 in flight then 3-4 Test CPU, 1 thread(s), 1 in flight"
    # Every pair with ICLRec says it (ICLRec vs SASRec too, which the headline does not show); the other does not.
    with_icl = table[(table["method_a"] == "iclrec") | (table["method_b"] == "iclrec")]
    assert len(with_icl) == 6 and (with_icl["mixed_contexts"] == spans).all()
    assert table.loc[(table["method_a"] == "elcrec") & (table["method_b"] == "sasrec"), "mixed_contexts"].isna().all()
    write_leaderboard(tmp_path, tmp_path / "out")
    cost = (tmp_path / "out" / "cost.md").read_text()
    assert f"some runs' epochs ran in more than one context, so they mix those contexts' speeds: {spans}." in cost
