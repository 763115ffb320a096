"""Reading the commands' datasets: one way for ``train`` and ``evaluate``, with errors that say what
is there instead of a bare ``KeyError``."""

from __future__ import annotations

import os

import datasets

from ..features import InvalidRecordError, validate_record
from .arguments import UsageError

FILE_FORMATS = {"parquet": "parquet", "json": "json", "jsonl": "json", "csv": "csv"}


def load_dataset_dict(source: str, flag: str, config_name: str | None = None, cache_dir: str | None = None) -> datasets.DatasetDict:
    """``source`` as a ``DatasetDict``: a ``save_to_disk`` folder, one Parquet / JSON / CSV file (split
    ``train``), or anything ``load_dataset`` reads (a Hub id, a folder of Parquet shards with a README
    ``configs:`` block such as ``hf-cf generate`` writes). A source that cannot be read is a
    :class:`UsageError` naming ``flag``."""
    try:
        if os.path.isfile(os.path.join(source, "dataset_dict.json")) or os.path.isfile(os.path.join(source, "state.json")):
            data = datasets.load_from_disk(source)
            return data if isinstance(data, datasets.DatasetDict) else datasets.DatasetDict({"train": data})
        extension = os.path.splitext(source)[1].lstrip(".")
        if os.path.isfile(source) and extension in FILE_FORMATS:
            return datasets.load_dataset(FILE_FORMATS[extension], data_files={"train": source}, cache_dir=cache_dir)
        return datasets.load_dataset(source, config_name, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, ValueError) as err:  # DatasetNotFoundError is a FileNotFoundError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{flag} {source}: cannot be loaded ({reason})") from None


def is_single_split(source: str) -> bool:
    """``source`` holds one table, no split names: a file, or a ``save_to_disk`` of one ``Dataset``."""
    return os.path.isfile(source) or os.path.isfile(os.path.join(source, "state.json"))


def load_split(
    source: str, split: str, flag: str, cache_dir: str | None = None, records: bool = False, config_name: str | None = None
) -> datasets.Dataset:
    """Split ``split`` of ``source``, read by :func:`load_dataset_dict` (a single-table source is that
    table, whatever ``split`` says); with ``records`` its first rows are checked as records."""
    raw = load_dataset_dict(source, flag, config_name, cache_dir)
    name = next(iter(raw)) if is_single_split(source) else split
    return select_split(raw, name, f"{flag} {source}: split", records=records)


def select_split(raw: datasets.DatasetDict, name: str, flag: str, records: bool = True) -> datasets.Dataset:
    """Split ``name`` of ``raw``; with ``records`` its first rows are checked against the record
    schema. A missing split, or a dataset of other columns (``image, text``), is a :class:`UsageError`
    that says what is there instead."""
    if name not in raw:
        raise UsageError(f"{flag} {name!r}: the dataset has no such split; its splits are {sorted(raw)}")
    split = raw[name]
    if records:
        for row in range(min(len(split), 8)):
            try:
                validate_record(split[row], row=row)
            except InvalidRecordError as err:
                raise UsageError(f"split {name!r} is not a dataset of counterfactual records (columns {split.column_names}): {err}") from None
    return split
