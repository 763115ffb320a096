"""The text-plausibility stage of generation, and the adversarial refinement run when a split is finalised.

A negative caption that a text-only model can tell from the true one teaches a vision-language model
a text prior, not the image (SugarCrepe, Hsieh et al. 2023; the scorers and the refinement are in
:mod:`.plausibility`). This stage puts the blind scorers into the pipeline:

- **scoring** (:class:`PlausibilityStage`, a stage of
  :class:`~hf_counterfactual.generation.pipeline.CounterfactualGenerator`, batched over a batch's
  captions): every counterfactual caption and its factual caption are scored by

  - ``ngram`` (default): a Kneser-Ney n-gram LM fitted on the input dataset's own captions,
    cross-fitted by image (:class:`CrossFitNgram`: the items are dealt into folds by a seeded
    permutation of their indices, and an item's captions are scored by the LM fitted on the other
    folds, so no caption is scored by an LM that saw it);
  - ``causal_lm`` (optional): any ``transformers`` causal LM (:class:`~.plausibility.CausalLMScorer`);
  - ``classifier`` (optional): a grammaticality classifier
    (:class:`~.plausibility.SequenceClassifierScorer`).

  Scores of the ``transformers`` scorers are cached on disk like the LLM stages' generations
  (:class:`CachedScores`: JSON lines keyed by model name and caption hash), so a rerun or a
  resume runs no model on captions it has scored. The gap ``score(caption) - score(negative)`` of
  each scorer is kept on the counterfactual as ``plausibility_gap`` (``{"ngram", "causal_lm",
  "classifier"}``, ``None`` for a scorer not run; see :data:`~hf_counterfactual.features.COUNTERFACTUAL_FEATURES`).
  Positive: the blind scorer prefers the true caption.

- **filter** (``threshold``, per edit kind): a negative whose gap on the *primary* scorer (the first
  one run, in the order above) exceeds the threshold is dropped before the record is assembled;
  counted per kind as ``plausibility/filter/<kind>/kept|dropped``.

- **adversarial refinement** (:func:`refine_split`, called by
  :func:`~hf_counterfactual.generation.writer.finalize`): balancing is global per edit kind, so it
  runs once over every shard of a split, after all processes finished. It reads the gaps of all
  committed shards (in input order), keeps the set :func:`~.plausibility.adversarial_refine` picks
  (jointly over the scorers run; the n-gram gaps balanced around their reliability-corrected centre,
  :func:`~.plausibility.reliability_center`, unless ``center="zero"``) and writes the split again without the dropped negatives (and
  without the records left with fewer than ``min_counterfactuals``) into
  ``refined/{split}-{digest}/``; the raw shards in ``data/`` are never changed (resume works as
  before, and they stay loadable as the ``unrefined`` configuration). ``digest`` hashes the
  settings and the raw shards (names, sizes, modification times): the folder is built under a
  temporary name and renamed into place when whole, so a failure leaves nothing half-written, and a
  rerun of finalisation with the same shards and settings finds it and reuses it (idempotent).
  Counterfactuals without gaps (made before the stage was on) are kept as they are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .llm import append_json_lines, load_json_lines, model_name_of, prompt_hash
from .plausibility import CrossFitNgram, adversarial_refine, reliability_center

logger = logging.getLogger(__name__)

__all__ = ["REFINE_CENTERS", "SCORERS", "CachedScores", "CrossFitNgram", "PlausibilityStage", "item_captions", "parse_threshold", "refine_split"]

#: The blind scorers, in the order of ``plausibility_gap``'s fields (and of primacy for the filter).
SCORERS = ("ngram", "causal_lm", "classifier")
REFINED_DIR = "refined"
#: Where :func:`refine_split` centres the balance of the n-gram gaps (see its docstring).
REFINE_CENTERS = ("reliability", "zero")
_MARKER = "refinement.json"


def item_captions(items) -> list[list[str]]:
    """The true captions of each input item, without reading images: ``items.all_captions()`` when
    the sequence has it (:class:`~.inputs.DatasetItems`), else each item's ``captions``."""
    if hasattr(items, "all_captions"):
        return items.all_captions()
    return [[c for c in (item.captions or []) if isinstance(c, str) and c.strip()] for item in items]


class CachedScores:
    """A ``transformers`` blind scorer (``score(captions) -> array``) with its scores cached on disk:
    ``cache_dir/plausibility_scores.jsonl``, one JSON line ``{"model", "caption_hash", "score"}``
    per caption scored, appended batch by batch, so a rerun scores only captions it never saw. Torn lines (a kill while
    writing) are handled as the LLM stages' caches handle them (:func:`~.llm.load_json_lines`,
    :func:`~.llm.append_json_lines`). ``cache_dir=None``: memory only."""

    CACHE_FILE = "plausibility_scores.jsonl"

    def __init__(self, scorer, model_name: str | None = None, cache_dir: str | os.PathLike | None = None):
        self.scorer = scorer
        self.model_name = model_name or model_name_of(getattr(scorer, "model", None))
        self.cache_path = os.path.join(os.fspath(cache_dir), self.CACHE_FILE) if cache_dir is not None else None
        self._cache: dict[tuple[str, str], float] = {}
        self.stats: Counter = Counter()
        if self.cache_path and os.path.exists(self.cache_path):
            self._cache.update(load_json_lines(self.cache_path, self._parse, "plausibility score cache"))

    @staticmethod
    def _parse(line: str) -> tuple[tuple[str, str], float] | None:
        """The (key, score) of one cache line, or ``None`` when it is not a whole entry."""
        try:
            entry = json.loads(line)
            return (entry["model"], entry["caption_hash"]), float(entry["score"])
        except (ValueError, KeyError, TypeError):
            return None

    def score(self, captions: Sequence[str]) -> np.ndarray:
        keys = [(self.model_name, prompt_hash(c)) for c in captions]
        missing = list(dict.fromkeys(c for c, k in zip(captions, keys) if k not in self._cache))
        self.stats["cached"] += len(captions) - len(missing)
        if missing:
            scores = np.asarray(self.scorer.score(missing), dtype=np.float64)
            self.stats["scored"] += len(missing)
            entries = []
            for caption, value in zip(missing, scores.tolist()):
                key = (self.model_name, prompt_hash(caption))
                self._cache[key] = value
                entries.append({"model": key[0], "caption_hash": key[1], "score": value})
            if self.cache_path:
                append_json_lines(self.cache_path, entries, self._parse, "plausibility score cache")
        return np.asarray([self._cache[k] for k in keys], dtype=np.float64)


def parse_threshold(value) -> float | dict[str, float] | None:
    """A filter threshold as the command line gives it: ``None``/``""`` (no filter), a number (every
    kind), or ``kind=number,...`` (the kinds named; others are not filtered)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    text = str(value).strip()
    if "=" not in text:
        return float(text)
    out = {}
    for part in text.split(","):
        kind, _, number = part.partition("=")
        if not kind.strip() or not number.strip():
            raise ValueError(f"plausibility threshold {value!r}: expected a number or kind=number,...")
        out[kind.strip()] = float(number)
    return out


class PlausibilityStage:
    """Scores counterfactual captions with blind text scorers, keeps the gaps on them and filters.

    Args:
        ngram: a :class:`CrossFitNgram` (fitted here by :meth:`fit` on the input's captions), or
            None for no n-gram scorer.
        causal_lm: a scorer with ``score(captions)`` (:class:`~.plausibility.CausalLMScorer`,
            ideally wrapped in :class:`CachedScores`), or None.
        classifier: likewise (:class:`~.plausibility.SequenceClassifierScorer`), or None.
        threshold: the filter: None (keep all), a number (every kind) or ``{kind: number}``; a
            negative whose primary gap (the first scorer run, in :data:`SCORERS` order) exceeds it
            is dropped.
    """

    def __init__(self, ngram: CrossFitNgram | None = None, causal_lm=None, classifier=None, threshold=None):
        self.scorers = {name: s for name, s in zip(SCORERS, (ngram, causal_lm, classifier)) if s is not None}
        if not self.scorers:
            raise ValueError("PlausibilityStage needs at least one scorer (ngram, causal_lm or classifier)")
        self.threshold = parse_threshold(threshold)
        self.primary = next(iter(self.scorers))

    @property
    def names(self) -> tuple[str, ...]:
        """The scorers run, in :data:`SCORERS` order."""
        return tuple(self.scorers)

    def fit(self, items) -> "PlausibilityStage":
        """Fits the n-gram LMs on the true captions of every input item (all of them, not one
        process's block: the folds must be the same everywhere)."""
        if "ngram" in self.scorers:
            self.scorers["ngram"].fit(item_captions(items))
        return self

    def _threshold(self, kind: str) -> float | None:
        if isinstance(self.threshold, dict):
            return self.threshold.get(kind)
        return self.threshold

    def apply(self, indices: Sequence[int], captions: Sequence[str], candidates: Sequence[list[dict]], counts: Sequence[Counter]) -> list[list[dict]]:
        """Gaps for every candidate counterfactual of a batch (item ``indices[k]``, factual caption
        ``captions[k]``, its candidates ``candidates[k]``); returns the candidates the filter keeps,
        each with ``plausibility_gap`` set. One scoring call per scorer for the whole batch."""
        pairs = [(k, j) for k in range(len(candidates)) for j in range(len(candidates[k]))]
        gaps: dict[str, np.ndarray] = {}
        for name, scorer in self.scorers.items():
            if name == "ngram":
                texts = [captions[k] for k in range(len(candidates))] + [candidates[k][j]["caption"] for k, j in pairs]
                owners = [indices[k] for k in range(len(candidates))] + [indices[k] for k, _ in pairs]
                scores = scorer.score(texts, owners) if texts else np.zeros(0)
                true, negative = scores[: len(candidates)], scores[len(candidates):]
            else:
                distinct = list(dict.fromkeys([*captions, *(candidates[k][j]["caption"] for k, j in pairs)]))
                table = dict(zip(distinct, np.asarray(scorer.score(distinct), dtype=np.float64))) if distinct else {}
                true = np.asarray([table[c] for c in captions], dtype=np.float64)
                negative = np.asarray([table[candidates[k][j]["caption"]] for k, j in pairs], dtype=np.float64)
            gaps[name] = np.asarray([true[k] for k, _ in pairs], dtype=np.float64) - negative
        kept: list[list[dict]] = [[] for _ in candidates]
        for p, (k, j) in enumerate(pairs):
            cf = dict(candidates[k][j])
            cf["plausibility_gap"] = {name: (float(gaps[name][p]) if name in gaps else None) for name in SCORERS}
            counts[k]["plausibility/scored"] += 1
            limit = self._threshold(cf["edit"])
            if limit is not None:
                passed = gaps[self.primary][p] <= limit
                counts[k][f"plausibility/filter/{cf['edit']}/{'kept' if passed else 'dropped'}"] += 1
                if not passed:
                    continue
            kept[k].append(cf)
        return kept

    def describe(self) -> dict[str, Any]:
        """What the card says of the stage."""
        return {"scorers": list(self.names), "primary": self.primary, "threshold": self.threshold}


# ---------------------------------------------------------------------------------------------
# Refinement at finalisation


def _gap_columns(table, scorers: Sequence[str]):
    """Per counterfactual of ``table`` (row-major): its record row, edit kind, the gaps of
    ``scorers`` (NaN where absent) and its caption, read from Arrow without touching the images."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column("counterfactuals").combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # an empty table
        column = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], type=column.type)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    flat = column.flatten()
    edits = np.asarray(flat.field("edit").to_pylist(), dtype=object)
    gaps = []
    names = flat.type.names if hasattr(flat.type, "names") else [flat.type.field(i).name for i in range(flat.type.num_fields)]
    for name in scorers:
        if "plausibility_gap" not in names:
            gaps.append(np.full(len(rows), np.nan))
            continue
        values = flat.field("plausibility_gap").field(name)
        gaps.append(pc.fill_null(values.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False))
    return rows, edits, gaps, flat.field("caption").to_pylist()


def _reliability_centers(true, negatives, owners, item_captions_, kinds, gaps, settings) -> tuple[dict, dict]:
    """Per edit kind, :func:`~.plausibility.reliability_center` of the n-gram gaps ``gaps`` (NaN:
    unscored), its reliability estimated from half-data LMs fitted on the records' own true
    captions (``item_captions_[owners[k]]``: caption and paraphrases), cross-fitted as the stage fits."""
    num_folds = max(int(settings["ngram_folds"]), 2)
    if len(item_captions_) < 2 * num_folds:  # below that, some fold has an empty half
        logger.warning("refinement: %d records are too few to estimate the n-gram's reliability; balanced around 0", len(item_captions_))
        return {}, {}
    ngram = CrossFitNgram(order=int(settings["ngram_order"]), num_folds=num_folds, seed=int(settings["seed"])).fit(item_captions_)
    scored = np.flatnonzero(np.isfinite(gaps))
    half_a, half_b = np.full(len(gaps), np.nan), np.full(len(gaps), np.nan)
    if len(scored):
        half_a[scored], half_b[scored] = ngram.half_gaps([true[k] for k in scored], [negatives[k] for k in scored], [owners[k] for k in scored])
    centers, reliability = {}, {}
    for kind in sorted(set(kinds[scored].tolist())):
        rows = scored[kinds[scored] == kind]
        center, rho = reliability_center(gaps[rows], half_a[rows], half_b[rows])
        if rho is None:
            logger.warning("refinement: the n-gram gaps of %d %r pairs carry no reliability estimate (too few, or halves that "
                           "disagree); balanced around 0", len(rows), kind)
        centers[kind], reliability[kind] = center, rho
    return centers, reliability


def refinement_digest(output_dir: str | os.PathLike, files: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The hash naming a refined folder: the settings and the raw shards (name, size, mtime)."""
    data = Path(output_dir) / "data"
    state = [(name, (data / name).stat().st_size, (data / name).stat().st_mtime_ns) for name in files]
    return hashlib.sha256(json.dumps([dict(settings), state], sort_keys=True, default=str).encode()).hexdigest()[:16]


def refine_split(
    output_dir: str | os.PathLike,
    split: str,
    files: Sequence[str],
    settings: Mapping[str, Any],
    features=None,
) -> dict[str, Any]:
    """Adversarial refinement of split ``split`` over all its raw shards ``files`` (names in
    ``data/``, in input order); see the module docstring for the layout and the guarantees.

    ``settings``: ``scorers`` (the gap fields to balance jointly; default those of :data:`SCORERS`
    with any value in the split), ``num_bins``, ``seed``, ``min_counterfactuals``, ``center``
    (``"reliability"``, the default: the n-gram gaps are balanced around
    :func:`~.plausibility.reliability_center`, estimated per kind with half-data LMs of
    ``ngram_order`` cross-fitted over ``ngram_folds`` folds of the records, so that a held-out blind
    model is at chance too; the other scorers around 0. ``"zero"``: SugarCrepe's, every scorer
    around 0). Returns the
    refined split's totals: ``path`` (its folder, relative to ``output_dir``), ``num_records``,
    ``num_shards``, ``num_bytes``, ``edits``, ``sources``, ``kinds`` (per edit kind ``{"pairs",
    "kept", "dropped"}``, and with ``center="reliability"`` the n-gram's ``center`` and
    ``reliability``), ``records_dropped``, ``unscored`` (counterfactuals without gaps, kept).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..features import COUNTERFACTUAL_FEATURES
    from .writer import METADATA_KEY, _fsync_dir, verify_shard

    features = features or COUNTERFACTUAL_FEATURES
    output_dir = Path(output_dir)
    settings = {"scorers": None, "num_bins": 10, "seed": 0, "min_counterfactuals": 1, "center": "reliability",
                "ngram_order": 2, "ngram_folds": 5, **dict(settings)}
    if settings["center"] not in REFINE_CENTERS:
        raise ValueError(f"refinement center {settings['center']!r}: choose from {REFINE_CENTERS}")
    digest = refinement_digest(output_dir, files, settings)
    final = output_dir / REFINED_DIR / f"{split}-{digest}"
    marker = final / _MARKER
    if marker.is_file():
        summary = json.loads(marker.read_text())
        problems = [f"{name}: {why}" for name in summary["files"] if (why := verify_shard(final / name)) is not None]
        if not problems:
            logger.info("split %r: refinement %s is there already; reusing it", split, final.name)
            return summary
        logger.warning("split %r: refined folder %s is damaged (%s); building it again", split, final, "; ".join(problems))
        shutil.rmtree(final)

    # Pass 1: the gaps of every counterfactual of the split, in input order.
    scorers = settings["scorers"]
    tables_meta = []
    all_gaps, all_kinds = [], []
    true, negatives, owners, captions_of_record = [], [], [], []
    for name in files:
        table = pq.read_table(output_dir / "data" / name, columns=["caption", "paraphrases", "counterfactuals"])
        rows, edits, gaps, cf_captions = _gap_columns(table, scorers or SCORERS)
        tables_meta.append((name, rows))
        all_kinds.append(edits)
        all_gaps.append(np.stack(gaps, axis=1) if gaps else np.zeros((len(rows), 0)))
        record_captions = table.column("caption").to_pylist()
        paraphrases = table.column("paraphrases").to_pylist()
        true += [record_captions[r] for r in rows]
        negatives += cf_captions
        owners += (rows + len(captions_of_record)).tolist()
        captions_of_record += [[c, *(p or [])] for c, p in zip(record_captions, paraphrases)]
    kinds = np.concatenate(all_kinds) if all_kinds else np.zeros(0, dtype=object)
    gaps = np.concatenate(all_gaps) if all_gaps else np.zeros((0, len(scorers or SCORERS)))
    names = list(scorers or SCORERS)
    if scorers is None:  # the scorers that were run: those with any gap in the split
        used = [c for c in range(gaps.shape[1]) if np.isfinite(gaps[:, c]).any()]
        gaps, names = gaps[:, used], [names[c] for c in used]
    scored = np.isfinite(gaps).all(axis=1) if gaps.shape[1] else np.zeros(len(kinds), dtype=bool)
    keep = np.ones(len(kinds), dtype=bool)
    members = np.flatnonzero(scored)
    centers, reliability = {}, {}
    if settings["center"] == "reliability" and "ngram" in names and len(members):
        column = names.index("ngram")
        ngram_gaps = np.where(scored, gaps[:, column], np.nan)
        centers, reliability = _reliability_centers(true, negatives, owners, captions_of_record, kinds, ngram_gaps, settings)
    if len(members):
        center = {kind: [c if s == "ngram" else 0.0 for s in names] for kind, c in centers.items()}
        chosen = adversarial_refine([gaps[members, c] for c in range(gaps.shape[1])], kinds[members],
                                    num_bins=int(settings["num_bins"]), seed=int(settings["seed"]), center=center)
        keep[members] = False
        keep[members[chosen]] = True
    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds[members].tolist())):
        of_kind = members[kinds[members] == kind]
        per_kind[kind] = {"pairs": int(len(of_kind)), "kept": int(keep[of_kind].sum()), "dropped": int((~keep[of_kind]).sum())}
        if kind in centers:
            per_kind[kind].update(center=centers[kind], reliability=reliability[kind])

    # Pass 2: write the kept set into a temporary folder, then move it into place whole.
    tmp = output_dir / REFINED_DIR / f".{split}-{digest}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    schema = features.arrow_schema
    offset, written, num_records, records_dropped = 0, [], 0, 0
    edits, sources = Counter(), Counter()
    min_cfs = int(settings["min_counterfactuals"])
    for name, rows in tables_meta:
        n_cf = len(rows)
        mask = keep[offset: offset + n_cf]
        offset += n_cf
        records = pq.read_table(output_dir / "data" / name).to_pylist()
        kept_records = []
        position = 0
        for record in records:
            cfs = record.get("counterfactuals") or []
            chosen = [cf for cf, k in zip(cfs, mask[position: position + len(cfs)]) if k]
            position += len(cfs)
            if len(chosen) < min_cfs:
                records_dropped += 1
                continue
            kept_records.append({**record, "counterfactuals": chosen})
            for cf in chosen:
                edits[cf["edit"]] += 1
                sources[cf["source"]] += 1
        if not kept_records:
            continue
        entry = {"file": name, "num_records": len(kept_records), "refined_from": name, "digest": digest}
        table = pa.Table.from_pylist(kept_records, schema=schema)
        table = table.replace_schema_metadata({**(schema.metadata or {}), METADATA_KEY: json.dumps(entry).encode()})
        with open(tmp / name, "wb") as f:
            pq.write_table(table, f, row_group_size=min(100, max(1, table.num_rows)), write_page_checksum=True)
            f.flush()
            os.fsync(f.fileno())
        written.append(name)
        num_records += len(kept_records)
    summary = {
        "path": f"{REFINED_DIR}/{split}-{digest}",
        "digest": digest,
        "settings": {**settings, "scorers": names},
        "files": written,
        "num_shards": len(written),
        "num_records": num_records,
        "num_bytes": sum((tmp / name).stat().st_size for name in written),
        "records_dropped": records_dropped,
        "unscored": int((~scored).sum()),
        "kinds": per_kind,
        "edits": dict(sorted(edits.items())),
        "sources": dict(sorted(sources.items())),
    }
    with open(tmp / _MARKER, "w") as f:
        json.dump(summary, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)  # final does not exist: the whole folder appears at once
    _fsync_dir(final.parent)
    return summary


def remove_stale_refinements(output_dir: str | os.PathLike, split: str, keep: str | None) -> None:
    """Removes the refined folders of ``split`` other than ``keep`` (a folder name), and leftover
    temporary ones: called once the README points at ``keep``."""
    root = Path(output_dir) / REFINED_DIR
    if not root.is_dir():
        return
    for path in root.iterdir():
        stem = path.name.lstrip(".")
        if stem.startswith(f"{split}-") and path.name != keep and path.is_dir():
            rest = stem[len(split) + 1:].removesuffix(".tmp")
            if len(rest) == 16 and all(c in "0123456789abcdef" for c in rest):
                shutil.rmtree(path)
