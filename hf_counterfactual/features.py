"""The counterfactual record: the one schema every part of hf-counterfactual reads and writes.

A record is a factual image-caption pair plus a list of counterfactuals, each a minimal edit
of the caption (and optionally of the image) that is *false* of the factual image::

    image           Image         the factual image
    caption         string        the factual caption (true of ``image``)
    paraphrases     List[string]  other true captions of ``image`` (may be empty)
    counterfactuals List of
        caption     string        edited caption, false of ``image``
        image       Image | None  edited image of which the edited caption is true (None: text-only negative)
        edit        string        attribute | object | relation | position | count | order | negation | ...
        source      string        rule | llm | flip | inpaint | box-inpaint | procedural | ...
        score       float | None  filter score, kept for audit
        plausibility_gap  {ngram, causal_lm, classifier: float | None} | None
                                  blind text scorers' score(caption) - score(edited caption), kept
                                  for audit (positive: a text-only model prefers the true caption;
                                  None: not scored; see hf_counterfactual.generation.plausibility_stage)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
from datasets import Features, Image, LargeList, List, Value
from datasets.fingerprint import Hasher

#: Edit kinds produced by the generators in this package. Other strings are allowed in data
#: (the schema is open), but these are the ones the evaluation breaks results down by.
EDIT_KINDS = ("attribute", "object", "relation", "position", "count", "order", "negation")

#: One counterfactual's blind plausibility gaps, one per text scorer (None: not run).
PLAUSIBILITY_GAP_FEATURES = {"ngram": Value("float32"), "causal_lm": Value("float32"), "classifier": Value("float32")}

COUNTERFACTUAL_FEATURES = Features(
    {
        "image": Image(),
        "caption": Value("string"),
        "paraphrases": List(Value("string")),
        "counterfactuals": List(
            {
                "caption": Value("string"),
                "image": Image(),
                "edit": Value("string"),
                "source": Value("string"),
                "score": Value("float32"),
                "plausibility_gap": PLAUSIBILITY_GAP_FEATURES,
            }
        ),
    }
)


#: The columns of :data:`COUNTERFACTUAL_FEATURES` that hold images (``image``, and ``image`` inside
#: ``counterfactuals``): the ones :func:`defer_image_decoding` leaves undecoded by default.
IMAGE_COLUMNS = ("image", "counterfactuals")


def _undecoded(feature):
    """``feature`` with every decoding :class:`datasets.Image` in it (nested in dicts and lists too)
    replaced by the same image feature with ``decode=False``; the Arrow storage type is unchanged."""
    if isinstance(feature, Image):
        return dataclasses.replace(feature, decode=False) if feature.decode else feature
    if isinstance(feature, dict):
        return type(feature)({name: _undecoded(value) for name, value in feature.items()})
    if isinstance(feature, list):
        return [_undecoded(value) for value in feature]
    if isinstance(feature, (List, LargeList)):
        return dataclasses.replace(feature, feature=_undecoded(feature.feature))
    return feature


def defer_image_decoding(dataset, columns: Iterable[str] | None = None):
    """``dataset`` with its image columns cast to ``datasets.Image(decode=False)``, so that its rows
    hold ``{"bytes", "path"}`` dicts and the images are decoded by whoever reads the row.

    Meant for the training and evaluation datasets handed to
    :class:`~hf_counterfactual.collator.CounterfactualCollator` (the training command calls it on
    its train and eval datasets): ``datasets`` decodes an ``Image()`` column while the row is
    indexed, so a corrupt image fails inside ``datasets`` with an error that names no row. The
    collator decodes undecoded images itself, exactly as ``datasets`` would (the same
    ``Image.decode_example``, then the collator's usual RGB conversion), and a corrupt one is an
    error naming the batch item and the field (``image``, ``counterfactuals[2].image``).

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` (or a ``DatasetDict`` /
            ``IterableDatasetDict``: every split), or anything else, returned as it is (a list of
            records holds what it holds).
        columns: the columns to defer; by default :data:`IMAGE_COLUMNS`, the image columns of the
            record schema (``image`` and ``counterfactuals[].image``). Columns the dataset lacks
            are skipped.

    Only the schema changes: the Arrow data (memory-mapped cache files included) is shared, not
    rewritten, and the format (``set_format`` / ``set_transform``) is kept. An ``Image(mode=...)``
    feature's mode conversion is not applied to deferred images (the collator converts to RGB anyway).
    """
    columns = IMAGE_COLUMNS if columns is None else tuple(columns)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)({split: defer_image_decoding(part, columns) for split, part in dataset.items()})
    features = getattr(dataset, "features", None)
    if not isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)) or features is None:
        return dataset
    deferred = Features({name: _undecoded(feature) if name in columns else feature for name, feature in features.items()})
    if deferred == features:
        return dataset
    if isinstance(dataset, datasets.IterableDataset):
        return dataset.cast(deferred)  # only the schema of the rows yet to be read
    # Dataset.cast would rewrite every row through a map (a copy of every image); the storage type
    # of Image(decode=False) is that of Image(), so the same table with the new schema suffices.
    info = dataset.info.copy()
    info.features = deferred
    fingerprint = Hasher.hash([getattr(dataset, "_fingerprint", None), "defer_image_decoding", sorted(columns)])
    undecoded = datasets.Dataset(
        dataset.data, info=info, split=dataset.split, indices_table=getattr(dataset, "_indices", None), fingerprint=fingerprint
    )
    return undecoded.with_format(**dataset.format)


def normalize_caption(text: str) -> str:
    """``text`` as captions are compared: casefolded, whitespace collapsed to single spaces, stripped.

    Text encoders see "A dog" and "a  dog" as the same caption (CLIP's tokenizer lowercases and
    splits on whitespace), so a counterfactual or a duplicate is decided on this form, never on the
    raw string. A tokenizer may merge still more (punctuation): the collator also merges texts with
    equal token ids.
    """
    return " ".join(text.casefold().split())


class InvalidRecordError(ValueError):
    """A record does not follow the counterfactual schema. The message names the row and field."""


def _is_image(value: Any) -> bool:
    # Decoded (PIL) or undecoded ({"bytes", "path"}) datasets images are both fine here.
    if hasattr(value, "size") and hasattr(value, "mode"):
        return True
    return isinstance(value, Mapping) and (value.get("bytes") is not None or value.get("path") is not None)


def validate_record(record: Mapping[str, Any], row: int | str | None = None, *, min_counterfactuals: int = 0) -> None:
    """Checks one record against the schema and raises :class:`InvalidRecordError` naming the row and field.

    A counterfactual caption equal to the caption or a paraphrase under :func:`normalize_caption`
    (case and whitespace ignored) is an error: the model would see it as a negative of itself.

    Args:
        record: a mapping with the fields of :data:`COUNTERFACTUAL_FEATURES`.
        row: index (or id) of the record, used in the error message.
        min_counterfactuals: the least number of counterfactuals the record must carry (e.g. ``K``
            of the CF-VLM objective).
    """
    where = f"row {row}" if row is not None else "record"

    def fail(field: str, problem: str) -> None:
        raise InvalidRecordError(f"{where}, field {field!r}: {problem}")

    if not isinstance(record, Mapping):
        raise InvalidRecordError(f"{where}: expected a record (a mapping with {list(COUNTERFACTUAL_FEATURES)}), got {type(record).__name__}")
    for name in ("paraphrases", "counterfactuals"):
        # A string is iterable too: it would be read one character at a time.
        if record.get(name) is not None and (isinstance(record[name], (str, bytes, Mapping)) or not isinstance(record[name], Sequence)):
            fail(name, f"expected a list, got {type(record[name]).__name__}")
    missing = [name for name in ("image", "caption") if name not in record]
    if missing:
        fail(missing[0], "missing")
    if not _is_image(record["image"]):
        fail("image", f"expected an image, got {type(record['image']).__name__}")
    caption = record["caption"]
    if not isinstance(caption, str) or not caption.strip():
        fail("caption", f"expected a non-empty string, got {caption!r}")
    for i, paraphrase in enumerate(record.get("paraphrases") or []):
        if not isinstance(paraphrase, str) or not paraphrase.strip():
            fail(f"paraphrases[{i}]", f"expected a non-empty string, got {paraphrase!r}")
    counterfactuals = record.get("counterfactuals") or []
    if len(counterfactuals) < min_counterfactuals:
        fail(
            "counterfactuals",
            f"has {len(counterfactuals)} counterfactual(s), at least {min_counterfactuals} are required",
        )
    true_captions = {normalize_caption(c) for c in (caption, *(record.get("paraphrases") or []))}
    for i, cf in enumerate(counterfactuals):
        if not isinstance(cf, Mapping):
            fail(f"counterfactuals[{i}]", f"expected a mapping with 'caption', 'image', 'edit', 'source', 'score', got {type(cf).__name__}")
        cf_caption = cf.get("caption")
        if not isinstance(cf_caption, str) or not cf_caption.strip():
            fail(f"counterfactuals[{i}].caption", f"expected a non-empty string, got {cf_caption!r}")
        if normalize_caption(cf_caption) in true_captions:
            fail(
                f"counterfactuals[{i}].caption",
                f"{cf_caption!r} is also a true caption (the caption or a paraphrase, up to case and whitespace)",
            )
        if cf.get("image") is not None and not _is_image(cf["image"]):
            fail(f"counterfactuals[{i}].image", f"expected an image or None, got {type(cf['image']).__name__}")
        for name in ("edit", "source"):
            if not isinstance(cf.get(name), str) or not cf[name]:
                fail(f"counterfactuals[{i}].{name}", f"expected a non-empty string, got {cf.get(name)!r}")
        gap = cf.get("plausibility_gap")
        if gap is not None:
            if not isinstance(gap, Mapping) or set(gap) - set(PLAUSIBILITY_GAP_FEATURES):
                fail(f"counterfactuals[{i}].plausibility_gap", f"expected None or a mapping with keys from {sorted(PLAUSIBILITY_GAP_FEATURES)}, got {gap!r}")
            for name, value in gap.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value != value):
                    fail(f"counterfactuals[{i}].plausibility_gap.{name}", f"expected a number or None, got {value!r}")
