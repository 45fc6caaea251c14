"""The "before" baselines: the published ICLRec/ELCRec data pipeline, evaluation and ICLRec training step,
re-implemented.

Written from the description in docs/methods.md, "Split", "Evaluation", "Losses" of what the published code does, in the same
style, so that its cost is what the speed suite compares ours against:

- data: a torch `Dataset` whose `__getitem__` builds one user's example in Python: `copy.deepcopy` of the
  lists, one negative per input position drawn with `random.randint` in a `while item in set` rejection
  loop, each of two views augmented by crop / mask / reorder chosen with `random`, left padding of Python
  lists to 50, and one `torch.tensor` per field; a `DataLoader` (batch 256, default collate) stacks them.
- evaluation: the model scores every item on its device, the scores are copied to the host, a dense
  history mask of the batch's users is built from a sparse rating matrix (scipy csr `toarray() > 0` when
  scipy is installed, else the same dense mask with numpy), the history scores are set to 0,
  `np.argpartition` finds the top 20, and HR / NDCG are computed by Python loops over users.
- ICLRec training step: see `ReferenceICLRecStep` below.

The distributions and the metrics are the same as ours (the speed suite checks both); only the cost differs.
Two small liberties, both in the baseline's favour or neutral: the evaluation runs under `torch.no_grad()`,
and the random streams are `random.Random` / `torch.Generator` instances rather than global state.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from bench.core.data import SequenceData

KS = (5, 10, 15, 20)  # the published evaluation computes @15 too


def user_sequences(data: SequenceData) -> list[list[int]]:
    """The users' whole sequences as Python lists, in the same order as `data` (the published `user_seq`)."""
    return [row[:n] for row, n in zip(data.full.cpu().tolist(), data.lengths.cpu().tolist())]


# ------------------------------------------------------------------------------------------ augmentations
class Crop:
    def __init__(self, tao: float, rng: random.Random):
        self.tao = tao
        self.rng = rng

    def __call__(self, sequence: list[int]) -> list[int]:
        copied = copy.deepcopy(sequence)
        sub_len = int(self.tao * len(copied))
        # The published code draws the start in 0..m-len-1, so the last possible start is never used.
        start = self.rng.randint(0, max(len(copied) - sub_len - 1, 0))
        if sub_len < 1:
            return [copied[start]]
        return copied[start : start + sub_len]


class Mask:
    def __init__(self, gamma: float, rng: random.Random):
        self.gamma = gamma
        self.rng = rng

    def __call__(self, sequence: list[int]) -> list[int]:
        copied = copy.deepcopy(sequence)
        mask_nums = int(self.gamma * len(copied))
        mask = [0 for _ in range(mask_nums)]
        mask_idx = self.rng.sample([i for i in range(len(copied))], k=mask_nums)
        for idx, value in zip(mask_idx, mask):
            copied[idx] = value
        return copied


class Reorder:
    def __init__(self, beta: float, rng: random.Random):
        self.beta = beta
        self.rng = rng

    def __call__(self, sequence: list[int]) -> list[int]:
        copied = copy.deepcopy(sequence)
        sub_len = int(self.beta * len(copied))
        start = self.rng.randint(0, max(len(copied) - sub_len - 1, 0))
        sub_seq = copied[start : start + sub_len]
        self.rng.shuffle(sub_seq)
        reordered = copied[:start] + sub_seq + copied[start + sub_len :]
        assert len(reordered) == len(copied)
        return reordered


class RandomAugment:
    """One of crop, mask, reorder, chosen uniformly per call (the published "random" base transform)."""

    def __init__(self, rng: random.Random, tao: float = 0.2, gamma: float = 0.7, beta: float = 0.2):
        self.rng = rng
        self.methods = [Crop(tao, rng), Mask(gamma, rng), Reorder(beta, rng)]

    def __call__(self, sequence: list[int]) -> list[int]:
        return self.methods[self.rng.randint(0, len(self.methods) - 1)](sequence)


def neg_sample(item_set: set[int], item_size: int, rng: random.Random) -> int:
    item = rng.randint(1, item_size - 1)
    while item in item_set:
        item = rng.randint(1, item_size - 1)
    return item


# ------------------------------------------------------------------------------------------------ dataset
class ReferenceRecDataset(Dataset):
    """Per-user examples built in Python on every access, as the published `RecWithContrastiveLearningDataset`.

    train: (rec tensors, [[view1, view2]]) with rec tensors (user, input, target_pos, target_neg, answer);
    valid / test: the rec tensors only (negatives are sampled there too, as the published code does).
    """

    def __init__(
        self,
        user_seqs: list[list[int]],
        item_size: int,
        data_type: str = "train",
        max_len: int = 50,
        n_views: int = 2,
        augment_args: dict | None = None,
        seed: int = 1,
    ):
        if data_type not in ("train", "valid", "test"):
            raise ValueError(f"unknown data_type {data_type!r}")
        self.user_seqs = user_seqs
        self.item_size = item_size
        self.data_type = data_type
        self.max_len = max_len
        self.n_views = n_views
        self.rng = random.Random(seed)
        self.base_transform = RandomAugment(self.rng, **(augment_args or {}))

    def __len__(self) -> int:
        return len(self.user_seqs)

    def _pad(self, seq: list[int]) -> list[int]:
        pad_len = self.max_len - len(seq)
        return ([0] * pad_len + seq)[-self.max_len :]

    def _one_pair_data_augmentation(self, input_ids: list[int]) -> list[torch.Tensor]:
        views = []
        for _ in range(2):
            augmented = self._pad(self.base_transform(input_ids))
            assert len(augmented) == self.max_len
            views.append(torch.tensor(augmented, dtype=torch.long))
        return views

    def _data_sample_rec_task(self, user_id: int, items: list[int], input_ids: list[int], target_pos: list[int], answer: list[int]):
        input_ids = copy.deepcopy(input_ids)  # the published code copies so the stored lists stay untouched
        seq_set = set(items)
        target_neg = [neg_sample(seq_set, self.item_size, self.rng) for _ in input_ids]
        return (
            torch.tensor(user_id, dtype=torch.long),
            torch.tensor(self._pad(input_ids), dtype=torch.long),
            torch.tensor(self._pad(target_pos), dtype=torch.long),
            torch.tensor(self._pad(target_neg), dtype=torch.long),
            torch.tensor(answer, dtype=torch.long),
        )

    def __getitem__(self, index: int):
        items = self.user_seqs[index]
        if self.data_type == "train":
            input_ids, target_pos, answer = items[:-3], items[1:-2], [0]
        elif self.data_type == "valid":
            input_ids, target_pos, answer = items[:-2], items[1:-1], [items[-2]]
        else:
            input_ids, target_pos, answer = items[:-1], items[1:], [items[-1]]
        rec = self._data_sample_rec_task(index, items, input_ids, target_pos, answer)
        if self.data_type != "train" or self.n_views < 2:
            return rec
        pairs = math.comb(self.n_views, 2)  # n_views == 2: one pair, plain pairwise contrast
        return rec, [self._one_pair_data_augmentation(input_ids) for _ in range(pairs)]


def train_loader(
    user_seqs: list[list[int]],
    item_size: int,
    batch_size: int = 256,
    n_views: int = 2,
    augment_args: dict | None = None,
    seed: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """The published training loader: random order each epoch, default collate, batch 256."""
    dataset = ReferenceRecDataset(user_seqs, item_size, "train", n_views=n_views, augment_args=augment_args, seed=seed)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, sampler=sampler, batch_size=batch_size, num_workers=num_workers)


# --------------------------------------------------------------------------------------------- evaluation
class _DenseRowsMatrix:
    """A minimal csr matrix of 0/1 entries whose rows can be densified, for when scipy is not installed."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
        order = np.argsort(rows, kind="stable")
        self.indices = cols[order]
        self.indptr = np.zeros(shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=self.indptr[1:])
        self.shape = shape

    def rows_toarray(self, users: np.ndarray) -> np.ndarray:
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        row_of = np.repeat(np.arange(len(users)), counts)
        flat = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends)]) if len(users) else np.empty(0, np.int64)
        dense = np.zeros((len(users), self.shape[1]), dtype=np.int64)
        dense[row_of, flat] = 1
        return dense


def rating_matrix(user_seqs: list[list[int]], item_size: int, split: str):
    """Users x items history matrix: s[:-2] for valid, s[:-1] for test (the published generate_rating_matrix_*)."""
    cut = 2 if split == "valid" else 1
    row, col, data = [], [], []
    for user_id, item_list in enumerate(user_seqs):
        for item in item_list[:-cut]:
            row.append(user_id)
            col.append(item)
            data.append(1)
    row_a, col_a, data_a = np.array(row), np.array(col), np.array(data)
    shape = (len(user_seqs), item_size)
    try:
        from scipy.sparse import csr_matrix
    except ImportError:
        return _DenseRowsMatrix(row_a, col_a, shape)
    return csr_matrix((data_a, (row_a, col_a)), shape=shape)


def _history_mask(matrix, users: np.ndarray) -> np.ndarray:
    if isinstance(matrix, _DenseRowsMatrix):
        return matrix.rows_toarray(users) > 0
    return matrix[users].toarray() > 0


def recall_at_k(actual: list[list[int]], predicted: np.ndarray, topk: int) -> float:
    sum_recall, true_users = 0.0, 0
    for i in range(len(predicted)):
        act_set = set(actual[i])
        pred_set = set(predicted[i][:topk])
        if len(act_set) != 0:
            sum_recall += len(act_set & pred_set) / float(len(act_set))
            true_users += 1
    return sum_recall / true_users


def ndcg_k(actual: list[list[int]], predicted: np.ndarray, topk: int) -> float:
    res = 0.0
    for user_id in range(len(actual)):
        k = min(topk, len(actual[user_id]))
        idcg = sum(1.0 / math.log(i + 2, 2) for i in range(k))
        dcg = sum(int(predicted[user_id][j] in set(actual[user_id])) / math.log(j + 2, 2) for j in range(topk))
        res += dcg / idcg
    return res / float(len(actual))


class ReferenceEvaluator:
    """The published full-ranking evaluation. The rating matrix is built once, as the published code does."""

    def __init__(self, user_seqs: list[list[int]], item_size: int, split: str = "test", batch_size: int = 256, seed: int = 1):
        self.dataset = ReferenceRecDataset(user_seqs, item_size, split, n_views=0, seed=seed)
        self.loader = DataLoader(self.dataset, sampler=SequentialSampler(self.dataset), batch_size=batch_size)
        self.matrix = rating_matrix(user_seqs, item_size, split)

    def __call__(self, model: torch.nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        was_training = model.training
        model.eval()
        pred_list, answer_list = None, None
        with torch.no_grad():
            for i, batch in enumerate(self.loader):
                user_ids, input_ids, _target_pos, _target_neg, answers = (t.to(device) for t in batch)
                out = model(input_ids)[:, -1, :]  # [B, H]
                rating_pred = out @ model.item_embeddings.weight.transpose(0, 1)  # [B, item_size]
                rating_pred = rating_pred.cpu().data.numpy().copy()
                batch_user_index = user_ids.cpu().numpy()
                rating_pred[_history_mask(self.matrix, batch_user_index)] = 0
                ind = np.argpartition(rating_pred, -20)[:, -20:]
                arr_ind = rating_pred[np.arange(len(rating_pred))[:, None], ind]
                arr_ind_argsort = np.argsort(arr_ind)[np.arange(len(rating_pred)), ::-1]
                batch_pred_list = ind[np.arange(len(rating_pred))[:, None], arr_ind_argsort]
                if i == 0:
                    pred_list, answer_list = batch_pred_list, answers.cpu().data.numpy()
                else:
                    pred_list = np.append(pred_list, batch_pred_list, axis=0)
                    answer_list = np.append(answer_list, answers.cpu().data.numpy(), axis=0)
        model.train(was_training)
        metrics = {}
        for k in KS:
            metrics[f"HR@{k}"] = recall_at_k(answer_list.tolist(), pred_list, k)
            metrics[f"NDCG@{k}"] = ndcg_k(answer_list.tolist(), pred_list, k)
        return {f"{name}@{k}": metrics[f"{name}@{k}"] for k in (5, 10, 20) for name in ("HR", "NDCG")}


# ------------------------------------------------------------------------------------------ training step
# The published ICLRec model and M-step, in the published code's style: its own LayerNorm and erf GELU in
# elementary ops, nn.Dropout, heads split with permute and merged with .contiguous(), the attention mask
# rebuilt from the batch in float, three encoder calls per step, and the intent query answered by a faiss
# index on a host copy of the batch's mean-pooled output. Parameter names are the published ones, so our
# method's state_dict loads into it and both start from the same weights.
class ReferenceLayerNorm(torch.nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden))
        self.bias = torch.nn.Parameter(torch.zeros(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight * x + self.bias


def reference_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class ReferenceSelfAttention(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float):
        super().__init__()
        self.heads, self.head_size = heads, hidden // heads
        self.query = torch.nn.Linear(hidden, hidden)
        self.key = torch.nn.Linear(hidden, hidden)
        self.value = torch.nn.Linear(hidden, hidden)
        self.attn_dropout = torch.nn.Dropout(attn_dropout)
        self.dense = torch.nn.Linear(hidden, hidden)
        self.LayerNorm = ReferenceLayerNorm(hidden)
        self.out_dropout = torch.nn.Dropout(hidden_dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask
        probs = self.attn_dropout(torch.nn.Softmax(dim=-1)(scores))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(*context.shape[:-2], self.heads * self.head_size)
        return self.LayerNorm(self.out_dropout(self.dense(context)) + x)


class ReferenceIntermediate(torch.nn.Module):
    def __init__(self, hidden: int, hidden_dropout: float):
        super().__init__()
        self.dense_1 = torch.nn.Linear(hidden, 4 * hidden)
        self.dense_2 = torch.nn.Linear(4 * hidden, hidden)
        self.LayerNorm = ReferenceLayerNorm(hidden)
        self.dropout = torch.nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense_2(reference_gelu(self.dense_1(x)))) + x)


class ReferenceLayer(torch.nn.Module):
    def __init__(self, hidden: int, heads: int, attn_dropout: float, hidden_dropout: float):
        super().__init__()
        self.attention = ReferenceSelfAttention(hidden, heads, attn_dropout, hidden_dropout)
        self.intermediate = ReferenceIntermediate(hidden, hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.intermediate(self.attention(x, mask))


class ReferenceLayerStack(torch.nn.Module):
    def __init__(self, layers: list[ReferenceLayer]):
        super().__init__()
        self.layer = torch.nn.ModuleList(layers)


class ReferenceSASRec(torch.nn.Module):
    def __init__(self, item_size: int, hidden: int, layers: int, heads: int, max_len: int, hidden_dropout: float, attn_dropout: float):
        super().__init__()
        self.item_embeddings = torch.nn.Embedding(item_size, hidden, padding_idx=0)
        self.position_embeddings = torch.nn.Embedding(max_len, hidden)
        self.LayerNorm = ReferenceLayerNorm(hidden)
        self.dropout = torch.nn.Dropout(hidden_dropout)
        self.item_encoder = ReferenceLayerStack(
            [ReferenceLayer(hidden, heads, attn_dropout, hidden_dropout) for _ in range(layers)]
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.size(1)
        attention_mask = (input_ids > 0).long().unsqueeze(1).unsqueeze(2)  # [B, 1, 1, L]
        subsequent = torch.tril(torch.ones((1, length, length), device=input_ids.device)).unsqueeze(1).long()
        extended = (attention_mask * subsequent).float()
        extended = (1.0 - extended) * -10000.0
        positions = torch.arange(length, dtype=torch.long, device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        x = self.dropout(self.LayerNorm(self.item_embeddings(input_ids) + self.position_embeddings(positions)))
        for layer in self.item_encoder.layer:
            x = layer(x, extended)
        return x


class ReferenceGRU4Rec(torch.nn.Module):
    """ICSRec's published GRU4Rec encoder, module for module: embedding, nn.Dropout, fused nn.GRU without
    biases (hidden 2H, layers - 1 layers), linear back to H at every position."""

    def __init__(self, item_size: int, hidden: int, layers: int, hidden_dropout: float):
        super().__init__()
        self.item_embeddings = torch.nn.Embedding(item_size, hidden, padding_idx=0)
        self.emb_dropout = torch.nn.Dropout(hidden_dropout)
        self.gru_layers = torch.nn.GRU(hidden, 2 * hidden, num_layers=layers - 1, bias=False, batch_first=True)
        self.dense = torch.nn.Linear(2 * hidden, hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        output, _ = self.gru_layers(self.emb_dropout(self.item_embeddings(input_ids)))
        return self.dense(output)


def reference_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    sim11 = torch.matmul(a, a.T) / temperature
    sim22 = torch.matmul(b, b.T) / temperature
    sim12 = torch.matmul(a, b.T) / temperature
    d = sim12.shape[-1]
    sim11[..., range(d), range(d)] = float("-inf")
    sim22[..., range(d), range(d)] = float("-inf")
    logits = torch.cat([torch.cat([sim12, sim11], dim=-1), torch.cat([sim22, sim12.transpose(-1, -2)], dim=-1)], dim=-2)
    labels = torch.arange(2 * d, dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits, labels)


class ReferenceICLRecStep:
    """One published-style ICLRec M-step (forward, backward, Adam) on a batch of our tensors."""

    def __init__(self, model: torch.nn.Module, centroids: torch.Tensor, lr: float, cl_weight: float, intent_weight: float, temperature: float):
        import faiss

        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
        self.index = faiss.IndexFlatL2(centroids.shape[1])
        self.index.add(centroids.cpu().numpy().astype(np.float32))
        self.prototypes = torch.nn.functional.normalize(centroids, p=2, dim=1)
        self.cl_weight, self.intent_weight, self.temperature = cl_weight, intent_weight, temperature

    def rec_loss(self, seq_out: torch.Tensor, pos_ids: torch.Tensor, neg_ids: torch.Tensor) -> torch.Tensor:
        pos_emb = self.model.item_embeddings(pos_ids).view(-1, seq_out.size(2))
        neg_emb = self.model.item_embeddings(neg_ids).view(-1, seq_out.size(2))
        seq_emb = seq_out.view(-1, seq_out.size(2))
        pos_logits = torch.sum(pos_emb * seq_emb, -1)
        neg_logits = torch.sum(neg_emb * seq_emb, -1)
        istarget = (pos_ids > 0).view(pos_ids.size(0) * pos_ids.size(1)).float()
        loss = torch.sum(
            -torch.log(torch.sigmoid(pos_logits) + 1e-24) * istarget
            - torch.log(1 - torch.sigmoid(neg_logits) + 1e-24) * istarget
        ) / torch.sum(istarget)
        return loss

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        model = self.model
        sequence_output = model(batch.input_ids)
        rec = self.rec_loss(sequence_output, batch.target_pos, batch.target_neg)
        # The intent query: the published code copies the batch to the host and asks faiss.
        seq_rep = sequence_output.mean(dim=1).detach().cpu().numpy()
        _, ids = self.index.search(np.ascontiguousarray(seq_rep, dtype=np.float32), 1)
        intents = self.prototypes[torch.from_numpy(ids[:, 0]).to(sequence_output.device)]
        cl_batch = torch.cat(batch.views, dim=0)
        b = batch.input_ids.shape[0]
        instance_out = model(cl_batch).view(2 * b, -1)
        instance = reference_nce(instance_out[:b], instance_out[b:], self.temperature)
        intent_out = model(cl_batch).mean(dim=1)
        intent = (
            reference_nce(intent_out[:b], intents, self.temperature) + reference_nce(intent_out[b:], intents, self.temperature)
        ) / 2
        loss = rec + self.cl_weight * instance + self.intent_weight * intent
        return {"rec": rec, "instance": instance, "intent": intent, "loss": loss}

    def __call__(self, batch) -> float:
        self.model.train()
        loss = self.loss_terms(batch)["loss"]
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


class ReferenceELCRecStep(ReferenceICLRecStep):
    """One ELCRec step (docs/methods.md, "The methods") written in the same published style, for the same comparison.

    The centers are a parameter of the step; distances come from `torch.cdist`, centers are gathered by
    advanced indexing, and the clustering loss broadcasts [B, K, H] and [K, K, H] differences.
    """

    def __init__(self, model: ReferenceSASRec, centers: torch.Tensor, lr: float, cl_weight: float, intent_weight: float,
                 temperature: float, trade_off: float, prototype: str):
        self.model = model
        self.centers = torch.nn.Parameter(centers.detach().clone())
        self.optimizer = torch.optim.Adam([*model.parameters(), self.centers], lr=lr, betas=(0.9, 0.999))
        self.cl_weight, self.intent_weight, self.temperature = cl_weight, intent_weight, temperature
        self.trade_off, self.prototype = trade_off, prototype

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        model, centers = self.model, self.centers
        b = batch.input_ids.shape[0]
        sequence_output = model(batch.input_ids)
        rec = self.rec_loss(sequence_output, batch.target_pos, batch.target_neg)
        cl_batch = torch.cat(batch.views, dim=0)
        cl_out = model(cl_batch)  # [2B, L, H]
        flat = cl_out.view(-1, cl_out.size(-1))
        nearest = torch.cdist(flat.detach(), centers.detach()).argmin(dim=1)
        gathered = centers[nearest].view(cl_out.shape)
        augmented = cl_out + gathered if self.prototype == "shift" else torch.cat([cl_out, gathered], dim=-1)
        augmented = augmented.view(2 * b, -1)
        instance = reference_nce(augmented[:b], augmented[b:], self.temperature)
        with torch.no_grad():
            centers.data = centers.data / centers.data.norm(dim=1, keepdim=True)
        z = torch.nn.functional.normalize(sequence_output.mean(dim=1), p=2, dim=1)
        user_center = (z[:, None, :] - centers[None, :, :]).pow(2).sum(-1).mean()
        center_center = (centers[:, None, :] - centers[None, :, :]).pow(2).sum(-1).mean()
        cluster = user_center - center_center
        intents = centers[torch.cdist(z.detach(), centers.detach()).argmin(dim=1)]
        intent_out = model(cl_batch).mean(dim=1)
        intent = (
            reference_nce(intent_out[:b], intents, self.temperature) + reference_nce(intent_out[b:], intents, self.temperature)
        ) / 2
        loss = rec + self.cl_weight * instance + self.trade_off * cluster + self.intent_weight * intent
        return {"rec": rec, "instance": instance, "cluster": cluster, "intent": intent, "loss": loss}
