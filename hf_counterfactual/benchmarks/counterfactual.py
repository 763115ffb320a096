"""Benchmarks from this library's own data: counterfactual records, and rows in the Winoground schema."""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence
from typing import Any

from ..collator import load_image
from ..features import COUNTERFACTUAL_FEATURES, InvalidRecordError, defer_image_decoding
from .core import MatchingBenchmark, MatchingExample, dataset_image_key

_DIAGONAL = ((True, False), (False, True))
_BLOCK_ROWS = 32  # rows a Dataset is read by at a time: one slice of 32 costs about what 4 single-row reads do


def _row_reader(records: Sequence[Mapping[str, Any]]):
    """``records[row]``, for rows read mostly in order. A ``datasets.Dataset`` without a format is
    read :data:`_BLOCK_ROWS` rows at a time (a row read costs ~0.1 ms of ``datasets`` overhead, a
    slice of 32 about 0.4 ms), the last two blocks kept, as many rows as a 64-row LRU held before."""
    import datasets

    if not isinstance(records, datasets.Dataset) or records.format.get("type") is not None:
        return functools.lru_cache(maxsize=64)(records.__getitem__)

    @functools.lru_cache(maxsize=2)
    def read_block(block: int) -> list[dict]:
        columns = records[block * _BLOCK_ROWS : (block + 1) * _BLOCK_ROWS]
        names = list(columns)
        return [dict(zip(names, values)) for values in zip(*columns.values())]

    return lambda row: read_block(row // _BLOCK_ROWS)[row % _BLOCK_ROWS]


def _check_record(record: Any, row: int) -> None:
    """The fields :func:`counterfactual_records_benchmark` reads, or an InvalidRecordError naming row and field."""

    def fail(field: str, problem: str) -> None:
        raise InvalidRecordError(f"row {row}, field {field!r}: {problem}")

    if not isinstance(record, Mapping):
        raise InvalidRecordError(f"row {row}: expected a record (a mapping with {list(COUNTERFACTUAL_FEATURES)}), got {type(record).__name__}")
    for field in ("image", "caption"):
        if record.get(field) is None:
            fail(field, "missing")
    if not isinstance(record["caption"], str) or not record["caption"].strip():
        fail("caption", f"expected a non-empty string, got {record['caption']!r}")
    counterfactuals = record.get("counterfactuals") or []
    if isinstance(counterfactuals, (str, bytes, Mapping)) or not isinstance(counterfactuals, Sequence):
        fail("counterfactuals", f"expected a list, got {type(counterfactuals).__name__}")
    for j, cf in enumerate(counterfactuals):
        if not isinstance(cf, Mapping):
            fail(f"counterfactuals[{j}]", f"expected a mapping with 'caption', 'image', 'edit', got {type(cf).__name__}")
        for field in ("caption", "edit"):
            if not isinstance(cf.get(field), str) or not cf[field].strip():
                fail(f"counterfactuals[{j}].{field}", f"expected a non-empty string, got {cf.get(field)!r}")


def counterfactual_records_benchmark(records: Sequence[Mapping[str, Any]], name: str = "counterfactual") -> MatchingBenchmark:
    """One Winoground-style example per counterfactual that has an image: (factual image, factual
    caption) vs (edited image, edited caption), subset = the edit kind. Text-only counterfactuals
    are left out (they make no 2 x 2 group). ``records`` is a list or a ``datasets.Dataset`` of
    :data:`~hf_counterfactual.features.COUNTERFACTUAL_FEATURES` rows (the embedded test split,
    ``load_dataset("org/cf-coco", split="test")``).

    A Dataset's images are decoded here, one at a time, not by ``datasets`` when a row is read
    (:func:`~hf_counterfactual.features.defer_image_decoding`), so an unreadable image is an error
    naming the record and field (``record 3, field 'counterfactuals[1].image'``). A record without
    a field read here (``image``, ``caption``, ``counterfactuals[j].caption`` / ``.edit``), or with
    one of the wrong type, is an :class:`~hf_counterfactual.features.InvalidRecordError` naming the
    row and field.
    """
    records = defer_image_decoding(records)
    examples = []
    # Rows are read in order, here and by a scorer (a record's image, then its edits): one read of a
    # row serves them all.
    read_row = _row_reader(records)
    for r in range(len(records)):
        record = read_row(r)
        _check_record(record, r)
        for j, cf in enumerate(record.get("counterfactuals") or []):
            if cf.get("image") is None:
                continue
            examples.append(
                MatchingExample(
                    id=f"{r}-{j}",
                    images=((r, None), (r, j)),
                    texts=(record["caption"], cf["caption"]),
                    truth=_DIAGONAL,
                    subset=cf["edit"],
                )
            )

    def load(ref) -> Any:
        row, j = ref
        record = read_row(row)
        if j is None:
            return load_image(record["image"], f"record {row}, field 'image'")
        return load_image(record["counterfactuals"][j]["image"], f"record {row}, field 'counterfactuals[{j}].image'")

    def stored(ref) -> Any:  # undecoded, for the fast image path's draft decode (load names a bad image)
        row, j = ref
        record = read_row(row)
        return record["image"] if j is None else record["counterfactuals"][j]["image"]

    return MatchingBenchmark(name=name, examples=examples, load_image=load, load_stored=stored, image_key=dataset_image_key(records))


WINOGROUND_IMAGE_COLUMNS = ("image_0", "image_1")
WINOGROUND_CAPTION_COLUMNS = ("caption_0", "caption_1")


def winoground_benchmark(rows: Sequence[Mapping[str, Any]], name: str = "winoground", subset_column: str | None = "tag") -> MatchingBenchmark:
    """Rows in the Winoground Hub schema (``id``, ``image_0``, ``image_1``, ``caption_0``,
    ``caption_1``, ``tag``, ...): Winoground itself (gated on the Hub: accept its terms, then
    ``load_dataset("facebook/winoground", split="test")``) or this library's procedural
    ``winoground`` config. Subsets follow ``subset_column`` (``tag``: object / relation / both;
    ``None``: no subsets).

    ``rows`` is a list of mappings or a ``datasets.Dataset``; a Dataset's ``image_0`` / ``image_1``
    are decoded here, one at a time, not by ``datasets`` when a row is read, so an unreadable image
    is an error naming the row, its ``id`` and the column.

    Raises:
        ValueError: a row (or a Dataset) without one of ``image_0``, ``image_1``, ``caption_0``,
            ``caption_1`` and ``subset_column``, or with a caption that is not a non-empty string,
            naming the row, its ``id``, the field and the expected columns; at load time, an
            unreadable image (an :class:`~hf_counterfactual.features.InvalidRecordError`).
    """
    required = [*WINOGROUND_IMAGE_COLUMNS, *WINOGROUND_CAPTION_COLUMNS, *([subset_column] if subset_column else [])]
    expected = f"the Winoground schema has {required}" + ("" if "id" in required else " and optionally 'id'")
    column_names = getattr(rows, "column_names", None)
    if isinstance(column_names, list):  # a Dataset: say it once, for the whole table
        absent = [column for column in required if column not in column_names]
        if absent:
            raise ValueError(f"{name}: the rows have no column(s) {absent}; {expected}, these rows have {column_names}")
    rows = defer_image_decoding(rows, columns=WINOGROUND_IMAGE_COLUMNS)
    examples, where = [], []
    for r in range(len(rows)):
        row = rows[r]
        if not isinstance(row, Mapping):
            raise ValueError(f"row {r}: expected a mapping ({expected}), got {type(row).__name__}")
        here = f"row {r}" + (f" (id {row['id']!r})" if row.get("id") is not None else "")
        where.append(here)
        for column in required:
            if row.get(column) is None:
                raise ValueError(f"{here}: missing {column!r} ({expected}; this row has {sorted(map(str, row))})")
        for column in WINOGROUND_CAPTION_COLUMNS:
            if not isinstance(row[column], str) or not row[column].strip():
                raise ValueError(f"{here}: {column!r} must be a non-empty string, got {row[column]!r}")
        examples.append(
            MatchingExample(
                id=str(row.get("id", r)),
                images=((r, 0), (r, 1)),
                texts=(row["caption_0"], row["caption_1"]),
                truth=_DIAGONAL,
                subset=str(row[subset_column]) if subset_column else "",
            )
        )

    def load(ref) -> Any:
        row, k = ref
        return load_image(rows[row][f"image_{k}"], f"{where[row]}, field 'image_{k}'")

    def stored(ref) -> Any:
        row, k = ref
        return rows[row][f"image_{k}"]

    return MatchingBenchmark(name=name, examples=examples, load_image=load, load_stored=stored, image_key=dataset_image_key(rows))
