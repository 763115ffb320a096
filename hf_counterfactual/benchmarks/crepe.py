"""CREPE (Ma et al., CVPR 2023, "CREPE: Can Vision-Language Foundation Models Reason
Compositionally?"): a Visual Genome region, its caption and hard negatives, for systematicity (seen
/ unseen compounds of a pretraining set; negatives ``atom`` and ``comp``) and productivity
(captions of complexity 4 to 12; negatives ``atom``, ``swap`` and ``negate``).

Data: the hard-negative CSV files of https://github.com/RAIVNLab/CREPE (``data/``; check the
repository's terms before redistributing); the images are Visual Genome's ``VG_100K/`` and
``VG_100K_2/`` (CC BY 4.0). Nothing is downloaded here.

The format was checked against the authors' code: ``crepe_eval_utils.py`` (``BaseCsvDataset``:
``pd.read_csv``; the image column ``image_id``, the caption column ``caption``, the hard negatives
a Python list literal read with ``ast.literal_eval``; the crop ``x``, ``y``, ``width``, ``height``;
``get_image_by_id``: ``f"{image_id}.jpg"`` looked up in ``VG_100K`` then ``VG_100K_2``;
``get_one2many_rank`` / ``get_one2many_metrics``: the true caption is placed first and R@1 is the
share of rows where it ranks first), ``evaluate/data.py`` (``CsvDataset.__getitem__``: texts =
``[caption] + hard_negs``, the image cropped with ``TF.crop(image, y, x, height, width)``),
``crepe_params.py`` and ``crepe_compo_eval_open_clip.py`` (``--crop True``; the file names
``syst_vg_hard_negs_{seen,unseen}_compounds_in_{cc12m,yfcc,laion}.csv`` with the negative columns
``valid_hard_negs_atom`` / ``valid_hard_negs_comp``, and
``{atom,swap,negate}/prod_vg_hard_negs_{type}_complexity_{4..12}.csv`` with the column
``hard_negs``) and the README (the valid negative types). The CSV files themselves were not
available to check; a third-party README (EvALign-ICL) shows a systematicity row as
``{"region_id", "caption", "x", "y", "width", "height", "valid_hard_negs_comp",
"valid_hard_negs_atom", "image_id", ...}``, consistent with the above.
"""

from __future__ import annotations

import ast
import csv
import os
import re
from collections.abc import Iterable, Sequence

from .core import MatchingBenchmark, MatchingExample
from .files import ImageFolder, annotation_files, join_inside, xywh_box

_SOURCE = "CREPE (Ma et al. 2023), github.com/RAIVNLab/CREPE"
CREPE_NEGATIVE_TYPES = {"systematicity": ("atom", "comp"), "productivity": ("atom", "swap", "negate")}
_PROD = re.compile(r"^prod_vg_hard_negs_(atom|swap|negate)_complexity_(\d+)\.csv$")
_SYST = re.compile(r"^syst_vg_hard_negs_(seen|unseen)_compounds_in_(\w+)\.csv$")
_VG_FOLDERS = ("VG_100K", "VG_100K_2")


class _CroppedImages:
    """Loads ``(path, box)`` as the authors do: the whole image, then ``PIL.Image.crop(box)``
    (what ``TF.crop`` does on a PIL image; a box reaching past the image is padded with black)."""

    def __init__(self, where):
        self.folder = ImageFolder("", where)

    def __call__(self, ref):
        image = self.folder((ref[0], None))
        return image if ref[1] is None else image.crop(ref[1])


def _number(value: str, column: str, where: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column!r} must be a number, got {value!r}") from None
    return int(number) if number.is_integer() else number


def _find_image(folders: Sequence[str], image_id: str, where: str) -> str:
    for folder in folders:
        path = join_inside(folder, f"{image_id}.jpg", where)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"image file not found: {image_id}.jpg in any of {list(folders)} (used by {where})")


def crepe_benchmark(
    annotations: str | os.PathLike | Iterable[str | os.PathLike],
    images_dir: str | os.PathLike | Sequence[str | os.PathLike],
    negative_type: str | None = None,
    crop: bool = True,
    name: str = "crepe",
) -> MatchingBenchmark:
    """CREPE as a :class:`MatchingBenchmark`: one example per CSV row, 1 image (the region) x
    ``[caption] + hard negatives``, the caption true.

    Args:
        annotations: a CREPE hard-negative CSV, a list of them, or a folder searched recursively
            for ``*.csv`` (e.g. ``prod_hard_negatives/`` with its ``atom/``, ``swap/``,
            ``negate/``). The file names must be the authors':

            - ``prod_vg_hard_negs_{atom,swap,negate}_complexity_{n}.csv`` (productivity): negatives
              in ``hard_negs``; subset ``f"productivity/{type}/complexity_{n}"``;
            - ``syst_vg_hard_negs_{seen,unseen}_compounds_in_{cc12m,yfcc,laion}.csv``
              (systematicity): negatives in ``valid_hard_negs_atom`` and ``valid_hard_negs_comp``;
              subset ``f"systematicity/{split}_compounds_in_{dataset}/{type}"``.
        images_dir: the Visual Genome folder holding ``VG_100K/`` and ``VG_100K_2/``, or a list of
            folders (the authors' ``vg_image_paths``); ``f"{image_id}.jpg"`` is taken from the first
            folder that has it.
        negative_type: keep only this negative type (``atom``, ``comp``, ``swap``, ``negate``);
            files of another productivity type are left out. By default every productivity file
            gives its own type and every systematicity file gives two examples per row, one per
            type (``atom`` and ``comp``, separate subsets).
        crop: crop the image to the row's region ``x, y, width, height`` as the authors do
            (``--crop True``, their default); ``False`` uses the whole image.
        name: the benchmark's name.

    :func:`~hf_counterfactual.benchmarks.evaluate_benchmark`'s ``text_score`` is CREPE's
    image-to-text Recall@1 among the hard negatives (the caption must score strictly higher than
    every negative: ties fail, whereas the authors' ``argsort`` breaks them arbitrarily). Rows with
    no hard negative of the requested type would be trivially right: they are left out and counted
    in ``metadata["rows_without_negatives"]`` per file. ``"macro"`` averages over the subsets.

    Raises:
        ValueError: a file name that is not the authors', an unknown ``negative_type``, a missing
            column or a malformed row (naming the file and row; rows count from 0, the header
            excluded, as ``pandas`` does), an ``image_id`` whose file would leave the image folders
            (absolute or through ``..``).
        FileNotFoundError: a missing CSV, or an image no folder has (naming the row).
    """
    known = {t for types in CREPE_NEGATIVE_TYPES.values() for t in types}
    if negative_type is not None and negative_type not in known:
        raise ValueError(f"unknown CREPE negative type {negative_type!r}; known: {sorted(known)}")
    folders = [os.fspath(images_dir)] if isinstance(images_dir, (str, os.PathLike)) else [os.fspath(f) for f in images_dir]
    if len(folders) == 1 and any(os.path.isdir(os.path.join(folders[0], sub)) for sub in _VG_FOLDERS):
        folders = [os.path.join(folders[0], sub) for sub in _VG_FOLDERS]

    examples: list[MatchingExample] = []
    where: dict = {}
    empty: dict[str, int] = {}
    files = annotation_files(annotations, ".csv", "CREPE hard-negative files", recursive=True)
    for path in files:
        base = os.path.basename(path)
        prod, syst = _PROD.match(base), _SYST.match(base)
        if prod:
            if negative_type is not None and prod.group(1) != negative_type:
                continue
            columns = {prod.group(1): "hard_negs"}
            subset_of = {prod.group(1): f"productivity/{prod.group(1)}/complexity_{int(prod.group(2))}"}
        elif syst:
            types = CREPE_NEGATIVE_TYPES["systematicity"]
            if negative_type is not None:
                if negative_type not in types:
                    raise ValueError(f"{path}: systematicity has the negative types {list(types)}, not {negative_type!r}")
                types = (negative_type,)
            columns = {t: f"valid_hard_negs_{t}" for t in types}
            subset_of = {t: f"systematicity/{syst.group(1)}_compounds_in_{syst.group(2)}/{t}" for t in types}
        else:
            raise ValueError(
                f"{path}: not a CREPE hard-negative file name; expected prod_vg_hard_negs_<atom|swap|negate>_complexity_<n>.csv "
                "or syst_vg_hard_negs_<seen|unseen>_compounds_in_<dataset>.csv"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CREPE hard-negative file not found: {path}")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            needed = ["image_id", "caption", *columns.values()] + (["x", "y", "width", "height"] if crop else [])
            absent = [c for c in needed if c not in header]
            if absent:
                raise ValueError(f"{path}: missing column(s) {absent} (the header has {header})")
            empty[path] = 0
            for index, row in enumerate(reader):
                here = f"{path}, row {index}"
                image_id = (row.get("image_id") or "").strip()
                caption = row.get("caption")
                if not image_id:
                    raise ValueError(f"{here}: 'image_id' is empty")
                if caption is None or not caption.strip():
                    raise ValueError(f"{here}: 'caption' is empty")
                box = None
                if crop:
                    x, y, w, h = (_number(row.get(c), c, here) for c in ("x", "y", "width", "height"))
                    box = xywh_box(x, y, w, h, here)
                file = _find_image(folders, image_id, here)
                ref = (file, box)
                for kind, column in columns.items():
                    try:
                        negatives = ast.literal_eval(row.get(column) or "")
                    except (ValueError, SyntaxError):
                        raise ValueError(f"{here}: {column!r} must be a Python list of captions, got {row.get(column)!r}") from None
                    if not isinstance(negatives, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in negatives):
                        raise ValueError(f"{here}: {column!r} must be a list of non-empty strings, got {negatives!r}")
                    if not negatives:
                        empty[path] += 1
                        continue
                    where.setdefault(ref, here)
                    examples.append(
                        MatchingExample(
                            id=f"{base[:-4]}/{index}" + (f"/{kind}" if len(columns) > 1 else ""),
                            images=(ref,),
                            texts=(caption, *negatives),
                            truth=((True,) + (False,) * len(negatives),),
                            subset=subset_of[kind],
                        )
                    )
    if not examples:
        raise ValueError(f"no CREPE examples in {files}" + (f" with negative_type={negative_type!r}" if negative_type else ""))
    metadata = {
        "source": _SOURCE,
        "annotations_files": files,
        "images_dir": folders,
        "negative_type": negative_type,
        "crop": crop,
        "rows_without_negatives": empty,
    }
    return MatchingBenchmark(name=name, examples=examples, load_image=_CroppedImages(where), metadata=metadata)
