"""VALSE (Parcalabescu et al., ACL 2022, "VALSE: A Task-Independent Benchmark for Vision and
Language Models Centered on Linguistic Phenomena"): an image, its caption and a foil that changes
one linguistic phenomenon (existence, plurality, counting, spatial relations, actions,
coreference, FOIL-it nouns).

Data: the foil JSON files of https://github.com/Heidelberg-NLP/VALSE (``data/*.json``; the
repository, as stored where this was checked, has no licence file: check its terms before
redistributing). The images are not part of VALSE: they come from the source datasets named in each
entry's ``dataset`` field (Visual7W, SWiG, VisDial v1.0, COCO val2014 / val2017, ...), each under
its own terms. Nothing is downloaded here: pass the folders you downloaded.

The format was checked against the authors' repository: its README (fields ``dataset``,
``image_file``, ``caption``, ``foil``, ``mturk``; "the valid samples of the dataset are the ones
where ``sample["mturk"]["caption"] >= 2``"), ``unimodal_valse_eval.py`` and
``lxmert_valse_eval.py`` (both skip entries unless ``foil['mturk']['caption'] >= 2``, and compare
``[caption, foil]``), and ``config.py`` (the instrument -> file / image folder table). The
published files carry one foil per entry in ``"foil"`` (a string); the authors' converter of the
original FOIL-it data (``read_foil_dataset``, imported by their scripts) writes ``"foils"``, a list,
and no ``mturk``: both are read here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from numbers import Real

from .core import MatchingBenchmark, MatchingExample
from .files import annotation_files, file_benchmark, join_inside, read_json, require_strings

# file name (without .json, "_" read as "-") -> the VALSE piece it belongs to (the paper's Table 1)
VALSE_PIECES = {
    "existence": "existence",
    "plurals": "plurals",
    "counting-hard": "counting",
    "counting-small-quant": "counting",
    "counting-adversarial": "counting",
    "relations": "relations",
    "relation": "relations",
    "action-replacement": "actions",
    "actant-swap": "actions",
    "coreference-standard": "coreference",
    "coreference-hard": "coreference",
    "foil-it": "foil-it",
}

_SOURCE = "VALSE (Parcalabescu et al. 2022), github.com/Heidelberg-NLP/VALSE"


def _instrument(path: str) -> str:
    stem = os.path.basename(path)
    stem = stem[: -len(".json")] if stem.endswith(".json") else stem
    return stem.replace("_", "-")


def valse_benchmark(
    annotations: str | os.PathLike | Iterable[str | os.PathLike],
    images_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    only_valid: bool = True,
    subset_by: str = "instrument",
    name: str = "valse",
) -> MatchingBenchmark:
    """VALSE as a :class:`MatchingBenchmark`.

    Args:
        annotations: a VALSE foil file (``existence.json``, ``counting-hard.json``, ...), a list of
            them, or a folder whose ``*.json`` files are all read (the repository's ``data/``).
            Each file is ``{id: {"dataset", "image_file", "caption", "foil", "mturk": {"caption",
            "foil", "other"}, "classes", "classes_foil", "linguistic_phenomena", ...}}``.
        images_dir: where the images are, either

            - a mapping ``{dataset: folder}`` keyed by the entries' ``dataset`` values (e.g.
              ``{"SWiG": ".../images_512", "visual7w": ".../visual7w/images"}``): the image is
              ``folder/image_file``; an entry whose ``dataset`` is not a key is an error;
            - a single root folder: the image is ``root/<dataset>/<image_file>``, i.e. one
              sub-folder per source dataset, named exactly as the ``dataset`` field.
        only_valid: keep only the entries the annotators validated, ``mturk["caption"] >= 2`` as
            the VALSE README and evaluation scripts do (an entry without ``mturk`` is then an
            error); ``False`` keeps every entry.
        subset_by: ``"instrument"``: subset = the file name without ``.json`` (``counting-hard``,
            ``actant-swap``, ...: the rows of the paper's results table); ``"piece"``: subset =
            the piece it belongs to (:data:`VALSE_PIECES`: ``existence``, ``plurals``,
            ``counting``, ``relations``, ``actions``, ``coreference``, ``foil-it``; an unknown
            file name is its own piece).

    One example per (caption, foil): 1 image x ``[caption, foil]``, the caption true.
    :func:`~hf_counterfactual.benchmarks.evaluate_benchmark`'s ``text_score`` is VALSE's pairwise
    ranking accuracy acc_r (the caption must score strictly higher than the foil, as in
    ``lxmert_valse_eval.py``, so ties fail); ``"macro"`` averages over the subsets. ``metadata``
    counts the entries left out as not valid (``invalid_entries``) per file.

    Raises:
        ValueError: a malformed file or entry (naming the file and id), an entry whose ``dataset``
            has no folder in the mapping, an ``image_file`` (or, with a root folder, a ``dataset``)
            that leaves its folder (absolute or through ``..``), or a bad ``subset_by``.
        FileNotFoundError: a missing annotation file, or an image file an entry names (naming it).
    """
    if subset_by not in ("instrument", "piece"):
        raise ValueError(f"subset_by must be 'instrument' or 'piece', got {subset_by!r}")
    files = annotation_files(annotations, ".json", "VALSE annotation files")
    mapping = None if isinstance(images_dir, (str, os.PathLike)) else {k: os.fspath(v) for k, v in dict(images_dir).items()}
    root = os.fspath(images_dir) if mapping is None else None

    examples: list[MatchingExample] = []
    where: dict = {}
    invalid: dict[str, int] = {}
    for path in files:
        instrument = _instrument(path)
        subset = instrument if subset_by == "instrument" else VALSE_PIECES.get(instrument, instrument)
        entries = read_json(path, "VALSE annotation file", dict)
        invalid[path] = 0
        for entry_id, entry in entries.items():
            here = f"{path}, id {entry_id!r}"
            require_strings(entry, ("dataset", "image_file", "caption"), here)
            if "foil" in entry:
                foils = [entry["foil"]]
            elif "foils" in entry and isinstance(entry["foils"], list) and entry["foils"]:
                foils = entry["foils"]
            else:
                raise ValueError(f"{here}: needs 'foil' (a string) or 'foils' (a non-empty list of strings)")
            if not all(isinstance(f, str) and f.strip() for f in foils):
                raise ValueError(f"{here}: every foil must be a non-empty string, got {foils!r}")
            if only_valid:
                mturk = entry.get("mturk")
                votes = mturk.get("caption") if isinstance(mturk, Mapping) else None
                if isinstance(votes, bool) or not isinstance(votes, Real):
                    raise ValueError(
                        f"{here}: only_valid needs 'mturk': {{'caption': <votes>}}, got {mturk!r} "
                        "(pass only_valid=False to keep entries without annotator votes)"
                    )
                if votes < 2:
                    invalid[path] += 1
                    continue
            dataset = entry["dataset"]
            if mapping is not None:
                if dataset not in mapping:
                    raise ValueError(f"{here}: no image folder for dataset {dataset!r}; images_dir has {sorted(mapping)}")
                file = join_inside(mapping[dataset], entry["image_file"], here)
            else:
                file = join_inside(join_inside(root, dataset, here, "dataset folder name"), entry["image_file"], here)
            ref = (file, None)
            where.setdefault(ref, here)
            for k, foil in enumerate(foils):
                examples.append(
                    MatchingExample(
                        id=f"{instrument}/{entry_id}" + (f"/{k}" if len(foils) > 1 else ""),
                        images=(ref,),
                        texts=(entry["caption"], foil),
                        truth=((True, False),),
                        subset=subset,
                    )
                )

    metadata = {
        "source": _SOURCE,
        "annotations_files": files,
        "images_dir": dict(mapping) if mapping is not None else root,
        "only_valid": only_valid,
        "subset_by": subset_by,
        "invalid_entries": invalid,
    }
    # references hold the full path (the folder differs per source dataset), so the root is ""
    return file_benchmark(name, examples, "", where, metadata)
