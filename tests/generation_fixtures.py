"""Fixtures of the generation tests: a COCO-format dataset of real photos written by the tests
(nothing downloaded), and the installed English spaCy pipeline.

The photos ship with scikit-image (``skimage.data``); boxes, polygons and captions are written by
hand at the photos' full resolution and scaled with them. The layout is COCO's::

    {root}/{split}2017/{id:012d}.jpg
    {root}/annotations/captions_{split}2017.json
    {root}/annotations/instances_{split}2017.json

Items (image id: what it exercises):

1. astronaut: a flip ("to the left of"), an object edit of a person (woman -> ...), a flag instance.
2. chelsea: one cat filling the frame; object edit cat -> another animal; count "a cat" -> two (no
   room to add one: counted).
3. coffee: attribute edit of the cup (red -> ...), count "a spoon" -> "two spoons" (an empty box
   to the right of the saucer), a spoon whose polygon is not a rectangle.
4. rocket: count "four tall towers" -> three (remove one) or five (add one between towers).
5. camera (grayscale photo): converted to RGB; object edit man -> ...
6. a caption with nothing to edit (a counted skip).
7. a corrupt JPEG (a counted skip).
8. coffee again, with an annotation box outside the image: its image edit is a counted skip, the
   item's text edits are still written.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

import pytest

SCALE = 4  # photos are written at 1/SCALE of their size: small enough for CPU inpainting tests

# Categories: COCO ids where COCO has them.
CATEGORIES = {1: "person", 17: "cat", 47: "cup", 50: "spoon", 91: "saucer", 92: "flag", 93: "helmet", 94: "tower", 95: "rocket"}

# image id -> (skimage name or None, captions, [(category id, xywh box at full size, polygon or None)])
ITEMS = {
    1: ("astronaut", ["an american flag to the left of a smiling woman", "a woman in an orange suit next to a black helmet"],
        [(1, (20, 15, 340, 497), None), (92, (0, 0, 95, 500), None), (93, (275, 345, 237, 167), None)]),
    2: ("chelsea", ["a cat with green eyes looking at the camera"], [(17, (0, 0, 451, 300), None)]),
    3: ("coffee", ["a red cup of coffee on a red saucer next to a spoon"],
        [(47, (175, 18, 235, 287), None), (91, (75, 75, 405, 315), None),
         (50, (320, 65, 105, 265), [400, 65, 425, 70, 390, 230, 405, 300, 380, 330, 335, 325, 325, 280, 370, 225])]),
    4: ("rocket", ["a white rocket between four tall towers"],
        [(95, (300, 125, 40, 285), None), (94, (0, 0, 90, 427), None), (94, (165, 120, 45, 307), None),
         (94, (435, 120, 35, 307), None), (94, (555, 0, 85, 427), None)]),
    5: ("camera", ["a man holding a camera"], [(1, (110, 40, 290, 460), None)]),
    6: ("chelsea", ["smiling"], []),
    7: (None, ["a red car next to a tree"], []),
    8: ("coffee", ["a red cup of coffee on a wooden table"], [(47, (500, 300, 235, 287), None)]),
}


def photo(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    image = Image.fromarray(array)
    return image.resize((image.width // SCALE, image.height // SCALE), Image.Resampling.LANCZOS)


def _scaled(values) -> list[float]:
    return [round(v / SCALE, 2) for v in values]


def write_coco_photos(root: str | Path, split: str = "val") -> Path:
    """Writes the dataset above under ``root``; returns ``root``."""
    root = Path(root)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    images, captions, instances = [], [], []
    for image_id, (name, texts, objects) in ITEMS.items():
        file_name = f"{image_id:012d}.jpg"
        path = root / f"{split}2017" / file_name
        if name is None:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
            width, height = 64, 48
        else:
            image = photo(name)
            image.save(path, quality=95)
            width, height = image.size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for k, text in enumerate(texts):
            captions.append({"id": 100 * image_id + k, "image_id": image_id, "caption": text})
        for k, (category, box, polygon) in enumerate(objects):
            x, y, w, h = _scaled(box)
            if polygon is None:  # a rectangle
                polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            else:
                polygon = _scaled(polygon)
            instances.append({"id": 1000 * image_id + k, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                              "segmentation": [polygon], "area": w * h, "iscrowd": 0})
    info = {"description": "hf-counterfactual test photos (scikit-image sample data)"}
    categories = [{"id": i, "name": n, "supercategory": n} for i, n in CATEGORIES.items()]
    (root / "annotations" / f"captions_{split}2017.json").write_text(
        json.dumps({"info": info, "images": images, "annotations": captions})
    )
    (root / "annotations" / f"instances_{split}2017.json").write_text(
        json.dumps({"info": info, "images": images, "annotations": instances, "categories": categories})
    )
    return root


def english_pipeline() -> str:
    """The name of an installed English spaCy pipeline (the dev extra installs one), else skip."""
    pytest.importorskip("spacy")
    from hf_counterfactual.nlp import resolve_spacy_pipeline

    try:
        return resolve_spacy_pipeline()
    except OSError as err:
        pytest.skip(str(err))
