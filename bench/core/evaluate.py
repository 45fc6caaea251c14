"""The one full-ranking HR/NDCG implementation (docs/methods.md, "Evaluation").

Every user's answer gets its 0-based rank among all item ids; HR@K and NDCG@K follow from the rank. The
rank is the number of other ids whose score is at least the answer's (an id tied with the answer ranks
ahead of it), after history masking. "Take the top 20 ids by score" (the published code) gives the same hits and ranks
whenever no id ties with the answer; with the reference protocol's 0-filled history, an answer that is in
its own history ties with the other history ids and is then ranked behind them.

Protocols:
- `reference` (default): history scores are set to 0, not -inf, and ids 0 and max_item + 1 stay rankable.
  This is the published code's quirk, and the published numbers depend on it.
- `strict`: history, padding id 0 and the unused mask id get -inf.

Only ranks below 20 change a metric, so a user's count can stop once 20 ids are ahead. For methods that
score by dot product with the item table (`Method.score_items`), items are scanned in order of popularity,
a chunk at a time, and users leave the scan as soon as 20 ids are ahead of their answer: on Beauty 80% of
users leave after the 256 most popular items, so the score product does about 14% of the full work. The
counts, and so the metrics, are those of the full score matrix; the scan order only changes speed. On a
GPU the scan is one chunk of all items (leaving the scan would need a host sync per chunk).
"""

from __future__ import annotations

import torch

from bench.core.data import SequenceData
from bench.core.errors import BenchError

KS = (5, 10, 20)
METRICS = tuple(f"{name}@{k}" for k in KS for name in ("HR", "NDCG"))
PROTOCOLS = ("reference", "strict")
FIRST_CHUNK = 256  # items in the first scan chunk on CPU; later chunks double
RANK_CLIP = max(KS)  # stored per-user ranks are clipped here: 20 means "20 or worse"


def per_user_metrics(ranks: torch.Tensor) -> torch.Tensor:
    """Each user's [HR@5, NDCG@5, HR@10, NDCG@10, HR@20, NDCG@20]: [B, 6] float64, from 0-based ranks [B].

    NDCG with one relevant item is 1 / log2(rank + 2). The one formula of the metrics: the evaluation sums it,
    the leaderboard's paired tests compare it user by user (`rank_gains`).
    """
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    columns = []
    for k in KS:
        hit = ranks < k
        columns += [hit.double(), torch.where(hit, gain, 0.0)]
    return torch.stack(columns, dim=1)


def rank_metrics(ranks: torch.Tensor) -> torch.Tensor:
    """Sums of the six metrics over a batch of ranks, as a device tensor [6]."""
    return per_user_metrics(ranks).sum(dim=0)


def scan_chunks(table: torch.Tensor, device: torch.device) -> list[tuple[int, torch.Tensor]]:
    """The item table [I, H] (rows in scan order) cut into chunks: (first row, rows + one zero row).

    Chunks of 256, 256, 512, 1024, ... rows on CPU; one chunk on GPU. The zero row gives each chunk's score
    block a spare column, which receives the masked ids that lie outside the chunk.
    """
    num_items = table.shape[0]
    if device.type == "cuda":
        bounds = [(0, num_items)]
    else:
        bounds, start, size = [], 0, FIRST_CHUNK
        while start < num_items:
            bounds.append((start, min(start + size, num_items)))
            start += size
            size = size if start == FIRST_CHUNK else 2 * size
    spare = table.new_zeros(1, table.shape[1])
    return [(start, torch.cat([table[start:stop], spare])) for start, stop in bounds]


def count_ahead(
    users: torch.Tensor,
    chunks: list[tuple[int, torch.Tensor]],
    masked_cols: torch.Tensor,
    masked_values: torch.Tensor,
    answer_score: torch.Tensor,
) -> torch.Tensor:
    """Number of ids that score at least `answer_score`, per user, stopping a user's count at 20.

    users [B, H]; chunks from `scan_chunks`; masked_cols [B, M] positions in scan order whose score is
    replaced by masked_values [B, M] (history fill; -inf for the answer itself and excluded ids).
    Counts of 20 or more are lower bounds, which is all the metrics need.
    """
    ahead = torch.zeros(len(users), dtype=torch.long, device=users.device)
    active = torch.arange(len(users), device=users.device)  # users still counting
    for i, (start, chunk_table) in enumerate(chunks):
        size = len(chunk_table) - 1
        all_active = len(active) == len(users)  # first chunk, or nobody left yet: no gathers
        scores = (users if all_active else users[active]) @ chunk_table.T  # [A, size + 1]
        cols = masked_cols if all_active else masked_cols[active]
        local = torch.where((cols >= start) & (cols < start + size), cols - start, size)
        scores.scatter_(1, local, masked_values if all_active else masked_values[active])
        scores[:, size] = float("-inf")
        target = answer_score if all_active else answer_score[active]
        counted = (scores >= target[:, None]).sum(dim=1)
        if all_active:
            ahead += counted
        else:
            ahead[active] += counted
        if i == len(chunks) - 1:
            break
        active = active[ahead[active] < max(KS)]  # a host sync; on GPU there is a single chunk
        if len(active) == 0:
            break
    return ahead


@torch.no_grad()
def evaluate(
    method,
    data: SequenceData,
    split: str = "test",
    protocol: str = "reference",
    batch_size: int | None = None,
    return_ranks: bool = False,
):
    """HR and NDCG at 5, 10, 20 of `method` on a split, full ranking over all item ids.

    Default batch: 1024 users on CPU, 4096 on GPU, where bigger blocks keep the device busy. With
    `return_ranks`, returns (metrics, ranks): ranks is a numpy uint8 array [num_users] in user order, each
    answer's 0-based rank clipped to `RANK_CLIP` (20 = "20 or worse"), which is all any metric needs; the
    leaderboard's paired tests are computed from it (`rank_gains`).
    """
    if batch_size is None:
        batch_size = 4096 if data.device.type == "cuda" else 1024
    if protocol not in PROTOCOLS:
        raise BenchError(f"unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    inputs, answers, history_len = data.eval_split(split)
    was_training = method.training
    method.eval()
    totals = torch.zeros(len(METRICS), dtype=torch.float64, device=data.device)
    # Per-user ranks are kept only when asked for (the test split of a run), not at every epoch's validation.
    user_ranks = torch.full((data.num_users,), RANK_CLIP, dtype=torch.uint8, device=data.device) if return_ranks else None
    ranker = _Ranker(method, data, protocol)
    cut = method.cuts_leading_padding()
    for rows, width in _blocks_by_history_length(inputs, history_len, batch_size):
        block_inputs = inputs[rows, inputs.shape[1] - max(width, 1) :] if cut else inputs[rows]
        ranks = ranker.ranks(rows, block_inputs, answers[rows], history_len[rows])
        totals += rank_metrics(ranks)
        if user_ranks is not None:
            user_ranks[rows] = ranks.clamp(max=RANK_CLIP).to(torch.uint8)
    method.train(was_training)
    values = (totals / data.num_users).tolist()
    metrics = dict(zip(METRICS, values))
    return (metrics, user_ranks.cpu().numpy()) if return_ranks else metrics


def _blocks_by_history_length(inputs: torch.Tensor, history_len: torch.Tensor, batch_size: int):
    """(rows [B], used width) per block of users, in order of history length.

    Each block's inputs then share their leading all-padding columns, which are cut off (most Beauty users
    have under 10 of the 50 slots filled), where the method's encoder allows it (`cuts_leading_padding`:
    in SASRec padded keys get a -10000 attention bias, i.e. a softmax weight of exactly 0 in fp32, and
    positions are right-aligned; in GRU4Rec a zero padding row keeps the state at exactly 0), so the scores
    are those of the full-width input. The metrics are sums over users: the order does not change them.
    """
    order = torch.argsort(history_len)
    used_columns = (inputs > 0).sum(dim=1)[order]
    widths = torch.stack([block.max() for block in used_columns.split(batch_size)]).tolist()  # one sync
    for start, width in zip(range(0, len(order), batch_size), widths):
        yield order[start : start + batch_size], width


class _Ranker:
    """Each answer's rank among all item ids under a protocol: the number of other ids scoring at least as
    high. Methods that score by dot product with an item table are scanned by popularity (`count_ahead`);
    any other scoring ranks from the whole score matrix."""

    def __init__(self, method, data: SequenceData, protocol: str):
        self.method, self.data, self.protocol = method, data, protocol
        self.fill = 0.0 if protocol == "reference" else float("-inf")
        self.item_table = method.item_table()  # [item_size, H], or None: the method scores items its own way
        if self.item_table is not None:
            item_order, self.scan_position = data.popularity_order()
            self.chunks = scan_chunks(self.item_table[item_order], data.device)
        self.excluded = torch.tensor([0, data.item_size - 1], device=data.device)  # strict: padding and mask ids

    def ranks(self, rows, block_inputs, answer, history_len) -> torch.Tensor:
        data = self.data
        full = data.full[rows]  # [B, n_max]
        in_history = data.columns < history_len[:, None]
        # History = first `history_len` items; columns past it repeat the first item, so that masking them
        # writes the same value again.
        history = torch.where(in_history, full, full[:, :1])
        if self.item_table is not None:
            answer_score, ahead = self._by_dot(block_inputs, answer, full, in_history, history)
        else:
            answer_score, ahead = self._from_scores(block_inputs, answer, history)
        # A NaN score (a diverged model) ranks nowhere: never a hit.
        return torch.where(answer_score.isnan(), data.item_size, ahead)

    def _by_dot(self, block_inputs, answer, full, in_history, history):
        users = self.method.user_repr(block_inputs)  # [B, H]
        answer_score = (users * self.item_table[answer]).sum(dim=1)
        answer_in_history = ((full == answer[:, None]) & in_history).any(dim=1)
        answer_score = torch.where(answer_in_history, self.fill, answer_score)
        # Masked: the history gets `fill`; the answer itself (not ahead of itself) and, under `strict`, the
        # padding and mask ids get -inf.
        strict = [self.excluded.expand(len(answer), 2)] if self.protocol == "strict" else []
        masked_ids = torch.cat([history, answer[:, None], *strict], dim=1)
        masked_values = torch.full(masked_ids.shape, float("-inf"), device=self.data.device)
        masked_values[:, : history.shape[1]] = self.fill
        ahead = count_ahead(users, self.chunks, self.scan_position[masked_ids], masked_values, answer_score)
        return answer_score, ahead

    def _from_scores(self, block_inputs, answer, history):
        scores = self.method.score_items(block_inputs)  # [B, item_size]
        scores.scatter_(1, history, self.fill)
        if self.protocol == "strict":
            scores[:, self.excluded] = float("-inf")
        answer_score = scores.gather(1, answer[:, None]).squeeze(1)
        scores.scatter_(1, answer[:, None], float("-inf"))
        return answer_score, (scores >= answer_score[:, None]).sum(dim=1)


def rank_gains(ranks, metric: str):
    """Per-user value of `metric` (one of METRICS) from clipped 0-based ranks (a numpy array), as numpy.

    The mean over users is the metric itself, so paired tests over users compare exactly what the
    tables show.
    """
    import numpy as np

    values = per_user_metrics(torch.as_tensor(np.asarray(ranks, dtype=np.int64)))
    return values[:, METRICS.index(metric)].numpy()
