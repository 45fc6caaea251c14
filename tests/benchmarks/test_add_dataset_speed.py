"""Speed of `bench data add`: a generated CSV of 10 million interactions (about 240 MB), added end to end.

Run: `pytest tests/benchmarks/test_add_dataset_speed.py -m benchmark_suite` (also part of `tox -e bench`).
BENCH_ADD_ROWS sets another size. The file is generated once per session (not timed): 300,000 users,
80,000 items of Zipf popularity, timestamps over ten years, a rating column the add ignores. One round:
what is timed is a first add (reading, duplicates, k-core, numbering, writing the file and its manifest),
which `extra_info` reports beside the rows and the statistics of the result.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.benchmark_suite

ROWS = int(float(os.environ.get("BENCH_ADD_ROWS", "1e7")))


@pytest.fixture(scope="module")
def interactions_csv(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(0)
    users = rng.integers(0, 300_000, ROWS)
    items = rng.zipf(1.3, ROWS) % 80_000
    table = pa.table({
        "user_id": pc.binary_join_element_wise("u", pc.cast(pa.array(users), pa.string()), ""),
        "item_id": pc.binary_join_element_wise("i", pc.cast(pa.array(items), pa.string()), ""),
        "rating": rng.integers(1, 6, ROWS),
        "timestamp": rng.integers(1_300_000_000, 1_600_000_000, ROWS),
    })
    path = tmp_path_factory.mktemp("add") / "interactions.csv"
    pcsv.write_csv(table, path, write_options=pcsv.WriteOptions(quoting_style="none"))
    return path


@pytest.mark.benchmark(group="data add")
def test_add_a_large_csv(benchmark, interactions_csv, tmp_path, monkeypatch):
    from bench.core import data, userdata

    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))

    def fresh():  # each round a first add, never the no-op of an add already done
        shutil.rmtree(data.added_dir(), ignore_errors=True)
        return (), {}

    added = benchmark.pedantic(lambda: userdata.add_dataset("large", interactions_csv), setup=fresh, rounds=1,
                               iterations=1)
    benchmark.extra_info.update(rows=ROWS, bytes=interactions_csv.stat().st_size, **added.statistics)
    assert added.manifest["source"]["rows"] == ROWS and added.statistics["users"] > 0
