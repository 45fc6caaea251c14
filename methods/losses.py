"""Training losses of the methods (docs/methods.md, "Losses", "Recommendation losses", "The methods"), in the
published code's exact form."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_EPS = 1e-24  # the published code adds this inside both logs; kept so the loss values match it


def rec_bce_loss(
    seq_out: torch.Tensor, item_weight: torch.Tensor, target_pos: torch.Tensor, target_neg: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of one positive and one sampled negative item per position with target > 0.

    seq_out [B, L, H] encoder output, item_weight [V, H] item embedding table, target_pos / target_neg [B, L].
    """
    # Only the B*L target rows of the table are gathered: full [B*L, V] logits would waste V-fold work.
    # index_select (backward: index_add) is 2-3x cheaper on CPU than advanced indexing (index_put).
    def rows(ids: torch.Tensor) -> torch.Tensor:
        return item_weight.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)  # [B, L, H]

    pos_logits = (seq_out * rows(target_pos)).sum(-1)  # [B, L]
    neg_logits = (seq_out * rows(target_neg)).sum(-1)  # [B, L]
    per_position = -torch.log(torch.sigmoid(pos_logits) + LOG_EPS) - torch.log(
        1 - torch.sigmoid(neg_logits) + LOG_EPS
    )  # [B, L]
    is_target = (target_pos > 0).to(per_position.dtype)  # [B, L]
    # The reference divides by the raw target count; the clamp only turns a batch without any target (which
    # leave-one-out training data never produces) into 0 instead of NaN.
    return (per_position * is_target).sum() / is_target.sum().clamp(min=1)


def full_softmax_ce(vectors: torch.Tensor, item_weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of softmax(vectors . item_weight^T) over all V rows of the table (padding and mask
    id included, as ICSRec and DuoRec compute it). vectors [N, H], item_weight [V, H], targets [N]."""
    return F.cross_entropy(vectors @ item_weight.T, targets)


def rec_ce_loss(seq_out: torch.Tensor, item_weight: torch.Tensor, target_pos: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy at every position with target > 0, averaged over those positions.

    seq_out [B, L, H], target_pos [B, L]. Only the target positions are scored: on user examples they are
    about an eighth of the B*L, and each costs a row of V logits.
    """
    has_target = target_pos > 0  # [B, L]
    return full_softmax_ce(seq_out[has_target], item_weight, target_pos[has_target])  # [T, H] -> scalar


def nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Two-view InfoNCE: row i's positive is its partner view; every other vector of both views is a negative.

    a, b [B, D]. Logits [2B, 2B] = [[a.b^T, a.a^T], [b.b^T, b.a^T]] / temperature, self-similarities -inf.
    """
    n = a.shape[0]
    self_pairs = torch.eye(n, dtype=torch.bool, device=a.device)  # [B, B]
    sim_ab = a @ b.T / temperature  # [B, B]
    # masked_fill (not an in-place write) because autograd still needs the matmul outputs.
    sim_aa = (a @ a.T / temperature).masked_fill(self_pairs, float("-inf"))  # [B, B]
    sim_bb = (b @ b.T / temperature).masked_fill(self_pairs, float("-inf"))  # [B, B]
    logits = torch.cat([torch.cat([sim_ab, sim_aa], dim=1), torch.cat([sim_bb, sim_ab.T], dim=1)])  # [2B, 2B]
    # Row i < B has its positive a_i.b_i at column i; row B+i has b_i.a_i at column B+i.
    return F.cross_entropy(logits, torch.arange(2 * n, device=a.device))


def masked_nce_loss(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ICSRec's InfoNCE with false-negative masking: a_i and b_i are a positive pair with label labels[i].

    a, b [B, D], labels [B]. With z = [a; b], row r's logits are its partner's similarity followed by all 2B
    similarities of z_r, where every column whose label equals row r's label is -inf (itself, its partner,
    and every other sample of that label); the loss is the cross-entropy with target 0, mean over 2B rows.
    """
    z = torch.cat([a, b])  # [2B, D]
    sim = z @ z.T / temperature  # [2B, 2B]
    n = a.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)  # [2B]
    positive = sim.gather(1, partner[:, None])  # [2B, 1]
    both = torch.cat([labels, labels])  # [2B]
    negatives = sim.masked_fill(both[:, None] == both[None, :], float("-inf"))  # [2B, 2B]
    logits = torch.cat([positive, negatives], dim=1)  # [2B, 1 + 2B]
    return F.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long, device=a.device))


def intent_loss(
    view1: torch.Tensor, view2: torch.Tensor, prototypes: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Each view contrasted with the users' intent prototypes, averaged. view1, view2, prototypes [B, H]."""
    return (nce_loss(view1, prototypes, temperature) + nce_loss(view2, prototypes, temperature)) / 2


def elcrec_cluster_loss(z: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """ELCRec's clustering term: pull users towards all centers, push centers apart.

    z [B, H], centers [K, H]. Mean over (b, k) of ||z_b - c_k||^2 minus mean over (k, k'), diagonal
    included, of ||c_k - c_k'||^2. Squared distances are expanded as ||x||^2 + ||y||^2 - 2 x.y so that the
    work is two matmuls rather than a [B, K, H] difference tensor.
    """
    z_sq = z.pow(2).sum(1)  # [B]
    c_sq = centers.pow(2).sum(1)  # [K]
    user_center = z_sq[:, None] + c_sq[None, :] - 2 * z @ centers.T  # [B, K]
    center_center = c_sq[:, None] + c_sq[None, :] - 2 * centers @ centers.T  # [K, K]
    return user_center.mean() - center_center.mean()
