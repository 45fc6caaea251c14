"""Speed suite: our vectorised harness against the published code's way, side by side, on Beauty.

Run: `pytest tests/benchmarks -m benchmark_suite --benchmark-json=results/benchmarks/bench-{machine}.json`
(excluded from the default suite). Groups, each shown as one pytest-benchmark table:

- train step: forward + backward + Adam step of SASRec and CL4SRec at batch 256 (paper configs for Beauty);
- iclrec step, elcrec step: the same for ICLRec / ELCRec, beside a published-style step on the same batch,
  weights and loss terms;
- iclrec step on gru4rec: ICLRec on the GRU4Rec encoder (ICSRec's, one GRU layer), ours beside the
  published-style step on the same batch and weights (the published GRU4Rec modules, fused nn.GRU);
- icsrec vs iclrec step: ICSRec's step (three passes on prefix examples, 2 layers) over ICLRec's (five
  passes on users, 1 layer), both ours at batch 256; the ratio is ICSRec's step in ICLRec steps, and
  `extra_info` has each one's steps per epoch (ICSRec: one per prefix example, about 6x more);
- evaluation: all 22,363 test users, ours (popularity scan, counts) vs the reference (host argpartition);
- clustering: ICLRec's E-step (encode all users + k-means) vs the terms ELCRec adds to a step instead, for
  one batch and summed over the batches of one epoch;
- batches: one epoch of training batches with two augmented views, ours vs the per-sample DataLoader.

Benchmarked functions synchronise CUDA before returning, so device time is counted. Rounds are few: the
ratios matter, and they are stable long before the absolute numbers are.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.core.configs import resolve_config
from bench.core.evaluate import evaluate
from bench.core.step import epoch_batches, steps_per_epoch
from methods import REGISTRY, DatasetInfo, Method
from methods.augment import augment
from methods.clustering import nearest_centroid
from methods.losses import elcrec_cluster_loss

from .reference_impl import (
    ReferenceELCRecStep,
    ReferenceEvaluator,
    ReferenceGRU4Rec,
    ReferenceICLRecStep,
    ReferenceSASRec,
    train_loader,
)

pytestmark = pytest.mark.benchmark_suite

BATCH = 256
DATASET = "Beauty"
METHODS = ("sasrec", "cl4srec", "iclrec", "elcrec")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


GRU = {"encoder": "gru4rec", "num_layers": "2"}  # one GRU layer (the published count is num_layers - 1)


def build(name: str, data, device: torch.device, overrides: dict | None = None) -> Method:
    """A method with the paper config for Beauty (and `overrides`), seeded as a run with seed 1 is, and its
    E-step done."""
    config, _ = resolve_config(name, DATASET, "paper", dict(overrides or {}))
    torch.manual_seed(1)
    method = REGISTRY[name](config, DatasetInfo(data.name, data.item_size, data.num_users), seed=1).to(device)
    if name in ("iclrec", "elcrec", "icsrec"):
        method.on_epoch_start(0, data)
    return method


def augment_args() -> dict:
    """The published augmentation ratios, as the reference data loader takes them."""
    config = resolve_config("iclrec", DATASET, "paper", {})[0]
    return {"tao": config.tao, "gamma": config.gamma, "beta": config.beta}


def two_views(seqs: torch.Tensor, lengths: torch.Tensor, max_len: int, generator: torch.Generator) -> tuple:
    """Two augmented views per user with the published ratios, as `AugmentedMethod.make_views` makes them."""
    return tuple(augment(seqs, lengths, max_len, generator, **augment_args()) for _ in range(2))


def first_batch(method: Method, data, device: torch.device):
    """The first batch of an epoch as the harness serves it to `method` (views, prefix examples, positives)."""
    generator = torch.Generator(device=device).manual_seed(1)
    return next(iter(epoch_batches(method, data, generator)))


# ------------------------------------------------------------------------------------------- train step

def our_step_benchmark(benchmark, method, data, device) -> None:
    """Time our training step (forward, backward, Adam) of `method` on its first batch."""
    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=method.config.lr)
    batch = first_batch(method, data, device)

    def step() -> float:
        terms = method.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        sync(device)
        return terms["loss"].item()

    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(loss)

@pytest.mark.benchmark(group="train step")
@pytest.mark.parametrize("name", METHODS)
def test_train_step(benchmark, beauty_data, device, name):
    if name in ("iclrec", "elcrec"):  # their own groups, beside the published-style step
        benchmark.group = f"{name} step"
        benchmark.extra_info["ratio"] = "denominator"
    our_step_benchmark(benchmark, build(name, beauty_data, device), beauty_data, device)


@pytest.mark.benchmark(group="iclrec step on gru4rec")
def test_train_step_on_gru4rec(benchmark, beauty_data, device):
    """Our ICLRec step on the GRU4Rec encoder, beside `test_train_step_published_way_on_gru4rec`."""
    benchmark.extra_info["ratio"] = "denominator"
    our_step_benchmark(benchmark, build("iclrec", beauty_data, device, GRU), beauty_data, device)


@pytest.mark.benchmark(group="iclrec step on gru4rec")
def test_train_step_published_way_on_gru4rec(benchmark, beauty_data, device):
    benchmark.extra_info["ratio"] = "numerator"
    reference_step_benchmark(benchmark, beauty_data, device, "iclrec", GRU)


@pytest.mark.benchmark(group="icsrec vs iclrec step")
@pytest.mark.parametrize("name", ("icsrec", "iclrec"))
def test_icsrec_step_against_iclrec_step(benchmark, beauty_data, device, name):
    """One training step of each, as a run executes it: ICSRec on prefix examples with its fixed partners
    (3 passes of 2 layers, the last layer at the last position only), ICLRec on users with two views."""
    benchmark.extra_info["ratio"] = "numerator" if name == "icsrec" else "denominator"
    method = build(name, beauty_data, device)
    benchmark.extra_info["steps_per_epoch"] = steps_per_epoch(method, beauty_data)
    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=method.config.lr)
    batch = first_batch(method, beauty_data, device)

    def step() -> float:
        terms = method.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        sync(device)
        return terms["loss"].item()

    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(loss)


@pytest.mark.parametrize("name", ("iclrec", "elcrec"))
def test_train_step_published_way(benchmark, beauty_data, device, name):
    """A published-style step (`reference_impl.ReferenceICLRecStep` / `ReferenceELCRecStep`), same batch and
    weights, in the group of our step of the same method."""
    benchmark.group = f"{name} step"
    benchmark.extra_info["ratio"] = "numerator"
    reference_step_benchmark(benchmark, beauty_data, device, name)


def reference_step_benchmark(benchmark, data, device: torch.device, name: str, overrides: dict | None = None) -> None:
    method = build(name, data, device, overrides)
    c = method.config
    if c.encoder == "gru4rec":
        model = ReferenceGRU4Rec(data.item_size, c.hidden_size, c.num_layers, c.hidden_dropout).to(device)
    else:
        model = ReferenceSASRec(data.item_size, c.hidden_size, c.num_layers, c.num_heads, c.max_len,
                                c.hidden_dropout, c.attn_dropout).to(device)
    model.load_state_dict({k: v for k, v in method.state_dict().items() if k != "cluster_centers"})
    if name == "iclrec":
        step = ReferenceICLRecStep(model, method.centroids, c.lr, c.cl_weight, c.intent_weight, c.temperature)
    else:
        step = ReferenceELCRecStep(model, method.cluster_centers, c.lr, c.cl_weight, c.intent_weight, c.temperature,
                                   c.trade_off, c.prototype)
    batch = first_batch(method, data, device)
    # Same math as ours: without dropout, both give the same loss terms (each on its own copy of any centers,
    # which both project in place).
    method.eval()
    model.eval()
    with torch.no_grad():
        ours, reference = method.training_step(batch), step.loss_terms(batch)
    for term in ours:
        assert torch.allclose(ours[term], reference[term], rtol=1e-4, atol=1e-6), (term, ours[term], reference[term])

    def run() -> float:
        return step(batch)  # ends with loss.item(): synchronised

    loss = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    assert math.isfinite(loss)


# ------------------------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def eval_model(beauty_data, device, reference_checkpoint):
    """The published ICLRec Beauty checkpoint when available (realistic rankings), else an untrained SASRec."""
    if reference_checkpoint is None:
        return build("sasrec", beauty_data, device).eval()
    method = build_unfitted("iclrec", beauty_data, device)
    state = torch.load(reference_checkpoint, map_location="cpu", weights_only=True)
    method.load_state_dict(state)
    return method.to(device).eval()


def build_unfitted(name: str, data, device: torch.device) -> Method:
    config, _ = resolve_config(name, DATASET, "paper", {})
    return REGISTRY[name](config, DatasetInfo(data.name, data.item_size, data.num_users), seed=1).to(device)


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_ours(benchmark, beauty_data, eval_model, device):
    benchmark.extra_info["ratio"] = "denominator"

    def run() -> dict:
        metrics = evaluate(eval_model, beauty_data, "test")  # returns host floats: already synchronised
        return metrics

    metrics = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert 0.0 <= metrics["HR@20"] <= 1.0


@pytest.mark.benchmark(group="evaluation")
def test_evaluation_reference(benchmark, beauty_data, beauty_seqs, eval_model, device):
    benchmark.extra_info["ratio"] = "numerator"
    evaluator = ReferenceEvaluator(beauty_seqs, beauty_data.item_size, "test", batch_size=BATCH)
    reference = benchmark.pedantic(evaluator, args=(eval_model, device), rounds=2, iterations=1, warmup_rounds=1)
    ours = evaluate(eval_model, beauty_data, "test")
    benchmark.extra_info["metrics"] = {k: round(v, 4) for k, v in reference.items()}
    # Same model, same protocol: the two implementations must agree to 4 decimals.
    for key, value in ours.items():
        assert abs(reference[key] - value) < 5e-5, (key, reference[key], value)


# ------------------------------------------------------------------------------------------- clustering
@pytest.mark.benchmark(group="clustering")
def test_iclrec_estep(benchmark, beauty_data, device):
    benchmark.extra_info["ratio"] = "numerator"
    method = build_unfitted("iclrec", beauty_data, device)

    def estep() -> None:
        method.on_epoch_start(0, beauty_data)
        sync(device)

    benchmark.pedantic(estep, rounds=3, iterations=1, warmup_rounds=1)
    assert torch.isfinite(method.prototypes).all()


@pytest.fixture(scope="module")
def elcrec_inputs(beauty_data, device):
    """ELCRec's learnt centers and the encoder outputs its clustering terms consume, from one real batch."""
    method = build("elcrec", beauty_data, device)
    batch = first_batch(method, beauty_data, device)
    with torch.no_grad():
        hidden = method(batch.input_ids)  # [B, L, H], rec pass
        encoded = method(torch.cat(batch.views))  # [2B, L, H], instance pass
    centers = torch.nn.Parameter(method.cluster_centers.detach().clone())  # [K, H]
    return centers, hidden.requires_grad_(), encoded.requires_grad_(), method.config.prototype


def elcrec_cluster_terms(centers: torch.nn.Parameter, hidden: torch.Tensor, encoded: torch.Tensor, prototype: str) -> torch.Tensor:
    """What ELCRec adds to a step beyond the encoder passes (as `ELCRec.training_step` computes it), plus
    the backward of those terms: center assignment of every view position, in-place projection of the
    centers, the clustering loss, and each user's nearest center."""
    centers.grad = None
    nearest = nearest_centroid(encoded.detach().flatten(0, 1), centers.detach())  # [2B*L]
    gathered = centers[nearest].view_as(encoded)  # [2B, L, H]
    augmented = encoded + gathered if prototype == "shift" else torch.cat([encoded, gathered], dim=-1)
    with torch.no_grad():
        centers.div_(centers.norm(dim=1, keepdim=True))
    z = F.normalize(hidden.mean(dim=1), p=2, dim=1)  # [B, H]
    cluster = elcrec_cluster_loss(z, centers)
    intent_centers = centers[nearest_centroid(z.detach(), centers.detach())]  # [B, H]
    # A stand-in for the losses that consume them, so that their gradients reach the centers as in training.
    total = cluster + augmented.mean() + intent_centers.mean()
    total.backward()
    return total.detach()


@pytest.mark.benchmark(group="clustering")
def test_elcrec_cluster_terms_batch(benchmark, elcrec_inputs, device):
    centers, hidden, encoded, prototype = elcrec_inputs

    def one_batch() -> None:
        elcrec_cluster_terms(centers, hidden, encoded, prototype)
        sync(device)

    benchmark.pedantic(one_batch, rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="clustering")
def test_elcrec_cluster_terms_epoch(benchmark, elcrec_inputs, beauty_data, device):
    benchmark.extra_info["ratio"] = "denominator"
    centers, hidden, encoded, prototype = elcrec_inputs
    n = beauty_data.num_users
    sizes = [min(BATCH, n - start) for start in range(0, n, BATCH)]  # the epoch's batch sizes, last one smaller

    def one_epoch() -> None:
        for b in sizes:
            # Rows 0..2b-1 of the views stand in for a b-user batch: only the shapes matter for the cost.
            elcrec_cluster_terms(centers, hidden[:b], encoded[: 2 * b], prototype)
        sync(device)

    benchmark.pedantic(one_epoch, rounds=3, iterations=1, warmup_rounds=1)


# ---------------------------------------------------------------------------------------------- batches
@pytest.mark.benchmark(group="batches")
def test_batches_ours(benchmark, beauty_data, device):
    benchmark.extra_info["ratio"] = "denominator"
    generator = torch.Generator(device=device).manual_seed(1)

    def epoch() -> int:
        batches = list(beauty_data.train_batches(BATCH, generator, two_views))
        sync(device)
        return len(batches)

    count = benchmark.pedantic(epoch, rounds=3, iterations=1, warmup_rounds=1)
    assert count == math.ceil(beauty_data.num_users / BATCH)


@pytest.mark.benchmark(group="batches")
def test_batches_reference(benchmark, beauty_data, beauty_seqs):
    benchmark.extra_info["ratio"] = "numerator"
    loader = train_loader(beauty_seqs, beauty_data.item_size, BATCH, n_views=2, augment_args=augment_args())
    count = benchmark.pedantic(lambda: len(list(loader)), rounds=2, iterations=1, warmup_rounds=1)
    assert count == math.ceil(beauty_data.num_users / BATCH)


# ----------------------------------------------------------------------------------- same distributions
def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), (values.var() / len(values)).sqrt().item()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Means within 5 standard errors of their difference: a loose test that the distributions agree."""
    (ma, sa), (mb, sb) = _mean_and_se(a), _mean_and_se(b)
    return abs(ma - mb) <= 5 * math.hypot(sa, sb) + 1e-9


def test_reference_batches_match_ours(beauty_data, beauty_seqs):
    """The baseline builds the same examples: equal inputs and targets per user, and negatives and views
    drawn from the same distributions (compared by their means over one epoch)."""
    data = beauty_data
    args = augment_args()
    ours = list(data.train_batches(BATCH, torch.Generator(device=data.device).manual_seed(1), two_views))
    ref = list(train_loader(beauty_seqs, data.item_size, BATCH, n_views=2, augment_args=args))

    def gather(batches, fields):
        return [torch.cat([f(b).cpu() for b in batches]) for f in fields]

    users, inp, pos, neg, v1, v2 = gather(
        ours, [lambda b: b.users, lambda b: b.input_ids, lambda b: b.target_pos, lambda b: b.target_neg,
               lambda b: b.views[0], lambda b: b.views[1]]
    )
    r_users, r_inp, r_pos, r_neg, r_v1, r_v2 = gather(
        ref, [lambda b: b[0][0], lambda b: b[0][1], lambda b: b[0][2], lambda b: b[0][3],
              lambda b: b[1][0][0], lambda b: b[1][0][1]]
    )
    order, r_order = users.argsort(), r_users.argsort()
    assert torch.equal(users[order], r_users[r_order])  # every user exactly once in both
    assert torch.equal(inp[order], r_inp[r_order])
    assert torch.equal(pos[order], r_pos[r_order])
    assert torch.equal((neg > 0)[order], (r_neg > 0)[r_order])  # negatives exactly where targets are
    history = data.full.cpu()[r_users].sort(dim=1).values  # [N, n_max] each reference row's items, sorted
    found = history.gather(1, torch.searchsorted(history, r_neg).clamp(max=history.shape[1] - 1)) == r_neg
    assert not (found & (r_neg > 0)).any() and r_neg.max() < data.item_size  # never a seen item
    assert _close(neg[neg > 0], r_neg[r_neg > 0])
    views, r_views = torch.cat([v1, v2]), torch.cat([r_v1, r_v2])
    assert _close((views > 0).sum(1), (r_views > 0).sum(1))  # kept items per view: crop vs mask vs reorder
    inputs2, r_inputs2 = torch.cat([inp, inp]), torch.cat([r_inp, r_inp])
    assert _close((views == inputs2).all(1), (r_views == r_inputs2).all(1))  # views left unchanged
