"""What one `bench scaling` invocation measures (`ScalingSpec`), and the checks made on it before any data
is loaded (`plan_study`): device, backends, repeats, user counts, and whether the E-step at the largest N
fits in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.configs import resolve_config
from bench.core.devices import resolve_device
from bench.core.errors import BenchError
from bench.tools.scaling.measurement import ENCODE_CHUNK, host_available_bytes
from methods import KMEANS_BACKENDS, MethodConfig

DEFAULT_USERS = (10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000)
# The study times each backend that does the work; "auto" only picks one of them.
TIMED_BACKENDS = tuple(b for b in KMEANS_BACKENDS if b != "auto")
METHODS = ("iclrec", "elcrec")
MEMORY_HEADROOM = 0.85  # share of the available memory an E-step may plan to use


@dataclass(frozen=True)
class ScalingSpec:
    """What one `bench scaling` invocation measures. Built by the CLI, or directly by tests."""

    dataset: str = "Beauty"
    users: tuple[int, ...] = DEFAULT_USERS
    device: str = "auto"
    backends: tuple[str, ...] = TIMED_BACKENDS
    repeats: int = 3
    repeats_large: int = 1  # repeats at N >= large_from, where one E-step is the longest part of the sweep
    large_from: int = 1_000_000
    step_sample: int = 8  # timed training steps per method per repeat
    pool_users: int = 4096  # users of the batch pool the steps are timed on
    validate_smallest: int = 2  # real full epochs at this many of the smallest N
    seed: int = 0
    threads: int | None = None
    results: Path = Path("results/scaling")
    overrides: dict = field(default_factory=dict)  # config overrides for both methods (tests: tiny K, H)


@dataclass(frozen=True)
class Plan:
    """The checked spec: the device, both methods' configs, the population sizes and the k-means cap."""

    device: torch.device
    configs: dict[str, MethodConfig]
    users: tuple[int, ...]
    kmeans_cap: int  # k-means trains on at most K x max points per centroid points

    @property
    def iclrec(self) -> MethodConfig:
        return self.configs["iclrec"]


def plan_study(spec: ScalingSpec) -> Plan:
    """Every check that can fail before data is loaded: device, backends, repeats, user counts, memory."""
    device = resolve_device(spec.device)
    check_backends(tuple(spec.backends))
    check_repeats(spec)
    configs = {m: resolve_config(m, spec.dataset, "paper", spec.overrides or None)[0] for m in METHODS}
    icl = configs["iclrec"]
    users = check_users(tuple(spec.users), max(c.num_intents for c in configs.values()))
    cap = icl.num_intents * icl.kmeans_max_points_per_centroid
    check_memory(users, icl.hidden_size, icl.max_len, icl.num_intents, cap, tuple(spec.backends), device)
    return Plan(device, configs, users, cap)


def check_backends(backends: tuple[str, ...]) -> None:
    choices = " or ".join(TIMED_BACKENDS)
    if not backends:
        raise BenchError(f"--kmeans needs at least one backend ({', '.join(TIMED_BACKENDS)})")
    for b in backends:
        if b not in TIMED_BACKENDS:
            raise BenchError(f"unknown k-means backend {b!r}; choose {choices}")
    if "faiss" in backends:
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise BenchError("--kmeans faiss needs the faiss package (pip install faiss-cpu)") from None


def check_repeats(spec: ScalingSpec) -> None:
    if spec.repeats < 1 or spec.repeats_large < 1 or spec.step_sample < 1:
        raise BenchError("--repeats and the step sample must be >= 1")


def check_users(users: tuple[int, ...], k: int) -> tuple[int, ...]:
    """The population sizes, whole, distinct and sorted; none below K (k-means needs K points)."""
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


def memory_needed(n: int, hidden: int, max_len: int, k: int, cap: int, backends: tuple[str, ...],
                  device: torch.device) -> dict:
    """Bytes the E-step at N needs on the device and on the host (an upper estimate, before allocating)."""
    inputs = n * max_len * 4  # int32 [N, L]
    pooled = 2 * n * hidden * 4  # [N, H] float32, twice while the chunks are concatenated
    sample = min(n, cap)
    km = sample * hidden * 4 + (3 * sample * k * 4 if "torch" in backends else sample * hidden * 4)
    encode = ENCODE_CHUNK * max_len * 8 + 1024 * max_len * hidden * 4 * 8  # a chunk's ids and activations
    on_device = inputs + pooled + km + encode
    host = n * hidden * 4 + sample * hidden * 4 if (device.type == "cuda" and "faiss" in backends) else 0
    return {"device": on_device, "host": host}


def available_bytes(device: torch.device) -> dict:
    host = host_available_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return {"device": int(free), "host": host}
    return {"device": host, "host": host}


def check_memory(users, hidden: int, max_len: int, k: int, cap: int, backends: tuple[str, ...],
                 device: torch.device, headroom: float = MEMORY_HEADROOM) -> None:
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
