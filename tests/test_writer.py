"""The sharded, resumable Parquet writer: kills, resumes, ranks, bad input, load_dataset."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import _writer_worker as worker
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES
from hf_counterfactual.generation import ShardedRecordWriter, SkipRecord, finalize
from hf_counterfactual.generation.writer import PROGRESS_DIR

REPO = Path(__file__).resolve().parents[1]
NUM_GOOD = worker.NUM_ITEMS - len(worker.BAD)


def run_writer(output_dir, rank=0, world_size=1, **kwargs):
    writer = ShardedRecordWriter(output_dir, records_per_shard=worker.RECORDS_PER_SHARD, rank=rank, world_size=world_size)
    return writer.run(worker.ITEMS, worker.make_record, progress=False, **kwargs)


def shard_files(output_dir) -> list[str]:
    return sorted(p.name for p in (Path(output_dir) / "data").iterdir())


def rows(output_dir) -> list[dict]:
    """All rows, shards read in name order (rank, then shard number)."""
    files = sorted((Path(output_dir) / "data").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    stats = run_writer(out)
    return out, stats


def test_bad_items_are_counted_logged_and_never_written(reference, tmp_path, caplog):
    out, stats = reference
    assert stats.num_items == worker.NUM_ITEMS
    assert stats.num_records == NUM_GOOD
    assert stats.num_skipped == len(worker.BAD)
    reasons = stats.skip_reasons
    assert reasons["make_record returned None"] == 2
    assert reasons["no objects found"] == 3
    assert reasons["ValueError: unreadable input"] == 1
    assert any("caption" in r and "non-empty" in r for r in reasons), reasons
    assert sum(reasons.values()) == len(worker.BAD)
    assert sum(stats.edits.values()) == 2 * NUM_GOOD and stats.sources["procedural"] == 2 * NUM_GOOD

    table_rows = rows(out)
    assert len(table_rows) == NUM_GOOD
    captions = [r["caption"] for r in table_rows]
    expected = [worker.make_record(i, i)["caption"] for i in worker.ITEMS if i not in worker.BAD]
    assert captions == expected  # input order, bad items absent
    assert shard_files(out) == [f"train-r00000-{n:05d}.parquet" for n in range(-(-NUM_GOOD // worker.RECORDS_PER_SHARD))]

    with caplog.at_level(logging.INFO, logger="hf_counterfactual.generation.writer"):
        run_writer(tmp_path)
    skipped = [m for m in caplog.messages if "skipping" in m]
    assert len(skipped) == len(worker.BAD)
    assert any("item 17: ValueError: unreadable input" in m for m in skipped)


def test_rerun_of_finished_run_changes_nothing(reference, tmp_path):
    run_writer(tmp_path)
    before = {name: (tmp_path / "data" / name).read_bytes() for name in shard_files(tmp_path)}
    stats = run_writer(tmp_path)
    assert stats.num_resumed == worker.NUM_ITEMS and stats.num_records == NUM_GOOD
    assert {name: (tmp_path / "data" / name).read_bytes() for name in shard_files(tmp_path)} == before


@pytest.mark.parametrize(
    "kills",
    [
        [("record", 20)],  # buffered records lost with the process
        [("tmp", 2)],  # a half-written temp shard
        [("progress", 1)],  # shard in place, progress not updated: adopted
        [("progress", 0), ("record", 40), ("tmp", 5)],  # killed three times
    ],
    ids=["in-make_record", "during-shard-write", "between-shard-and-progress", "three-kills"],
)
def test_kill_and_resume_equals_uninterrupted_run(reference, tmp_path, kills):
    ref_out, ref_stats = reference
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    for mode, k in kills:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / "_writer_worker.py"), str(tmp_path), mode, str(k)],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        progress = json.loads((tmp_path / PROGRESS_DIR / "train-r00000.json").read_text())
        assert not progress["complete"]
    if kills[0][0] == "tmp":
        assert any(name.endswith(".tmp") for name in os.listdir(tmp_path / "data"))
    if kills[-1][0] == "progress":
        committed = {e["file"] for e in json.loads((tmp_path / PROGRESS_DIR / "train-r00000.json").read_text())["shards"]}
        (orphan,) = set(shard_files(tmp_path)) - committed  # the shard without progress entry
        orphan_inode = (tmp_path / "data" / orphan).stat().st_ino

    stats = run_writer(tmp_path)
    if kills[-1][0] == "progress":  # it was adopted (its footer continues the progress), not rewritten
        assert (tmp_path / "data" / orphan).stat().st_ino == orphan_inode
    assert stats.num_resumed > 0
    assert shard_files(tmp_path) == shard_files(ref_out)  # no temp files, same shards
    assert rows(tmp_path) == rows(ref_out)  # same rows, same order: no duplicates, no losses
    assert stats.to_dict() == ref_stats.to_dict()  # skip counts not doubled by the rerun


def test_foreign_orphan_shard_is_removed_and_redone(reference, tmp_path):
    ref_out, _ = reference
    run_writer(tmp_path)
    # Simulate a crash that left a garbage shard and an unreadable committed shard.
    progress_path = tmp_path / PROGRESS_DIR / "train-r00000.json"
    progress = json.loads(progress_path.read_text())
    progress["shards"] = progress["shards"][:2]
    progress["complete"] = False
    progress_path.write_text(json.dumps(progress))
    (tmp_path / "data" / "train-r00000-00003.parquet").write_bytes(b"not parquet")
    (tmp_path / "data" / "train-r00000-00001.parquet").write_bytes(b"truncated")
    run_writer(tmp_path)
    assert shard_files(tmp_path) == shard_files(ref_out)
    assert rows(tmp_path) == rows(ref_out)


def test_mismatched_rerun_is_refused(tmp_path):
    run_writer(tmp_path)
    writer = ShardedRecordWriter(tmp_path, records_per_shard=worker.RECORDS_PER_SHARD, rank=0, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        writer.run(worker.ITEMS, worker.make_record, progress=False)


def test_two_ranks_union_equals_single_process(reference, tmp_path):
    ref_out, ref_stats = reference
    stats = [run_writer(tmp_path, rank=r, world_size=2) for r in (1, 0)]
    names = shard_files(tmp_path)
    r0 = {n for n in names if "-r00000-" in n}
    r1 = {n for n in names if "-r00001-" in n}
    assert r0 and r1 and r0 | r1 == set(names)
    assert stats[0].num_items + stats[1].num_items == worker.NUM_ITEMS
    assert stats[0].num_records + stats[1].num_records == NUM_GOOD
    union = rows(tmp_path)
    assert union == rows(ref_out)  # contiguous blocks: rank order is input order
    ranges = [json.loads((tmp_path / PROGRESS_DIR / f"train-r{r:05d}.json").read_text()) for r in (0, 1)]
    assert (ranges[0]["start"], ranges[0]["end"], ranges[1]["start"], ranges[1]["end"]) == (0, 30, 30, 60)

    merged = finalize(tmp_path, ["train"])
    assert merged["train"]["num_records"] == NUM_GOOD
    assert merged["train"]["skip_reasons"] == ref_stats.to_dict()["skip_reasons"]
    assert merged["train"]["world_size"] == 2


def test_finalize_refuses_unfinished_ranks(tmp_path):
    run_writer(tmp_path, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="unfinished|ranks"):
        finalize(tmp_path, ["train"])


def test_load_dataset_after_finalize(tmp_path):
    import datasets
    from PIL import Image

    run_writer(tmp_path)
    test_writer = ShardedRecordWriter(tmp_path, split="test", records_per_shard=4)

    def make_test(index, item):
        if index == 2:
            raise SkipRecord("blurry")
        return worker.generate_record(index, "test", worker.SEED, image_size=32, counterfactuals_per_record=2)

    test_writer.run(list(range(9)), make_test, progress=False)
    card = "---\nlicense: mit\n---\n\n# My counterfactuals\n"
    finalize(tmp_path, ["train", "test"], dataset_card=card)

    readme = (tmp_path / "README.md").read_text()
    assert "license: mit" in readme and "# My counterfactuals" in readme and "configs:" in readme
    stats = json.loads((tmp_path / "generation_stats.json").read_text())
    assert stats["test"]["skip_reasons"] == {"blurry": 1}
    assert stats["train"]["num_records"] == NUM_GOOD

    ds = datasets.load_dataset(str(tmp_path))
    assert set(ds) == {"train", "test"}
    assert ds["train"].num_rows == NUM_GOOD and ds["test"].num_rows == 8
    assert ds["train"].features == COUNTERFACTUAL_FEATURES
    row = ds["train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (32, 32)
    assert isinstance(row["counterfactuals"][0]["image"], Image.Image)
    # Shard names sort in input order, and datasets reads them sorted: the split keeps input order.
    expected = [worker.make_record(i, i)["caption"] for i in worker.ITEMS if i not in worker.BAD]
    assert list(ds["train"]["caption"]) == expected


# ------------------------------------------------------------------------------------ batched runs


def batched_make_records(fail_batches_with: int | None = None, counts: bool = False):
    """``worker.make_record`` as a batch function; a batch holding ``fail_batches_with`` raises as a
    whole (as a model stage would on one poisonous input)."""

    def make_records(indices, batch):
        if fail_batches_with is not None and fail_batches_with in indices and len(indices) > 1:
            raise RuntimeError("the whole batch failed")
        results = []
        for index, item in zip(indices, batch):
            try:
                record = worker.make_record(index, item)
                if counts:
                    # one "tried" per item, "kept" per record: what a filter stage reports
                    record = worker_generated(record, {"filter/tried": 1, "filter/kept": int(record is not None)})
            except SkipRecord as err:
                record = SkipRecord(err.reason, counts={"filter/tried": 1} if counts else None)
            except Exception as err:
                record = err
            results.append(record)
        return results

    return make_records


def worker_generated(record, counts):
    from hf_counterfactual.generation.writer import GeneratedRecord

    return GeneratedRecord(record, counts)


@pytest.mark.parametrize("batch_size", [1, 4, 7])
def test_run_batched_writes_what_run_writes(reference, tmp_path, batch_size):
    ref_out, ref_stats = reference
    writer = ShardedRecordWriter(tmp_path, records_per_shard=worker.RECORDS_PER_SHARD)
    stats = writer.run_batched(worker.ITEMS, batched_make_records(), batch_size=batch_size, progress=False)
    assert stats.to_dict() == ref_stats.to_dict()
    assert shard_files(tmp_path) == shard_files(ref_out)  # shards close mid-batch at records_per_shard
    assert rows(tmp_path) == rows(ref_out)


def test_failed_batch_is_retried_item_by_item(reference, tmp_path, caplog):
    ref_out, ref_stats = reference
    writer = ShardedRecordWriter(tmp_path, records_per_shard=worker.RECORDS_PER_SHARD)
    with caplog.at_level(logging.WARNING):
        stats = writer.run_batched(worker.ITEMS, batched_make_records(fail_batches_with=13), batch_size=5, progress=False)
    assert "retrying item by item" in caplog.text
    assert stats.to_dict() == ref_stats.to_dict() and rows(tmp_path) == rows(ref_out)

    def wrong_length(indices, batch):
        return [None]

    out = tmp_path / "wrong"
    stats = ShardedRecordWriter(out, records_per_shard=4).run_batched(list(range(3)), wrong_length, batch_size=3, progress=False)
    # retried one by one, where one result per item is right: each None is a counted skip
    assert stats.skip_reasons == {"make_record returned None": 3}


def test_per_item_counts_survive_kill_and_resume(tmp_path):
    make_records = batched_make_records(counts=True)
    writer = ShardedRecordWriter(tmp_path / "ref", records_per_shard=worker.RECORDS_PER_SHARD)
    ref = writer.run_batched(worker.ITEMS, make_records, batch_size=4, progress=False)
    kinds = list(worker.BAD.values())
    # every item reports "tried" except the one raising ValueError (a plain exception carries no counts);
    # "kept" counts make_record's non-None results, including the two that fail validation later
    assert ref.counts == {"filter/tried": worker.NUM_ITEMS - kinds.count("value_error"),
                          "filter/kept": worker.NUM_ITEMS - kinds.count("none") - kinds.count("skip") - kinds.count("value_error")}

    # Interrupt after some shards (simulated: an exception escaping the loop), then resume.
    class Boom(BaseException):
        pass

    def exploding(indices, batch):
        if 30 in indices:
            raise Boom()
        return make_records(indices, batch)

    out = tmp_path / "resumed"
    with pytest.raises(Boom):
        ShardedRecordWriter(out, records_per_shard=worker.RECORDS_PER_SHARD).run_batched(worker.ITEMS, exploding, batch_size=4, progress=False)
    resumed = ShardedRecordWriter(out, records_per_shard=worker.RECORDS_PER_SHARD).run_batched(
        worker.ITEMS, make_records, batch_size=4, progress=False
    )
    assert resumed.num_resumed > 0
    assert resumed.counts == ref.counts  # items of the uncommitted tail are counted once, not twice
    assert rows(out) == rows(tmp_path / "ref")
    assert finalize(out, ["train"])["train"]["counts"] == dict(ref.counts)


def test_two_folders_of_the_same_name_do_not_share_a_cache(tmp_path):
    """datasets caches a local folder by its name and README metadata; finalize's dataset_info
    (records and bytes per split) keeps a regenerated folder from loading another's stale cache."""
    import datasets

    loaded = []
    for n, where in ((7, "first"), (11, "second")):
        out = tmp_path / where / "cf-coco"
        ShardedRecordWriter(out, records_per_shard=4).run(worker.ITEMS[:n], worker.make_record, progress=False)
        finalize(out, ["train"])
        loaded.append(datasets.load_dataset(str(out))["train"])
    good = lambda n: sum(i not in worker.BAD for i in range(n))  # noqa: E731
    assert [ds.num_rows for ds in loaded] == [good(7), good(11)]
    readme = (tmp_path / "second" / "cf-coco" / "README.md").read_text()
    assert f"num_examples: {good(11)}" in readme and "dataset_info:" in readme
