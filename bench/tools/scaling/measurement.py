"""What the study times and weighs: clocks and peak memory of a block, the E-step's encoding and k-means,
a method's real training step, a step's memory in a fresh process, and ELCRec's clustering terms."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.core.costs import PeakMemory, synchronize
from bench.core.spec import RunSpec
from bench.core.step import epoch_batches, make_optimizer, optimise, step_function
from methods import Method, MethodConfig, kmeans

ENCODE_CHUNK = 65_536  # users per call of the harness's encode_mean_pooled (which batches by 1024 inside)


class Clock:
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


class Peak:
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


def host_available_bytes() -> int:
    """Memory the host can still give without swapping: MemAvailable of /proc/meminfo (Linux), else the
    free physical pages (stricter: it leaves out the page cache the kernel would give back)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def encode_population(method: Method, train_input: torch.Tensor) -> torch.Tensor:
    """The E-step's encoding: `encode_mean_pooled` (eval mode, mean over L) of every user, [N, H]."""
    parts = [method.encode_mean_pooled(train_input[i : i + ENCODE_CHUNK].long())
             for i in range(0, len(train_input), ENCODE_CHUNK)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def run_kmeans(method: Method, pooled: torch.Tensor, host: torch.Tensor | None, backend: str) -> torch.Tensor:
    """The E-step's k-means with `backend`: the k-means the method runs, with its config's settings and seed."""
    # faiss trains on host data: on a GPU without faiss-gpu that is the copy made beforehand (timed apart);
    # with faiss-gpu the clustering module copies again itself, which is then counted in k-means.
    x = pooled
    if backend == "faiss" and host is not None:
        import faiss

        if not (pooled.is_cuda and faiss.get_num_gpus() > 0):
            x = host
    c = method.config
    return kmeans(x, c.num_intents, seed=method.seed, niter=c.kmeans_niter, nredo=c.kmeans_nredo,
                  max_points_per_centroid=c.kmeans_max_points_per_centroid, backend=backend)


class StepRunner:
    """One method's real training step, as a run executes it: a batch from the harness's iterator, the
    step (`bench.core.step.step_function`), then one Adam step."""

    def __init__(self, method: Method, run: RunSpec, data, device: torch.device, seed: int):
        self.method = method
        self.data = data
        self.device = device
        self.optimizer = make_optimizer(method)
        self.training_step = step_function(method, run, device)
        self.generator = torch.Generator(device=data.device).manual_seed(seed)
        self._batches = None

    def epoch(self, data=None):
        """The batches of one epoch over `data` (default: the runner's pool)."""
        data = self.data if data is None else data
        return epoch_batches(self.method, data, self.generator)

    def next_batch(self):
        while True:
            if self._batches is None:
                self._batches = self.epoch()
            batch = next(self._batches, None)
            if batch is not None and len(batch.users) == self.method.config.batch_size:
                return batch
            self._batches = None  # a short last batch is skipped: timed steps are full batches

    def step(self, batch) -> None:
        optimise(self.training_step(batch), self.optimizer)

    def timed_steps(self, count: int) -> float:
        """Mean seconds of one step (batch construction included, as in the harness's train phase)."""
        with Clock(self.device) as clock:
            for _ in range(count):
                self.step(self.next_batch())
        return clock.seconds / count

    def real_epoch(self, data, on_step: Callable[[], None] | None = None) -> tuple[float, int]:
        """One real full epoch over `data` through the harness's iterator: (seconds, steps); `on_step()` is
        called after each step (a progress bar's update: a host call, in the timing as in a run's loop)."""
        steps = 0
        with Clock(self.device) as clock:
            for batch in self.epoch(data):
                self.step(batch)
                steps += 1
                if on_step is not None:
                    on_step()
        return clock.seconds, steps


def step_memory_in_this_process(run: RunSpec, config: MethodConfig, pool_seqs, item_size: int, threads: int,
                                seed: int) -> int:
    """Bytes two training steps add to this process's RSS high-water mark (call it in a fresh process)."""
    from bench.core.data import SequenceData
    from bench.core.step import build_method

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    data = SequenceData(run.dataset, pool_seqs, item_size, max_len=config.max_len, device="cpu")
    runner = StepRunner(build_method(run, config, data, device), run, data, device, seed)
    batch = runner.next_batch()
    with Peak(device) as peak:
        for _ in range(2):
            runner.step(batch)
    return peak.extra


def step_memory_main() -> None:
    """Entry point of the fresh process of `step_memory_fresh`: arguments as a pickle on stdin."""
    import pickle
    import sys

    args = pickle.loads(sys.stdin.buffer.read())
    print(step_memory_in_this_process(*args))


def step_memory_fresh(run: RunSpec, config: MethodConfig, pool_seqs, item_size: int, seed: int) -> int:
    """A CPU step's working memory, measured in a fresh process: in this one, the allocator keeps the blocks
    earlier phases freed, so a step would add (almost) nothing to the RSS however much it allocates."""
    import pickle
    import subprocess
    import sys

    import bench

    root = str(Path(bench.__file__).resolve().parent.parent)  # where this `bench` is imported from
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    payload = pickle.dumps((run, config, pool_seqs, item_size, torch.get_num_threads(), seed))
    code = "from bench.tools.scaling.measurement import step_memory_main; step_memory_main()"
    out = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, cwd=root, env=env,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"step memory measurement failed: {out.stderr.decode()[-400:]}")
    return int(out.stdout.decode().split()[-1])


def cluster_terms_seconds(method: Method, batch, device: torch.device, reps: int = 3) -> float:
    """Seconds of ELCRec's clustering terms in one step, on the step's own shapes, forward and backward.

    The parts: nearest center of all 2*B*L view positions and the prototype gather (`with_prototypes`), the
    in-place projection of the centers, the clustering loss, the nearest center of each user and its gather.
    The encoder outputs are stand-ins with gradient, so that the timing excludes the encoder itself. The
    backward is `torch.autograd.grad`, so that no gradient is left on the method, and the centers are put
    back as the step left them (the projection changes them in place).
    """
    b, length, h = batch.input_ids.shape[0], batch.input_ids.shape[1], method.config.hidden_size
    gen = torch.Generator(device=device).manual_seed(0)
    views = torch.randn(2 * b, length, h, generator=gen, device=device).requires_grad_()
    hidden = torch.randn(b, length, h, generator=gen, device=device).requires_grad_()
    centers = method.cluster_centers
    saved = {"cluster_centers": centers.detach().clone()}
    total = 0.0
    for _ in range(reps):
        with Clock(device) as clock:
            proto, cluster, picked = method.clustering_terms(hidden, views)  # [2B, L, H or 2H], [], [B, H]
            torch.autograd.grad(proto.sum() * 0 + cluster + picked.sum() * 0, (centers, views, hidden))
        total += clock.seconds
    method.load_state_dict(saved, strict=False)
    return total / reps
