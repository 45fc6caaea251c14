"""Losses (methods/losses.py) against explicit loop computations of the docs/methods.md, "Losses" formulas."""

from __future__ import annotations

import math

import pytest
import torch

from methods.losses import (
    elcrec_cluster_loss,
    full_softmax_ce,
    intent_loss,
    masked_nce_loss,
    nce_loss,
    rec_bce_loss,
    rec_ce_loss,
)


def dot(u: list[float], v: list[float]) -> float:
    return sum(x * y for x, y in zip(u, v))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def nce_by_loops(a: list[list[float]], b: list[list[float]], tau: float) -> float:
    n = len(a)
    rows, cols = a + b, b + a  # logits[i][j] = rows[i] . cols[j] / tau reproduces the 2x2 block layout
    total = 0.0
    for i in range(2 * n):
        logits = []
        for j in range(2 * n):
            self_pair = (i < n) != (j < n) and i % n == j % n  # a_i . a_i or b_i . b_i
            logits.append(-math.inf if self_pair else dot(rows[i], cols[j]) / tau)
        log_norm = math.log(sum(math.exp(v) for v in logits if v != -math.inf))
        total += log_norm - logits[i]  # column i holds row i's partner view
    return total / (2 * n)


def test_rec_bce_matches_loops_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    seq_out = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    table = torch.randn(6, 4, generator=g, dtype=torch.float64)
    pos = torch.tensor([[0, 2, 3], [1, 0, 5]])
    neg = torch.tensor([[4, 5, 1], [2, 3, 4]])
    terms = []
    for i in range(2):
        for t in range(3):
            if pos[i, t] > 0:
                h = seq_out[i, t].tolist()
                lp, ln = dot(h, table[pos[i, t]].tolist()), dot(h, table[neg[i, t]].tolist())
                terms.append(-math.log(sigmoid(lp) + 1e-24) - math.log(1 - sigmoid(ln) + 1e-24))
    loss = rec_bce_loss(seq_out, table, pos, neg)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    other_neg = neg.masked_fill(pos == 0, 1)  # negatives at target-0 positions must not matter
    assert rec_bce_loss(seq_out, table, pos, other_neg).item() == pytest.approx(loss.item(), rel=1e-15)


def test_rec_bce_keeps_the_1e24_form_for_saturated_logits() -> None:
    # Logits of +-200 saturate the sigmoids; the reference's epsilon then caps each log at log(1e-24).
    seq_out = torch.tensor([[[1.0], [1.0]]])
    table = torch.tensor([[0.0], [-200.0], [200.0]])
    loss = rec_bce_loss(seq_out, table, torch.tensor([[1, 0]]), torch.tensor([[2, 2]]))
    assert loss.item() == pytest.approx(-2 * math.log(1e-24), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_nce_matches_loops(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, 4, generator=g, dtype=torch.float64)
    expected = nce_by_loops(a.tolist(), b.tolist(), tau)
    assert nce_loss(a, b, tau).item() == pytest.approx(expected, rel=1e-12)


def test_intent_loss_is_mean_of_two_nce() -> None:
    g = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    protos = torch.randn(3, 4, generator=g, dtype=torch.float64)
    protos[2] = protos[0]  # two users sharing an intent, as with k-means prototypes
    p = protos.tolist()
    expected = (nce_by_loops(v1.tolist(), p, 1.0) + nce_by_loops(v2.tolist(), p, 1.0)) / 2
    assert intent_loss(v1, v2, protos).item() == pytest.approx(expected, rel=1e-12)


def test_cluster_loss_matches_loops() -> None:
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    c = torch.randn(5, 3, generator=g, dtype=torch.float64)
    zl, cl = z.tolist(), c.tolist()
    pull = sum(sum((x - y) ** 2 for x, y in zip(zb, ck)) for zb in zl for ck in cl) / (4 * 5)
    push = sum(sum((x - y) ** 2 for x, y in zip(ck, cj)) for ck in cl for cj in cl) / (5 * 5)
    assert elcrec_cluster_loss(z, c).item() == pytest.approx(pull - push, rel=1e-10)


def test_gradients_flow() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.randn(5, 6, generator=g, requires_grad=True)
    b = torch.randn(5, 6, generator=g, requires_grad=True)
    nce_loss(a, b).backward()
    for t in (a, b):  # the -inf self-similarities must not leak NaN into the gradients
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    z = torch.randn(5, 6, generator=g, requires_grad=True)
    centers = torch.randn(3, 6, generator=g, requires_grad=True)
    elcrec_cluster_loss(z, centers).backward()
    for t in (z, centers):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ------------------------------------------------------------------------ full-softmax cross-entropy
def softmax_ce_by_loops(h: list[float], table: list[list[float]], target: int) -> float:
    logits = [dot(h, row) for row in table]
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_full_softmax_ce_by_hand() -> None:
    # logits [0, 1, 0] over all three rows (padding row 0 included): log(1 + e + 1) - 1
    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = full_softmax_ce(torch.tensor([[1.0, 0.0]], dtype=torch.float64), table, torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(2 + math.e) - 1, rel=1e-12)


def test_rec_ce_is_the_mean_over_positions_with_a_target() -> None:
    g = torch.Generator().manual_seed(5)
    seq_out = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    table = torch.randn(6, 4, generator=g, dtype=torch.float64)
    pos = torch.tensor([[0, 2, 3], [0, 0, 5]])
    terms = [softmax_ce_by_loops(seq_out[i, t].tolist(), table.tolist(), int(pos[i, t]))
             for i in range(2) for t in range(3) if pos[i, t] > 0]
    assert rec_ce_loss(seq_out, table, pos).item() == pytest.approx(sum(terms) / 3, rel=1e-12)


# ------------------------------------------------------------------- InfoNCE with false-negative masking
def masked_nce_by_loops(a: list[list[float]], b: list[list[float]], labels: list[int], tau: float) -> float:
    z, n = a + b, len(a)
    both = labels + labels
    total = 0.0
    for r in range(2 * n):
        partner = (r + n) % (2 * n)
        logits = [dot(z[r], z[partner]) / tau]
        logits += [-math.inf if both[c] == both[r] else dot(z[r], z[c]) / tau for c in range(2 * n)]
        total += math.log(sum(math.exp(v) for v in logits if v != -math.inf)) - logits[0]
    return total / (2 * n)


def test_masked_nce_by_hand() -> None:
    # z = [1, 0, 1, 2] (a = [1, 0], b = [1, 2], one dimension), labels [5, 7]: each row keeps its partner's
    # similarity and the two columns of the other label.
    a, b = torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    rows = [
        math.log(math.e + 1 + math.e**2) - 1,  # z0: partner z2 (1), negatives z1 (0), z3 (2)
        math.log(3),  # z1 = 0: every logit 0
        math.log(math.e + 1 + math.e**2) - 1,  # z2: partner z0 (1), negatives z1 (0), z3 (2)
        math.log(1 + 2 * math.e**2),  # z3: partner z1 (0), negatives z0 (2), z2 (2)
    ]
    loss = masked_nce_loss(a, b, torch.tensor([5, 7]))
    assert loss.item() == pytest.approx(sum(rows) / 4, rel=1e-12)
    # one label for the whole batch: every negative is masked, each row is its positive alone
    assert masked_nce_loss(a, b, torch.tensor([5, 5])).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_masked_nce_matches_loops_and_without_shared_labels_is_the_plain_nce(tau: float) -> None:
    g = torch.Generator().manual_seed(6)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64)
    labels = [3, 1, 3, 2, 1]
    expected = masked_nce_by_loops(a.tolist(), b.tolist(), labels, tau)
    assert masked_nce_loss(a, b, torch.tensor(labels), tau).item() == pytest.approx(expected, rel=1e-12)
    # distinct labels mask only each row itself and its partner: section 5's NCE
    distinct = masked_nce_loss(a, b, torch.arange(5), tau).item()
    assert distinct == pytest.approx(nce_loss(a, b, tau).item(), rel=1e-12)


def test_masked_nce_gradients_are_finite() -> None:
    g = torch.Generator().manual_seed(7)
    a = torch.randn(4, 3, generator=g, requires_grad=True)
    b = torch.randn(4, 3, generator=g, requires_grad=True)
    masked_nce_loss(a, b, torch.tensor([0, 0, 1, 2])).backward()
    for t in (a, b):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
