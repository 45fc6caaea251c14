"""The scaling study (`python -m bench scaling`): at what number of users does ELCRec save time or memory?

ICLRec pays an E-step every epoch (encode all N users, copy the [N, H] matrix to the host, k-means);
ELCRec pays one k-means at initialisation and then clustering terms inside every training step. Both
methods' training steps are batch-sized, so an epoch costs ceil(N / B) of them whatever N is. This module
measures each part at growing N on a synthetic population made by resampling the dataset's real training
sequences, fits each part's cost against N, and extrapolates (marked as such) to the paper's scale.

What is measured and what is estimated:
- the E-step is measured whole at every N: encoding (eval mode, mean-pooled, as the harness does it), the
  device-to-host copy (faiss needs host data), and k-means per backend;
- a training step does not depend on N, so it is timed on a sample of steps (batches of a pool of a few
  thousand resampled users, built by the harness's own batch iterator) and multiplied by ceil(N / B): that
  epoch time is an **estimate**, checked against real full epochs at the smallest N;
- ELCRec's clustering terms (nearest center of all 2*B*L view positions, prototype gather, center
  projection, clustering loss, intent assignment, and their backward) are timed apart on the same shapes;
- memory: the measured high-water mark of each phase above what was held before it (RSS on a CPU, torch's
  allocator on a GPU), plus the harness's data tensors for N users, computed from their shapes.

Only `bench/cli.py` parses arguments; it calls `run_study` with a `ScalingSpec` or `write_outputs`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.core.costs import PeakMemory, synchronize
from bench.core.errors import BenchError
from bench.core.records import write_bytes_atomic, write_text_atomic

DEFAULT_USERS = (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000)
EXTRAPOLATE_TO = (100_000_000, 130_000_000)
BACKENDS = ("faiss", "torch")
METHODS = ("iclrec", "elcrec")
ENCODE_CHUNK = 65_536  # users per call of the harness's encode_mean_pooled (which batches by 1024 inside)
CSV_NAME = "scaling.csv"
MD_NAME = "scaling.md"
CONTEXT_NAME = "context.json"
CSV_COLUMNS = [
    "dataset", "N", "method", "device", "kmeans", "phase", "seconds", "seconds_min", "seconds_max",
    "peak_bytes", "kind", "repeats", "note",
]
# Phases that add up to a method's seconds per epoch.
EPOCH_PHASES = {
    "iclrec": ("estep_encode", "estep_copy", "estep_kmeans", "train"),
    "elcrec": ("train_other", "cluster_terms"),
}
PHASE_LABELS = {
    "estep_encode": "E-step: encode N users",
    "estep_copy": "E-step: device-to-host copy",
    "estep_kmeans": "E-step: k-means",
    "train": "training steps",
    "train_other": "training steps without clustering terms",
    "cluster_terms": "clustering terms",
    "init_once": "one-off k-means initialisation (not per epoch)",
    "data": "harness data tensors for N users (computed)",
}


@dataclass(frozen=True)
class ScalingSpec:
    """What one `bench scaling` invocation measures. Built by the CLI, or directly by tests."""

    dataset: str = "Beauty"
    users: tuple[int, ...] = DEFAULT_USERS
    device: str = "auto"
    backends: tuple[str, ...] = BACKENDS
    repeats: int = 3
    repeats_large: int = 1  # repeats at N >= large_from (their E-step alone takes minutes on a CPU)
    large_from: int = 1_000_000
    step_sample: int = 8  # timed training steps per method per repeat
    pool_users: int = 4096  # users of the batch pool the steps are timed on
    validate_smallest: int = 2  # real full epochs at this many of the smallest N
    seed: int = 0
    threads: int | None = None
    results: Path = Path("results/scaling")
    overrides: dict = field(default_factory=dict)  # config overrides for both methods (tests: tiny K, H)


# ------------------------------------------------------------------------------------------- population
def resample_users(num_real: int, n: int, seed: int) -> np.ndarray:
    """Indices of the N synthetic users into the real ones: seeded, uniform, with replacement."""
    return np.random.default_rng([seed, n]).integers(0, num_real, size=n)


def build_population(seqs, n: int, seed: int):
    """A population of N users whose sequences are real training sequences drawn with replacement.

    Lengths and item popularity follow the dataset's (up to sampling error); item ids are unchanged, so the
    item table is the dataset's.
    """
    from bench.core.data import Sequences

    idx = resample_users(seqs.num_users, n, seed)
    lengths = seqs.lengths[idx]
    starts = seqs.offsets[idx]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Sequences(items=seqs.items[gather], offsets=offsets)


def population_train_input(real_train_input: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """[N, L] int32 encoder inputs of the population (rows of the real ones), built in chunks.

    The harness holds int64; int32 halves the one [N, L] matrix the E-step needs and is converted back per
    chunk, so the encoder sees exactly the harness's inputs.
    """
    n, length = len(idx), real_train_input.shape[1]
    out = torch.empty((n, length), dtype=torch.int32, device=device)
    src = real_train_input.to(device=device, dtype=torch.int32)
    index = torch.from_numpy(idx)
    for start in range(0, n, 1 << 20):
        out[start : start + (1 << 20)] = src[index[start : start + (1 << 20)].to(device)]
    return out


def harness_data_bytes(n: int, n_max: int, max_len: int) -> int:
    """Bytes of the tensors `SequenceData` holds for N users (int64): full and negative gaps [N, n_max],
    four [N, L] windows, six [N] vectors. Both methods hold them; they are the same for both."""
    return 8 * n * (2 * n_max + 4 * max_len + 6)


# ------------------------------------------------------------------------------------------ environment
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError(f"--device {name} was asked for but torch sees no CUDA device")
        return torch.device(name)
    raise BenchError(f"unknown device {name!r}; choose auto, cpu or cuda")


def check_backends(backends: tuple[str, ...]) -> None:
    if not backends:
        raise BenchError("--kmeans needs at least one backend (faiss, torch)")
    for b in backends:
        if b not in BACKENDS:
            raise BenchError(f"unknown k-means backend {b!r}; choose faiss or torch")
    if "faiss" in backends:
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise BenchError("--kmeans faiss needs the faiss package (pip install faiss-cpu)") from None


def check_users(users: tuple[int, ...], k: int) -> tuple[int, ...]:
    if not users:
        raise BenchError("--users needs at least one population size")
    out = []
    for u in users:
        if float(u) != int(u) or int(u) < 1:
            raise BenchError(f"--users: {u} is not a positive whole number of users")
        if int(u) < k:
            raise BenchError(f"--users: N={int(u):,} is below K={k} intents; k-means needs at least K users")
        out.append(int(u))
    return tuple(sorted(set(out)))


def memory_needed(n: int, hidden: int, max_len: int, k: int, cap: int, backends: tuple[str, ...], device) -> dict:
    """Bytes the E-step at N needs on the device and on the host (an upper estimate, before allocating)."""
    inputs = n * max_len * 4  # int32 [N, L]
    pooled = 2 * n * hidden * 4  # [N, H] float32, twice while the chunks are concatenated
    sample = min(n, cap)
    km = sample * hidden * 4 + (3 * sample * k * 4 if "torch" in backends else sample * hidden * 4)
    encode = ENCODE_CHUNK * max_len * 8 + 1024 * max_len * hidden * 4 * 8  # a chunk's ids and activations
    on_device = inputs + pooled + km + encode
    host = n * hidden * 4 + sample * hidden * 4 if (device.type == "cuda" and "faiss" in backends) else 0
    return {"device": on_device, "host": host}


def host_available_bytes() -> int:
    """Memory the host can still give (Linux: MemAvailable, which counts reclaimable caches; elsewhere the
    free pages, a lower bound). The standard library only: the study must run on a plain install."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # a platform without these names: no limit can be checked
        return 2**63


def available_bytes(device: torch.device) -> dict:
    host = host_available_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return {"device": int(free), "host": host}
    return {"device": host, "host": host}


def check_memory(users, hidden, max_len, k, cap, backends, device, headroom: float = 0.85) -> None:
    avail = available_bytes(device)
    for n in users:
        need = memory_needed(n, hidden, max_len, k, cap, backends, device)
        dev_need = need["device"] + (need["host"] if device.type == "cpu" else 0)
        if dev_need > headroom * avail["device"]:
            where = "GPU" if device.type == "cuda" else "host"
            raise BenchError(
                f"--users: N={n:,} needs about {dev_need / 2**30:.1f} GiB of {where} memory for the E-step, "
                f"{avail['device'] / 2**30:.1f} GiB are available; use a smaller N"
            )
        if device.type == "cuda" and need["host"] > headroom * avail["host"]:
            raise BenchError(
                f"--users: N={n:,} needs about {need['host'] / 2**30:.1f} GiB of host memory for faiss's copy, "
                f"{avail['host'] / 2**30:.1f} GiB are available; use a smaller N or --kmeans torch"
            )


def context(device: torch.device) -> dict:
    try:
        import faiss

        faiss_version, faiss_threads = faiss.__version__, faiss.omp_get_max_threads()
        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError:
        faiss_version, faiss_threads, faiss_gpus = None, None, 0
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss_threads,
        "faiss_gpus": faiss_gpus,
        "torch": torch.__version__,
        "faiss": faiss_version,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------- measuring
class _Clock:
    """Wall-clock seconds of a block, with the device synchronised at both ends (as bench.core.costs.PhaseTimer)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        return False


class _Peak:
    """Peak memory of a block above what was held when it started: RSS high-water (CPU), torch (GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.extra = 0

    def __enter__(self):
        if self.device.type == "cuda":
            synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        self._mem = PeakMemory(self.device)
        self._mem.start()
        if self.device.type != "cuda":
            self._base = self._mem.current()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        got = self._mem.stop()
        peak = got["torch_allocated_peak_bytes"] if self.device.type == "cuda" else got["peak_memory_bytes"]
        self.extra = max(0, int(peak) - int(self._base))
        return False


def encode_population(method, train_input: torch.Tensor) -> torch.Tensor:
    """The E-step's encoding: `encode_mean_pooled` (eval mode, mean over L) of every user, [N, H]."""
    parts = [method.encode_mean_pooled(train_input[i : i + ENCODE_CHUNK].long()) for i in range(0, len(train_input), ENCODE_CHUNK)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def run_kmeans(method, pooled: torch.Tensor, host: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The E-step's k-means (`IntentMethod.intent_kmeans`, the config's settings) with `backend`."""
    # faiss trains on host data: on a GPU without faiss-gpu that is the copy made beforehand (timed apart);
    # with faiss-gpu the clustering module copies again itself, which is then counted in k-means.
    x = pooled
    if backend == "faiss" and host is not None:
        import faiss

        if not (pooled.is_cuda and faiss.get_num_gpus() > 0):
            x = host
    return method.intent_kmeans(x, backend)


class _StepRunner:
    """One method's real training step (batch from the harness's iterator, loss, backward, Adam)."""

    def __init__(self, method, data, seed: int):
        self.method = method
        self.data = data
        self.optimizer = torch.optim.Adam(method.parameters(), lr=method.config.lr, weight_decay=method.config.weight_decay)
        self.generator = torch.Generator(device=data.device).manual_seed(seed)
        self._batches = None

    def epoch(self):
        return self.data.train_batches(self.method.config.batch_size, self.generator, self.method.view_maker)

    def next_batch(self):
        while True:
            if self._batches is None:
                self._batches = self.epoch()
            batch = next(self._batches, None)
            if batch is not None and len(batch.users) == self.method.config.batch_size:
                return batch
            self._batches = None  # a short last batch is skipped: timed steps are full batches

    def step(self, batch) -> None:
        terms = self.method.training_step(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.optimizer.step()

    def timed_steps(self, count: int, device) -> float:
        """Mean seconds of one step (batch construction included, as in the harness's train phase)."""
        with _Clock(device) as clock:
            for _ in range(count):
                self.step(self.next_batch())
        return clock.seconds / count

    def real_epoch(self, data, device) -> tuple[float, int]:
        """One real full epoch over `data` through the harness's iterator: (seconds, steps)."""
        saved, self.data = self.data, data
        steps = 0
        with _Clock(device) as clock:
            for batch in self.epoch():
                self.step(batch)
                steps += 1
        self.data = saved
        return clock.seconds, steps


def _step_memory_child(name: str, config: dict, pool_seqs, item_size: int, dataset: str, threads: int, seed: int) -> int:
    """In a fresh process: bytes a training step adds to the RSS high-water mark (no heap kept from others)."""
    from bench.core.data import SequenceData
    from methods import REGISTRY, DatasetInfo

    torch.set_num_threads(threads)
    cls = REGISTRY[name]
    cfg = cls.Config(**config)
    data = SequenceData(dataset, pool_seqs, item_size, max_len=cfg.max_len, device="cpu")
    torch.manual_seed(seed)
    method = cls(cfg, DatasetInfo(dataset, item_size, data.num_users), seed=1)
    runner = _StepRunner(method, data, seed)
    batch = runner.next_batch()
    with _Peak(torch.device("cpu")) as peak:
        for _ in range(2):
            runner.step(batch)
    return peak.extra


def _step_memory_main() -> None:
    """Entry point of the fresh process of `step_memory_fresh`: arguments as a pickle on stdin."""
    import pickle
    import sys

    args = pickle.loads(sys.stdin.buffer.read())
    print(_step_memory_child(*args))


def step_memory_fresh(name: str, config, pool_seqs, item_size: int, dataset: str, seed: int) -> int:
    """A CPU step's working memory, measured in a fresh process: in this one, the allocator keeps the blocks
    earlier phases freed, so a step would add (almost) nothing to the RSS however much it allocates."""
    import pickle
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    payload = pickle.dumps((name, config.to_dict(), pool_seqs, item_size, dataset, torch.get_num_threads(), seed))
    out = subprocess.run(
        [sys.executable, "-c", "from bench.tools.scaling import _step_memory_main; _step_memory_main()"],
        input=payload, capture_output=True, cwd=root, env=env, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"step memory measurement failed: {out.stderr.decode()[-400:]}")
    return int(out.stdout.decode().split()[-1])


def cluster_terms_seconds(method, batch, device, reps: int = 3) -> float:
    """Seconds of ELCRec's clustering terms in one step, on the step's own shapes, forward and backward.

    The parts: nearest center of all 2*B*L view positions and the prototype gather (`with_prototypes`), the
    in-place projection of the centers, the clustering loss, the nearest center of each user and its gather.
    The encoder outputs are stand-ins with gradient, so that the timing excludes the encoder itself.
    """
    b, length, h = batch.input_ids.shape[0], batch.input_ids.shape[1], method.config.hidden_size
    gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randn(2 * b, length, h, generator=gen, device=device).requires_grad_()
    hidden = torch.randn(b, length, h, generator=gen, device=device).requires_grad_()
    saved = method.cluster_centers.detach().clone()
    total = 0.0
    for _ in range(reps):
        with _Clock(device) as clock:
            proto, cluster, picked = method.clustering_terms(hidden, views)  # [2B, L, H or 2H], [], [B, H]
            (proto.sum() * 0 + cluster + picked.sum() * 0).backward()
        total += clock.seconds
        method.cluster_centers.grad = None
        views.grad = None
        hidden.grad = None
    with torch.no_grad():
        method.cluster_centers.copy_(saved)
    return total / reps


def _spread(values: list[float]) -> tuple[float, float, float]:
    arr = np.asarray(values, dtype=float)
    return float(np.median(arr)), float(arr.min()), float(arr.max())


def run_study(spec: ScalingSpec, progress: bool = True, sequences=None) -> list[Path]:
    """Measure, fit, write the outputs; returns the paths written. `sequences` replaces the dataset (tests)."""
    from tqdm.auto import tqdm

    from bench.core.configs import resolve_config
    from bench.core.data import SequenceData, dataset_path, parse_sequences
    from methods import REGISTRY, DatasetInfo

    device = resolve_device(spec.device)
    check_backends(tuple(spec.backends))
    if spec.repeats < 1 or spec.repeats_large < 1 or spec.step_sample < 1:
        raise BenchError("--repeats and the step sample must be >= 1")
    cfgs = {m: resolve_config(m, spec.dataset, "paper", spec.overrides or None)[0] for m in METHODS}
    icl = cfgs["iclrec"]
    k = max(c.num_intents for c in cfgs.values())
    users = check_users(tuple(spec.users), k)
    cap = icl.num_intents * icl.kmeans_max_points_per_centroid
    check_memory(users, icl.hidden_size, icl.max_len, icl.num_intents, cap, tuple(spec.backends), device)

    previous_threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)
        try:  # faiss's k-means runs on OpenMP threads of its own
            import faiss

            faiss.omp_set_num_threads(spec.threads)
        except ImportError:
            pass
    try:
        if sequences is None:
            sequences = parse_sequences(dataset_path(spec.dataset))
        item_size = int(sequences.items.max()) + 2
        real = SequenceData(spec.dataset, sequences, item_size, max_len=icl.max_len, device="cpu")
        pool_seqs = build_population(sequences, spec.pool_users, spec.seed + 1)
        pool = SequenceData(spec.dataset, pool_seqs, item_size, max_len=icl.max_len, device=str(device))
        n_max = int(sequences.lengths.max())
        ctx = {
            "dataset": spec.dataset, "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "load_average_start": list(os.getloadavg()), **context(device),
            "spec": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in asdict(spec).items() if k_ != "results"},
            "kmeans_sample_cap": cap, "configs": {m: c.to_dict() for m, c in cfgs.items()},
        }
        methods = {}
        for name in METHODS:
            torch.manual_seed(spec.seed + 1)
            info = DatasetInfo(spec.dataset, item_size, max(users[-1], real.num_users))
            methods[name] = REGISTRY[name](cfgs[name], info, seed=1).to(device)
        # Centers as after initialisation (k-means of the real users' encodings), so the steps are realistic.
        init_pooled = methods["iclrec"].encode_mean_pooled(real.train_input.to(device))
        init = run_kmeans(methods["iclrec"], init_pooled, init_pooled.cpu(), spec.backends[0]).to(device)
        methods["iclrec"].centroids.copy_(init)
        methods["iclrec"].prototypes.copy_(F.normalize(init, p=2, dim=1))
        with torch.no_grad():
            methods["elcrec"].cluster_centers.copy_(F.normalize(init, p=2, dim=1))
        runners = {name: _StepRunner(m, pool, spec.seed + 2) for name, m in methods.items()}
        first_step_mem = {}
        for name, r in runners.items():  # warm-up: first calls allocate and pick kernels
            with _Peak(device) as warm:
                r.timed_steps(2, device)
            first_step_mem[name] = warm.extra
            if device.type == "cpu":
                first_step_mem[name] = step_memory_fresh(name, cfgs[name], pool_seqs, item_size, spec.dataset, spec.seed)

        rows: list[dict] = []
        plan = [(n, rep) for n in users for rep in range(spec.repeats if n < spec.large_from else spec.repeats_large)]
        bar = tqdm(plan, desc="scaling", disable=not progress, unit="run")
        samples: dict[int, dict[str, list]] = {}
        all_steps: dict[str, list[float]] = {name: [] for name in METHODS}
        for n, rep in bar:
            bar.set_postfix_str(f"N={n:,} repeat {rep + 1}")
            s = samples.setdefault(n, {})
            idx = resample_users(real.num_users, n, spec.seed)
            inputs = population_train_input(real.train_input, idx, device)
            del idx
            method = methods["iclrec"]
            with _Peak(device) as enc_peak, _Clock(device) as enc:
                pooled = encode_population(method, inputs)
            s.setdefault("encode", []).append((enc.seconds, enc_peak.extra))
            if "faiss" in spec.backends:
                with _Peak(device) as copy_peak, _Clock(device) as copy:
                    host = pooled.to("cpu")
                    if host.data_ptr() != pooled.data_ptr():  # a real copy: count it
                        np.ascontiguousarray(host.numpy())
                s.setdefault("copy", []).append((copy.seconds, copy_peak.extra if device.type == "cuda" else 0))
            else:
                host = None
            for backend in spec.backends:
                bar.set_postfix_str(f"N={n:,} repeat {rep + 1} k-means {backend}")
                with _Peak(device) as km_peak, _Clock(device) as km:
                    run_kmeans(method, pooled, host, backend)
                # k-means runs while [N, H] is held: its peak above the E-step's start counts that matrix.
                held = pooled.numel() * pooled.element_size()
                s.setdefault(f"kmeans_{backend}", []).append((km.seconds, km_peak.extra + held))
            del pooled, host, inputs
            # Training steps, interleaved: the order of the two methods alternates between repeats.
            bar.set_postfix_str(f"N={n:,} repeat {rep + 1} steps")
            # Step by step, alternating, so that both methods see the same load on a shared machine.
            order = METHODS if (rep + users.index(n)) % 2 == 0 else METHODS[::-1]
            step_s = {name: 0.0 for name in METHODS}
            step_mem = dict.fromkeys(METHODS, 0)
            for i in range(spec.step_sample):
                for name in order if i % 2 == 0 else order[::-1]:
                    with _Peak(device) as step_peak:
                        one = runners[name].timed_steps(1, device)
                    step_s[name] += one
                    all_steps[name].append(one)
                    step_mem[name] = max(step_mem[name], step_peak.extra)
            for name in METHODS:
                s.setdefault(f"step_{name}", []).append((step_s[name] / spec.step_sample, step_mem[name]))
            batch = runners["elcrec"].next_batch()
            s.setdefault("cluster_terms", []).append((cluster_terms_seconds(methods["elcrec"], batch, device), 0))
            # The raw samples so far (seconds, bytes), kept beside the results: a sweep cut short loses nothing.
            raw = {"device": device.type, "samples": {str(k_): v for k_, v in samples.items()}, "steps": all_steps}
            write_text_atomic(Path(spec.results) / f"samples_{spec.dataset}_{device.type}.json", json.dumps(raw) + "\n")

        # A step's cost does not depend on N: every step timed at every N and repeat is one sample of it.
        # Its median is robust to the load spikes of a shared machine; the spread is that of the per-run means.
        run_means = {m: [x[0] for n_ in users for x in samples[n_][f"step_{m}"]] for m in METHODS}
        step_estimate = {m: (float(np.median(all_steps[m])), min(run_means[m]), max(run_means[m])) for m in METHODS}
        ratios = [e / i for i, e in zip(all_steps["iclrec"], all_steps["elcrec"])]
        # Real full epochs at the smallest N, to check the estimate (steps x median step time).
        validation = []
        for n in users[: spec.validate_smallest]:
            bar.set_postfix_str(f"N={n:,} real epochs")
            data = SequenceData(spec.dataset, build_population(sequences, n, spec.seed), item_size, max_len=icl.max_len, device=str(device))
            for name in METHODS:
                # The estimate's recipe (steps x mean of sampled steps) with steps sampled right before and after
                # the real epoch, so that both see the same machine; the study-wide median is reported beside it
                # (on a shared machine the load drifts between the sweep and these epochs).
                before = runners[name].timed_steps(spec.step_sample, device)
                seconds, steps = runners[name].real_epoch(data, device)
                after = runners[name].timed_steps(spec.step_sample, device)
                estimate = 0.5 * (before + after) * steps
                global_estimate = step_estimate[name][0] * steps
                validation.append({
                    "N": n, "method": name, "real_s": seconds, "estimated_s": estimate, "steps": steps,
                    "error_pct": 100.0 * (estimate - seconds) / seconds,
                    "study_median_estimate_s": global_estimate,
                    "study_median_error_pct": 100.0 * (global_estimate - seconds) / seconds,
                })
            del data
        bar.close()
        ctx["load_average_end"] = list(os.getloadavg())
        ctx["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        ctx["validation"] = validation
        ctx["step_samples"] = {m: len(v) for m, v in all_steps.items()}
        ctx["step_median_s"] = {m: v[0] for m, v in step_estimate.items()}
        ctx["step_ratio_elcrec_over_iclrec"] = {  # paired: consecutive steps of the two methods
            "median": float(np.median(ratios)), "q25": float(np.quantile(ratios, 0.25)), "q75": float(np.quantile(ratios, 0.75)),
        }

        base = {"dataset": spec.dataset, "device": device.type}
        for n in users:
            s = samples[n]
            steps = math.ceil(n / icl.batch_size)
            reps = len(s["encode"])
            data_bytes = harness_data_bytes(n, n_max, icl.max_len)
            enc_s, enc_lo, enc_hi = _spread([x[0] for x in s["encode"]])
            enc_mem = int(np.median([x[1] for x in s["encode"]]))
            for backend in spec.backends:
                common = {**base, "N": n, "kmeans": backend, "repeats": reps}
                if backend == "faiss":
                    cp = _spread([x[0] for x in s["copy"]])
                    cp_mem = int(np.median([x[1] for x in s["copy"]]))
                else:
                    cp, cp_mem = (0.0, 0.0, 0.0), 0
                km = _spread([x[0] for x in s[f"kmeans_{backend}"]])
                km_mem = int(np.median([x[1] for x in s[f"kmeans_{backend}"]]))
                st = step_estimate
                # On a CPU a step's working set is read in a fresh process (see step_memory_fresh); on a GPU,
                # torch's allocator statistics are exact in this one.
                st_mem = {m: max(first_step_mem[m], int(np.median([x[1] for x in s[f"step_{m}"]]))) for m in METHODS}
                cl = _spread([x[0] for x in s["cluster_terms"]])
                cl = tuple(min(v, st["elcrec"][0]) for v in cl)
                km_note = f"sample of at most {cap:,} points (K x max points per centroid)"
                iclrec_phases = {
                    "estep_encode": ((enc_s, enc_lo, enc_hi), enc_mem, "measured", ""),
                    "estep_copy": (cp, cp_mem, "measured", "faiss needs host data" if backend == "faiss" else "none: torch k-means runs on the device"),
                    "estep_kmeans": (km, km_mem, "measured", km_note + "; peak includes the [N, H] matrix"),
                    "train": (tuple(v * steps for v in st["iclrec"]), st_mem["iclrec"], "estimated", f"{steps:,} steps x median step"),
                }
                other = tuple(max(v - cl[0], 0.0) * steps for v in st["elcrec"])
                elcrec_phases = {
                    "train_other": (other, st_mem["elcrec"], "estimated", f"{steps:,} steps x (median step - clustering terms)"),
                    "cluster_terms": (tuple(v * steps for v in cl), 0, "estimated", f"{steps:,} steps x clustering terms of a step"),
                }
                for method, phases in (("iclrec", iclrec_phases), ("elcrec", elcrec_phases)):
                    for phase, (secs, mem, kind, note) in phases.items():
                        rows.append({**common, "method": method, "phase": phase, "seconds": secs[0], "seconds_min": secs[1],
                                     "seconds_max": secs[2], "peak_bytes": mem, "kind": kind, "note": note})
                    total = sum(p[0][0] for p in phases.values())
                    working = max(p[1] for p in phases.values())
                    rows.append({**common, "method": method, "phase": "total", "seconds": total,
                                 "seconds_min": sum(p[0][1] for p in phases.values()),
                                 "seconds_max": sum(p[0][2] for p in phases.values()),
                                 "peak_bytes": data_bytes + working, "kind": "estimated",
                                 "note": "seconds: sum of phases; peak: harness data + largest phase working set"})
                    rows.append({**common, "method": method, "phase": "data", "seconds": np.nan, "seconds_min": np.nan,
                                 "seconds_max": np.nan, "peak_bytes": data_bytes, "kind": "computed",
                                 "note": "SequenceData tensors, int64, from their shapes"})
                init = (enc_s + cp[0] + km[0], enc_lo + cp[1] + km[1], enc_hi + cp[2] + km[2])
                rows.append({**common, "method": "elcrec", "phase": "init_once", "seconds": init[0], "seconds_min": init[1],
                             "seconds_max": init[2], "peak_bytes": max(enc_mem, km_mem), "kind": "measured",
                             "note": "the same E-step as ICLRec's, once before epoch 0; not in the per-epoch total"})
        for v in validation:
            for backend in spec.backends:
                rows.append({**base, "N": v["N"], "method": v["method"], "kmeans": backend, "phase": "train_real_epoch",
                             "seconds": v["real_s"], "seconds_min": v["real_s"], "seconds_max": v["real_s"],
                             "peak_bytes": np.nan, "kind": "measured", "repeats": 1,
                             "note": f"one real epoch, {v['steps']} steps; estimate {v['estimated_s']:.2f} s ({v['error_pct']:+.1f}%) "
                                     f"from steps sampled around it; from the study's median step {v['study_median_estimate_s']:.2f} s "
                                     f"({v['study_median_error_pct']:+.1f}%)"})
    finally:
        torch.set_num_threads(previous_threads)

    results = Path(spec.results)
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    csv_path = results / CSV_NAME
    if csv_path.is_file():  # keep other devices' / datasets' runs; replace this one's
        old = pd.read_csv(csv_path)
        keep = ~((old["device"] == device.type) & (old["dataset"] == spec.dataset))
        frame = pd.concat([old[keep & (old["kind"] != "extrapolated")], frame], ignore_index=True)
    contexts = {}
    ctx_path = results / CONTEXT_NAME
    if ctx_path.is_file():
        contexts = json.loads(ctx_path.read_text())
    contexts[f"{spec.dataset}/{device.type}"] = ctx
    write_text_atomic(ctx_path, json.dumps(contexts, indent=1) + "\n")
    write_text_atomic(csv_path, _with_extrapolation(frame).to_csv(index=False, float_format="%.6g"))
    return [ctx_path, *write_outputs(results)]


# ---------------------------------------------------------------------------------- fit and extrapolate
def _fit(n: np.ndarray, y: np.ndarray, cap: float | None) -> tuple[float, float]:
    """Least squares in relative error of y = a + b * x, x = N (or min(N, cap)); a, b >= 0."""
    x = np.minimum(n, cap) if cap else n.astype(float)
    y = np.asarray(y, dtype=float)
    if np.all(y <= 0):
        return 0.0, 0.0
    w = 1.0 / np.where(y > 0, y, np.max(y))
    design = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    a, b = np.linalg.lstsq(design, y * w, rcond=None)[0]
    if a < 0:  # refit through the origin
        a, b = 0.0, float(np.sum(x * y * w * w) / np.sum(x * x * w * w))
    if b < 0:  # flat
        a, b = float(np.sum(y * w * w) / np.sum(w * w)), 0.0
    return float(a), float(b)


def _cap_of(note: str) -> float | None:
    if "sample of at most" in str(note):
        return float(str(note).split("at most ")[1].split(" ")[0].replace(",", ""))
    return None


def fits(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, device, backend, method, phase): the fit of seconds and of peak bytes against N, and
    its largest relative error on the measured points."""
    out = []
    measured = frame[frame["kind"].isin(["measured", "estimated", "computed"]) & (frame["phase"] != "train_real_epoch")]
    keys = ["dataset", "device", "kmeans", "method", "phase"]
    for key, g in measured.groupby(keys, sort=False):
        g = g.sort_values("N")
        n = g["N"].to_numpy(dtype=float)
        cap = _cap_of(g["note"].iloc[0]) if key[-1] == "estep_kmeans" else None
        row = dict(zip(keys, key))
        row["seconds_cap"] = cap if cap else np.nan
        row["model"] = f"a + b*min(N, {cap:,.0f})" if cap else "a + b*N"
        for what in ("seconds", "peak_bytes"):
            y = g[what].to_numpy(dtype=float)
            if np.all(np.isnan(y)) or len(y) < 2:
                row[f"{what}_a"] = row[f"{what}_b"] = row[f"{what}_max_err_pct"] = np.nan
                continue
            ok = ~np.isnan(y)
            a, b = _fit(n[ok], y[ok], cap if what == "seconds" else None)
            pred = a + b * (np.minimum(n[ok], cap) if (cap and what == "seconds") else n[ok])
            err = np.abs(pred - y[ok]) / np.where(y[ok] > 0, y[ok], 1)
            row[f"{what}_a"], row[f"{what}_b"] = a, b
            row[f"{what}_max_err_pct"] = float(100 * np.max(np.where(y[ok] > 0, err, 0)))
        row["points"] = len(g)
        out.append(row)
    return pd.DataFrame(out)


def _with_extrapolation(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[frame["kind"] != "extrapolated"]
    fit = fits(frame)
    rows = []
    for r in fit.itertuples(index=False):
        for n in EXTRAPOLATE_TO:
            x_s = n if math.isnan(r.seconds_cap) else min(n, r.seconds_cap)
            secs = r.seconds_a + r.seconds_b * x_s if not math.isnan(r.seconds_a) else np.nan
            mem = r.peak_bytes_a + r.peak_bytes_b * n if not math.isnan(r.peak_bytes_a) else np.nan
            rows.append({"dataset": r.dataset, "N": n, "method": r.method, "device": r.device, "kmeans": r.kmeans,
                         "phase": r.phase, "seconds": secs, "seconds_min": np.nan, "seconds_max": np.nan,
                         "peak_bytes": mem, "kind": "extrapolated", "repeats": 0,
                         "note": f"fit {r.model} on {r.points} points, max error {r.seconds_max_err_pct:.1f}% (seconds)"})
    ext = pd.DataFrame(rows, columns=CSV_COLUMNS)
    # The totals of extrapolated phases: seconds add up; memory is data + largest working set, as measured.
    for key, g in ext.groupby(["dataset", "N", "method", "device", "kmeans"], sort=False):
        per_epoch = g[g["phase"].isin(EPOCH_PHASES[key[2]])]
        data = g[g["phase"] == "data"]["peak_bytes"]
        total = g["phase"] == "total"
        ext.loc[total.index[total], "seconds"] = per_epoch["seconds"].sum()
        if len(data):
            ext.loc[total.index[total], "peak_bytes"] = float(data.iloc[0]) + per_epoch["peak_bytes"].max()
        ext.loc[total.index[total], "note"] = "sum of the phases extrapolated by their fits; memory: data + largest phase"
    return pd.concat([frame, ext], ignore_index=True)


# ------------------------------------------------------------------------------------------------ outputs
def _fmt_s(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _fmt_b(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x / 2**30:,.2f} GiB" if x >= 2**30 else f"{x / 2**20:,.0f} MiB"


def _pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for k, v in where.items():
        mask &= frame[k] == v
    return frame[mask]


def _value(frame, what, **where):
    g = _pick(frame, **where)
    return float(g[what].iloc[0]) if len(g) else np.nan


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, device, backend, N, kind): both methods' seconds per epoch and memory."""
    rows = []
    totals = frame[frame["phase"] == "total"]
    for (dataset, device, backend, n, kind), _ in totals.groupby(["dataset", "device", "kmeans", "N", "kind"], sort=True):
        w = {"dataset": dataset, "device": device, "kmeans": backend, "N": n}
        kw = "extrapolated" if kind == "extrapolated" else None
        def v(method, phase, what="seconds", w=w, kw=kw):
            sub = _pick(frame, **w, method=method, phase=phase)
            if kw:
                sub = sub[sub["kind"] == kw]
            else:
                sub = sub[sub["kind"] != "extrapolated"]
            return float(sub[what].iloc[0]) if len(sub) else np.nan
        estep = v("iclrec", "estep_encode") + v("iclrec", "estep_copy") + v("iclrec", "estep_kmeans")
        it, et = v("iclrec", "total"), v("elcrec", "total")
        im, em = v("iclrec", "total", "peak_bytes"), v("elcrec", "total", "peak_bytes")
        iw = max(v("iclrec", p, "peak_bytes") for p in EPOCH_PHASES["iclrec"])
        ew = max(v("elcrec", p, "peak_bytes") for p in EPOCH_PHASES["elcrec"])
        rows.append({
            "dataset": dataset, "device": device, "kmeans": backend, "N": int(n), "kind": kind,
            "iclrec_encode_s": v("iclrec", "estep_encode"), "iclrec_copy_s": v("iclrec", "estep_copy"),
            "iclrec_kmeans_s": v("iclrec", "estep_kmeans"), "iclrec_train_s": v("iclrec", "train"),
            "iclrec_total_s": it, "estep_share_pct": 100 * estep / it if it else np.nan,
            "elcrec_train_other_s": v("elcrec", "train_other"), "elcrec_cluster_s": v("elcrec", "cluster_terms"),
            "elcrec_total_s": et, "elcrec_init_once_s": v("elcrec", "init_once"),
            "time_diff_pct": 100 * (et - it) / it if it else np.nan,
            "iclrec_working_bytes": iw, "elcrec_working_bytes": ew,
            "iclrec_peak_bytes": im, "elcrec_peak_bytes": em,
            "memory_diff_pct": 100 * (em - im) / im if im else np.nan,
            "data_bytes": v("iclrec", "data", "peak_bytes"),
        })
    return pd.DataFrame(rows)


def crossover(summ: pd.DataFrame) -> dict:
    """Per (dataset, device, backend): the smallest measured N from which ELCRec's epoch is faster on
    every larger measured N, or None."""
    out = {}
    for key, g in summ[summ["kind"] != "extrapolated"].groupby(["dataset", "device", "kmeans"], sort=False):
        g = g.sort_values("N")
        faster = (g["elcrec_total_s"] < g["iclrec_total_s"]).to_numpy()
        n_from = None
        for i in range(len(g)):
            if faster[i:].all():
                n_from = int(g["N"].iloc[i])
                break
        out["/".join(map(str, key))] = n_from
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _spread_of(frame, **w) -> str:
    g = _pick(frame, **w)
    g = g[g["kind"] != "extrapolated"]
    if not len(g) or g["seconds_min"].isna().all():
        return ""
    return f"{_fmt_s(float(g['seconds_min'].iloc[0]))}-{_fmt_s(float(g['seconds_max'].iloc[0]))}"


def markdown(frame: pd.DataFrame, contexts: dict) -> str:
    summ = summary(frame)
    cross = crossover(summ)
    fit = fits(frame[frame["kind"] != "extrapolated"])
    out = [
        "# Scaling study: ICLRec's alternating E-step against ELCRec's learnt centers",
        "",
        "Generated by `python -m bench scaling` from `scaling.csv`; do not edit by hand. Seconds are per",
        "epoch, medians over repeats (range in brackets). ICLRec's E-step is measured; training-step seconds",
        "are **estimated** (median of all timed steps x ceil(N / batch)); rows at 1e8 and 1.3e8 users are",
        "**extrapolated** from fits on the measured points. k-means runs as published: faiss-style, 20",
        "iterations, 5 restarts, at most 4,096 points per centroid, so its input is a sample of at most",
        "K x 4,096 = 1,048,576 users at K = 256: its cost stops growing there.",
        "Memory: 'working' is the measured peak of a method's largest per-epoch phase above what was held",
        "before it (E-step: includes the [N, H] matrix); 'peak' adds the harness's data tensors for N users,",
        "computed from their shapes (the same for both methods).",
        "",
    ]
    for (dataset, device, backend), g in summ.groupby(["dataset", "device", "kmeans"], sort=False):
        ctx = contexts.get(f"{dataset}/{device}", {})
        out += [f"## {dataset}, {device} ({ctx.get('device_name', '?')}), k-means {backend}", ""]
        header = ["N", "kind", "ICLRec encode", "copy", "k-means", "train", "ICLRec total", "E-step share",
                  "ELCRec train w/o clustering", "clustering terms", "ELCRec total", "ELCRec vs ICLRec time",
                  "ICLRec working mem", "ELCRec working mem", "ICLRec peak", "ELCRec peak", "ELCRec vs ICLRec peak"]
        rows = []
        for r in g.sort_values(["kind", "N"], key=lambda c: c.map({"extrapolated": 1}).fillna(0) if c.name == "kind" else c).itertuples():
            w = {"dataset": dataset, "device": device, "kmeans": backend, "N": r.N}
            icl_range = _spread_of(frame, **w, method="iclrec", phase="total")
            elc_range = _spread_of(frame, **w, method="elcrec", phase="total")
            rows.append([
                f"{r.N:,}", r.kind, _fmt_s(r.iclrec_encode_s), _fmt_s(r.iclrec_copy_s), _fmt_s(r.iclrec_kmeans_s),
                _fmt_s(r.iclrec_train_s), f"{_fmt_s(r.iclrec_total_s)}" + (f" ({icl_range})" if icl_range else ""),
                f"{r.estep_share_pct:.1f}%", _fmt_s(r.elcrec_train_other_s), _fmt_s(r.elcrec_cluster_s),
                f"{_fmt_s(r.elcrec_total_s)}" + (f" ({elc_range})" if elc_range else ""), f"{r.time_diff_pct:+.1f}%",
                _fmt_b(r.iclrec_working_bytes), _fmt_b(r.elcrec_working_bytes), _fmt_b(r.iclrec_peak_bytes),
                _fmt_b(r.elcrec_peak_bytes), f"{r.memory_diff_pct:+.1f}%",
            ])
        out += [_md_table(header, rows), ""]
        c = cross.get(f"{dataset}/{device}/{backend}")
        out += [
            "Crossover (measured): " + (f"ELCRec's epoch is faster from N = {c:,} on, at every larger measured N."
                                        if c else "none: ELCRec's epoch is not faster from any measured N on."),
            "ELCRec's one-off initialisation (not per epoch): "
            + ", ".join(f"{r.N:,}: {_fmt_s(r.elcrec_init_once_s)} s" for r in g[g['kind'] != 'extrapolated'].sort_values('N').itertuples()),
            "",
        ]
    out += ["## Fits used for the extrapolation", "",
            "Each phase's seconds and working memory fitted against N on the measured points (least squares in",
            "relative error); 'max error' is the fit's largest relative error on those points.", ""]
    rows = []
    for r in fit.itertuples(index=False):
        if r.phase == "total":
            continue
        rows.append([r.device, r.kmeans, r.method, r.phase, r.model, f"{r.seconds_a:.3g}", f"{r.seconds_b:.3g}",
                     "" if math.isnan(r.seconds_max_err_pct) else f"{r.seconds_max_err_pct:.1f}%",
                     "" if math.isnan(r.peak_bytes_b) else f"{r.peak_bytes_b:.1f}",
                     "" if math.isnan(r.peak_bytes_max_err_pct) else f"{r.peak_bytes_max_err_pct:.1f}%"])
    out += [_md_table(["device", "k-means", "method", "phase", "model", "a (s)", "b (s per user)", "max error (s)",
                       "bytes per user", "max error (bytes)"], rows), ""]
    for (dataset, device, backend), g in fit[fit["method"] == "iclrec"].groupby(["dataset", "device", "kmeans"], sort=False):
        by = g.set_index("phase")
        h = _hidden(contexts, dataset, device)
        def per_million(phase, by=by):
            return by.loc[phase, "seconds_b"] * 1e6 if phase in by.index else float("nan")
        out.append(
            f"- {dataset}, {device}, k-means {backend}: grows with N: encoding ({per_million('estep_encode'):.1f} s per million "
            f"users), the copy ({per_million('estep_copy'):.2g} s per million), the E-step's memory "
            f"({by.loc['estep_kmeans', 'peak_bytes_b']:.0f} bytes per user, the [N, {h}] float32 matrix is "
            f"{4 * h} of them) and the training steps ({per_million('train'):.0f} s per million); does "
            f"not grow past {by.loc['estep_kmeans', 'seconds_cap']:,.0f} users: k-means "
            f"(at most {by.loc['estep_kmeans', 'seconds_a'] + by.loc['estep_kmeans', 'seconds_b'] * by.loc['estep_kmeans', 'seconds_cap']:.0f} s)."
        )
    out.append("")
    val = frame[frame["phase"] == "train_real_epoch"].drop_duplicates(["dataset", "device", "N", "method"])
    if len(val):
        out += ["## The step estimate against real full epochs", "",
                "The estimate's recipe (steps x mean step) applied to steps sampled just before and after each real",
                "epoch, and the study-wide median step (which also carries the machine's load drift during the sweep).",
                "",
                _md_table(["device", "N", "method", "real epoch (s)", "estimate"],
                          [[r.device, f"{r.N:,}", r.method, f"{r.seconds:.2f}", r.note.split("; ", 1)[1]] for r in val.itertuples()]),
                ""]
    out += ["## Context", ""]
    for key, ctx in contexts.items():
        keep = {k: ctx.get(k) for k in ("device_name", "cpu_count", "torch_threads", "faiss_threads", "torch", "faiss",
                                         "load_average_start", "load_average_end", "started_at", "finished_at",
                                         "step_samples", "step_median_s", "step_ratio_elcrec_over_iclrec")}
        out.append(f"- {key}: " + ", ".join(f"{k} {v}" for k, v in keep.items()))
    return "\n".join(out) + "\n"


def _hidden(contexts: dict, dataset: str, device: str) -> int:
    """H of the run's ICLRec config (from the context sidecar; 64 in the paper configs)."""
    return int(contexts.get(f"{dataset}/{device}", {}).get("configs", {}).get("iclrec", {}).get("hidden_size", 64))


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _measured_and_extrapolated(g: pd.DataFrame):
    """(measured rows, extrapolated rows joined to the last measured one), sorted by N."""
    meas = g[g["kind"] != "extrapolated"].sort_values("N")
    ext = pd.concat([meas.tail(1), g[g["kind"] == "extrapolated"].sort_values("N")])
    return meas, ext


def _series(summ: pd.DataFrame):
    """What both scaling plots draw, per k-means backend: (backend, colour, part, line style, label function,
    first backend?) for its measured part (solid, labelled) and its extrapolated part (dotted, unlabelled)."""
    colours = {"faiss": "tab:blue", "torch": "tab:orange"}
    first = summ["kmeans"].iloc[0]
    for backend, g in summ.groupby("kmeans", sort=False):
        for part, style in zip(_measured_and_extrapolated(g), ("-", ":")):
            lab = (lambda text: text) if style == "-" else (lambda text: None)
            yield backend, colours.get(backend, "tab:gray"), part, style, lab, backend == first


def plot_time(summ: pd.DataFrame, title: str) -> bytes:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 5))
    ax, share = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    for backend, c, part, style, lab, first in _series(summ):
        estep = part["iclrec_encode_s"] + part["iclrec_copy_s"] + part["iclrec_kmeans_s"]
        ax.plot(part["N"], part["iclrec_total_s"], style, marker="o", color=c, label=lab(f"ICLRec epoch, k-means {backend}"))
        ax.plot(part["N"], estep, style, marker="s", color=c, alpha=0.5, label=lab(f"ICLRec E-step, k-means {backend}"))
        share.plot(part["N"], part["time_diff_pct"], style, marker="o", color=c,
                   label=lab(f"ELCRec vs ICLRec epoch time, k-means {backend}"))
        share.plot(part["N"], part["estep_share_pct"], style, marker="s", color=c, alpha=0.5,
                   label=lab(f"E-step share of ICLRec's epoch, k-means {backend}"))
        if first:
            ax.plot(part["N"], part["elcrec_total_s"], style, marker="^", color="tab:green", label=lab("ELCRec epoch"))
            ax.plot(part["N"], part["elcrec_cluster_s"], style, marker="v", color="tab:green", alpha=0.5,
                    label=lab("ELCRec clustering terms"))
    for a in (ax, share):
        a.set_xscale("log")
        a.set_xlabel("users N")
        a.grid(True, which="major", alpha=0.3)
    dotted = Line2D([], [], linestyle=":", color="0.3", label="dotted: extrapolated from fits")
    ax.set_yscale("log")
    ax.set_ylabel("seconds per epoch")
    ax.set_title("seconds per epoch (measured E-step, estimated steps)", fontsize="medium")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend([*handles, dotted], [*labels, dotted.get_label()], fontsize="x-small", loc="upper left")
    share.axhline(0, color="0.2", linewidth=0.8)
    share.set_ylabel("%")
    share.set_title("ELCRec vs ICLRec (below 0: ELCRec faster); E-step share", fontsize="medium")
    handles, labels = share.get_legend_handles_labels()
    share.legend([*handles, dotted], [*labels, dotted.get_label()], fontsize="x-small", loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def plot_memory(summ: pd.DataFrame, title: str) -> bytes:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(7.5, 5))
    ax = fig.add_subplot()
    for backend, c, part, style, lab, first in _series(summ):
        ax.plot(part["N"], part["iclrec_working_bytes"] / 2**30, style, marker="o", color=c,
                label=lab(f"ICLRec working set (largest of step and E-step), k-means {backend}"))
        if first:
            ax.plot(part["N"], part["elcrec_working_bytes"] / 2**30, style, marker="^", color="tab:green",
                    label=lab("ELCRec working set (training step)"))
            ax.plot(part["N"], part["data_bytes"] / 2**30, style, marker="x", color="0.4",
                    label=lab("harness data tensors, both methods (computed)"))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("users N")
    ax.set_ylabel("GiB")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    dotted = Line2D([], [], linestyle=":", color="0.3", label="dotted: extrapolated from fits")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend([*handles, dotted], [*labels, dotted.get_label()], fontsize="x-small", loc="upper left")
    fig.tight_layout()
    return _png(fig)


def write_outputs(results: Path) -> list[Path]:
    """Regenerate the markdown table and the plots from `scaling.csv` (and the context sidecar)."""
    results = Path(results)
    csv_path = results / CSV_NAME
    if not csv_path.is_file():
        raise BenchError(f"no {CSV_NAME} in {results}; run `python -m bench scaling` first")
    frame = pd.read_csv(csv_path, keep_default_na=True)
    frame["note"] = frame["note"].fillna("")
    ctx_path = results / CONTEXT_NAME
    contexts = json.loads(ctx_path.read_text()) if ctx_path.is_file() else {}
    written = [csv_path]
    write_text_atomic(results / MD_NAME, markdown(frame, contexts))
    written.append(results / MD_NAME)
    summ = summary(frame)
    for (dataset, device), g in summ.groupby(["dataset", "device"], sort=False):
        name = contexts.get(f"{dataset}/{device}", {}).get("device_name", device)
        title = f"{dataset}, {device} ({name}): ICLRec vs ELCRec, per epoch"
        for what, fn in (("time", plot_time), ("memory", plot_memory)):
            path = results / f"scaling_{what}_{dataset}_{device}.png"
            write_bytes_atomic(path, fn(g, title if what == "time" else title.replace(", per epoch", ", memory per epoch")))
            written.append(path)
    return written
