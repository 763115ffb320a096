"""The generation stages composed: factual image-caption items -> counterfactual records, in batches.

:class:`CounterfactualGenerator` runs, for a batch of :class:`FactualItem` s:

1. **load** the images (an unreadable one skips its item, counted);
2. **text edits**: every text editor's ``edit_batch`` over the batch's captions (rules, LLM);
3. **paraphrases** (optional): an LLM paraphraser for items with too few true captions;
4. **flip**: the mirrored image with left/right swapped in the caption (CounterCurate);
5. **grounding** (optional): for items without instance annotations, a detector + segmenter
   finds the objects the edits are about;
6. **inpainting**: object and attribute edits repaint the edited object's mask with the new
   concept; count edits remove one instance or add one in an empty box (Sahin et al.; CounterCurate
   with box-masked inpainting instead of the deprecated GLIGEN), all in one batched call;
7. **filters**: the pixel-change test inside/outside the mask and the image-text match of the
   edited pair; an image edit that fails keeps only its caption as a text-only negative;
8. **plausibility** (optional, :class:`~.plausibility_stage.PlausibilityStage`): blind text scorers
   score every candidate counterfactual caption against its factual caption, the gaps go on the
   counterfactual (``plausibility_gap``) and a negative far less plausible than its caption is
   dropped (per kind threshold); the adversarial refinement runs later, over the whole split, when
   :func:`~hf_counterfactual.generation.writer.finalize` publishes it.

Every model stage is batched over the whole batch. Each item's randomness is seeded from its
global index, so records do not depend on the batch size or on the number of processes, up to
floating-point rounding: batched kernels (inpainting, the CLIP filter) may round differently when
items are grouped differently (another batch size, process count, a resume, a thread count), e.g.
+-1 grey level in a few pixels or the 7th digit of a score. The same grouping gives identical bytes. Outcomes
are reported as per-item counters (``image_edit/...``, ``filter/<name>/passed|failed``,
``text_edit/skipped: caption too long`` and ``text_edit/dropped: over max edits`` from the rule
editor's caps, ``counterfactual/dropped: true caption|duplicate`` for candidates equal, up to case and whitespace,
to a true caption or to an earlier candidate, ...) that
the :class:`~hf_counterfactual.generation.writer.ShardedRecordWriter` stores with the shards, so a
dataset card can give filter pass rates for exactly the records written. Time per stage is kept in
:attr:`CounterfactualGenerator.timings`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..collator import to_rgb
from ..features import normalize_caption
from ..image_processing import STORAGE_JPEG_QUALITY, resize_for_storage
from .filters import ImageTextMatchFilter, PixelChangeFilter, pixel_change
from .image_edits import InpaintingEditor, box_mask, count_edit_masks, flip_counterfactual
from .text_edits import _NUMBERS, TextEdit, indefinite_article, pluralize
from .writer import GeneratedRecord, SkipRecord

logger = logging.getLogger(__name__)

__all__ = ["CounterfactualGenerator", "FactualItem", "Instance", "STAGES"]

#: Stage names, in the order they run (the keys of :attr:`CounterfactualGenerator.timings`).
STAGES = ("load", "text_edits", "paraphrases", "flip", "grounding", "inpainting", "filters", "plausibility", "assemble")

#: Per-caption stats of a text editor (``edit_batch_with_stats``, e.g. RuleBasedEditor's caps) ->
#: the item counter they are reported as.
EDITOR_COUNTERS = {
    "skipped_caption_too_long": "text_edit/skipped: caption too long",
    "dropped_over_max_edits": "text_edit/dropped: over max edits",
}

#: Edit kinds that an image edit can realise (the others stay text-only negatives).
IMAGE_EDIT_KINDS = ("object", "attribute", "count")

# Caption words that name COCO "person" instances, singular and plural.
PLURAL_PERSON_WORDS = frozenset(
    "people men women boys girls children kids ladies guys players skiers surfers skateboarders".split()
)
PERSON_WORDS = PLURAL_PERSON_WORDS | frozenset("person man woman boy girl child kid lady guy player skier surfer skateboarder".split())


@dataclass(eq=False)  # compared by identity: masks are arrays
class Instance:
    """One annotated (or detected) object of an image.

    Attributes:
        category: its category name ("dog", "person", or a detected phrase).
        box: ``(x0, y0, x1, y1)`` in pixels.
        mask: a boolean ``[height, width]`` mask, a function returning one (called once, when an
            edit first needs it: COCO polygons are cheap to keep, masks are not), or None for the box.
    """

    category: str
    box: tuple[float, float, float, float]
    mask: np.ndarray | Callable[[], np.ndarray] | None = None

    def get_mask(self, size: tuple[int, int]) -> np.ndarray:
        """The boolean mask for an image of ``size`` (width, height); raises ValueError when it lies
        outside the image or does not match its size."""
        width, height = size
        x0, y0, x1, y1 = self.box
        # COCO boxes are floats and may overshoot the border by rounding: allow one pixel.
        if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1 or not (x1 > x0 and y1 > y0):
            raise ValueError(f"box {tuple(self.box)} of {self.category!r} lies outside the {width}x{height} image")
        if callable(self.mask):  # decode once: an object and a count edit may both need it
            self.mask = self.mask()
        mask = self.mask
        if mask is None:
            return box_mask(size, (max(0, x0), max(0, y0), min(width, x1), min(height, y1)))
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (size[1], size[0]):
            raise ValueError(f"mask of {self.category!r} has shape {mask.shape}, the image is {size[0]}x{size[1]}")
        if not mask.any():
            raise ValueError(f"mask of {self.category!r} covers no pixel of the image")
        return mask


@dataclass
class FactualItem:
    """One factual image with its true captions (the first is the record's caption, the others its
    paraphrases) and, when annotated, its object instances (None: not annotated; the grounder, if
    any, finds objects instead; ``[]``: annotated, no objects)."""

    image: Image.Image | str
    captions: list[str]
    instances: list[Instance] | None = None
    id: Any = None


@dataclass
class _ImageEdit:
    """A planned inpainting: which text edit it realises, where, and with what prompt."""

    edit: TextEdit
    mask: np.ndarray
    prompt: str
    source: str  # "inpaint" or "box-inpaint"
    seed: int = 0  # from the item's index and the edit's position in the item: batch-independent


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'").lower() for w in text.split()]


def _count_of(span: str) -> int | None:
    """The number a count edit's span starts with ("four tall towers" -> 4, "a cat" -> 1)."""
    words = _words(span)
    if not words:
        return None
    first = words[0]
    if first in ("a", "an"):
        return 1
    if first in _NUMBERS:
        return _NUMBERS[first]
    return int(first) if first.isdigit() else None


def names_category(word: str, category: str) -> bool:
    """Whether the caption word ``word`` names instances of ``category`` (singular or plural; the
    people words for COCO's "person"; a detected phrase matches its own last word)."""
    word, category = word.lower(), category.lower()
    if category == "person" and word in PERSON_WORDS:
        return True
    head = category.split()[-1] if category else category
    return word in (category, head, pluralize(category), pluralize(head))


def is_plural(word: str, category: str) -> bool:
    """Whether the caption word ``word`` names several instances of ``category`` ("dogs" of "dog",
    "men" of "person"). A word equal to the category (a detected phrase names itself) is singular."""
    word, category = word.lower(), category.lower()
    if category == "person":
        return word in PLURAL_PERSON_WORDS
    head = category.split()[-1]
    return word != head and word in (pluralize(category), pluralize(head))


class CounterfactualGenerator:
    """Turns batches of :class:`FactualItem` into counterfactual records (the stages are in the
    module docstring). Pass it to ``ShardedRecordWriter.run_batched(items, generator.make_records)``.

    Args:
        text_editors: objects with ``edit_batch(captions) -> list[list[TextEdit]]``
            (:class:`~hf_counterfactual.generation.RuleBasedEditor`, ``LLMConceptEditor``). One
            that also has ``edit_batch_with_stats`` (RuleBasedEditor) reports per caption why it
            made fewer edits: a caption over its ``max_caption_words`` is counted as
            ``text_edit/skipped: caption too long`` and, if the item ends up without enough
            counterfactuals, is skipped as "caption too long (> N words)" rather than "no editable
            word"; edits over ``max_edits_per_caption`` are counted as ``text_edit/dropped: over max edits``.
        flip: add CounterCurate flips for captions naming left/right.
        inpainter: an :class:`InpaintingEditor`; None makes no inpainted images.
        image_edit_kinds: which kinds of text edit to realise as images (of "object",
            "attribute", "count").
        max_image_edits: image edits per item at most (they cost a diffusion call each).
        grounder: a ``GroundedSegmenter`` used for items whose ``instances`` is None.
        paraphraser: an object with ``paraphrase_batch(captions) -> list[list[str]]``, used for
            items with fewer than ``min_paraphrases`` other true captions.
        pixel_filter / match_filter: the filters; None skips one. The record's ``score`` is the
            match filter's cosine, else the pixel change inside the mask.
        remove_prompt: the prompt that repaints a removed instance.
        min_counterfactuals / max_counterfactuals: fewer -> the item is skipped (counted); more
            -> the first kept (image edits first, then flips, then text edits in editor order).
        seed: seed of instance choices and of the inpainting (per item: ``seed`` and its index).
        plausibility: a :class:`~.plausibility_stage.PlausibilityStage` (already fitted: its n-gram
            LM is fitted on the whole input's captions, :meth:`~.plausibility_stage.PlausibilityStage.fit`);
            None: no blind scoring. It sees the candidates after de-duplication and before
            ``min_counterfactuals`` / ``max_counterfactuals``, so a filtered record is refilled
            from the later candidates.
    """

    def __init__(
        self,
        text_editors: Sequence[Any] = (),
        flip: bool = True,
        inpainter: InpaintingEditor | None = None,
        image_edit_kinds: Sequence[str] = IMAGE_EDIT_KINDS,
        max_image_edits: int = 2,
        grounder=None,
        paraphraser=None,
        min_paraphrases: int = 0,
        pixel_filter: PixelChangeFilter | None = None,
        match_filter: ImageTextMatchFilter | None = None,
        remove_prompt: str = "background",
        min_counterfactuals: int = 1,
        max_counterfactuals: int = 8,
        seed: int = 0,
        plausibility=None,
        image_short_side: int | None = None,
        image_quality: int = STORAGE_JPEG_QUALITY,
    ):
        unknown = sorted(set(image_edit_kinds) - set(IMAGE_EDIT_KINDS))
        if unknown:
            raise ValueError(f"image_edit_kinds {unknown} cannot be inpainted; choose from {IMAGE_EDIT_KINDS}")
        self.text_editors = list(text_editors)
        self.flip = flip
        self.inpainter = inpainter
        self.image_edit_kinds = tuple(image_edit_kinds)
        self.max_image_edits = max_image_edits
        self.grounder = grounder
        self.paraphraser = paraphraser
        self.min_paraphrases = min_paraphrases
        self.pixel_filter = pixel_filter
        self.match_filter = match_filter
        # Records store their images at this short side (JPEG), for the fast image path; None: as they are.
        self.image_short_side, self.image_quality = image_short_side, image_quality
        self.remove_prompt = remove_prompt
        self.min_counterfactuals = min_counterfactuals
        self.max_counterfactuals = max_counterfactuals
        self.seed = seed
        self.plausibility = plausibility
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.num_items = 0

    # ------------------------------------------------------------------------------ the batch

    @contextmanager
    def _timed(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += time.perf_counter() - start

    def make_records(self, indices: Sequence[int], items: Sequence[FactualItem]) -> list[GeneratedRecord | SkipRecord]:
        """One result per item: a :class:`GeneratedRecord` with its counters, or a counted
        :class:`SkipRecord` (unreadable image, no usable caption, a caption too long for the
        text editor, too few counterfactuals)."""
        self.num_items += len(items)
        counts = [Counter() for _ in items]
        results: list[Any] = [None] * len(items)

        with self._timed("load"):
            images: list[Image.Image | None] = []
            for i, item in enumerate(items):
                try:
                    image = Image.open(item.image) if isinstance(item.image, str) else item.image
                    image.load()
                    images.append(to_rgb(image))
                except (OSError, ValueError) as err:
                    images.append(None)
                    results[i] = SkipRecord(f"unreadable image ({type(err).__name__})")
                    continue
                if not item.captions or not isinstance(item.captions[0], str) or not item.captions[0].strip():
                    images[-1] = None
                    results[i] = SkipRecord("no caption")
        live = [i for i in range(len(items)) if results[i] is None]
        captions = {i: items[i].captions[0].strip() for i in live}

        with self._timed("text_edits"):
            text_edits: dict[int, list[TextEdit]] = {i: [] for i in live}
            too_long: dict[int, int | None] = {}  # item -> the max_caption_words its caption exceeded
            for editor in self.text_editors:
                batch = [captions[i] for i in live]
                if hasattr(editor, "edit_batch_with_stats"):
                    edit_lists, editor_stats = editor.edit_batch_with_stats(batch)
                else:
                    edit_lists, editor_stats = editor.edit_batch(batch), [{} for _ in live]
                for i, edits, stats in zip(live, edit_lists, editor_stats):
                    text_edits[i].extend(edits)
                    for key, counter in EDITOR_COUNTERS.items():
                        if stats.get(key):
                            counts[i][counter] += stats[key]
                    if stats.get("skipped_caption_too_long"):
                        too_long.setdefault(i, getattr(editor, "max_caption_words", None))

        paraphrases = {i: [c.strip() for c in items[i].captions[1:] if isinstance(c, str) and c.strip()] for i in live}
        with self._timed("paraphrases"):
            if self.paraphraser is not None:
                wanting = [i for i in live if len(paraphrases[i]) < self.min_paraphrases]
                if wanting:
                    for i, new in zip(wanting, self.paraphraser.paraphrase_batch([captions[i] for i in wanting])):
                        known = {normalize_caption(c) for c in (captions[i], *paraphrases[i])}
                        fresh = [p for p in new if normalize_caption(p) not in known]
                        paraphrases[i].extend(fresh)
                        counts[i]["paraphrase/generated"] += len(fresh)

        with self._timed("flip"):
            flips = {i: flip_counterfactual(images[i], captions[i]) if self.flip else None for i in live}

        with self._timed("grounding"):
            instances = self._instances(live, items, images, text_edits, counts)

        planned: list[tuple[int, _ImageEdit]] = []
        for i in live:
            for plan in self._plan_image_edits(indices[i], images[i], text_edits[i], instances[i], counts[i]):
                planned.append((i, plan))

        with self._timed("inpainting"):
            edited: list[Image.Image | None] = []
            if planned:
                edited = self.inpainter.edit_batch(
                    [images[i] for i, _ in planned],
                    [plan.mask for _, plan in planned],
                    [plan.prompt for _, plan in planned],
                    seeds=[plan.seed for _, plan in planned],
                )

        with self._timed("filters"):
            image_cfs = self._filter(planned, edited, images, captions, counts)

        with self._timed("assemble"):
            candidates = {i: self._candidates(captions[i], paraphrases[i], flips[i], image_cfs[i], text_edits[i], counts[i]) for i in live}
        with self._timed("plausibility"):
            if self.plausibility is not None and live:
                scored = self.plausibility.apply([indices[i] for i in live], [captions[i] for i in live],
                                                 [candidates[i] for i in live], [counts[i] for i in live])
                candidates = dict(zip(live, scored))
        with self._timed("assemble"):
            for i in live:
                results[i] = self._assemble(captions[i], paraphrases[i], images[i], candidates[i], counts[i])
                if isinstance(results[i], SkipRecord) and i in too_long:
                    # Its text editor never looked at the caption: say so, not "no editable word".
                    cap = too_long[i]
                    reason = f"caption too long (> {cap} words)" if cap is not None else "caption too long"
                    results[i] = SkipRecord(reason, counts=results[i].counts)
        return results

    # ---------------------------------------------------------------------------- grounding

    def _instances(self, live, items, images, text_edits, counts) -> dict[int, list[Instance]]:
        instances = {i: list(items[i].instances or []) for i in live}
        if self.grounder is None or self.inpainter is None:
            return instances
        wanting, phrases = [], []
        for i in live:
            if items[i].instances is not None:
                continue
            targets = sorted({e.target.lower() for e in text_edits[i] if e.edit in self.image_edit_kinds and e.target})
            if targets:
                wanting.append(i)
                phrases.append(targets)
        if not wanting:
            return instances
        for i, detections in zip(wanting, self.grounder.detect_batch([images[i] for i in wanting], phrases)):
            counts[i]["grounding/detections"] += len(detections)
            instances[i] = [Instance(d.phrase, tuple(d.box), d.mask) for d in detections]
        return instances

    # ----------------------------------------------------------------------------- planning

    def _plan_image_edits(self, index, image, edits, instances, counts) -> list[_ImageEdit]:
        if self.inpainter is None or not instances:
            return []
        rng = random.Random(f"{self.seed}:{index}:image-edits")
        plans: list[_ImageEdit] = []
        for edit in edits:
            if len(plans) >= self.max_image_edits:
                break
            if edit.edit not in self.image_edit_kinds or not edit.target:
                continue
            matching = [inst for inst in instances if names_category(edit.target, inst.category)]
            if not matching:
                continue
            counts["image_edit/planned"] += 1
            try:
                plan = self._plan(edit, image, matching, instances, rng)
            except ValueError as err:  # a mask outside the image, an empty segmentation ...
                logger.info("item %d: no image edit for %r: %s", index, edit.caption, err)
                counts[f"image_edit/skipped: {_reason(err)}"] += 1
                continue
            if plan is None:
                counts["image_edit/skipped: count disagrees with annotations or no room"] += 1
                continue
            plan.seed = index * (self.max_image_edits + 1) + len(plans)
            plans.append(plan)
        return plans

    def _plan(self, edit: TextEdit, image, matching, instances, rng) -> _ImageEdit | None:
        size = image.size
        if edit.edit in ("object", "attribute"):
            plural = is_plural(edit.target, matching[0].category)
            if plural:
                # "two dogs" -> "two cats": every instance changes, in one inpainting over their union
                mask = np.logical_or.reduce([inst.get_mask(size) for inst in matching])
            else:
                # The caption names one object; with several of its category, repaint the largest.
                target = max(matching, key=lambda inst: (inst.box[2] - inst.box[0]) * (inst.box[3] - inst.box[1]))
                mask = target.get_mask(size)
            return _ImageEdit(edit, mask, edit.phrase or self._noun_phrase(edit, plural), "inpaint")
        # count: the caption's number must agree with the annotations before one is removed/added
        old, new = _count_of(edit.old), _count_of(edit.new)
        if old is None or new is None or old != len(matching) or abs(new - old) != 1:
            return None
        boxes = [inst.box for inst in matching]
        others = [inst.box for inst in instances if inst not in matching]
        options = count_edit_masks(
            size, boxes, masks=[inst.get_mask(size) for inst in matching], seed=rng.randrange(2**31), avoid=others
        )
        if new < old:
            removals = [o for o in options if o.kind == "remove"]
            return _ImageEdit(edit, rng.choice(removals).mask, self.remove_prompt, "box-inpaint")
        additions = [o for o in options if o.kind == "add"]
        if not additions:
            return None
        singular = edit.target if len(matching) == 1 and old == 1 else matching[0].category
        return _ImageEdit(edit, additions[0].mask, f"{indefinite_article(singular)} {singular}", "box-inpaint")

    @staticmethod
    def _noun_phrase(edit: TextEdit, plural: bool) -> str:
        """The prompt of a rule edit: "a dog" / "cats" (object), "a green cup" / "green apples"
        (attribute)."""
        phrase = edit.new if edit.edit == "object" else f"{edit.new} {edit.target}"
        return phrase if plural else f"{indefinite_article(phrase.split()[0])} {phrase}"

    # ------------------------------------------------------------------------------ filters

    def _filter(self, planned, edited, images, captions, counts) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = defaultdict(list)
        survivors = []
        for (i, plan), image in zip(planned, edited):
            counts[i]["image_edit/inpainted"] += 1
            if image is None:
                counts[i]["image_edit/no_output"] += 1
                logger.info("no image for %r: the inpainting pipeline returned nothing usable", plan.edit.caption)
                continue
            score = None
            if self.pixel_filter is not None:
                result = self.pixel_filter(images[i], image, plan.mask)
                counts[i][f"filter/pixel_change/{'passed' if result.passed else 'failed'}"] += 1
                if not result.passed:
                    logger.info("dropped the image of %r: %s", plan.edit.caption, result.reason)
                    continue
                score = result.score
            else:
                score, _ = pixel_change(images[i], image, plan.mask)
            survivors.append((i, plan, image, score))
        if self.match_filter is not None and survivors:
            results = self.match_filter.batch(
                [image for _, _, image, _ in survivors],
                [plan.edit.caption for _, plan, _, _ in survivors],
                [captions[i] for i, _, _, _ in survivors],
            )
            kept = []
            for (i, plan, image, _), result in zip(survivors, results):
                counts[i][f"filter/image_text/{'passed' if result.passed else 'failed'}"] += 1
                if result.passed:
                    kept.append((i, plan, image, result.score))
                else:
                    logger.info("dropped the image of %r: %s", plan.edit.caption, result.reason)
            survivors = kept
        for i, plan, image, score in survivors:
            counts[i]["image_edit/kept"] += 1
            out[i].append({"caption": plan.edit.caption, "image": image, "edit": plan.edit.edit, "source": plan.source, "score": float(score)})
        return out

    # ----------------------------------------------------------------------------- assemble

    def _candidates(self, caption, paraphrases, flipped, image_cfs, edits, counts) -> list[dict]:
        candidates = list(image_cfs)
        if flipped is not None:
            candidates.append({"caption": flipped[1], "image": flipped[0], "edit": "position", "source": "flip", "score": None})
        candidates += [{"caption": e.caption, "image": None, "edit": e.edit, "source": e.source, "score": None} for e in edits]
        # An edit that lands on a true caption is no counterfactual; an image-bearing
        # counterfactual wins over its text-only twin (they come first). Compared as the model sees
        # captions: up to case and whitespace.
        true = {normalize_caption(c) for c in (caption, *paraphrases)}
        seen, kept = set(true), []
        for cf in candidates:
            key = normalize_caption(cf["caption"])
            if key in seen:
                counts["counterfactual/dropped: " + ("true caption" if key in true else "duplicate")] += 1
                continue
            seen.add(key)
            kept.append(cf)
        return kept

    def _assemble(self, caption, paraphrases, image, kept, counts):
        if len(kept) < self.min_counterfactuals:
            reason = "no editable word" if not kept else f"fewer than {self.min_counterfactuals} counterfactuals"
            return SkipRecord(reason, counts=counts)
        kept = kept[: self.max_counterfactuals]
        if self.image_short_side is not None:  # after the filters, which judged the full-size edits
            image = resize_for_storage(image, self.image_short_side, self.image_quality)
            kept = [{**cf, "image": resize_for_storage(cf["image"], self.image_short_side, self.image_quality)} if cf["image"] is not None else cf
                    for cf in kept]  # fmt: skip
        record = {"image": image, "caption": caption, "paraphrases": paraphrases, "counterfactuals": kept}
        return GeneratedRecord(record, counts)

    # ------------------------------------------------------------------------------ report

    def timing_report(self) -> dict[str, dict[str, float]]:
        """Per stage: seconds, share of the total, and items per second through it."""
        total = sum(self.timings.values()) or float("nan")
        return {
            stage: {
                "seconds": seconds,
                "share": seconds / total,
                "items_per_second": self.num_items / seconds if seconds > 0 else float("inf"),
            }
            for stage, seconds in self.timings.items()
        }


def _reason(err: Exception) -> str:
    text = str(err)
    if "outside" in text:
        return "mask outside the image"
    if "covers no pixel" in text or "empty" in text:
        return "empty mask"
    return type(err).__name__
