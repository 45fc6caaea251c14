"""Datasets: manifests, download and verification, parsing, the leave-one-out split, training batches.

Everything a run needs is built once, as tensors on the run's device (docs/methods.md, "Data", "Split"):

- `full` [N, n_max]: every user's whole sequence, left-aligned, 0 after its end. Augmentations, history
  masking and negative sampling all read from it, so no Python loop over users runs during an epoch.
- `train_input`/`train_target` [N, L] and `valid_input`/`test_input` [N, L]: right-aligned, left-padded
  windows of the last L = 50 items, as the published code builds them.
- `prefixes` (built on first use, by the methods that train on them): one example per prefix of each
  user's training part, the set ICSRec's published code writes to a second file (docs/methods.md, "Prefix
  examples"), derived here from `full` by tensor ops.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
import torch

from bench.core.errors import BenchError
from bench.core.paths import cache_folder
from bench.core.prefixes import PrefixExamples, SameTarget, build_prefix_examples, prefix_batches
from methods import TRAINING_EXAMPLES, Batch

# The checkout this package was imported from (its results/ holds committed records); in an installed
# package this is site-packages, where no results/ exists and nothing reads one.
REPO_ROOT = Path(__file__).resolve().parents[2]
MIN_ITEMS = 3  # the split needs a train, a valid and a test item


def manifest_dir() -> Traversable:
    """The dataset manifests (datasets/*.toml in a checkout), shipped as package data."""
    return importlib.resources.files("bench.manifests")


def cache_dir() -> Path:
    """Where downloaded datasets live: $BENCH_DATA_DIR, else ${XDG_CACHE_HOME:-~/.cache}/intent-bench/datasets."""
    return cache_folder("BENCH_DATA_DIR", "datasets")


def added_dir() -> Path:
    """Where `bench data add` puts datasets: <cache_dir>/added/, <NAME>.txt beside its manifest <NAME>.toml.

    A subfolder of its own, so that an added dataset's file can never be taken for a shipped one's download.
    """
    return cache_dir() / "added"


# --------------------------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class Manifest:
    name: str
    file: str
    url: str
    sha256: str
    description: str
    citation: str
    expected: dict
    added: dict | None = None  # an added dataset's whole manifest (bench/core/userdata.py); None when shipped


def dataset_names() -> list[str]:
    """The shipped datasets: the default of every command that takes "all datasets"."""
    return sorted(p.name.removesuffix(".toml") for p in manifest_dir().iterdir() if p.name.endswith(".toml"))


def added_names() -> list[str]:
    """Datasets made by `bench data add` in this data folder (each a <NAME>.toml manifest there)."""
    folder = added_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml") and not p.name.startswith(".") and p.is_file())


def is_added(name: str) -> bool:
    return name not in dataset_names() and name in added_names()


def read_added_manifest(name: str) -> dict:
    """An added dataset's manifest as written; `name` must be one of `added_names()`."""
    path = added_dir() / f"{name}.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BenchError(f"cannot read the manifest {path} of added dataset {name} ({exc}); add it again "
                         f"with `python -m bench data add {name} FILE --force`") from None


def load_manifest(name: str) -> Manifest:
    known = dataset_names()
    if name in known:  # matched against the known set first: a name never becomes a path by itself
        raw = tomllib.loads((manifest_dir() / f"{name}.toml").read_text(encoding="utf-8"))
        return Manifest(**raw)
    added = added_names()
    if name not in added:
        also = f"; added: {', '.join(added)}" if added else " (add your own with `python -m bench data add NAME FILE`)"
        raise BenchError(f"unknown dataset {name!r}; known: {', '.join(known)}{also}")
    raw = read_added_manifest(name)
    return Manifest(name=name, file=raw["file"], url="", sha256=raw["sha256"], description=raw.get("description", ""),
                    citation="", expected=raw["expected"], added=raw)


# -------------------------------------------------------------------------------------------- download
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_to(manifest: Manifest, mirror: str | None, dest: Path) -> str:
    """Copy or download the file into `dest`; returns where it came from."""
    if mirror:
        if "://" in mirror:  # a mirror may be a URL prefix as well as a directory
            source = mirror.rstrip("/") + "/" + manifest.file
        else:
            source_path = Path(mirror).expanduser() / manifest.file
            if not source_path.is_file():
                raise BenchError(f"mirror {mirror} has no file {manifest.file}")
            shutil.copyfile(source_path, dest)
            return str(source_path)
    else:
        source = manifest.url
    try:
        with urllib.request.urlopen(source, timeout=60) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(
            f"cannot download {manifest.name} from {source} ({reason}); if this machine is offline, "
            f"export BENCH_DATA_MIRROR=<a directory holding {manifest.file}>"
        ) from None
    return source


def download(name: str, mirror: str | None = None, force: bool = False) -> Path:
    """Fetch a dataset into the cache, verify its checksum, and place it atomically. Returns its path.

    An added dataset has nowhere to be fetched from: its file is verified where `bench data add` wrote it.
    """
    manifest = load_manifest(name)
    if manifest.added is not None:
        return _verified_added(manifest)
    target = cache_dir() / manifest.file
    cached_but_bad = False
    if target.is_file() and not force:
        if sha256_of(target) == manifest.sha256:
            return target
        cached_but_bad = True  # damaged or stale: fetched again below, and said so if that fails
    mirror = mirror if mirror is not None else os.environ.get("BENCH_DATA_MIRROR") or None
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{manifest.file}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            source = _fetch_to(manifest, mirror, tmp)
        except BenchError as exc:
            if cached_but_bad:
                raise BenchError(f"the cached copy {target} failed sha256 verification, and {exc}") from None
            raise
        got = sha256_of(tmp)
        if got != manifest.sha256:
            raise BenchError(
                f"checksum mismatch for {manifest.file} from {source}: got {got[:16]}..., "
                f"expected {manifest.sha256[:16]}...; nothing was written to the cache"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared data folder must be readable by others
        os.replace(tmp, target)  # atomic: the cache holds either nothing or a verified file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _verified_added(manifest: Manifest) -> Path:
    path = added_dir() / manifest.file
    again = f"add it again with `python -m bench data add {manifest.name} FILE --force`"
    if not path.is_file():
        raise BenchError(f"added dataset {manifest.name} has lost its file {path}; {again}")
    if sha256_of(path) != manifest.sha256:
        raise BenchError(f"added dataset {manifest.name}: {path} no longer matches its manifest's sha256; {again}")
    return path


def dataset_path(name: str) -> Path:
    """The verified local file of a dataset, downloading it on first use."""
    return download(name)


# --------------------------------------------------------------------------------------------- parsing
@dataclass
class Sequences:
    """Users' item sequences, ragged: user u's items are items[offsets[u]:offsets[u + 1]]."""

    items: np.ndarray  # [total] int64
    offsets: np.ndarray  # [N + 1] int64

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1


def parse_sequences(path: Path) -> Sequences:
    """Read `USER ITEM ITEM ...` lines; any malformed line stops with one message naming file and line."""
    raw = Path(path).read_bytes()
    if not raw.strip():
        raise BenchError(f"{path}: the file is empty")
    if not raw.endswith(b"\n"):
        # Every published file ends with a newline: a missing one means the download or copy was cut short.
        raise BenchError(f"{path}: the last line has no newline, the file looks truncated")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise BenchError(f"{path}:{line_no}: non-ASCII byte, expected integers separated by spaces") from None
    lines = text.split("\n")[:-1]
    chunks, lengths = [], np.empty(len(lines), dtype=np.int64)
    for line_no, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            raise BenchError(f"{path}:{line_no}: empty line")
        try:
            values = np.array(tokens[1:], dtype=np.int64) if len(tokens) > 1 else np.empty(0, np.int64)
            int(tokens[0])
        except (ValueError, OverflowError):
            bad = next(t for t in tokens if not _is_int(t))
            raise BenchError(f"{path}:{line_no}: {bad!r} is not an integer") from None
        if len(values) == 0:
            raise BenchError(f"{path}:{line_no}: truncated line: user {tokens[0]} has no items")
        if values.min() < 1:
            raise BenchError(f"{path}:{line_no}: item id {values.min()} < 1 (0 is reserved for padding)")
        if len(values) < MIN_ITEMS:
            raise BenchError(
                f"{path}:{line_no}: user {tokens[0]} has {len(values)} item(s); the leave-one-out split "
                f"needs at least {MIN_ITEMS}"
            )
        chunks.append(values)
        lengths[line_no - 1] = len(values)
    offsets = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(items=np.concatenate(chunks), offsets=offsets)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def sequence_stats(seqs: Sequences) -> dict:
    lengths = seqs.lengths
    return {
        "users": int(seqs.num_users),
        "items": int(seqs.items.max()),
        "interactions": int(lengths.sum()),
        "avg_length": round(float(lengths.mean()), 2),
        "longest": int(lengths.max()),
    }


def sample_users(seqs: Sequences, max_users: int, seed: int = 0) -> Sequences:
    """A deterministic subset of at most `max_users` users (kept in file order), for small profiles."""
    if seqs.num_users <= max_users:
        return seqs
    keep = np.sort(np.random.default_rng(seed).choice(seqs.num_users, size=max_users, replace=False))
    lengths = seqs.lengths[keep]
    starts = seqs.offsets[keep]
    idx = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    offsets = np.zeros(len(keep) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Sequences(items=seqs.items[idx], offsets=offsets)


# ---------------------------------------------------------------------------------------- split, batches
# A method's augmentation: (sequences [B, n_max], lengths [B], max_len, generator) -> views, each [B, L].
MakeViews = Callable[[torch.Tensor, torch.Tensor, int, torch.Generator], tuple[torch.Tensor, ...]]


def _windows(full: torch.Tensor, end: torch.Tensor, start_offset: int, length: int) -> torch.Tensor:
    """Right-aligned windows: row u holds full[u, start_offset:end[u]] keeping its last `length` items."""
    pos = end[:, None] - length + torch.arange(length, device=full.device)  # [N, L] source columns
    valid = pos >= start_offset
    return torch.where(valid, full.gather(1, pos.clamp(min=0)), torch.zeros((), dtype=full.dtype, device=full.device))


class SequenceData:
    """The split tensors of one dataset on one device, and the batch and evaluation views of them."""

    def __init__(self, name: str, seqs: Sequences, item_size: int, max_len: int = 50, device: str = "cpu"):
        self.name = name
        self.num_users = seqs.num_users
        self.item_size = item_size  # ids 0..max_item+1 (max_item + 1 is the never-used mask id)
        self.max_len = max_len
        self.device = torch.device(device)
        lengths = torch.from_numpy(seqs.lengths).to(self.device)  # [N]
        n_max = int(seqs.lengths.max())
        col = torch.arange(n_max)
        flat = torch.from_numpy(seqs.items)
        gather = torch.from_numpy(seqs.offsets[:-1])[:, None] + col[None, :]  # [N, n_max]
        inside = col[None, :] < torch.from_numpy(seqs.lengths)[:, None]
        full = torch.where(inside, flat[gather.clamp(max=len(flat) - 1)], 0)
        self.full = full.to(self.device)  # [N, n_max] left-aligned whole sequences
        self.lengths = lengths
        self.columns = torch.arange(n_max, device=self.device)[None, :]  # [1, n_max]
        self.train_lengths = lengths - 3  # m = len(s[:-3])
        self.train_input = _windows(self.full, lengths - 3, 0, max_len)  # s[:-3]
        self.train_target = _windows(self.full, lengths - 2, 1, max_len)  # s[1:-2]
        self.valid_input = _windows(self.full, lengths - 2, 0, max_len)  # s[:-2]
        self.test_input = _windows(self.full, lengths - 1, 0, max_len)  # s[:-1]
        rows = torch.arange(self.num_users, device=self.device)
        self.valid_answer = self.full[rows, lengths - 2]
        self.test_answer = self.full[rows, lengths - 1]
        self._build_negative_table()
        self._popularity: tuple[torch.Tensor, torch.Tensor] | None = None
        self._prefixes: PrefixExamples | None = None

    @classmethod
    def load(cls, name: str, max_users: int | None = None, max_len: int = 50, device: str = "cpu") -> SequenceData:
        seqs = parse_sequences(dataset_path(name))
        item_size = int(seqs.items.max()) + 2  # from the full file, so a user sample keeps the id space
        if max_users is not None:
            seqs = sample_users(seqs, max_users)
        return cls(name, seqs, item_size, max_len=max_len, device=device)

    @property
    def prefixes(self) -> PrefixExamples:
        """The prefix examples, built on first use and then kept, like the split."""
        if self._prefixes is None:
            self._prefixes = build_prefix_examples(self.full, self.lengths, self.max_len)
        return self._prefixes

    @property
    def prefix_input(self) -> torch.Tensor:
        return self.prefixes.input

    @property
    def prefix_target(self) -> torch.Tensor:
        return self.prefixes.target

    def num_examples(self, kind: str = "users") -> int:
        """Training examples per epoch: one per user, or one per prefix."""
        if kind not in TRAINING_EXAMPLES:
            raise BenchError(f"unknown kind of training examples {kind!r}; choose {' or '.join(TRAINING_EXAMPLES)}")
        return self.num_users if kind == "users" else len(self.prefixes.target)

    def popularity_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(item ids by decreasing training count [item_size], each id's place in that order [item_size]).

        Evaluation scans items in this order; it only changes how soon a user's count can stop, never a
        result. Counts come from the training part s[:-3], ties broken by id. Built once, then cached.
        """
        if self._popularity is None:
            counts = torch.bincount(self.train_input.flatten(), minlength=self.item_size)
            counts[0] = 0  # padding
            order = torch.sort(counts, descending=True, stable=True).indices
            position = torch.empty_like(order)
            position[order] = torch.arange(len(order), device=self.device)
            self._popularity = (order, position)
        return self._popularity

    # Negative sampling: uniform over 1..item_size-1 minus the user's whole sequence (docs/methods.md, "Losses"), drawn
    # exactly and without rejection loops: with S the user's sorted distinct items, g_j = S_j - 1 - j counts
    # the allowed ids below S_j, so the r-th allowed id (0-based) is r + 1 + #{j : g_j <= r}.
    def _build_negative_table(self) -> None:
        big = torch.iinfo(torch.int64).max
        ordered = torch.where(self.full > 0, self.full, big).sort(dim=1).values
        duplicate = torch.zeros_like(ordered, dtype=torch.bool)
        duplicate[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        distinct = torch.where(duplicate, big, ordered).sort(dim=1).values  # [N, n_max]
        self.num_distinct = (distinct != big).sum(dim=1)  # [N]
        j = torch.arange(distinct.shape[1], device=self.device)
        self.neg_gaps = torch.where(distinct != big, distinct - 1 - j, big)  # [N, n_max], non-decreasing

    def sample_negatives(self, users: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        allowed = (self.item_size - 1) - self.num_distinct[users]  # [B] number of allowed ids
        u = torch.rand((len(users), length), generator=generator, device=self.device)
        # [B, L] uniform in 0..allowed-1 (the min guards the measure-zero case u * allowed == allowed)
        r = torch.minimum((u * allowed[:, None]).long(), allowed[:, None] - 1)
        return r + 1 + torch.searchsorted(self.neg_gaps[users], r, right=True)

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        make_views: MakeViews | None = None,
        examples: str = "users",
        same_target: SameTarget | None = None,
    ) -> Iterator[Batch]:
        """One epoch: every example once, in a fresh random order; the last batch is smaller.

        `examples` "users" (one per user) or "prefixes" (one per prefix, bench/core/prefixes.py).
        `make_views(sequences, lengths, max_len, generator)` is the method's own augmentation (a method
        that trains on views passes `Method.make_views`): it gets each user's training part s[:-3],
        left-aligned [B, n_max], and its length [B], and returns the views, each [B, L].
        """
        self.num_examples(examples)  # an unknown kind is a clear error
        if examples == "prefixes":
            if make_views is not None:
                raise BenchError("augmented views are made from users' training parts, not from prefix examples")
            yield from prefix_batches(self, batch_size, generator, same_target)
            return
        if same_target is not None:
            raise BenchError("same-target positives are chosen among prefix examples, not users")
        order = torch.randperm(self.num_users, generator=generator, device=self.device)
        for start in range(0, self.num_users, batch_size):
            users = order[start : start + batch_size]
            target = self.train_target[users]
            negatives = self.sample_negatives(users, self.max_len, generator)
            negatives = torch.where(target > 0, negatives, 0)
            views: tuple[torch.Tensor, ...] = ()
            if make_views is not None:
                m = self.train_lengths[users]
                full = self.full[users]
                train_seqs = torch.where(self.columns < m[:, None], full, 0)  # s[:-3] left-aligned, [B, n_max]
                views = tuple(make_views(train_seqs, m, self.max_len, generator))
            yield Batch(users, self.train_input[users], target, negatives, views)

    def eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs [N, L], answers [N], history lengths [N]) for 'valid' or 'test'.

        The history whose scores are masked is the first `history length` items of `full`: s[:-2] for
        valid and s[:-1] for test (docs/methods.md, "Evaluation").
        """
        if split == "valid":
            return self.valid_input, self.valid_answer, self.lengths - 2
        if split == "test":
            return self.test_input, self.test_answer, self.lengths - 1
        raise BenchError(f"unknown split {split!r}; choose valid or test")
