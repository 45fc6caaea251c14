"""Run records: one JSON file per run under `<results>/runs/` (schema in docs/records.md).

Records are the only interface between running experiments and reporting on them, so they are written
atomically (a crash mid-write must never leave a truncated record that a resume would mistake for a finished
run) and read leniently (one damaged file must not stop a leaderboard over hundreds of runs).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.core import context as run_context
from bench.core.configs import hyperparameter_source
from bench.core.evaluate import METRICS
from bench.core.files import TMP_SUFFIX, write_text_atomic
from methods import REGISTRY, MethodConfig

# 2: ICLRec records say kmeans_init; 3: every field present; 4: context segments (bench/core/migrate.py upgrades)
RECORD_SCHEMA = 4
STATUSES = ("ok", "failed", "interrupted")

# Temp files get this suffix so that the `runs/*.json` glob never picks up a half-written record.
# A JSON object without these keys cannot be placed in any table, so it counts as unreadable.
_REQUIRED_KEYS = ("method", "dataset", "seed", "profile", "status")
_TOTALS = ("estep_s", "train_s", "eval_s", "test_eval_s", "wall_s", "time_to_best_s")
_PHASES = ("estep_s", "train_s", "eval_s")

# Record fields copied into the table as they are.
_FIELDS = ("run_id", "method", "dataset", "seed", "profile", "protocol", "config_source", "status", "error")
_RUN_INFO = ("device", "best_epoch", "peak_memory_bytes", "started_at", "finished_at")
_SCORES = (*(f"test_{m}" for m in METRICS), *(f"best_valid_{m}" for m in METRICS))
_PER_EPOCH = tuple(f"{p}_per_epoch" for p in _PHASES)
# Warm-up apart from steady state: the first epoch's seconds (compilation, caches, k-means initialisation)
# and the median over the later epochs (NaN when the run had a single epoch).
_FIRST = tuple(f"{p}_first" for p in _PHASES)
_STEADY = tuple(f"{p}_steady_median" for p in _PHASES)
_NUMERIC = (*_SCORES, *_TOTALS, "epochs_run", *_PER_EPOCH, *_FIRST, *_STEADY, "peak_memory_bytes")
# The process's CPU seconds of an epoch's E-step + training, median over the later epochs that recorded it:
# beside the wall seconds, what the run itself used, which other work on the cores does not stretch.
_NUMERIC += ("num_users", "max_users", "spec_epochs", "spec_patience", "threads", "concurrency", "training_cpu_s_steady_median")
COLUMNS = [*_FIELDS, "device", "variant", "device_name", "best_epoch", *_SCORES, *_TOTALS, "epochs_run", *_PER_EPOCH]
COLUMNS += [*_FIRST, *_STEADY, "training_cpu_s_steady_median", "num_users", "max_users", "spec_epochs", "spec_patience"]
COLUMNS += ["machine", "threads", "concurrency", "context", "has_ranks", "hostname", "software"]
# Per-epoch lists: E-step + train seconds (wall, and CPU where recorded), valid NDCG@20, and the comparable
# context each epoch ran in.
COLUMNS += ["epoch_training_s", "epoch_training_cpu_s", "valid_curve", "epoch_keys", "epoch_speed_probe_s"]
# Every execution option's value (FAITHFUL's keys, defaults filled in) and the config's recommendation loss
# (None where the record's config does not name one): the tables keep runs that differ in them apart.
COLUMNS += ["variant_options", "rec_loss"]
# The config's encoder: the tables keep runs on different encoders apart, like recommendation losses.
COLUMNS += ["encoder"]
COLUMNS += ["peak_memory_bytes", "started_at", "finished_at", "path"]
RANK_ENCODING = "uint8-zlib-base64"


def write_record_atomic(path: Path, record: dict) -> None:
    """Write one run record as JSON (indent 1, keys in insertion order), atomically."""
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=False) + "\n")


def read_record(path: Path) -> dict | None:
    """The record at `path`, or None when it is a temp file, unreadable, not JSON or not a run record."""
    path = Path(path)
    if path.name.endswith(TMP_SUFFIX):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError covers JSONDecodeError and UnicodeDecodeError
        return None
    if not isinstance(record, dict) or any(k not in record for k in _REQUIRED_KEYS):
        return None
    return record if record_problem(record) is None else None


def record_problem(record: dict) -> str | None:
    """Why a parsed JSON object cannot be used as a run record, or None when it can.

    A record of another schema, or whose metrics are not numbers, would put wrong values in a table: such a
    file counts as unreadable (listed by `find_corrupt`, reported on the terminal), never half-used.
    """
    if record.get("schema") != RECORD_SCHEMA:
        hint = "; `python -m bench records migrate` upgrades it" if is_older_schema(record) else ""
        return f"unknown record schema {record.get('schema')!r} (this harness reads {RECORD_SCHEMA}){hint}"
    if record.get("status") not in STATUSES:
        return f"unknown status {record.get('status')!r}"
    for key in ("test", "best_valid", "totals"):
        section = record.get(key)
        if section is None:
            continue
        if not isinstance(section, dict):
            return f"{key} is not a mapping"
        bad = [k for k, v in section.items() if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))]
        if bad:
            return f"{key} has non-numeric values ({', '.join(sorted(bad)[:3])})"
    if not isinstance(record.get("epochs", []), list):
        return "epochs is not a list"
    return None


def is_older_schema(record: dict) -> bool:
    """Whether `record` is of a schema before RECORD_SCHEMA, which `python -m bench records migrate` upgrades."""
    schema = record.get("schema")
    return isinstance(schema, int) and not isinstance(schema, bool) and 1 <= schema < RECORD_SCHEMA


def check_schemas(results_dir: Path) -> None:
    """One line (BenchError) when records under `<results_dir>/runs/` are of an older schema: the tables rely on
    every field of the current one, so they are neither skipped nor half-read but upgraded first."""
    from bench.core.errors import BenchError

    older = []
    for path in _record_files(results_dir):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: find_corrupt names it
        if isinstance(record, dict) and is_older_schema(record):
            older.append(path)
    if older:
        raise BenchError(
            f"{len(older)} record(s) under {Path(results_dir) / 'runs'} are of an older schema than {RECORD_SCHEMA}"
            f" (such as {older[0].name}): run `python -m bench records migrate --results {results_dir}` first"
        )


def run_id(
    method: str, dataset: str, seed: int, profile: str, protocol: str, config: dict, budget: dict | None = None
) -> str:
    """First 12 hex digits of the sha256 of the canonical JSON of everything that determines a result.

    `budget` (epochs, patience, users) matters for custom runs, whose profile name does not fix it.
    """
    payload = {
        "method": method,
        "dataset": dataset,
        "seed": seed,
        "profile": profile,
        "protocol": protocol,
        "config": config,
    }
    if budget is not None:
        payload["budget"] = budget
    # sort_keys at every depth makes the id independent of dict order; compact separators fix whitespace.
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def record_path(results_dir: Path, record_meta: dict) -> Path:
    """`<results_dir>/runs/<method>-<dataset>-s<seed>-<profile>-<run_id>.json`.

    `record_meta` needs method, dataset, seed and profile, plus either run_id or (protocol and config) to
    compute it from.
    """
    m = record_meta
    rid = m.get("run_id") or run_id(
        m["method"], m["dataset"], m["seed"], m["profile"], m["protocol"], m["config"]
    )
    return Path(results_dir) / "runs" / f"{m['method']}-{m['dataset']}-s{m['seed']}-{m['profile']}-{rid}.json"


def _record_files(results_dir: Path) -> list[Path]:
    # Sorted so that tables and "latest record wins" ties do not depend on directory order.
    return sorted((Path(results_dir) / "runs").glob("*.json"))


def find_corrupt(results_dir: Path) -> list[Path]:
    """Record files under `<results_dir>/runs/` that `read_record` cannot use."""
    return [p for p in _record_files(results_dir) if read_record(p) is None]


# The faithful (published) value of every execution option: run ids leave these values out, records and
# tables name the others. precision and compile are RunSpec fields; view_encoding and kmeans_init are
# config keys (of the methods that have them). rec_loss, a config key of every method, has a faithful value
# per method (`faithful_values`).
FAITHFUL = {"precision": "fp32", "compile": "off", "view_encoding": "separate", "kmeans_init": "warm"}
PUBLISHED_REC_LOSS = "bce"  # of SASRec, CL4SRec, ICLRec and ELCRec
# The encoder of every published number and of every record made before the option existed: run ids
# leave it out at this value (bench/core/identity.py), so those records keep their ids.
DEFAULT_ENCODER = MethodConfig.encoder


def encoder_of(config: dict | None) -> str | None:
    """The encoder a record's config names: the default where it has none (a record from before the
    option); None for a failed run whose config never resolved."""
    return config.get("encoder", DEFAULT_ENCODER) if config else None


def faithful_values(method: str | None) -> dict:
    """FAITHFUL plus `rec_loss` at `method`'s own published value, its config's default (bce for the first
    four methods, ce_last for ICSRec and DuoRec); bce for a method this harness does not know."""
    cls = REGISTRY.get(method) if method is not None else None
    return {**FAITHFUL, "rec_loss": cls.Config.rec_loss if cls is not None else PUBLISHED_REC_LOSS}


def variant_mode(options: dict, published_rec_loss: str | None = None) -> str:
    """"fast", "modified" or "faithful" for execution options (missing ones at their faithful value).

    compile and tf32 keep the published math (fused kernels, TF32 products); bf16 and a shared encoding of
    the views change what is computed to save time, so they make a run "fast"; a fresh k-means at every
    E-step, or a recommendation loss other than the method's published one (`published_rec_loss`, when
    known), changes it for no saving ("modified").
    """
    fast = options.get("precision", "fp32") == "bf16" or options.get("view_encoding", "separate") != "separate"
    other_loss = published_rec_loss is not None and options.get("rec_loss", published_rec_loss) != published_rec_loss
    modified = options.get("kmeans_init", "warm") != "warm" or other_loss
    return "fast" if fast else "modified" if modified else "faithful"


def variant_label(record: dict) -> str:
    """"faithful", or the mode and every non-default execution option, e.g. "fast (precision=bf16)".

    A variant names only the options its method has (view_encoding for ICLRec and ELCRec, kmeans_init for
    ICLRec and ICSRec); precision, compile and rec_loss are in every ok record's variant.
    """
    variant = record["variant"]
    faithful = faithful_values(record["method"])
    options = [f"{k}={variant[k]}" for k, v in faithful.items() if variant.get(k, v) != v]
    return f"{variant['mode']} ({', '.join(options)})" if options else variant["mode"]


def _flatten(record: dict, path: Path) -> dict[str, Any]:
    # `or {}`: a failed or interrupted run may lack, or carry null for, the sections it never reached (env,
    # test, totals, context, ranks); an ok record of this schema has every one (docs/records.md).
    test = record.get("test") or {}
    valid = record.get("best_valid") or {}
    totals = record.get("totals") or {}
    epochs = record.get("epochs") or []
    row: dict[str, Any] = {k: record.get(k) for k in (*_FIELDS, *_RUN_INFO)}
    row["device_name"] = (record.get("env") or {}).get("device_name")
    row["variant"] = variant_label(record)
    # Options a method does not have stand at their faithful value, so every row names all of them.
    row["variant_options"] = {k: record["variant"].get(k, v) for k, v in FAITHFUL.items()}
    row["rec_loss"] = record["config"].get("rec_loss")  # None only for a failed run whose config never resolved
    row["encoder"] = encoder_of(record["config"])
    # The tables name the loss and the encoder in columns of their own, so a config that is the paper's but
    # for them counts as the paper's (bench/core/configs.hyperparameter_source).
    row["config_source"] = hyperparameter_source(record["method"], record["dataset"], record.get("config_source"),
                                                 record.get("config"))
    row.update({f"test_{m}": test.get(m) for m in METRICS})
    row.update({f"best_valid_{m}": valid.get(m) for m in METRICS})
    row["epochs_run"] = totals.get("epochs_run", len(epochs))
    for key in _TOTALS:
        # Fall back to summing the epochs so that a record without totals still reports its phase times.
        fallback = sum(e.get(key) or 0.0 for e in epochs) if key in _PHASES and epochs else None
        row[key] = totals.get(key, fallback)
    for phase in _PHASES:
        spent = sum(e.get(phase) or 0.0 for e in epochs)
        row[f"{phase}_per_epoch"] = spent / row["epochs_run"] if epochs and row["epochs_run"] else None
        row[f"{phase}_first"] = epochs[0].get(phase) if epochs else None
        later = [e.get(phase) or 0.0 for e in epochs[1:]]
        row[f"{phase}_steady_median"] = float(np.median(later)) if later else None
    cpu = [e["training_cpu_s"] for e in epochs[1:] if e.get("training_cpu_s") is not None]  # absent in older runs
    row["training_cpu_s_steady_median"] = float(np.median(cpu)) if cpu else None
    spec = record.get("spec") or {}
    row["num_users"] = record.get("num_users")
    row["max_users"] = spec.get("max_users")
    row["spec_epochs"], row["spec_patience"] = spec.get("epochs"), spec.get("patience")
    ctx = record.get("context")
    known = ctx or {}
    row["machine"] = run_context.machine(ctx) if ctx else None
    row["threads"], row["concurrency"] = known.get("threads"), known.get("concurrency")
    row["context"] = ctx
    row["has_ranks"] = bool((record.get("ranks") or {}).get("test"))
    row["hostname"] = (record.get("env") or {}).get("hostname")
    row["software"] = f"torch {known.get('torch') or '?'}, faiss {known.get('faiss') or '?'}"
    row["epoch_training_s"] = [(e.get("estep_s") or 0.0) + (e.get("train_s") or 0.0) for e in epochs]
    row["epoch_training_cpu_s"] = [e.get("training_cpu_s") for e in epochs]  # None where not recorded
    row["valid_curve"] = [(e.get("valid") or {}).get("NDCG@20", np.nan) for e in epochs]
    row["epoch_keys"] = run_context.epoch_keys(ctx, epochs) if ctx else [None] * len(epochs)
    row["epoch_speed_probe_s"] = run_context.epoch_speed_probes(ctx, epochs) if ctx else [None] * len(epochs)
    row["path"] = None if path is None else str(path)
    return row


def load_records(results_dir: Path) -> pd.DataFrame:
    """One row per readable record under `<results_dir>/runs/*.json`, columns `COLUMNS`.

    Unreadable files are skipped here; `find_corrupt` lists them so that callers can report them.
    """
    readable = ((record, path) for path in _record_files(results_dir) if (record := read_record(path)) is not None)
    return records_table(readable)


def records_table(pairs) -> pd.DataFrame:
    """The table of `load_records` for (record, path) pairs (a path may be None)."""
    rows = [_flatten(record, path) for record, path in pairs]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    # Missing numbers arrive as None; make the numeric columns float so that means and NaN checks work.
    frame[list(_NUMERIC)] = frame[list(_NUMERIC)].astype("float64")
    return frame


def encode_ranks(ranks: dict[str, np.ndarray]) -> dict:
    """Per-user ranks (uint8, clipped at 20) as stored in a record: zlib-compressed, base64 text per split.

    Kept inside the record rather than in a file beside it, so that a record stays one atomic file and
    travels from a Ray worker to the driver as plain JSON. Most answers rank 20 or worse, so a split of
    22,363 users takes a few kB.
    """
    out: dict = {"encoding": RANK_ENCODING, "clip": 20}
    for split, values in ranks.items():
        raw = np.asarray(values, dtype=np.uint8).tobytes()
        out[split] = base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
    return out


def decode_ranks(record: dict, split: str = "test") -> np.ndarray | None:
    """The per-user ranks of `split` stored in `record` (uint8 array in user order), or None if absent."""
    stored = record.get("ranks") or {}
    if stored.get("encoding") != RANK_ENCODING or not stored.get(split):
        return None
    return np.frombuffer(zlib.decompress(base64.b64decode(stored[split])), dtype=np.uint8)


def load_test_ranks(paths) -> dict[str, np.ndarray | None]:
    """Per-user test ranks of the records at `paths` (None for a record that has none), keyed by path."""
    out: dict[str, np.ndarray | None] = {}
    for path in paths:
        record = read_record(Path(path))
        out[str(path)] = decode_ranks(record) if record is not None else None
    return out


def finalise(record: dict, rid: str) -> dict:
    """The record as stored: schema version and run id first, then the run's fields."""
    return {"schema": RECORD_SCHEMA, "run_id": rid, **record}


def save(results_dir: Path, record: dict) -> Path:
    """Write a finalised record to its place under `results_dir`, atomically; returns the path."""
    path = record_path(results_dir, record)
    write_record_atomic(path, record)
    return path


def completed_run_ids(results_dir: Path) -> set[str]:
    """Run ids whose record exists with status ok: what a resumed grid skips."""
    done = set()
    for path in _record_files(results_dir):
        record = read_record(path)
        if record is not None and record.get("status") == "ok" and record.get("run_id"):
            done.add(record["run_id"])
    return done
