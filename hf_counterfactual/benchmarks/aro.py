"""ARO, "Attribution, Relation and Order" (Yuksekgonul et al., ICLR 2023, "When and why
vision-language models behave like bags-of-words"): VG-Relation, VG-Attribution and
COCO-/Flickr30k-Order, read from the files you downloaded (nothing is downloaded or faked here).

Code and annotations: https://github.com/mertyg/vision-language-models-are-bows (MIT licence):
``visual_genome_relation.json`` and ``visual_genome_attribution.json``, and the image archive
``vgr_vga_images.zip`` that the repository's ``download()`` fetches (Visual Genome / GQA images,
CC BY 4.0). The Order benchmarks use COCO (images under their Flickr owners' terms, annotations
CC BY 4.0) or Flickr30k (free for non-commercial research after accepting its terms at
https://shannon.cs.illinois.edu/DenotationGraph/) captions; see :func:`aro_order_benchmark`.
"""

from __future__ import annotations

import functools
import os
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..nlp import resolve_spacy_pipeline
from .core import MatchingBenchmark, MatchingExample
from .files import check_relative, file_benchmark, read_json, require_strings, xywh_box

# The relations that the ARO repository leaves out of VG-Relation's macro accuracy
# (``symmetric`` in notebooks/"Replicate ARO! VG-Relation, VG-Attribution.ipynb" of
# mertyg/vision-language-models-are-bows, copied verbatim, in its order). Despite the name they
# are not only symmetric relations: the list also holds relations whose swapped caption is
# plausible or unverifiable from the crop (verbs like "eating from", spatial ones like "near").
ARO_SYMMETRIC_RELATIONS = frozenset(
    [
        "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing",
        "cleaning", "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging",
        "draped over", "drinking", "drinking from", "driving", "driving down", "driving on", "eating from",
        "eating in", "enclosing", "exiting", "facing", "filled with", "floating in", "floating on", "flying",
        "flying above", "flying in", "flying over", "flying through", "full of", "going down", "going into",
        "going through", "grazing in", "growing in", "growing on", "guiding", "hanging from", "hanging in",
        "hanging off", "hanging over", "higher than", "holding onto", "hugging", "in between", "jumping off",
        "jumping on", "jumping over", "kept in", "larger than", "leading", "leaning over", "leaving", "licking",
        "longer than", "looking in", "looking into", "looking out", "looking over", "looking through",
        "lying next to", "lying on top of", "making", "mixed with", "mounted on", "moving", "on the back of",
        "on the edge of", "on the front of", "on the other side of", "opening", "painted on", "parked at",
        "parked beside", "parked by", "parked in", "parked in front of", "parked near", "parked next to",
        "perched on", "petting", "piled on", "playing", "playing in", "playing on", "playing with", "pouring",
        "reaching for", "reading", "reflected on", "riding on", "running in", "running on", "running through",
        "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of", "sitting near",
        "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
        "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against",
        "standing around", "standing behind", "standing beside", "standing in front of", "standing near",
        "standing next to", "staring at", "stuck in", "surrounding", "swimming in", "swinging", "talking to",
        "topped with", "touching", "traveling down", "traveling on", "tying", "typing on", "underneath",
        "wading in", "waiting for", "walking across", "walking by", "walking down", "walking next to",
        "walking through", "working in", "working on", "worn on", "wrapped around", "wrapped in",
        "by", "of", "near", "next to", "with", "beside", "on the side of", "around",
    ]
)

_SOURCE = "ARO (Yuksekgonul et al. 2023), github.com/mertyg/vision-language-models-are-bows, MIT"


def _crop_example(path: str, index: int, row: Any, subset: str) -> MatchingExample:
    here = f"{path}, row {index}"
    require_strings(row, ("image_path", "true_caption", "false_caption"), here)
    box = xywh_box(row.get("bbox_x"), row.get("bbox_y"), row.get("bbox_w"), row.get("bbox_h"), here)
    return MatchingExample(
        id=str(index),
        images=((row["image_path"], box),),
        texts=(row["true_caption"], row["false_caption"]),
        truth=((True, False),),
        subset=subset,
    )


def _crop_benchmark(name: str, path: str, images_dir, examples: list[MatchingExample], metadata: dict) -> MatchingBenchmark:
    where: dict = {}
    for example in examples:
        where.setdefault(example.images[0], f"{path}, row {example.id}")
    return file_benchmark(name, examples, images_dir, where, {"source": _SOURCE, "annotations_file": path} | metadata)


def aro_relation_benchmark(
    annotations_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    exclude_symmetric: bool = False,
    name: str = "vg-relation",
) -> MatchingBenchmark:
    """ARO's VG-Relation: a Visual Genome image cropped to the box around two objects, the true
    caption ("the horse is eating the grass") and the one with the objects swapped.

    Args:
        annotations_file: ``visual_genome_relation.json``, a list of rows with ``image_path``,
            ``bbox_x``, ``bbox_y``, ``bbox_w``, ``bbox_h``, ``true_caption``, ``false_caption``,
            ``relation_name``.
        images_dir: the folder ``image_path`` is relative to (the unzipped ``images/``).
        exclude_symmetric: drop the examples whose relation is in
            :data:`ARO_SYMMETRIC_RELATIONS`, the list the ARO repository filters out before taking
            the macro accuracy over relations. With it, ``"macro"`` of
            :func:`~hf_counterfactual.benchmarks.evaluate_benchmark` is ARO's reported VG-Relation
            macro accuracy (up to ties, below) and ``"all"`` is the micro accuracy over the
            remaining examples; without it every relation counts.

    Each row is 1 image x [true_caption, false_caption]; the image is cropped to
    ``(x, y, x + w, y + h)`` as the ARO code does (each (file, box) is its own image reference);
    subset = ``relation_name``. Ties count as failures here, whereas ARO's ``argmax`` picks the
    false caption (listed first there) on a tie, so a tie fails in both.

    Raises:
        FileNotFoundError: missing annotation file or image file (naming the row).
        ValueError: malformed row (naming file and row); at load time, a box outside the image.
    """
    path = os.fspath(annotations_file)
    examples = []
    excluded = 0
    for index, row in enumerate(read_json(path, "ARO annotation file", list)):
        relation = row.get("relation_name") if isinstance(row, Mapping) else None
        if not isinstance(relation, str) or not relation:
            raise ValueError(f"{path}, row {index}: 'relation_name' must be a non-empty string, got {relation!r}")
        example = _crop_example(path, index, row, relation)
        if exclude_symmetric and relation in ARO_SYMMETRIC_RELATIONS:
            excluded += 1
            continue
        examples.append(example)
    return _crop_benchmark(name, path, images_dir, examples, {"exclude_symmetric": exclude_symmetric, "excluded_examples": excluded})


def aro_attribution_benchmark(
    annotations_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    min_pair_count: int = 0,
    name: str = "vg-attribution",
) -> MatchingBenchmark:
    """ARO's VG-Attribution: a Visual Genome crop around two objects, the true caption ("the
    paved road and the white house") and the one with the attributes swapped.

    Args:
        annotations_file: ``visual_genome_attribution.json``, rows with ``image_path``,
            ``bbox_*``, ``true_caption``, ``false_caption`` and ``attributes`` (the two attributes).
        images_dir: the folder ``image_path`` is relative to.
        min_pair_count: drop attribute pairs with fewer examples; ARO's ``evaluate_scores`` leaves
            out pairs with fewer than 25 before its macro accuracy, so pass 25 to match it.

    Crops as :func:`aro_relation_benchmark`; subset = ``f"{attributes[0]}_{attributes[1]}"`` (joined
    with ``_`` as the ARO code does), so ``"macro"`` is the macro accuracy over attribute pairs.
    """
    path = os.fspath(annotations_file)
    examples = []
    for index, row in enumerate(read_json(path, "ARO annotation file", list)):
        attributes = row.get("attributes") if isinstance(row, Mapping) else None
        if (
            not isinstance(attributes, (list, tuple))
            or len(attributes) != 2
            or not all(isinstance(a, str) and a for a in attributes)
        ):
            raise ValueError(f"{path}, row {index}: 'attributes' must be a pair of non-empty strings, got {attributes!r}")
        examples.append(_crop_example(path, index, row, f"{attributes[0]}_{attributes[1]}"))
    excluded = 0
    if min_pair_count > 0:
        counts: dict[str, int] = {}
        for example in examples:
            counts[example.subset] = counts.get(example.subset, 0) + 1
        kept = [e for e in examples if counts[e.subset] >= min_pair_count]
        excluded, examples = len(examples) - len(kept), kept
    return _crop_benchmark(name, path, images_dir, examples, {"min_pair_count": min_pair_count, "excluded_examples": excluded})


# ---------------------------------------------------------------------------------------------
# COCO-Order / Flickr30k-Order

_DROPPED_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def normalize_caption(caption: str, max_words: int | None = 30) -> str:
    """ARO's caption cleaning (``pre_caption``): lower case, ``.!"()*#:;~`` removed, runs of
    whitespace collapsed, at most ``max_words`` words; in addition commas are split off as their
    own word, so that a shuffled comma is spelled as in the original caption."""
    text = _DROPPED_PUNCTUATION.sub(" ", caption.lower()).replace(",", " , ")
    words = text.split()
    return " ".join(words[:max_words] if max_words else words)


def _trigrams(words: list[str]) -> list[list[str]]:
    return [words[i : i + 3] for i in range(0, len(words), 3)]


def shuffle_trigrams(caption: str, rng: random.Random) -> str:
    """The caption's consecutive word trigrams (the last may be shorter) in a random order;
    words are whitespace-separated."""
    trigrams = _trigrams(caption.split())
    rng.shuffle(trigrams)
    return " ".join(word for trigram in trigrams for word in trigram)


def shuffle_within_trigrams(caption: str, rng: random.Random) -> str:
    """The words of each consecutive trigram shuffled, the trigrams in place."""
    trigrams = _trigrams(caption.split())
    for trigram in trigrams:
        rng.shuffle(trigram)
    return " ".join(word for trigram in trigrams for word in trigram)


@functools.lru_cache(maxsize=4)
def load_spacy(pipeline: str = "auto"):
    """The spaCy ``pipeline`` (``auto``: the first installed English one, see
    :func:`hf_counterfactual.nlp.resolve_spacy_pipeline`) with only what part-of-speech tags need (cached)."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError("the noun/adjective shuffles of the ARO Order benchmarks need spaCy: pip install spacy") from err
    return spacy.load(resolve_spacy_pipeline(pipeline, "pipeline"), exclude=["parser", "ner", "lemmatizer"])


def _tagged(caption, nlp, pipeline: str) -> tuple[list[str], list[str]]:
    """Words and Penn Treebank tags of a caption (whitespace words, tagged by spaCy) or of a Doc."""
    if isinstance(caption, str):
        words = caption.split()
        if not words:
            return [], []
        from spacy.tokens import Doc

        nlp = nlp if nlp is not None else load_spacy(pipeline)
        caption = nlp(Doc(nlp.vocab, words=words))
    return [token.text for token in caption], [token.tag_ for token in caption]


_NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
_ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})


def _permute(words: list[str], positions: list[int], rng: random.Random) -> None:
    values = [words[i] for i in positions]
    rng.shuffle(values)
    for i, value in zip(positions, values):
        words[i] = value


def shuffle_nouns_and_adjectives(caption, rng: random.Random, nlp=None, pipeline: str = "auto") -> str:
    """The nouns shuffled among the nouns' places and the adjectives among the adjectives' (ARO's
    ``shuffle_nouns_and_adj``; Penn tags NN* and JJ*). ``caption``: a string (whitespace words,
    tagged with ``nlp``, default ``load_spacy(pipeline)``) or an already tagged spaCy ``Doc``."""
    words, tags = _tagged(caption, nlp, pipeline)
    _permute(words, [i for i, tag in enumerate(tags) if tag in _NOUN_TAGS], rng)
    _permute(words, [i for i, tag in enumerate(tags) if tag in _ADJECTIVE_TAGS], rng)
    return " ".join(words)


def shuffle_all_but_nouns_and_adjectives(caption, rng: random.Random, nlp=None, pipeline: str = "auto") -> str:
    """Every word that is not a noun or adjective shuffled among those places (ARO's
    ``shuffle_allbut_nouns_and_adj``); arguments as :func:`shuffle_nouns_and_adjectives`."""
    words, tags = _tagged(caption, nlp, pipeline)
    keep = _NOUN_TAGS | _ADJECTIVE_TAGS
    _permute(words, [i for i, tag in enumerate(tags) if tag not in keep], rng)
    return " ".join(words)


def _entry(value, keys: Sequence[str], where: str, what: str) -> Mapping:
    """``value`` checked to be an object holding every one of ``keys``; ``where`` names the file and entry."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object with {list(keys)} ({what}), got {type(value).__name__}")
    missing = [key for key in keys if key not in value]
    if missing:
        raise ValueError(f"{where}: missing {missing} ({what} has {list(keys)}; this one has {sorted(map(str, value))})")
    return value


def _image_name(name, where: str, key: str) -> str:
    """An image file name read from a captions file: a non-empty string relative to the images folder."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty file name, got {name!r}")
    check_relative(name, where, f"{key!r}")
    return name


def _caption_text(caption, where: str) -> str:
    if not isinstance(caption, str):
        raise ValueError(f"{where}: 'caption' must be a string, got {caption!r}")
    return caption


def coco_captions(annotation_file: str | os.PathLike) -> list[dict[str, str]]:
    """``[{"image": file, "caption": str}, ...]`` from a captions file, in file order:

    - COCO's ``annotations/captions_val2017.json`` (``{"images": [{"id", "file_name"}],
      "annotations": [{"image_id", "caption"}]}``): ``image`` is the ``file_name``, relative to
      the ``val2017/`` folder;
    - a Karpathy-split file as the ARO code uses (``coco_karpathy_test.json``,
      ``flickr30k_test.json`` from the BLIP repository: ``[{"image": path, "caption": [str, ...]}]``):
      one entry per caption, ``image`` as given (relative to the COCO root or the Flickr30k root).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: a file of neither layout, or an entry without a key it needs (``images[k]``
            without ``id`` / ``file_name``, ``annotations[k]`` without ``image_id`` / ``caption``,
            a list entry without ``image`` / ``caption``), of the wrong type, referring to an
            unknown image, or an image name that is not relative to the images folder (absolute,
            or through ``..``); each names the file and the entry.
    """
    path = os.fspath(annotation_file)
    data = read_json(path, "captions file")
    out: list[dict[str, str]] = []
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        for key in ("images", "annotations"):
            if not isinstance(data[key], list):
                raise ValueError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
        files = {}
        for k, image in enumerate(data["images"]):
            here = f"{path}, images[{k}]"
            image = _entry(image, ("id", "file_name"), here, "a COCO image")
            files[image["id"]] = _image_name(image["file_name"], here, "file_name")
        for k, ann in enumerate(data["annotations"]):
            here = f"{path}, annotations[{k}]"
            ann = _entry(ann, ("image_id", "caption"), here, "a COCO caption annotation")
            if ann["image_id"] not in files:
                raise ValueError(f"{here}: refers to unknown image_id {ann['image_id']!r} (not an 'id' in 'images')")
            out.append({"image": files[ann["image_id"]], "caption": _caption_text(ann["caption"], here)})
    elif isinstance(data, list):
        for k, entry in enumerate(data):
            here = f"{path}, entry {k}"
            entry = _entry(entry, ("image", "caption"), here, "a Karpathy-split entry")
            image = _image_name(entry["image"], here, "image")
            captions = entry["caption"] if isinstance(entry["caption"], list) else [entry["caption"]]
            out.extend({"image": image, "caption": _caption_text(caption, here)} for caption in captions)
    else:
        keys = f" (it has {sorted(map(str, data))})" if isinstance(data, dict) else ""
        raise ValueError(f"{path}: expected COCO captions ({{'images', 'annotations'}}) or a Karpathy-split list{keys}")
    return out


ORDER_PERTURBATIONS = (
    "shuffle_nouns_and_adjectives",
    "shuffle_all_but_nouns_and_adjectives",
    "shuffle_within_trigrams",
    "shuffle_trigrams",
)


def aro_order_benchmark(
    captions: Sequence[Mapping[str, str]],
    images_dir: str | os.PathLike,
    name: str = "coco-order",
    seed: int = 0,
    pipeline: str = "auto",
    max_words: int | None = 30,
) -> MatchingBenchmark:
    """ARO's COCO-Order / Flickr30k-Order: an image, one of its captions and four word-order
    perturbations of it; the model should rank the original first (Precision@1 = ``text_score``).

    Args:
        captions: ``[{"image": file, "caption": str}, ...]``, e.g. :func:`coco_captions` of the
            Karpathy test split (what ARO uses: 5,000 COCO images x 5 captions; 1,000 Flickr30k
            images for Flickr30k-Order) or of COCO's ``captions_val2017.json``.
        images_dir: the folder the ``image`` paths are relative to.
        name: the benchmark's name (``"flickr30k-order"`` for Flickr30k).
        seed: the perturbations are drawn from ``random.Random(seed)``, in caption order, so a
            seed gives the same benchmark every time.
        pipeline: the installed spaCy English pipeline used for part-of-speech tags
            (:func:`load_spacy`); spaCy and the pipeline are required.
        max_words: captions are cleaned with :func:`normalize_caption` (ARO's ``pre_caption``,
            30 words) before being perturbed.

    Options, in ARO's order: the cleaned caption (true), :func:`shuffle_nouns_and_adjectives`,
    :func:`shuffle_all_but_nouns_and_adjectives`, :func:`shuffle_within_trigrams`,
    :func:`shuffle_trigrams`. Every option is a permutation of the original's words. A
    perturbation that reproduces the original (short captions, a caption without two nouns, ...)
    or an earlier perturbation is dropped rather than resampled, so an example has 2 to 5 options
    and no false option is ever the true caption; an example left with no false option is dropped.
    ``metadata`` counts both (``dropped_options``, ``dropped_examples``). Ties fail here, whereas
    ARO's ``argmax`` lets the original (listed first) win a tie.
    """
    nlp = load_spacy(pipeline)
    from spacy.tokens import Doc

    rows = []
    for k, row in enumerate(captions):
        if not isinstance(row, Mapping):
            raise ValueError(f"captions[{k}]: expected an object with 'image' and 'caption', got {type(row).__name__}")
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image or not isinstance(caption, str):
            raise ValueError(f"captions[{k}]: 'image' must be a non-empty string and 'caption' a string, got {dict(row)!r}")
        rows.append((image, normalize_caption(caption, max_words)))
    docs = nlp.pipe(Doc(nlp.vocab, words=text.split() or ["-"]) for _, text in rows)

    rng = random.Random(seed)
    examples, where = [], {}
    dropped_options = dropped_examples = 0
    for k, ((image, text), doc) in enumerate(zip(rows, docs)):
        shuffles = (
            [
                shuffle_nouns_and_adjectives(doc, rng),
                shuffle_all_but_nouns_and_adjectives(doc, rng),
                shuffle_within_trigrams(text, rng),
                shuffle_trigrams(text, rng),
            ]
            if text
            else []
        )
        options = list(dict.fromkeys([text, *shuffles]))
        dropped_options += len(shuffles) + 1 - len(options) if text else 0
        if len(options) < 2:
            dropped_examples += 1
            continue
        ref = (image, None)
        where.setdefault(ref, f"captions[{k}]")
        examples.append(
            MatchingExample(
                id=str(k),
                images=(ref,),
                texts=tuple(options),
                truth=((True,) + (False,) * (len(options) - 1),),
            )
        )
    metadata = {
        "source": f"{_SOURCE} (Order perturbations)",
        "seed": seed,
        "spacy_pipeline": resolve_spacy_pipeline(pipeline, "pipeline"),
        "perturbations": list(ORDER_PERTURBATIONS),
        "dropped_options": dropped_options,
        "dropped_examples": dropped_examples,
    }
    return file_benchmark(name, examples, images_dir, where, metadata)
