"""The inputs of generation: factual image-caption pairs from a COCO-format folder or any ``datasets``
image-caption dataset, as :class:`~.pipeline.FactualItem` s in a stable, shardable order."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .image_edits import coco_instance_mask
from .pipeline import FactualItem, Instance

__all__ = ["CocoSource", "DatasetItems", "InputError", "read_coco"]


class InputError(ValueError):
    """The input folder or dataset is not what generation needs; the message says what to fix."""


@dataclass
class CocoSource:
    """A COCO-format folder's items and what its annotations say about where they come from (the
    ``info`` and ``licenses`` blocks), for the dataset card: a folder is not COCO just by its layout."""

    items: list[FactualItem]
    description: str | None = None  # the annotations' info.description, e.g. "COCO 2017 Dataset"
    url: str | None = None
    licenses: list[str] = field(default_factory=list)  # the distinct licence names of its images

    @property
    def is_coco(self) -> bool:
        return bool(self.description) and "coco" in self.description.lower()


def read_coco(coco_root: str, split: str, max_images: int | None = None) -> CocoSource:
    """COCO captions (and instances, when ``instances_{split}2017.json`` exists) of ``coco_root``,
    ordered by image id. Instance masks are decoded only when an edit needs them. A folder without
    the captions file, its images folder or any caption is an :class:`InputError` saying so."""
    annotations = os.path.join(coco_root, "annotations", f"captions_{split}2017.json")
    images_dir = os.path.join(coco_root, f"{split}2017")
    if not os.path.isdir(coco_root):
        raise InputError(f"--coco_root {coco_root}: no such folder")
    if not os.path.isfile(annotations):
        there = sorted(os.listdir(os.path.join(coco_root, "annotations"))) if os.path.isdir(os.path.join(coco_root, "annotations")) else "no annotations/ folder"
        raise InputError(f"--coco_root {coco_root}: no annotations/captions_{split}2017.json (for --split {split}); found: {there}")
    if not os.path.isdir(images_dir) or not os.listdir(images_dir):
        raise InputError(f"--coco_root {coco_root}: the images folder {split}2017/ is missing or empty")
    try:
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        captions = defaultdict(list)
        for annotation in data["annotations"]:
            captions[annotation["image_id"]].append(annotation["caption"].strip())
        files = {image["id"]: image["file_name"] for image in data["images"]}
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{annotations}: not a COCO captions file ({type(err).__name__}: {err})") from None
    image_ids = [i for i in sorted(captions) if i in files][:max_images]
    if not image_ids:
        raise InputError(f"{annotations}: no image with a caption")

    instances_file = os.path.join(coco_root, "annotations", f"instances_{split}2017.json")
    instances: dict[int, list[Instance]] | None = None
    if os.path.exists(instances_file):
        from pycocotools.coco import COCO

        coco = COCO(instances_file)
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        instances = {}
        for image_id in image_ids:
            instances[image_id] = [
                Instance(
                    names[a["category_id"]],
                    (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
                    mask=lambda a=a: coco_instance_mask(coco, a),
                )
                for a in coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd")
            ]
    items = [
        FactualItem(
            image=os.path.join(images_dir, files[image_id]),
            captions=captions[image_id],
            instances=None if instances is None else instances[image_id],
            id=image_id,
        )
        for image_id in image_ids
    ]
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    licenses = sorted({lic["name"] for lic in data.get("licenses") or [] if isinstance(lic, dict) and lic.get("name")})
    return CocoSource(items, description=info.get("description"), url=info.get("url"), licenses=licenses)


class DatasetItems(Sequence):
    """A ``datasets`` image-caption split seen as :class:`FactualItem` s, row by row (nothing is
    decoded before a process reaches its own block)."""

    def __init__(self, dataset, image_column: str, caption_column: str):
        missing = [c for c in (image_column, caption_column) if c not in dataset.column_names]
        if missing:
            raise InputError(f"column(s) {missing} not in the dataset; it has {dataset.column_names} (set --image_column / --caption_column)")
        if len(dataset) == 0:
            raise InputError("the dataset split is empty")
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column

    def all_captions(self) -> list[list[str]]:
        """The captions of every row (the caption column alone: no image is read)."""
        column = self.dataset[self.caption_column]
        return [[c] if isinstance(c, str) else [x for x in (c or []) if isinstance(x, str)] for c in column]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> FactualItem:
        row = self.dataset[index]
        captions = row[self.caption_column]
        captions = [captions] if isinstance(captions, str) else [c for c in (captions or []) if isinstance(c, str)]
        return FactualItem(image=row[self.image_column], captions=captions, instances=None, id=index)
