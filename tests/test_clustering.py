"""K-means backends and nearest-centroid lookup (methods/clustering.py, docs/methods.md, "The methods")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.clustering import _lloyd_update, kmeans, nearest_centroid, resolve_backend

BACKENDS = ["faiss", "torch"]


def blobs(seed: int = 0, per_blob: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Four well-separated Gaussian blobs in 8 dimensions: (points [400, 8], true centres [4, 8])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(4, 8)
    centres[0, 0], centres[1, 1], centres[2, 2], centres[3, :] = 10.0, -10.0, 10.0, 5.0
    points = centres.repeat_interleave(per_blob, 0) + 0.5 * torch.randn(4 * per_blob, 8, generator=g)
    return points, centres


def assert_recovers(found: torch.Tensor, centres: torch.Tensor, tol: float) -> None:
    dist = torch.cdist(centres, found)  # [4, 4]
    match = dist.argmin(1)
    assert sorted(match.tolist()) == list(range(len(centres)))  # one recovered centroid per blob
    assert dist.min(1).values.max() < tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_recovers_blob_centres(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, centres = blobs()
    found = kmeans(x, 4, seed=1, backend=backend)
    assert found.shape == (4, 8) and found.dtype == torch.float32 and found.device == x.device
    # With blobs this far apart the k-means optimum is exactly the per-blob sample means.
    assert_recovers(found, x.view(4, 100, 8).mean(1), tol=1e-4)
    assert_recovers(found, centres, tol=0.5)


def test_torch_backend_subsamples_and_still_recovers() -> None:
    x, centres = blobs()
    found = kmeans(x, 4, seed=3, max_points_per_centroid=30, backend="torch")  # trains on 120 of 400 points
    assert_recovers(found, centres, tol=0.6)  # ~30 points per blob: sample-mean error about 0.26


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_centroids(backend: str) -> None:
    if backend == "faiss":
        pytest.importorskip("faiss")
    x, _ = blobs(seed=5)
    # K = 7 on 4 blobs leaves the outcome to the random initialisation, so equality is a real check.
    first = kmeans(x, 7, seed=11, niter=5, nredo=2, backend=backend)
    assert torch.equal(first, kmeans(x, 7, seed=11, niter=5, nredo=2, backend=backend))


def test_faiss_backend_is_the_published_call() -> None:
    faiss = pytest.importorskip("faiss")
    x, _ = blobs(seed=2)
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    clus = faiss.Clustering(8, 5)
    clus.verbose = False
    clus.niter = 20
    clus.nredo = 5
    clus.seed = 42
    clus.max_points_per_centroid = 4096
    clus.min_points_per_centroid = 0
    clus.train(data, faiss.IndexFlatL2(8))
    expected = faiss.vector_to_array(clus.centroids).reshape(5, 8)
    assert np.array_equal(kmeans(x, 5, seed=42, backend="faiss").numpy(), expected)


def _reused_faiss_sequence(faiss, inputs: list[np.ndarray], k: int, seed: int, niter: int, nredo: int, max_ppc: int):
    """What the published ICLRec does: one Clustering object, `train` called once per epoch."""
    clus = faiss.Clustering(inputs[0].shape[1], k)
    clus.verbose = False
    clus.niter, clus.nredo, clus.seed = niter, nredo, seed
    clus.max_points_per_centroid, clus.min_points_per_centroid = max_ppc, 0
    index = faiss.IndexFlatL2(inputs[0].shape[1])
    out = []
    for data in inputs:
        clus.train(data, index)
        out.append(faiss.vector_to_array(clus.centroids).reshape(k, -1).copy())
    return out


def test_warm_start_equals_one_reused_faiss_object_over_three_epochs() -> None:
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    # three "epochs" of drifting encodings; 600 points > K * max_ppc, so the seeded subsample is exercised
    epochs = [torch.randn(600, 8, generator=g) + 0.1 * e for e in range(3)]
    settings = {"seed": 3, "niter": 7, "nredo": 3, "max_points_per_centroid": 40}
    expected = _reused_faiss_sequence(faiss, [e.numpy() for e in epochs], 12, 3, 7, 3, 40)
    previous = None
    for data, want in zip(epochs, expected):
        previous = kmeans(data, 12, backend="faiss", init=previous, **settings)
        np.testing.assert_allclose(previous.numpy(), want, rtol=0, atol=1e-6)
    # and it is a real difference: a fresh k-means of the last epoch is another clustering
    fresh = kmeans(epochs[2], 12, backend="faiss", **settings)
    assert not np.allclose(fresh.numpy(), expected[2], atol=1e-3)


def test_iclrec_e_steps_equal_the_reused_faiss_object(monkeypatch) -> None:
    faiss = pytest.importorskip("faiss")
    from methods import REGISTRY
    from methods.base import DatasetInfo

    cls = REGISTRY["iclrec"]
    config = cls.Config(num_layers=1, hidden_size=8, max_len=10, num_intents=6, kmeans_backend="faiss",
                        kmeans_niter=5, kmeans_nredo=2, kmeans_max_points_per_centroid=50)
    config.validate()
    method = cls(config, DatasetInfo(name="synthetic", item_size=30, num_users=400), seed=2)
    g = torch.Generator().manual_seed(1)
    epochs = [torch.randn(400, 8, generator=g) * (1 + e) for e in range(3)]  # fixed "encodings" per epoch
    feed = iter(epochs)
    monkeypatch.setattr(method, "encode_mean_pooled", lambda inputs: next(feed))
    expected = _reused_faiss_sequence(faiss, [e.numpy() for e in epochs], 6, 2, 5, 2, 50)
    data = type("Data", (), {"train_input": None})()
    for epoch, want in enumerate(expected):
        method.on_epoch_start(epoch, data)
        np.testing.assert_allclose(method.centroids.numpy(), want, rtol=0, atol=1e-6)
    assert method.run_info()["kmeans_init"] == "warm"


def test_torch_backend_warm_start_begins_at_the_given_centroids() -> None:
    x, centres = blobs(seed=4)
    start = x.view(4, 100, 8).mean(1)  # the optimum: a warm start there stays there
    found = kmeans(x, 4, seed=9, niter=1, nredo=3, backend="torch", init=start)
    assert torch.allclose(found, start, atol=1e-5)
    # K = 7 on 4 blobs: where a start lands depends on it; from a converged one, another seed changes nothing
    seven = kmeans(x, 7, seed=1, niter=100, nredo=1, backend="torch")
    assert torch.allclose(kmeans(x, 7, seed=99, niter=1, backend="torch", init=seven), seven, atol=1e-5)
    assert not torch.allclose(kmeans(x, 7, seed=99, niter=100, nredo=1, backend="torch"), seven, atol=1e-2)
    with pytest.raises(ValueError, match=r"init must be \[K, H\]"):
        kmeans(x, 4, seed=1, backend="torch", init=start[:3])


def test_empty_cluster_is_refilled_by_splitting_the_largest() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [10.0, 10.0]])
    assign = torch.tensor([0, 0, 0, 2])  # cluster 1 is empty, cluster 0 is the largest
    out = _lloyd_update(x, assign, 3)
    eps = 1.0 / 1024
    assert torch.allclose(out[2], torch.tensor([10.0, 10.0]))
    assert torch.allclose(out[0], torch.tensor([1 - eps, 1 + eps]))
    assert torch.allclose(out[1], torch.tensor([1 + eps, 1 - eps]))


def test_nearest_centroid_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    centroids = torch.randn(9, 5, generator=g, dtype=torch.float64)
    brute = torch.tensor([min(range(9), key=lambda k: ((p - centroids[k]) ** 2).sum().item()) for p in x])
    assert torch.equal(nearest_centroid(x, centroids), brute)


def test_bad_arguments_raise() -> None:
    x, _ = blobs(per_blob=1)
    with pytest.raises(ValueError, match="K=5"):
        kmeans(x, 5, seed=0, backend="torch")
    with pytest.raises(ValueError, match="sklearn.*auto, faiss, torch"):
        kmeans(x, 2, seed=0, backend="sklearn")
    with pytest.raises(ValueError):
        resolve_backend("gpu")
    assert resolve_backend("torch") == "torch" and resolve_backend("faiss") == "faiss"
    assert resolve_backend("auto") in ("faiss", "torch")
