"""A committed shard whose data pages are damaged while its Parquet footer stays intact: the
writer's recovery must regenerate it, and finalize must refuse to publish it."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import _writer_worker as worker
from hf_counterfactual.generation import ShardedRecordWriter, finalize

NUM_ITEMS = 20  # 4 shards of 4 records (items 3, 10 and 17 are bad)
RECORDS_PER_SHARD = 4
DAMAGED = "train-r00000-00001.parquet"


def run_writer(output_dir):
    writer = ShardedRecordWriter(output_dir, records_per_shard=RECORDS_PER_SHARD)
    return writer.run(worker.ITEMS[:NUM_ITEMS], worker.make_record, progress=False)


def rows(output_dir) -> list[dict]:
    files = sorted((Path(output_dir) / "data").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def damage_data_pages(path: Path) -> None:
    """Overwrites 32 bytes in the middle of the largest column chunk (image bytes); the footer (the
    file's last 8 + footer-length bytes) and so ``pq.read_metadata`` stay intact."""
    meta = pq.read_metadata(path)
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    big = max(chunks, key=lambda c: c.total_compressed_size)
    start = big.dictionary_page_offset if big.has_dictionary_page else big.data_page_offset
    middle = start + big.total_compressed_size // 2
    data = bytearray(path.read_bytes())
    footer_start = len(data) - 8 - meta.serialized_size
    assert middle + 32 < footer_start
    for i in range(middle, middle + 32):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    assert pq.read_metadata(path).num_rows == meta.num_rows  # the footer still parses


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return out, run_writer(out)


def test_damaged_committed_shard_is_regenerated(reference, tmp_path, caplog):
    ref_out, ref_stats = reference
    run_writer(tmp_path)
    shard = tmp_path / "data" / DAMAGED
    damage_data_pages(shard)
    assert shard.read_bytes() != (ref_out / "data" / DAMAGED).read_bytes()

    with caplog.at_level(logging.WARNING, logger="hf_counterfactual.generation.writer"):
        stats = run_writer(tmp_path)
    assert rows(tmp_path) == rows(ref_out)  # every record, intact, in input order
    assert shard.read_bytes() == (ref_out / "data" / DAMAGED).read_bytes()  # written again
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(p.name for p in (ref_out / "data").iterdir())
    assert any(DAMAGED in m and "damaged data" in m for m in caplog.messages), caplog.messages
    assert stats.to_dict() == ref_stats.to_dict()
    assert finalize(tmp_path, ["train"])["train"]["num_records"] == ref_stats.num_records


def test_shard_is_read_once_on_resume_and_not_on_writes(tmp_path, monkeypatch):
    reads = []
    original = ShardedRecordWriter._verify

    def counting(self, path, expected=None):
        reads.append(path.name)
        return original(self, path, expected)

    monkeypatch.setattr(ShardedRecordWriter, "_verify", counting)
    run_writer(tmp_path)
    assert reads == []  # a fresh run reads nothing back
    run_writer(tmp_path)
    assert sorted(reads) == sorted(p.name for p in (tmp_path / "data").iterdir())  # each once


def test_finalize_refuses_a_damaged_shard(reference, tmp_path):
    ref_out, _ = reference
    run_writer(tmp_path)
    damage_data_pages(tmp_path / "data" / DAMAGED)
    with pytest.raises(RuntimeError, match=f"{DAMAGED} is damaged"):
        finalize(tmp_path, ["train"])
    assert not (tmp_path / "README.md").exists()
    run_writer(tmp_path)  # the rerun regenerates it
    finalize(tmp_path, ["train"])
    assert rows(tmp_path) == rows(ref_out)


def test_finalize_refuses_an_uncommitted_shard(tmp_path):
    run_writer(tmp_path)
    (tmp_path / "data" / "train-r00000-00009.parquet").write_bytes((tmp_path / "data" / DAMAGED).read_bytes())
    with pytest.raises(RuntimeError, match="committed by no progress file"):
        finalize(tmp_path, ["train"])
