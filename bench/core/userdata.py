"""Bring your own dataset: `python -m bench data add NAME FILE` (docs/datasets.md).

An interactions file (CSV or TSV, with a header or with its columns named by `--columns`, a RecBole atomic
`.inter` file, an Amazon 2014 ratings-only CSV, a MovieLens `ratings.dat`, or the harness's own sequence
format) becomes a dataset in the sequence format, processed as the shipped datasets were made:

1. each user's interactions in time order, ties kept in file order (a stable sort);
2. rows repeating an earlier (user, item, time) dropped, and counted;
3. iterative k-core filtering: users and items with fewer than k interactions removed, round after round,
   until both hold (k = 0 keeps everything). Users also need the 3 interactions of the leave-one-out split
   (train, valid, test), whatever k;
4. users numbered from 1 in order of their first row in the file (among the rows kept), items numbered
   from 1 in order of first appearance along the users' time-ordered sequences, taken in user order.

Written atomically to `<data folder>/added/NAME.txt` with its manifest `NAME.toml` (statistics, the source
file's sha256, the options used); every command then takes NAME where it takes a shipped dataset
(bench/core/data.py `load_manifest`). Every step is vectorised (pyarrow parses the text files on all cores,
numpy sorts and counts): no Python loop runs over rows, users or items.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.core import data, paths
from bench.core.data import MIN_ITEMS, Sequences
from bench.core.errors import BenchError
from bench.core.files import write_bytes_atomic

FORMATS = ("csv", "tsv", "inter", "amazon", "movielens", "sequence")
FORMAT_HELP = {
    "csv": "comma-separated, with a header (--user-col, --item-col, --time-col)",
    "tsv": "tab-separated, with a header (--user-col, --item-col, --time-col)",
    "inter": "RecBole atomic .inter file: tab-separated, typed header such as user_id:token",
    "amazon": "Amazon 2014 ratings-only CSV: user,item,rating,timestamp, no header",
    "movielens": "MovieLens 1M/10M ratings.dat: user::item::rating::timestamp, no header",
    "sequence": "the harness's own format: one user a line, the user id then the items in order",
}
# Column names looked for when no --user-col/--item-col/--time-col is given (first match wins; a RecBole
# header is matched on the part before its ':type').
DEFAULT_COLUMNS = {
    "user": ("user_id", "user", "userid", "uid", "reviewerid"),
    "item": ("item_id", "item", "itemid", "iid", "movieid", "asin", "business_id"),
    "time": ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date"),
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DEFAULT_K_CORE = 5
LARGE_BYTES = 32 << 20  # from this size on, `progress` shows a bar and each step as it ends
BLOCK_BYTES = 16 << 20  # pyarrow's parse block: each block parsed on its own core, the bar moves per block


@dataclass(frozen=True)
class AddedDataset:
    """What `add_dataset` made: the dataset's name, its sequence file and its manifest (as written)."""

    name: str
    path: Path
    manifest: dict
    unchanged: bool  # the same file with the same options was already added: nothing was written

    @property
    def statistics(self) -> dict:
        return self.manifest["statistics"]


@dataclass
class Interactions:
    """Rows of an interactions file, in file order: integer codes of the raw user and item ids, and times."""

    users: np.ndarray  # [n] int64 codes (any numbering; only equality matters)
    items: np.ndarray  # [n] int64 codes
    times: np.ndarray  # [n] int64 or float64: only their order matters
    columns: dict  # the columns read, by role (None where the format has none)


# ------------------------------------------------------------------------------------------ the one call
def add_dataset(
    name: str,
    path: str | Path,
    *,
    fmt: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    time_col: str | None = None,
    columns: Sequence[str] | str | None = None,
    k_core: int = DEFAULT_K_CORE,
    force: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> AddedDataset:
    """Make dataset `name` from the interactions file `path` (see the module doc) and return it.

    `fmt`: one of FORMATS (default: from the file's extension and first line, `detect_format`). The
    columns default to the usual names (DEFAULT_COLUMNS). `columns` names the columns of a csv or tsv file
    that has no header line (a list, or one comma-separated string); the roles are then chosen among those
    names as among a header's. Adding the same file with the same options again writes nothing
    (`unchanged`); another file or other options under an existing name needs `force`.
    `log` receives one line per step (the format detected, duplicates, each round of k-core filtering);
    with `progress`, a file of LARGE_BYTES or more shows a bar while it is read and each line as its step
    ends, a smaller one gives its lines once it has succeeded.
    Raises BenchError (one line) on any problem, before anything is written.
    """
    emit = log or (lambda line: None)
    check_name(name)
    source = Path(path).expanduser()
    if not source.exists():
        raise BenchError(f"no file {path}")
    if not source.is_file():
        raise BenchError(f"{path} is not a file")
    if isinstance(k_core, bool) or not isinstance(k_core, int) or k_core < 0:
        raise BenchError(f"--k-core must be an integer >= 0, got {k_core!r}")
    # A large file shows a bar while it is read and each step's line as it ends; a small one, whose add takes
    # a second, says its steps once it has succeeded, so that a refused file prints its one error line only.
    large = progress and source.stat().st_size >= LARGE_BYTES
    pending: list[str] = []

    def say(line: str) -> None:
        if large:
            emit(line)
        else:
            pending.append(line)

    first_line = _first_line(source)
    if fmt is None:
        fmt, why = detect_format(source, first_line, named_columns=columns is not None)
        say(f"format: {fmt} ({why}; --format chooses another)")
    elif fmt not in FORMATS:
        raise BenchError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    names = headerless_names(source, fmt, first_line, columns)
    roles = resolve_columns(source, fmt, first_line, user_col, item_col, time_col, names)
    options = {"format": fmt, **({"columns": ",".join(names)} if names else {}),
               **{f"{role}_col": col for role, col in roles.items()}, "k_core": k_core}
    options = {k: v for k, v in options.items() if v is not None}  # TOML has no null
    source_sha = data.sha256_of(source)

    existing = _existing(name, force)
    if existing is not None:
        same = existing.get("source", {}).get("sha256") == source_sha and existing.get("options") == options
        if same and _intact(existing):
            for line in (*pending, f"{name}: already added from this file with these options; nothing to do"):
                emit(line)
            return AddedDataset(name, data.added_dir() / existing["file"], existing, unchanged=True)
        if not force:
            what = "another file" if existing.get("source", {}).get("sha256") != source_sha else "other options"
            raise BenchError(f"dataset {name} already exists, added from {existing.get('source', {}).get('file')} "
                             f"with {_options_text(existing.get('options', {}))}; this is {what}: add --force to "
                             "replace it, or choose another name")

    inter = read_interactions(source, fmt, roles, first_line, progress=large, names=names)
    if len(inter.users) == 0:
        raise BenchError(f"{path} has no rows")
    say(f"read {len(inter.users):,} rows of {source.name}")
    seqs, processing = build_sequences(inter, k_core, log=say)
    text = format_sequences(seqs)
    stats = statistics(seqs)
    manifest = {
        "name": name,
        "file": f"{name}.txt",
        "sha256": _sha256(text),
        "description": f"added with `bench data add` from {source.name}",
        "added_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"file": paths.portable(str(source.resolve())), "sha256": source_sha, "bytes": source.stat().st_size,
                   "rows": int(len(inter.users))},
        "options": options,
        "statistics": stats,
        # the shape of a shipped manifest's [expected]: `bench data stats` checks the file against it
        "expected": data.sequence_stats(seqs),
        "processing": processing,
    }
    folder = data.added_dir()
    # The sequence file first, the manifest last: the dataset exists once its manifest names a file whose
    # sha256 matches, so an interrupted add leaves no dataset that a command would read half-made.
    write_bytes_atomic(folder / manifest["file"], text)
    write_bytes_atomic(folder / f"{name}.toml", _manifest_toml(manifest))
    say(f"{name}: {stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions "
        f"-> {folder / manifest['file']}")
    for line in pending:
        emit(line)
    return AddedDataset(name, folder / manifest["file"], manifest, unchanged=False)


def check_name(name: str) -> None:
    """A plain file name of letters, digits, '_', '-', '.', not a shipped dataset's (in any case)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name or name.endswith(".toml"):
        raise BenchError(f"dataset name {name!r} is not a plain name: use letters, digits, '_', '-' and '.' "
                         "(at most 64, starting with a letter or digit)")
    shipped = {n.lower(): n for n in data.dataset_names()}
    if name.lower() in shipped:  # case-insensitive: on some file systems beauty.txt is Beauty.txt
        raise BenchError(f"{name!r} is the name of the shipped dataset {shipped[name.lower()]}; choose another name")


def _existing(name: str, force: bool) -> dict | None:
    """The manifest of the dataset already added under `name`, if any; an unreadable one is replaced with
    `force` (and without it is refused, its error saying so)."""
    if name not in data.added_names():
        return None
    try:
        return data.read_added_manifest(name)
    except BenchError:
        if force:
            return None
        raise


def _intact(manifest: dict) -> bool:
    path = data.added_dir() / manifest.get("file", "")
    return path.is_file() and data.sha256_of(path) == manifest.get("sha256")


def _options_text(options: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in options.items()) or "no options"


def _sha256(blob: bytes) -> str:
    import hashlib

    return hashlib.sha256(blob).hexdigest()


def _manifest_toml(manifest: dict) -> bytes:
    import tomli_w

    head = (f"# Dataset {manifest['name']}, made by `python -m bench data add` (docs/datasets.md): the sequence\n"
            f"# file {manifest['file']} beside this manifest, its statistics, its source and the options used.\n")
    return (head + tomli_w.dumps(manifest)).encode("utf-8")


# --------------------------------------------------------------------------------------------- formats
def _first_line(path: Path) -> str:
    with path.open("rb") as fh:
        raw = fh.readline(1 << 20)
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as spreadsheet exports write
        raw = raw[3:]
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise BenchError(f"{path}: the first line is not UTF-8 text") from None


def detect_format(path: Path, first_line: str | None = None, named_columns: bool = False) -> tuple[str, str]:
    """(format, why) from the extension and the first line.

    A typed header (`name:type` fields) is RecBole's whatever the extension; `.inter` and `.tsv` are
    theirs; a `.csv` whose first line is four fields ending in two numbers is the Amazon ratings-only file
    (it has no header), any other `.csv` a CSV with a header; any other extension: tabs in the first line
    make a TSV, commas a CSV (as above), four fields separated by '::' ending in two numbers a MovieLens
    ratings.dat, otherwise the sequence format. With `named_columns` (`--columns` names a headerless file's
    columns), a file with commas is a CSV whatever its first line.
    """
    line = _first_line(path) if first_line is None else first_line
    if not line.strip():
        raise BenchError(f"{path} has no rows" if path.stat().st_size <= len(line) + 2 else
                         f"{path}: the first line is empty")
    ext = path.suffix.lower()
    fields_tab = line.split("\t")
    if len(fields_tab) > 1 and all(re.fullmatch(r"[^:\s]+:[a-z_]+", f.strip()) for f in fields_tab):
        return "inter", "a typed header (name:type), as RecBole's atomic files"
    if ext == ".inter":
        return "inter", "the extension .inter"
    if ext == ".tsv":
        return "tsv", "the extension .tsv"
    if "\t" not in line and "," not in line and _looks_like_movielens(line):
        return "movielens", "four fields separated by '::' ending in two numbers (MovieLens ratings.dat; no header)"
    if ext == ".csv" or ("\t" not in line and "," in line):
        where = "the extension .csv" if ext == ".csv" else "commas in the first line"
        if named_columns:
            return "csv", f"{where}, and --columns naming its columns (no header)"
        if _looks_like_amazon(line):
            return "amazon", f"{where}, and a first line of four fields ending in two numbers (no header)"
        return "csv", f"{where}, and a header in the first line"
    if "\t" in line:
        return "tsv", "tabs in the first line"
    return "sequence", "neither tabs nor commas in the first line: one user a line"


def _ratings_row(fields: list[str]) -> bool:
    """Whether a headerless ratings row: user, item, rating, timestamp, the last two numbers."""
    return len(fields) == 4 and _is_number(fields[2]) and _is_number(fields[3])


def _looks_like_amazon(line: str) -> bool:
    return _ratings_row(next(csv.reader([line])))


def _looks_like_movielens(line: str) -> bool:
    return _ratings_row(line.split("::"))


FIXED_COLUMNS = ("amazon", "movielens", "sequence")


def _fields(fmt: str, line: str) -> list[str]:
    return next(csv.reader([line], delimiter="," if fmt == "csv" else "\t"))


def headerless_names(path: Path, fmt: str, first_line: str, columns: Sequence[str] | str | None) -> list[str] | None:
    """The column names given for a csv/tsv file without a header (`--columns`), checked against the
    number of fields of its first line; None when the file has its header."""
    if columns is None:
        return None
    if fmt not in ("csv", "tsv"):
        raise BenchError(f"--columns names the columns of a csv or tsv file without a header; the {fmt} format "
                         + ("has its typed header" if fmt == "inter" else "has fixed columns"))
    names = [c.strip() for c in (columns.split(",") if isinstance(columns, str) else columns)]
    if not names or any(not n for n in names) or len(set(names)) < len(names):
        raise BenchError(f"--columns needs distinct, non-empty names separated by commas, got {','.join(names)!r}")
    fields = _fields(fmt, first_line)
    if len(fields) != len(names):
        raise BenchError(f"--columns names {len(names)} column(s), but the first line of {path} has {len(fields)} "
                         f"field(s): {first_line[:80]!r}")
    return names


def resolve_columns(path: Path, fmt: str, first_line: str, user_col, item_col, time_col,
                    names: list[str] | None = None) -> dict:
    """The header's column for each role (user, item, time), checked against the header (or against
    `names`, the columns of a file without one); {} for the formats whose columns are fixed."""
    asked = {"user": user_col, "item": item_col, "time": time_col}
    if fmt in FIXED_COLUMNS:
        given = [f"--{role}-col" for role, col in asked.items() if col is not None]
        if given:
            raise BenchError(f"{', '.join(given)} applies to csv, tsv and inter files; the {fmt} format's columns "
                             "are fixed")
        return {}
    header = names if names is not None else _fields(fmt, first_line)
    if fmt == "inter":
        bare = [h.split(":", 1)[0] for h in header]
    else:
        bare = list(header)
    chosen = {}
    for role, col in asked.items():
        if col is not None:
            if col in header:
                chosen[role] = col
            elif col in bare:
                chosen[role] = header[bare.index(col)]
            else:
                raise BenchError(f"{path} has no column {col!r} (--{role}-col); its columns: {', '.join(header)}")
            continue
        lowered = [b.strip().lower() for b in bare]
        found = next((header[lowered.index(c)] for c in DEFAULT_COLUMNS[role] if c in lowered), None)
        if found is None:
            hint = ""
            if names is None and fmt in ("csv", "tsv") and len(header) >= 3 and any(_is_number(h) for h in header):
                # a number is seldom a column's name: the first line is likely a row
                example = ["user", "item", "time"] if len(header) == 3 else \
                    ["user", "item", "rating", "time", *(f"c{i}" for i in range(5, len(header) + 1))]
                hint = (f"; if the file has no header line, name its columns with --columns (such as "
                        f"--columns {','.join(example)})")
            raise BenchError(f"{path} has no {role} column among {', '.join(header)} (looked for "
                             f"{', '.join(DEFAULT_COLUMNS[role])}); name it with --{role}-col{hint}")
        chosen[role] = found
    if len(set(chosen.values())) < 3:
        raise BenchError(f"{path}: user, item and time must be three different columns, got "
                         + ", ".join(f"{role} {col!r}" for role, col in chosen.items()))
    return chosen


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------- reading
def read_interactions(path: Path, fmt: str, columns: dict, first_line: str, progress: bool = False,
                      names: list[str] | None = None) -> Interactions:
    """The (user, item, time) rows of the file; `columns` maps each role to its column, `names` are the
    columns of a csv/tsv file without a header."""
    if fmt == "sequence":
        return _read_sequence_file(path, progress)
    return _read_table(path, fmt, columns, progress, names)


class _Progress(io.RawIOBase):
    """A file whose reads move a bar (bytes of the file): pyarrow reads it block by block."""

    def __init__(self, path: Path, show: bool):
        from tqdm import tqdm

        super().__init__()
        self.fh = path.open("rb")
        self.bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"reading {path.name}",
                        file=sys.stderr, disable=not show, leave=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.fh.readinto(buffer)
        self.bar.update(n or 0)
        return n

    def close(self) -> None:
        if not self.closed:
            self.bar.close()
            self.fh.close()
        super().close()


def _read_table(path: Path, fmt: str, columns: dict, progress: bool, names: list[str] | None = None) -> Interactions:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    separators: list[str] = []
    if fmt == "amazon":
        names = ["user", "item", "rating", "timestamp"]
        roles = {"user": "user", "item": "item", "time": "timestamp"}
    elif fmt == "movielens":
        # "::" parsed as ':' with an empty field between each pair: pyarrow takes one-character delimiters
        # only, and streaming the file beats rewriting it. The empty fields are checked below, so a row with
        # a single ':' is refused rather than shifted.
        separators = ["sep1", "sep2", "sep3"]
        names = ["user", "sep1", "item", "sep2", "rating", "sep3", "timestamp"]
        roles = {"user": "user", "item": "item", "time": "timestamp"}
    else:
        roles = columns
    read = pcsv.ReadOptions(column_names=names, block_size=BLOCK_BYTES)  # names: no header line to skip
    parse = pcsv.ParseOptions(delimiter={"csv": ",", "amazon": ",", "movielens": ":"}.get(fmt, "\t"))
    wanted = list(roles.values()) + separators
    convert = pcsv.ConvertOptions(include_columns=wanted, column_types={c: pa.string() for c in wanted},
                                  strings_can_be_null=False, quoted_strings_can_be_null=False)
    stream = _Progress(path, progress)
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
        table = reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowKeyError, UnicodeDecodeError) as exc:
        text = str(exc).strip().splitlines()
        if text and "Empty CSV file" in text[0]:
            raise BenchError(f"{path} has no rows") from None
        reason = text[0] if text else type(exc).__name__
        if fmt == "movielens":  # its rows are parsed as seven ':'-separated fields: say it in its own terms
            reason = re.sub(r"Expected 7 columns, got \d+: ", "a row that is not four fields separated by '::': ", reason)
        raise BenchError(f"{path}: cannot read it as {fmt}: {reason}") from None
    finally:
        stream.close()
    header_lines = 0 if names is not None else 1
    for sep in separators:
        filled = np.flatnonzero(pc.not_equal(table.column(sep), "").to_numpy(zero_copy_only=False))
        if len(filled):
            raise BenchError(f"{path}:{int(filled[0]) + 1}: not four fields separated by '::'")
    # The three columns at once: pyarrow's kernels release the GIL, and hashing ten million ids is bound by
    # memory latency, which a second core hides. Errors come in column order, as one after the other would.
    with ThreadPoolExecutor(max_workers=3) as pool:
        jobs = [pool.submit(_codes, path, table.column(roles["user"]), "user id", header_lines),
                pool.submit(_codes, path, table.column(roles["item"]), "item id", header_lines),
                pool.submit(_times, path, table.column(roles["time"]), header_lines)]
        users, items, times = (job.result() for job in jobs)
    return Interactions(users, items, times, {"user": roles["user"], "item": roles["item"], "time": roles["time"]}
                        if fmt not in FIXED_COLUMNS else {"user": None, "item": None, "time": None})


def _codes(path: Path, column, what: str, header_lines: int) -> np.ndarray:
    """Integer codes of string ids (equal ids, equal codes), refusing empty ones with the row that has one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    dictionary = encoded.dictionary
    blank = np.flatnonzero(pc.equal(pc.utf8_trim_whitespace(dictionary), "").to_numpy(zero_copy_only=False))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if len(blank):
        row = int(np.flatnonzero(np.isin(codes, blank))[0])
        raise BenchError(f"{path}:{row + 1 + header_lines}: empty {what}")
    return codes


def _times(path: Path, column, header_lines: int) -> np.ndarray:
    """Timestamps as numbers (integers kept exact), or ISO 8601 date-times as nanoseconds; only their order
    is used. Anything else is refused with the first row that does not parse."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = pc.utf8_trim_whitespace(column)
    for target in (pa.int64(), pa.float64()):
        try:
            values = pc.cast(column, target).to_numpy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if target == pa.float64() and not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise BenchError(f"{path}:{row + 1 + header_lines}: timestamp {column[row].as_py()!r} is not a finite number")
        return values
    try:
        stamps = pd.to_datetime(pd.Series(column.to_numpy(zero_copy_only=False)), format="ISO8601", utc=True)
    except (ValueError, TypeError):
        stamps = None
    if stamps is not None and not stamps.isna().any():
        return stamps.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    strings = pd.Series(column.to_numpy(zero_copy_only=False))
    numbers = pd.to_numeric(strings, errors="coerce")
    bad = numbers.isna() | ~np.isfinite(numbers.to_numpy(dtype=float, na_value=np.nan))
    row = int(np.flatnonzero(bad.to_numpy())[0]) if bad.any() else 0
    raise BenchError(f"{path}:{row + 1 + header_lines}: timestamp {strings.iloc[row]!r} does not parse "
                     "(numbers, or ISO 8601 date-times in every row)")


def _read_sequence_file(path: Path, progress: bool) -> Interactions:
    """`USER ITEM ITEM ...` lines: the items' positions on the line are their times."""
    stream = _Progress(path, progress)
    try:
        raw = b"".join(iter(lambda: stream.read(BLOCK_BYTES), b""))
    finally:
        stream.close()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise BenchError(f"{path}:{line}: not UTF-8 text") from None
    lines = pd.Series(text.splitlines(), dtype=object)
    if lines.empty:
        raise BenchError(f"{path} has no rows")
    counts = lines.str.split().str.len().to_numpy(dtype=np.int64)
    if (counts == 0).any():
        raise BenchError(f"{path}:{int(np.flatnonzero(counts == 0)[0]) + 1}: empty line")
    if (counts == 1).any():
        line = int(np.flatnonzero(counts == 1)[0])
        raise BenchError(f"{path}:{line + 1}: user {lines.iloc[line].strip()} has no items")
    tokens = np.array(text.split(), dtype=object)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # each line's user token
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[starts] = True
    line_of = np.repeat(np.arange(len(counts)), counts - 1)
    users = pd.factorize(tokens[starts])[0].astype(np.int64)[line_of]
    items = pd.factorize(tokens[~is_user])[0].astype(np.int64)
    times = np.arange(len(items), dtype=np.int64) - np.repeat(starts - np.arange(len(counts)), counts - 1)
    return Interactions(users, items, times, {"user": None, "item": None, "time": None})


# ------------------------------------------------------------------------------------------ processing
def _sort_order(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Rows ordered by (user, time), ties in file order: one stable sort of a single int64 key."""
    n_users = int(users.max()) + 1
    if times.dtype.kind == "i":
        low, high = int(times.min()), int(times.max())
        span = high - low + 1
        if n_users * span < 2**62:  # most logs: seconds over a few years, no need to rank the times
            return np.argsort(users * span + (times - low), kind="stable")
    ranks = np.unique(times, return_inverse=True)[1].astype(np.int64)
    return np.argsort(users * (int(ranks.max()) + 1) + ranks, kind="stable")


def build_sequences(inter: Interactions, k_core: int, log: Callable[[str], None] | None = None) -> tuple[Sequences, dict]:
    """The sequences and what the processing did (duplicates, k-core rounds), as the module doc says."""
    say = log or (lambda line: None)
    order = _sort_order(inter.users, inter.times)
    users, items, times = inter.users[order], inter.items[order], inter.times[order]
    rows = order  # each kept row's place in the file

    # (user, item, time) duplicates sit in one run of equal (user, time): only rows in such runs can be one.
    same_key = (users[1:] == users[:-1]) & (times[1:] == times[:-1])
    in_run = np.zeros(len(users), dtype=bool)
    in_run[1:] |= same_key
    in_run[:-1] |= same_key
    candidates = np.flatnonzero(in_run)
    duplicate = np.zeros(len(users), dtype=bool)
    if len(candidates):
        frame = pd.DataFrame({"u": users[candidates], "i": items[candidates], "t": times[candidates]})
        duplicate[candidates] = frame.duplicated(keep="first").to_numpy()  # the first in the file is kept
    dropped = int(duplicate.sum())
    if dropped:
        keep = ~duplicate
        users, items, rows = users[keep], items[keep], rows[keep]
    say(f"{dropped:,} duplicate (user, item, time) rows dropped")

    user_min, item_min = max(k_core, MIN_ITEMS), k_core
    rounds: list[dict] = []
    while True:
        user_count = np.bincount(users)
        item_count = np.bincount(items)
        bad = (user_count[users] < user_min) | (item_count[items] < item_min)
        if not bad.any():
            break
        keep = ~bad
        after_users = np.bincount(users[keep], minlength=len(user_count))
        after_items = np.bincount(items[keep], minlength=len(item_count))
        step = {"users_removed": int(((user_count > 0) & (after_users == 0)).sum()),
                "items_removed": int(((item_count > 0) & (after_items == 0)).sum()),
                "interactions_removed": int(bad.sum())}
        rounds.append(step)
        users, items, rows = users[keep], items[keep], rows[keep]
        say(f"{k_core}-core round {len(rounds)}: removed {step['users_removed']:,} users, "
            f"{step['items_removed']:,} items ({step['interactions_removed']:,} interactions); "
            f"{len(users):,} interactions left")
        if len(users) == 0:
            detail = "; ".join(f"round {i}: {r['users_removed']:,} users and {r['items_removed']:,} items removed"
                               for i, r in enumerate(rounds, start=1))
            raise BenchError(f"no user is left after {k_core}-core filtering (users need at least {user_min} "
                             f"interactions, items {item_min}): {detail}; try a smaller --k-core")

    # Users by their first row in the file: rows are grouped by user, so a user's block is contiguous.
    starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
    lengths = np.diff(np.append(starts, len(users)))
    by_first_row = np.argsort(np.minimum.reduceat(rows, starts), kind="stable")
    new_lengths = lengths[by_first_row]
    new_starts = np.concatenate([[0], np.cumsum(new_lengths)[:-1]])
    gather = np.repeat(starts[by_first_row] - new_starts, new_lengths) + np.arange(len(users))
    ordered_items = items[gather]
    # Items by first appearance along the sequences in user order: what factorize numbers them by.
    item_ids = pd.factorize(ordered_items)[0].astype(np.int64) + 1
    offsets = np.zeros(len(new_lengths) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    processing = {"rows_read": int(len(inter.users)), "duplicates_dropped": dropped,
                  "users_need": user_min, "items_need": item_min, "k_core_rounds": rounds}
    return Sequences(items=item_ids, offsets=offsets), processing


def format_sequences(seqs: Sequences) -> bytes:
    """The sequence format: `USER ITEM ITEM ...\n`, users numbered 1..N in order, single spaces.

    Digits are written straight into one byte buffer, a pass per decimal place (at most 19), so that no
    Python string is made per number.
    """
    n = seqs.num_users
    tokens = np.empty(n + len(seqs.items), dtype=np.int64)
    user_at = seqs.offsets[:-1] + np.arange(n)  # each line's first token
    is_user = np.zeros(len(tokens), dtype=bool)
    is_user[user_at] = True
    tokens[is_user] = np.arange(1, n + 1)
    tokens[~is_user] = seqs.items
    powers = 10 ** np.arange(19, dtype=np.int64)
    digits = np.searchsorted(powers, tokens, side="right")  # decimal digits of each token (ids are >= 1)
    ends = np.cumsum(digits + 1)  # each token's separator sits at ends - 1
    out = np.full(int(ends[-1]), ord(" "), dtype=np.uint8)
    out[ends[user_at + seqs.lengths] - 1] = ord("\n")  # after each line's last item
    for place in range(int(digits.max())):
        has = digits > place
        out[ends[has] - 2 - place] = ord("0") + (tokens[has] // powers[place]) % 10
    return out.tobytes()


def statistics(seqs: Sequences) -> dict:
    lengths = seqs.lengths
    users, items, interactions = int(seqs.num_users), int(seqs.items.max()), int(lengths.sum())
    return {"users": users, "items": items, "interactions": interactions,
            "mean_length": round(float(lengths.mean()), 2), "median_length": float(np.median(lengths)),
            "min_length": int(lengths.min()), "max_length": int(lengths.max()),
            "density": float(f"{interactions / (users * items):.6g}")}


# ------------------------------------------------------------------------------------------ list, info
def listing() -> list[dict]:
    """Every dataset: the shipped ones (statistics from their manifests), then the added ones."""
    rows = []
    for name in data.dataset_names():
        m = data.load_manifest(name)
        rows.append({"dataset": name, "kind": "shipped", "users": m.expected["users"], "items": m.expected["items"],
                     "interactions": m.expected["interactions"], "source": m.url})
    for name in data.added_names():
        m = data.load_manifest(name)
        rows.append({"dataset": name, "kind": "added", "users": m.expected["users"], "items": m.expected["items"],
                     "interactions": m.expected["interactions"], "source": m.added.get("source", {}).get("file", "")})
    return rows


def info(name: str) -> dict:
    """A dataset's statistics table and where it comes from. A shipped dataset's file is read (and fetched
    on first use) for the statistics its manifest does not hold; an added one's manifest holds them all."""
    manifest = data.load_manifest(name)
    if manifest.added is not None:
        m = manifest.added
        return {"dataset": name, "kind": "added", "statistics": m["statistics"], "file": str(data.added_dir() / m["file"]),
                "sha256": m["sha256"], "source": m.get("source", {}), "options": m.get("options", {}),
                "processing": m.get("processing", {}), "added_at": m.get("added_at")}
    path = data.dataset_path(name)
    return {"dataset": name, "kind": "shipped", "statistics": statistics(data.parse_sequences(path)), "file": str(path),
            "sha256": manifest.sha256, "source": {"url": manifest.url}, "description": manifest.description,
            "citation": manifest.citation}
