"""K-means for ICLRec's E-step and ELCRec's initialisation (docs/methods.md, "The methods"), plus nearest-centroid lookup.

The published code runs `faiss.Clustering` (20 iterations, 5 restarts, at most 4096 points per centroid,
seeded) on the mean-pooled encodings; the "faiss" backend makes exactly that call. The "torch" backend is a
Lloyd k-means on the input's device that follows the same recipe (seeded subsample, restarts from random
distinct points, faiss-style splitting of empty clusters, best restart by objective); it does not reproduce
faiss's random streams, so its centroids are comparable to, not equal to, faiss's.

Warm start (`init`): the published ICLRec builds one `faiss.Clustering` per run and calls its `train` at
every E-step. faiss keeps the centroids of the previous call and treats them as input centroids, so the
first restart starts from the previous epoch's centroids and every later restart from where the one before
it ended (faiss updates its centroid vector in place and only re-draws centroids beyond the input ones);
the best restart by objective is kept. Loading `init` into a new `faiss.Clustering` before `train` is the
same call as reusing the object (tests/test_clustering.py compares the two), and keeps the warm state a
plain tensor that a mid-run checkpoint can hold. The torch backend follows the same rule.
"""

from __future__ import annotations

import numpy as np
import torch

BACKENDS = ("auto", "faiss", "torch")
INITS = ("warm", "fresh")  # k-means at a later E-step: from the previous centroids (published) | from scratch
SPLIT_EPS = 1.0 / 1024  # relative perturbation faiss applies when it splits a cluster to fill an empty one


def _faiss_importable() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """The backend that `kmeans(..., backend=name)` actually runs ("faiss" or "torch"), for run records."""
    if name not in BACKENDS:
        raise ValueError(f"unknown k-means backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "faiss" if _faiss_importable() else "torch"
    return name


def _kmeans_faiss(
    x: torch.Tensor, k: int, seed: int, niter: int, nredo: int, max_ppc: int, init: torch.Tensor | None
) -> torch.Tensor:
    import faiss

    # Once per epoch, so the host copy is cheap next to encoding the training set.
    data = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())  # [N, H]
    d = data.shape[1]
    clus = faiss.Clustering(d, k)
    clus.verbose = False
    clus.niter = niter
    clus.nredo = nredo
    clus.seed = seed
    clus.max_points_per_centroid = max_ppc
    clus.min_points_per_centroid = 0
    if init is not None:  # input centroids: what a reused Clustering object holds from its previous train
        start = np.ascontiguousarray(init.detach().to("cpu", torch.float32).numpy()).reshape(-1)  # [K*H]
        faiss.copy_array_to_vector(start, clus.centroids)
    if x.is_cuda and faiss.get_num_gpus() > 0:
        res = faiss.StandardGpuResources()
        res.noTempMemory()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = False  # exact float32 distances, as the published GPU path
        cfg.device = x.device.index if x.device.index is not None else torch.cuda.current_device()
        index = faiss.GpuIndexFlatL2(res, d, cfg)
    else:
        index = faiss.IndexFlatL2(d)
    clus.train(data, index)
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)  # [K, H]
    return torch.from_numpy(centroids).to(x.device)


def _lloyd_update(x: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    """Cluster means of x under `assign`, with empty clusters re-seeded by splitting big ones (as faiss)."""
    n, d = x.shape
    counts = x.new_zeros(k).index_add_(0, assign, x.new_ones(n))  # [K]
    means = x.new_zeros(k, d).index_add_(0, assign, x) / counts.clamp(min=1)[:, None]  # [K, H]
    empty = counts == 0  # [K]
    # The j-th empty cluster takes a copy of the j-th largest one (cycling if empties outnumber the rest);
    # all in tensor ops, so there is no host sync to ask whether any cluster is empty at all.
    by_size = counts.argsort(descending=True)  # [K]; the non-empty clusters come first
    empty_rank = empty.long().cumsum(0) - 1  # [K]
    donor = by_size[empty_rank.clamp(min=0) % (~empty).sum().clamp(min=1)]  # [K]
    # faiss nudges the copy and the donor in opposite directions, alternating per coordinate, so that the
    # next assignment step splits the donor's points between the two.
    sign = torch.where(torch.arange(d, device=x.device) % 2 == 0, SPLIT_EPS, -SPLIT_EPS)  # [H]
    is_donor = x.new_zeros(k).index_add_(0, donor, empty.to(x.dtype)) > 0  # [K]
    out = torch.where(empty[:, None], means[donor] * (1 + sign), means)
    return torch.where(is_donor[:, None], means * (1 - sign), out)  # [K, H]


def _kmeans_torch(
    x: torch.Tensor, k: int, seed: int, niter: int, nredo: int, max_ppc: int, init: torch.Tensor | None
) -> torch.Tensor:
    x = x.detach().float()
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    if x.shape[0] > k * max_ppc:  # faiss trains on a random subsample of this size
        x = x[torch.randperm(x.shape[0], generator=gen, device=x.device)[: k * max_ppc]]
    n = x.shape[0]
    x_sq = x.pow(2).sum(1)  # [N]
    best, best_obj = None, None
    centroids = None if init is None else init.detach().to(device=x.device, dtype=x.dtype)
    for _ in range(max(nredo, 1)):
        if init is None:
            centroids = x[torch.randperm(n, generator=gen, device=x.device)[:k]]  # [K, H], k distinct points
        # else: warm, as faiss: restart r continues from where restart r-1 ended (the first from `init`)
        obj = x.new_tensor(float("inf"))
        for _ in range(niter):
            # ||x||^2 is the same for every centroid, so the argmin only needs ||c||^2 - 2 x.c.
            partial = centroids.pow(2).sum(1)[None, :] - 2 * x @ centroids.T  # [N, K]
            nearest, assign = partial.min(1)  # [N]
            obj = (nearest + x_sq).clamp(min=0).sum()  # faiss's objective: that of the last assignment
            centroids = _lloyd_update(x, assign, k)
        if best is None:
            best, best_obj = centroids, obj
        else:  # keep the better restart with torch.where rather than comparing on the host
            better = obj < best_obj
            best = torch.where(better, centroids, best)
            best_obj = torch.where(better, obj, best_obj)
    return best


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    seed: int,
    niter: int = 20,
    nredo: int = 5,
    max_points_per_centroid: int = 4096,
    backend: str = "faiss",
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Un-normalised k-means centroids [K, H] (float32, on x's device) of the rows of x [N, H].

    `init` [K, H]: start from these centroids (the previous E-step's), as a reused faiss object does.
    """
    which = resolve_backend(backend)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= K <= N, got K={k} clusters for N={n} points")
    if init is not None and tuple(init.shape) != (k, x.shape[1]):
        raise ValueError(f"k-means init must be [K, H] = [{k}, {x.shape[1]}], got {list(init.shape)}")
    run = _kmeans_faiss if which == "faiss" else _kmeans_torch
    return run(x, k, seed, niter, nredo, max_points_per_centroid, init)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index [N] of each row's nearest centroid in squared L2; x [N, H], centroids [K, H], on x's device."""
    x = x.detach()
    c = centroids.detach().to(device=x.device, dtype=x.dtype)
    # ||x||^2 is constant along each row, so it cannot change the argmin and is left out.
    return (c.pow(2).sum(1)[None, :] - 2 * x @ c.T).argmin(1)  # [N]
