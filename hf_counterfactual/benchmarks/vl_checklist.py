"""VL-CheckList (Zhao et al. 2022, "VL-CheckList: Evaluating Pre-trained Vision-Language Models
with Objects, Attributes and Relations"): an image, positive captions and negative captions that
change one object, attribute or relation, grouped by category (``Attribute/color``,
``Object/Location/center``, ``Relation/action``, ...).

Data: the annotation JSONs under ``data/`` of https://github.com/om-ai-lab/VL-CheckList (the
paper is CC BY 4.0; check the repository's terms before redistributing). The images are not part of
it: Visual Genome (also for the VAW files), SWiG (``images_512``) and HAKE (HICO-DET, V-COCO,
OpenImages, HCVRD, PIC, ...), each under its own terms. Nothing is downloaded here.

The format was checked against the authors' repository: ``vl_checklist/data_loader.py``
(``DataLoader.load_itc_samples``: each file is a JSON list of ``[path, {"POS": [...], "NEG":
[...]}]``, the image is ``os.path.join(IMG_ROOT, path)``, items whose image does not exist are
skipped), ``vl_checklist/evaluate.py`` (``Evaluate.eval``, task ``itc``: the item is right when the
score of ``POS[0]`` is strictly greater than that of ``NEG[0]``; accuracy per category and corpus),
the ``corpus/<Category>/<corpus>.yaml`` files (``ANNO_PATH`` -> ``IMG_ROOT``: ``vg/`` for the VG and
VAW files, ``swig/`` for SWiG, ``hake/`` for HAKE; the category is the yaml's folder), ``DATASETS.md``
(the ``$DATASET/{hake,swig,vg}`` layout) and the published files ``data/Attribute/vg/color.json``
(one POS, one NEG per item), ``data/Object/Location/swig_location/swig_agent/swig_agent_mid.json``
(three POS and three NEG per item, ``NEG[k]`` a corruption of ``POS[k]``) and
``data/Object/Size/hake_size/hake_obj_small.json`` (paths such as ``hcvrd/107905.jpg``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from .core import MatchingBenchmark, MatchingExample
from .files import annotation_files, file_benchmark, join_inside, read_json

_SOURCE = "VL-CheckList (Zhao et al. 2022), github.com/om-ai-lab/VL-CheckList"
_TOP = ("Attribute", "Object", "Relation")
# corpus name prefix -> the image folder the authors' yaml files give it (IMG_ROOT)
_IMAGE_ROOTS = {"vg": "vg", "vaw": "vg", "swig": "swig", "hake": "hake"}
VL_CHECKLIST_PAIRS = ("first", "aligned", "all")


def vl_checklist_category(path: str | os.PathLike) -> tuple[str, str]:
    """``(category, corpus)`` of a VL-CheckList annotation file, read from its path in the authors'
    ``data/`` layout (the ``ANNO_PATH`` of their ``corpus/<category>/<corpus>.yaml`` files):

    - ``Attribute/<corpus>/<attribute>.json`` -> ``("Attribute/<attribute>", corpus)``, except
      ``Attribute/vg/spatial.json``, which ``corpus/Relation/spatial/vg.yaml`` names: ``Relation/spatial``;
    - ``Object/<Location|Size>/.../<corpus>_<value>.json`` (e.g. ``swig_agent_mid.json``,
      ``hake_obj_small.json``) -> ``("Object/<Location|Size>/<value>", corpus)``;
    - ``Relation/<corpus>/<relation>.json`` or ``Relation/<corpus>_<relation>.json`` ->
      ``("Relation/<relation>", corpus)``.
    """
    path = os.fspath(path)
    parts = os.path.normpath(os.path.abspath(path)).replace("\\", "/").split("/")
    tops = [i for i, part in enumerate(parts) if part in _TOP]
    stem = parts[-1][: -len(".json")] if parts[-1].endswith(".json") else parts[-1]
    if tops:
        rest = parts[tops[-1] :]
        top = rest[0]
        if top == "Attribute" and len(rest) == 3:
            if stem == "spatial":
                return "Relation/spatial", rest[1]
            return f"Attribute/{stem}", rest[1]
        if top == "Object" and len(rest) >= 3 and rest[1] in ("Location", "Size") and "_" in stem:
            corpus, value = stem.rsplit("_", 1)
            return f"Object/{rest[1]}/{value}", corpus
        if top == "Relation" and len(rest) == 3:
            return f"Relation/{stem}", rest[1]
        if top == "Relation" and len(rest) == 2 and "_" in stem:
            corpus, relation = stem.split("_", 1)
            return f"Relation/{relation}", corpus
    raise ValueError(
        f"{path}: cannot tell the VL-CheckList category from this path; keep the files in the authors' "
        "data/ layout (data/Attribute/vg/color.json, data/Object/Size/vg_size/vg_obj_small.json, "
        "data/Relation/swig_action.json, ...)"
    )


def _image_folder(images_dir, corpus: str, where: str) -> str:
    key = _IMAGE_ROOTS.get(corpus.split("_")[0])
    if isinstance(images_dir, Mapping):
        for candidate in (corpus, corpus.split("_")[0], key):
            if candidate is not None and candidate in images_dir:
                return os.fspath(images_dir[candidate])
        raise ValueError(f"{where}: no image folder for corpus {corpus!r} (images_dir has {sorted(images_dir)}; the authors use 'vg', 'swig', 'hake')")
    if key is None:
        raise ValueError(f"{where}: unknown corpus {corpus!r}: pass images_dir as a mapping {{corpus: folder}}")
    return os.path.join(os.fspath(images_dir), key)


def _captions(value, what: str, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: {what} must be a non-empty list of non-empty strings, got {value!r}")
    return value


def vl_checklist_benchmark(
    annotations: str | os.PathLike | Iterable[str | os.PathLike],
    images_dir: str | os.PathLike | Mapping[str, str | os.PathLike],
    pairs: str = "first",
    subset_by: str = "category",
    skip_missing_images: bool = False,
    name: str = "vl-checklist",
) -> MatchingBenchmark:
    """VL-CheckList as a :class:`MatchingBenchmark`.

    Args:
        annotations: a VL-CheckList annotation file, a list of them, or a folder searched
            recursively for ``*.json`` (the repository's ``data/``). Each file is a JSON list of
            ``[image_path, {"POS": [captions], "NEG": [captions]}]``; the files must keep the
            authors' ``data/`` paths, from which the category and corpus are read
            (:func:`vl_checklist_category`).
        images_dir: either the authors' ``$DATASET`` folder holding ``vg/`` (``VG_100K/``,
            ``VG_100K_2/``; also the VAW images), ``swig/`` and ``hake/`` (``hcvrd/``,
            ``openimages/``, ``hico_20160224_det/``, ...), as in their ``DATASETS.md``; or a
            mapping ``{corpus: folder}`` with keys ``"vg"``, ``"swig"``, ``"hake"`` (a key equal to
            a file's full corpus name, e.g. ``"vaw"`` or ``"swig_agent"``, takes precedence). The
            image is ``folder/image_path``, as the authors' ``os.path.join(IMG_ROOT, path)``.
        pairs: which (positive, negative) pairs become examples, each 1 image x ``[positive,
            negative]``:

            - ``"first"``: ``POS[0]`` vs ``NEG[0]``, one example per item, as the authors'
              ``itc`` evaluation does;
            - ``"aligned"``: ``POS[k]`` vs ``NEG[k]`` for every ``k`` (the SWiG files carry three
              of each, ``NEG[k]`` made from ``POS[k]``; the lists must have the same length);
            - ``"all"``: every positive against every negative.
        subset_by: ``"category"``: subset = the category (``Attribute/color``,
            ``Object/Size/small``, ``Relation/action``, ...); ``"corpus"``: ``f"{category}/{corpus}"``
            (e.g. ``Attribute/color/vaw``, ``Object/Location/mid/swig_agent``: one accuracy per
            yaml file, as the authors' result files); ``"file"``: the file's path below the folder
            that holds ``Attribute``/``Object``/``Relation``, without ``.json``.
        skip_missing_images: ``True`` leaves out items whose image file does not exist, as the
            authors' loader does (counted in ``metadata["missing_images"]`` per file); ``False``
            (default) raises, naming the file and item.
        name: the benchmark's name.

    :func:`~hf_counterfactual.benchmarks.evaluate_benchmark`'s ``text_score`` is the authors'
    ``itc`` accuracy (the positive must score strictly higher than the negative; ties fail, as
    with their ``>``; items whose negative equals the positive, which occur in the published
    files, therefore always fail, as in their evaluation). ``"macro"`` averages over the subsets.

    Raises:
        ValueError: a bad option, a malformed file or item (naming the file and item), an image
            path that leaves its image folder (absolute or through ``..``), a path whose category
            cannot be read, or a corpus without an image folder.
        FileNotFoundError: a missing annotation file, or (unless ``skip_missing_images``) a missing
            image file (naming the item that uses it).
    """
    if pairs not in VL_CHECKLIST_PAIRS:
        raise ValueError(f"pairs must be one of {VL_CHECKLIST_PAIRS}, got {pairs!r}")
    if subset_by not in ("category", "corpus", "file"):
        raise ValueError(f"subset_by must be 'category', 'corpus' or 'file', got {subset_by!r}")
    files = annotation_files(annotations, ".json", "VL-CheckList annotation files", recursive=True)
    examples: list[MatchingExample] = []
    where: dict = {}
    missing: dict[str, int] = {}
    for path in files:
        category, corpus = vl_checklist_category(path)
        parts = os.path.normpath(os.path.abspath(path)).replace("\\", "/").split("/")
        top = max(i for i, part in enumerate(parts) if part in _TOP)
        relative = "/".join(parts[top:])[: -len(".json")] if path.endswith(".json") else "/".join(parts[top:])
        subset = {"category": category, "corpus": f"{category}/{corpus}", "file": relative}[subset_by]
        folder = _image_folder(images_dir, corpus, path)
        items = read_json(path, "VL-CheckList annotation file", list)
        missing[path] = 0
        for index, item in enumerate(items):
            here = f"{path}, item {index}"
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], Mapping)):
                raise ValueError(f"{here}: expected [image_path, {{'POS': [...], 'NEG': [...]}}], got {item!r}")
            image_path, texts = item
            if not isinstance(image_path, str) or not image_path.strip():
                raise ValueError(f"{here}: the image path must be a non-empty string, got {image_path!r}")
            positives = _captions(texts.get("POS"), "'POS'", here)
            negatives = _captions(texts.get("NEG"), "'NEG'", here)
            if pairs == "first":
                chosen = [(positives[0], negatives[0])]
            elif pairs == "aligned":
                if len(positives) != len(negatives):
                    raise ValueError(f"{here}: pairs='aligned' needs as many 'POS' as 'NEG' captions, got {len(positives)} and {len(negatives)}")
                chosen = list(zip(positives, negatives))
            else:
                chosen = [(p, n) for p in positives for n in negatives]
            file = join_inside(folder, image_path, here)
            if not os.path.isfile(file):
                if skip_missing_images:
                    missing[path] += 1
                    continue
                raise FileNotFoundError(f"image file not found: {file} (used by {here})")
            ref = (file, None)
            where.setdefault(ref, here)
            for k, (positive, negative) in enumerate(chosen):
                examples.append(
                    MatchingExample(
                        id=f"{relative}/{index}" + (f"/{k}" if len(chosen) > 1 else ""),
                        images=(ref,),
                        texts=(positive, negative),
                        truth=((True, False),),
                        subset=subset,
                    )
                )

    metadata = {
        "source": _SOURCE,
        "annotations_files": files,
        "images_dir": {k: os.fspath(v) for k, v in images_dir.items()} if isinstance(images_dir, Mapping) else os.fspath(images_dir),
        "pairs": pairs,
        "subset_by": subset_by,
        "missing_images": missing,
    }
    # references hold the full path (the folder differs per corpus), so the root is ""
    return file_benchmark(name, examples, "", where, metadata)
