"""Sharded, resumable Parquet writer for generated counterfactual records.

Each process (one per GPU or node under ``accelerate`` / ``torchrun``) owns a contiguous block of
the input and writes numbered Parquet shards of it; a rerun after a kill continues where it
stopped, without duplicating or losing records::

    writer = ShardedRecordWriter("out/cf-coco", split="train", rank=rank, world_size=world_size)
    stats = writer.run(pairs, make_record)      # make_record(index, item) -> dict | None
    # or, for model stages that want batches:
    stats = writer.run_batched(pairs, make_records, batch_size=16)   # make_records(indices, items) -> list
    # ... barrier, then on one process:
    finalize("out/cf-coco", ["train"])          # README.md (configs:) + generation_stats.json
    datasets.load_dataset("out/cf-coco")        # no script, images decode to PIL

Layout of ``output_dir``::

    data/{split}-r{rank:05d}-{n:05d}.parquet    shard n of process rank
    .progress/{split}-r{rank:05d}.json          committed shards of process rank
    README.md, generation_stats.json            written by :func:`finalize`

Ownership: with ``N`` items, process ``rank`` owns the contiguous block
``[rank * N // world_size, (rank + 1) * N // world_size)``, so the shards read in name order
(rank, then shard number) hold the records in input order, exactly as one process writes them.

Resume protocol:

1. A shard is written to ``.{name}.tmp`` in ``data/``, flushed and fsynced, then moved into place
   with ``os.replace`` (atomic); the directory is fsynced.
2. Only then is the progress file rewritten (same temp + fsync + replace) with an entry for the
   shard: file name, input range ``[start, end)`` it covers (records and skips), its number of
   records, skip reasons and edit counts. The same entry is stored in the shard's Parquet footer
   (schema metadata key ``hf_counterfactual``).
3. On start, the writer drops temp files, checks that every committed shard is still there, and
   handles shard files that have no progress entry (a kill between steps 1 and 2): such a file is
   **adopted** if its footer parses and its entry continues the committed ones exactly (next shard
   number, range starting where the last one ended); otherwise it, and every later file, is
   removed and redone. Generation restarts at the end of the last committed range.
4. Every shard kept on start (committed or adopted) is verified in full, once: all its row
   groups are read back with Parquet page checksum verification (shards are written with page
   checksums) and its row count checked against its entry, so a shard whose data pages were
   damaged while its footer stayed intact is removed and regenerated like a missing one (the
   reason logged), not published. :func:`finalize` verifies every shard it publishes the same way.

Because shard boundaries depend only on the input (a shard closes after ``records_per_shard``
records, a range always starts where the previous committed one ended), a resumed run writes the
same shards, byte for byte in content, as an uninterrupted one, provided ``make_record`` is
deterministic (seed it from the index). With :meth:`~ShardedRecordWriter.run_batched`, a resume
regroups the items after the resume point into batches; batched model stages are then equal up to
floating-point rounding unless ``batch_size`` divides the committed range.

Bad input never kills the run and is never written: ``None``, :class:`SkipRecord`, any other
exception, or a record failing :func:`~hf_counterfactual.features.validate_record` /
``features.encode_example`` / Arrow conversion is a skip, counted by reason and logged.

Per-item counters (e.g. how many image edits a filter passed) travel with the item: return a
:class:`GeneratedRecord` (or raise ``SkipRecord(reason, counts=...)``) and the counts are stored in
the entry of the shard that covers the item, so a resumed run counts every item exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from ..features import COUNTERFACTUAL_FEATURES, validate_record

logger = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
STATS_FILE = "generation_stats.json"
METADATA_KEY = b"hf_counterfactual"
_PROGRESS_VERSION = 1


class SkipRecord(Exception):
    """Raised by ``make_record`` to skip an input item; ``reason`` is counted and logged.

    ``counts`` are per-item counters kept even though the item is skipped (e.g. the image edits
    that were tried and failed a filter)."""

    def __init__(self, reason: str, counts: Mapping[str, int] | None = None):
        super().__init__(reason)
        self.reason = str(reason)
        self.counts = dict(counts or {})


@dataclass
class GeneratedRecord:
    """A record (or None: skipped) with per-item counters that the writer adds to its stats."""

    record: Mapping[str, Any] | None
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass
class WriterStats:
    """Totals of one process over all its committed shards (earlier runs included).

    Attributes:
        num_items: input items owned by the process.
        num_resumed: owned items already done when this run started.
        num_records: records written.
        num_skipped: items skipped; ``skip_reasons`` counts them by reason.
        num_shards: shard files written (a range made only of skips has no file).
        edits / sources: counterfactuals written, by edit kind / by source.
        counts: per-item counters reported by ``make_record`` (see :class:`GeneratedRecord`).
    """

    num_items: int = 0
    num_resumed: int = 0
    num_records: int = 0
    num_skipped: int = 0
    num_shards: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    edits: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "num_records": self.num_records,
            "num_skipped": self.num_skipped,
            "num_shards": self.num_shards,
            "skip_reasons": dict(sorted(self.skip_reasons.items())),
            "edits": dict(sorted(self.edits.items())),
            "sources": dict(sorted(self.sources.items())),
            "counts": dict(sorted(self.counts.items())),
        }

    def update(self, other: "WriterStats") -> None:
        """Adds ``other``'s totals (merging the processes of one split)."""
        for name in ("num_items", "num_resumed", "num_records", "num_skipped", "num_shards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("skip_reasons", "edits", "sources", "counts"):
            getattr(self, name).update(getattr(other, name))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def verify_shard(path: str | os.PathLike, expected: Mapping[str, Any] | None = None) -> str | None:
    """Why the shard at ``path`` is not whole, or ``None`` when it is.

    Reads the whole file once: its footer and the progress entry stored there (which must name the
    file and count its rows), then every row group, with Parquet page checksum verification (the
    writer stores page checksums; shards without them are only decoded), and checks that the rows
    read add up to the entry's ``num_records``. With ``expected`` (the shard's entry in a progress
    file) the footer entry must also agree with it on file, input range and record count. A
    damaged data page behind an intact footer fails here, where :func:`pyarrow.parquet.read_metadata`
    alone would accept it.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    try:
        parquet = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as err:
        return f"unreadable footer ({type(err).__name__}: {err})"
    try:
        with parquet:
            try:
                entry = json.loads((parquet.schema_arrow.metadata or {})[METADATA_KEY])
            except Exception as err:
                return f"no progress entry in its footer ({type(err).__name__}: {err})"
            if not isinstance(entry, dict) or entry.get("file") != path.name:
                return "its footer entry names another file"
            if entry.get("num_records") != parquet.metadata.num_rows:
                return f"its footer entry counts {entry.get('num_records')} records, the footer {parquet.metadata.num_rows} rows"
            if expected is not None:
                for key in ("file", "start", "end", "num_records"):
                    if entry.get(key) != expected.get(key):
                        return f"its footer entry has {key}={entry.get(key)!r}, the progress file {expected.get(key)!r}"
            rows = 0
            for i in range(parquet.num_row_groups):
                rows += parquet.read_row_group(i).num_rows
    except Exception as err:
        return f"damaged data ({type(err).__name__}: {err})"
    if rows != entry["num_records"]:
        return f"{rows} rows read back, {entry['num_records']} expected"
    return None


def _env_int(names: Iterable[str], default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


class ShardedRecordWriter:
    """Writes the records of one process's block of the input as numbered, atomic Parquet shards.

    Args:
        output_dir: dataset folder (shared by all processes).
        split: split name; shards are ``data/{split}-r{rank:05d}-{n:05d}.parquet``.
        features: the record schema (:data:`COUNTERFACTUAL_FEATURES` by default).
        records_per_shard: records per shard file (the last shard of a process may hold fewer).
        rank, world_size: this process and the number of processes; None reads ``RANK`` /
            ``WORLD_SIZE`` from the environment (set by torchrun and accelerate), else 0 / 1.
        min_counterfactuals: passed to :func:`validate_record`.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        split: str = "train",
        features: Features = COUNTERFACTUAL_FEATURES,
        records_per_shard: int = 500,
        rank: int | None = 0,
        world_size: int | None = 1,
        min_counterfactuals: int = 0,
    ):
        if not re.fullmatch(r"[\w.]+", split) or "-" in split:
            raise ValueError(f"split name {split!r} must be made of letters, digits, '_' or '.'")
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.rank = _env_int(["RANK", "LOCAL_RANK"], 0) if rank is None else int(rank)
        self.world_size = _env_int(["WORLD_SIZE"], 1) if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.output_dir = Path(output_dir)
        self.split = split
        self.features = features
        self.schema = features.arrow_schema
        self.records_per_shard = int(records_per_shard)
        self.min_counterfactuals = min_counterfactuals
        self.data_dir = self.output_dir / "data"
        self.progress_path = self.output_dir / PROGRESS_DIR / f"{split}-r{self.rank:05d}.json"
        self._progress: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- layout

    def owned_range(self, num_items: int) -> tuple[int, int]:
        """The block ``[start, end)`` of input indices this process owns."""
        return self.rank * num_items // self.world_size, (self.rank + 1) * num_items // self.world_size

    def shard_name(self, n: int) -> str:
        return f"{self.split}-r{self.rank:05d}-{n:05d}.parquet"

    def _shard_number(self, name: str) -> int | None:
        match = re.fullmatch(rf"{re.escape(self.split)}-r{self.rank:05d}-(\d{{5,}})\.parquet", name)
        return int(match.group(1)) if match else None

    # --------------------------------------------------------------------------------- progress

    def _new_progress(self, num_items: int) -> dict[str, Any]:
        start, end = self.owned_range(num_items)
        return {
            "version": _PROGRESS_VERSION,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_items": num_items,
            "start": start,
            "end": end,
            "complete": False,
            "shards": [],
        }

    def _save_progress(self) -> None:
        self.progress_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(self.progress_path, json.dumps(self._progress, indent=1).encode())

    def _next_start(self) -> int:
        shards = self._progress["shards"]
        return shards[-1]["end"] if shards else self._progress["start"]

    def _read_footer_entry(self, path: Path) -> dict[str, Any] | None:
        """The progress entry stored in a shard's footer, or None if the footer does not parse.
        Reads the footer only: :func:`verify_shard` is what checks the data."""
        try:
            meta = pq.read_metadata(path)
            entry = json.loads((meta.metadata or {})[METADATA_KEY])
            if entry.get("num_records") != meta.num_rows or entry.get("file") != path.name:
                return None
            return entry
        except Exception:  # truncated, foreign or corrupt file
            return None

    def _verify(self, path: Path, expected: Mapping[str, Any] | None = None) -> str | None:
        """:func:`verify_shard` (a hook for tests)."""
        return verify_shard(path, expected)

    def _remove(self, path: Path, why: str) -> None:
        logger.warning("rank %d: removing %s (%s)", self.rank, path, why)
        path.unlink()

    def _recover(self, num_items: int) -> None:
        """Loads the progress file and repairs the shard folder after a kill (see module doc)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.progress_path.exists():
            self._progress = json.loads(self.progress_path.read_text())
            for key, value in (("world_size", self.world_size), ("num_items", num_items), ("split", self.split)):
                if self._progress.get(key) != value:
                    raise ValueError(
                        f"{self.progress_path} was written with {key}={self._progress.get(key)!r}, "
                        f"this run has {key}={value!r}: use another output_dir or delete the old one"
                    )
        else:
            self._progress = self._new_progress(num_items)

        # Temp files are never part of a dataset: a kill during a write leaves them behind.
        for tmp in self.data_dir.glob(f".{self.split}-r{self.rank:05d}-*.tmp"):
            self._remove(tmp, "unfinished write")

        # Committed shards must still be there and whole (read back in full, once per start):
        # truncate the progress at the first one that is not, and remove it.
        shards = self._progress["shards"]
        for i, entry in enumerate(shards):
            if entry["file"] is None:
                continue
            path = self.data_dir / entry["file"]
            why = self._verify(path, entry)
            if why is not None:
                logger.warning("rank %d: committed shard %s is %s; redoing from it", self.rank, entry["file"], why)
                if path.exists():
                    self._remove(path, why)
                del shards[i:]
                self._progress["complete"] = False
                break

        # Files beyond the committed shards: adopt the ones that continue them, remove the rest.
        committed = {entry["file"] for entry in shards if entry["file"] is not None}
        extra = sorted(
            (n, path)
            for path in self.data_dir.glob(f"{self.split}-r{self.rank:05d}-*.parquet")
            if path.name not in committed and (n := self._shard_number(path.name)) is not None
        )
        changed = False
        for n, path in extra:
            entry = self._read_footer_entry(path)
            next_n = sum(e["file"] is not None for e in shards)
            if entry is not None and n == next_n and entry.get("start") == self._next_start() and entry.get("end", -1) <= self._progress["end"]:
                why = self._verify(path, entry)  # read in full only when it would be adopted
                if why is None:
                    logger.info("rank %d: adopting %s (written before the progress update was)", self.rank, path.name)
                    shards.append(entry)
                    changed = True
                else:
                    self._remove(path, why)
            else:
                self._remove(path, "not a continuation of the committed shards")
        if changed or not self.progress_path.exists():
            self._save_progress()

    # ------------------------------------------------------------------------------- writing

    def _write_parquet_tmp(self, table: pa.Table, tmp: Path) -> None:
        with open(tmp, "wb") as f:
            # Page checksums let verify_shard catch damaged data pages behind an intact footer.
            pq.write_table(table, f, row_group_size=min(100, max(1, table.num_rows)), write_page_checksum=True)
            f.flush()
            os.fsync(f.fileno())

    def _commit(self, batches: list[pa.RecordBatch], entry: dict[str, Any]) -> None:
        """Writes one shard (if it has records) atomically, then records it in the progress file."""
        if batches:
            n = sum(e["file"] is not None for e in self._progress["shards"])
            entry["file"] = self.shard_name(n)
            schema = self.schema.with_metadata({**(self.schema.metadata or {}), METADATA_KEY: json.dumps(entry).encode()})
            table = pa.Table.from_batches(batches, schema=self.schema).replace_schema_metadata(schema.metadata)
            path = self.data_dir / entry["file"]
            tmp = self.data_dir / f".{entry['file']}.tmp"
            self._write_parquet_tmp(table, tmp)
            os.replace(tmp, path)
            _fsync_dir(self.data_dir)
        self._progress["shards"].append(entry)
        self._save_progress()

    def _encode(self, index: int, record: Any) -> pa.RecordBatch:
        if not isinstance(record, Mapping):
            raise TypeError(f"make_record returned {type(record).__name__}, expected a dict or None")
        validate_record(record, min_counterfactuals=self.min_counterfactuals)
        encoded = self.features.encode_example(dict(record))
        return pa.RecordBatch.from_pylist([encoded], schema=self.schema)

    def run(
        self,
        items: Sequence[Any],
        make_record: Callable[[int, Any], Mapping[str, Any] | GeneratedRecord | None],
        progress: bool = True,
    ) -> WriterStats:
        """Makes and writes the records of this process's block of ``items``, resuming if possible.

        ``make_record(index, item)`` returns a record (a dict following ``features``), a
        :class:`GeneratedRecord`, or None / raises :class:`SkipRecord` to skip the item; any other
        exception is a skip too, counted as ``"{ExceptionType}: {message}"``. Returns the totals of
        this process (see :class:`WriterStats`).
        """

        def make_records(indices: Sequence[int], batch: Sequence[Any]) -> list[Any]:
            results = []
            for index, item in zip(indices, batch):
                try:
                    results.append(make_record(index, item))
                except Exception as err:  # one bad item never kills the run
                    results.append(err)
            return results

        return self.run_batched(items, make_records, batch_size=1, progress=progress)

    def run_batched(
        self,
        items: Sequence[Any],
        make_records: Callable[[Sequence[int], Sequence[Any]], Sequence[Any]],
        batch_size: int = 16,
        progress: bool = True,
    ) -> WriterStats:
        """:meth:`run` for batched model stages: ``make_records(indices, items)`` gets up to
        ``batch_size`` consecutive items and returns one result per item, each a record, a
        :class:`GeneratedRecord`, None or an exception instance (:class:`SkipRecord` or any other:
        a skip). If ``make_records`` itself raises, the batch is retried one item at a time, so one
        bad item cannot take its neighbours down with it.

        Shards still close after exactly ``records_per_shard`` records (mid-batch if need be), so
        the output does not depend on ``batch_size`` when ``make_records`` is deterministic per
        item (seed from the index, not from the position in the batch).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        num_items = len(items)
        self._recover(num_items)
        start, end = self._progress["start"], self._progress["end"]
        resume_at = self._next_start()
        if resume_at > start:
            logger.info("rank %d: resuming %s at input %d of [%d, %d)", self.rank, self.split, resume_at, start, end)

        def new_entry(first: int) -> dict[str, Any]:
            return {"file": None, "start": first, "end": first, "num_records": 0,
                    "skip_reasons": Counter(), "edits": Counter(), "sources": Counter(), "counts": Counter()}

        def finish(entry: dict[str, Any], stop: int) -> dict[str, Any]:
            entry["end"] = stop
            for key in ("skip_reasons", "edits", "sources", "counts"):
                entry[key] = dict(sorted(entry[key].items()))
            return entry

        def call(indices: list[int]) -> list[Any]:
            batch = [items[i] for i in indices]
            try:
                results = list(make_records(indices, batch))
                if len(results) != len(indices):
                    raise RuntimeError(f"make_records returned {len(results)} results for {len(indices)} items")
                return results
            except Exception as err:
                if len(indices) == 1:
                    return [err]
                logger.warning("rank %d: batch %d..%d failed (%s: %s); retrying item by item",
                               self.rank, indices[0], indices[-1], type(err).__name__, err)
                return [call([i])[0] for i in indices]

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=end - start, initial=resume_at - start, desc=f"{self.split} rank {self.rank}", unit="item")

        batches: list[pa.RecordBatch] = []
        entry = new_entry(resume_at)
        try:
            for first in range(resume_at, end, batch_size):
                indices = list(range(first, min(first + batch_size, end)))
                for index, result in zip(indices, call(indices)):
                    reason, record = None, result
                    if isinstance(result, GeneratedRecord):
                        record = result.record
                        entry["counts"].update(result.counts)
                    elif isinstance(result, SkipRecord):
                        entry["counts"].update(result.counts)
                    if isinstance(result, BaseException):
                        reason = result.reason if isinstance(result, SkipRecord) else f"{type(result).__name__}: {result}"
                    elif record is None:
                        reason = "make_record returned None"
                    else:
                        try:
                            batch = self._encode(index, record)
                        except Exception as err:
                            reason = f"{type(err).__name__}: {err}"
                    if reason is not None:
                        entry["skip_reasons"][reason] += 1
                        logger.info("rank %d: skipping %s item %d: %s", self.rank, self.split, index, reason)
                    else:
                        batches.append(batch)
                        entry["num_records"] += 1
                        for cf in record.get("counterfactuals") or []:
                            entry["edits"][cf["edit"]] += 1
                            entry["sources"][cf["source"]] += 1
                    if bar is not None:
                        bar.update(1)
                    if len(batches) >= self.records_per_shard:
                        self._commit(batches, finish(entry, index + 1))
                        batches, entry = [], new_entry(index + 1)
            if self._next_start() < end:  # the tail: a last, smaller shard (or skips only)
                self._commit(batches, finish(entry, end))
        finally:
            if bar is not None:
                bar.close()
        if not self._progress["complete"]:
            self._progress["complete"] = True
            self._save_progress()
        stats = progress_stats(self._progress)
        stats.num_resumed = resume_at - start
        return stats


def progress_stats(progress: Mapping[str, Any]) -> WriterStats:
    """Totals of one progress file (one process of one split)."""
    stats = WriterStats(num_items=progress["end"] - progress["start"])
    for entry in progress["shards"]:
        stats.num_records += entry["num_records"]
        stats.num_shards += entry["file"] is not None
        stats.skip_reasons.update(entry["skip_reasons"])
        stats.edits.update(entry["edits"])
        stats.sources.update(entry["sources"])
        stats.counts.update(entry.get("counts", {}))
    stats.num_skipped = sum(stats.skip_reasons.values())
    return stats


def _split_front_matter(card: str) -> tuple[dict[str, Any], str]:
    import yaml

    if card.startswith("---"):
        parts = card.split("\n---", 1)
        if len(parts) == 2:
            header = yaml.safe_load(parts[0][3:]) or {}
            return dict(header), parts[1].lstrip("-").lstrip("\n")
    return {}, card


def finalize(
    output_dir: str | os.PathLike,
    split_names: Sequence[str],
    dataset_card: str | Callable[[dict[str, Any]], str] | None = None,
    require_complete: bool = True,
    features: Features = COUNTERFACTUAL_FEATURES,
    verify: bool = True,
    refine: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Makes ``output_dir`` loadable with ``datasets.load_dataset(output_dir)`` and writes its stats.

    Run it once (on one process) after every process's :meth:`ShardedRecordWriter.run` returned.
    Writes ``README.md`` (``dataset_card``'s text, or ``dataset_card(stats)`` when it is a function of
    the merged stats; its YAML front matter kept, with a ``configs:``
    block mapping each split to ``data/{split}-r*.parquet`` and a ``dataset_info`` block with the
    features, the records per split and the Parquet bytes) and ``generation_stats.json`` (per
    split: records, skips by reason, counterfactuals by edit kind and source, per-item counters,
    merged over ranks).

    Nothing is published unless every shard the ``configs:`` glob would serve is one that a
    progress file commits and that is whole: with ``verify`` (the default) each shard is read back
    in full once (:func:`verify_shard`: page checksums, row count against its entry), so a shard
    damaged after it was written is refused, not served; ``verify=False`` skips that read (only
    the files' presence is checked).

    ``refine`` (``{split: settings}``) runs the text-plausibility adversarial refinement over every
    shard of each split named (:func:`~hf_counterfactual.generation.plausibility_stage.refine_split`;
    settings ``num_bins``, ``seed``, ``scorers``, ``min_counterfactuals``): the ``default``
    configuration then serves ``refined/{split}-{digest}/``, written whole or not at all (and reused
    by a rerun), the stats count what it holds and keep the counts kept and dropped per edit kind
    under ``plausibility_refinement``; the raw shards stay in ``data/`` as the ``unrefined``
    configuration. Refined folders the README no longer names are removed after it is written.

    Raises:
        RuntimeError: a split has a missing or unfinished process (unless ``require_complete=False``)
            or no records at all; a committed shard is missing or damaged (rerun the writer: it
            regenerates such shards); a shard file that no progress file commits would be published.
    """
    import yaml
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    output_dir = Path(output_dir)
    all_stats: dict[str, Any] = {}
    data_files, raw_files, refined = [], [], {}
    splits = SplitDict()
    for split in split_names:
        paths = sorted((output_dir / PROGRESS_DIR).glob(f"{split}-r*.json"))
        progresses = [json.loads(p.read_text()) for p in paths]
        progresses = [p for p in progresses if p.get("split") == split]
        if not progresses:
            raise RuntimeError(f"no progress files for split {split!r} in {output_dir / PROGRESS_DIR}")
        world_size = progresses[0]["world_size"]
        ranks = sorted(p["rank"] for p in progresses)
        unfinished = [p["rank"] for p in progresses if not p["complete"]]
        if require_complete and (ranks != list(range(world_size)) or unfinished):
            raise RuntimeError(
                f"split {split!r}: ranks {ranks} of world_size {world_size} have progress files, "
                f"unfinished: {unfinished}; run every rank to completion first"
            )
        total = WriterStats()
        for p in progresses:
            total.update(progress_stats(p))
        if total.num_shards == 0:
            raise RuntimeError(f"split {split!r} has no records: datasets cannot load an empty split")
        problems = []
        committed = {}
        for p in progresses:
            for entry in p["shards"]:
                if entry["file"] is not None:
                    committed[entry["file"]] = entry
        for name, entry in sorted(committed.items()):
            path = output_dir / "data" / name
            why = verify_shard(path, entry) if verify else (None if path.is_file() else "missing")
            if why is not None:
                problems.append(f"data/{name} is {why}")
        for path in sorted((output_dir / "data").glob(f"{split}-r*.parquet")):
            if path.name not in committed:
                problems.append(f"data/{path.name} is committed by no progress file")
        if problems:
            raise RuntimeError(
                f"split {split!r}: not publishing damaged or unknown shards: {'; '.join(problems)}; "
                "rerun the writer on every rank (it removes and regenerates such shards), then finalize again"
            )
        all_stats[split] = {"world_size": world_size, **total.to_dict()}
        raw_files.append({"split": split, "path": f"data/{split}-r*.parquet"})
        num_bytes = sum(path.stat().st_size for path in (output_dir / "data").glob(f"{split}-r*.parquet"))
        num_records = total.num_records
        if refine and split in refine:
            from .plausibility_stage import refine_split

            files = [e["file"] for p in sorted(progresses, key=lambda p: p["rank"]) for e in p["shards"] if e["file"] is not None]
            summary = refine_split(output_dir, split, files, refine[split], features)
            if summary["num_records"] == 0:
                raise RuntimeError(f"split {split!r}: the plausibility refinement kept no record")
            all_stats[split].update(
                num_records=summary["num_records"], num_shards=summary["num_shards"], edits=summary["edits"], sources=summary["sources"],
                plausibility_refinement={k: summary[k] for k in ("path", "settings", "kinds", "records_dropped", "unscored")}
                | {"num_records_before": total.num_records},
            )
            refined[split] = summary["path"]
            data_files.append({"split": split, "path": f"{summary['path']}/{split}-r*.parquet"})
            num_bytes, num_records = summary["num_bytes"], summary["num_records"]
        else:
            data_files.append({"split": split, "path": f"data/{split}-r*.parquet"})
        splits[split] = SplitInfo(name=split, num_bytes=num_bytes, num_examples=num_records)

    if callable(dataset_card):
        dataset_card = dataset_card(all_stats)
    header, body = _split_front_matter(dataset_card or "")
    configs = [c for c in header.get("configs", []) if c.get("config_name") not in ("default", "unrefined")]
    header["configs"] = [{"config_name": "default", "data_files": data_files, "default": True}, *configs]
    if refined:  # the shards as generated, before the refinement
        header["configs"].append({"config_name": "unrefined", "data_files": raw_files})
    # dataset_info is what push_to_hub writes; here it also keys datasets' cache. datasets caches a
    # local folder by its name and README metadata, not by its files: without the sizes, two
    # generated folders of the same name (a rerun into a new place) would share one stale cache.
    size = sum(info.num_bytes for info in splits.values())
    info = DatasetInfo(features=features, splits=splits, download_size=size, dataset_size=size, config_name="default")
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    header["dataset_info"] = card_data.to_dict()["dataset_info"]
    if not body.strip():
        lines = ["# Counterfactual records", "", "Generated with hf-counterfactual.", ""]
        for split, s in all_stats.items():
            lines.append(f"- {split}: {s['num_records']} records, {s['num_skipped']} skipped inputs")
        body = "\n".join(lines) + "\n"
    readme = "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body
    _atomic_write_bytes(output_dir / "README.md", readme.encode())
    _atomic_write_bytes(output_dir / STATS_FILE, (json.dumps(all_stats, indent=2) + "\n").encode())
    if refine is not None or (output_dir / "refined").is_dir():
        from .plausibility_stage import remove_stale_refinements

        for split in split_names:
            remove_stale_refinements(output_dir, split, refined[split].split("/")[-1] if split in refined else None)
    return all_stats
