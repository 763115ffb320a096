"""SugarCrepe (Hsieh et al., NeurIPS 2023 Datasets & Benchmarks): one COCO image, its caption and a
hard negative caption made by adding, replacing or swapping an object, attribute or relation.

Data: the annotations are the seven JSON files of https://github.com/RAIVNLab/sugar-crepe
(``data/*.json``, MIT licence); the images are COCO val2017 (``val2017.zip`` from
https://cocodataset.org; annotations CC BY 4.0, images under their Flickr owners' terms). Nothing
is downloaded here: pass the folders you downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .core import MatchingBenchmark, MatchingExample
from .files import file_benchmark, read_json, require_strings

SUGARCREPE_SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


def sugarcrepe_benchmark(
    annotations_dir: str | os.PathLike,
    images_dir: str | os.PathLike,
    subsets: Iterable[str] | str | None = None,
    name: str = "sugarcrepe",
) -> MatchingBenchmark:
    """SugarCrepe as a :class:`MatchingBenchmark`.

    Args:
        annotations_dir: the folder holding ``{subset}.json`` for the subsets asked for (the
            repository's ``data/`` folder). Each file is
            ``{id: {"filename": "000000xxxxxx.jpg", "caption": str, "negative_caption": str}}``.
        images_dir: the COCO ``val2017/`` folder; images are ``images_dir/filename``.
        subsets: which of :data:`SUGARCREPE_SUBSETS` to read (default: all seven).

    One example per entry: 1 image x ``[caption, negative_caption]``, the caption true; subset =
    the file's name (``add_att``, ...). :func:`~hf_counterfactual.benchmarks.evaluate_benchmark`'s
    ``text_score`` is SugarCrepe's accuracy, per subset, micro over all entries (``"all"``) and
    macro over the subsets (``"macro"``). The same COCO file is the same image reference in every
    subset, so an embedding scorer encodes each image once.

    Raises:
        ValueError: an unknown subset name, or a malformed file or entry (naming file and id).
        FileNotFoundError: a missing annotation file, or an image file that an entry names.
    """
    if subsets is None:
        chosen = list(SUGARCREPE_SUBSETS)
    else:
        chosen = [subsets] if isinstance(subsets, str) else list(dict.fromkeys(subsets))
        unknown = [s for s in chosen if s not in SUGARCREPE_SUBSETS]
        if unknown:
            raise ValueError(f"unknown SugarCrepe subset(s) {unknown}; known: {list(SUGARCREPE_SUBSETS)}")
        if not chosen:
            raise ValueError(f"no subsets chosen; known: {list(SUGARCREPE_SUBSETS)}")

    examples: list[MatchingExample] = []
    where: dict = {}
    for subset in chosen:
        path = os.path.join(os.fspath(annotations_dir), f"{subset}.json")
        entries = read_json(path, "SugarCrepe annotation file", dict)
        for entry_id, entry in entries.items():
            here = f"{path}, id {entry_id!r}"
            require_strings(entry, ("filename", "caption", "negative_caption"), here)
            ref = (entry["filename"], None)
            where.setdefault(ref, here)
            examples.append(
                MatchingExample(
                    id=f"{subset}/{entry_id}",
                    images=(ref,),
                    texts=(entry["caption"], entry["negative_caption"]),
                    truth=((True, False),),
                    subset=subset,
                )
            )

    metadata = {
        "source": "SugarCrepe (Hsieh et al. 2023), github.com/RAIVNLab/sugar-crepe, MIT; images COCO val2017",
        "annotations_dir": os.fspath(annotations_dir),
        "subsets": chosen,
    }
    return file_benchmark(name, examples, images_dir, where, metadata)
