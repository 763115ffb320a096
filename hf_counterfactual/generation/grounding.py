"""Masks for data without annotations: a zero-shot (open-vocabulary) object detector finds the
phrases of a caption in the image, and an optional SAM segmenter turns each box into an object mask
(the "grounding + segmentation" step of Sahin et al.'s generative negative mining, Grounded-SAM
style).

Any ``AutoModelForZeroShotObjectDetection`` works as the detector: OWL-ViT / OWLv2 (one text query
per phrase) or Grounding DINO (all phrases in one "a cat. a dog." prompt). The segmenter is a
``SamModel`` with its ``SamProcessor``, prompted with the detected boxes. Without a segmenter each
mask is the detection's box (:func:`~hf_counterfactual.generation.image_edits.box_mask`).

Example::

    segmenter = GroundedSegmenter.from_pretrained("google/owlv2-base-patch16-ensemble",
                                                  "facebook/sam-vit-base", device="cuda")
    detections = segmenter.detect_batch(images, [["a dog", "a frisbee"], ...])
    masks = [d.mask for d in detections[0] if d.phrase == "a dog"]
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .image_edits import box_mask

__all__ = ["Detection", "GroundedSegmenter"]


@dataclass(frozen=True, eq=False)
class Detection:
    """One phrase found in one image.

    Attributes:
        phrase: the phrase as the caller gave it.
        box: ``(x0, y0, x1, y1)`` in pixels of the ORIGINAL image, clipped to it.
        score: the detector's confidence (a sigmoid probability in 0..1).
        mask: boolean ``[height, width]`` mask of the original image: the SAM mask (the best of its
            multimask outputs by predicted IoU) or, without a segmenter, the box. None is never
            produced by :class:`GroundedSegmenter` but allowed for callers that only need boxes.
    """

    phrase: str
    box: tuple[float, float, float, float]
    score: float
    mask: np.ndarray | None = None

    # The generated __eq__ would compare masks with ``==`` (an array, whose truth value raises).
    # Equal means same phrase, box, score and mask pixels; unhashable, as the mask is mutable.
    def __eq__(self, other) -> bool:
        if not isinstance(other, Detection):
            return NotImplemented
        if (self.phrase, tuple(self.box), self.score) != (other.phrase, tuple(other.box), other.score):
            return False
        if self.mask is None or other.mask is None:
            return self.mask is None and other.mask is None
        return bool(np.array_equal(self.mask, other.mask))

    __hash__ = None


# ---------------------------------------------------------------------------------------------
# Small pure helpers
# ---------------------------------------------------------------------------------------------


def _clip_box(box: Sequence[float], width: int, height: int) -> tuple[float, float, float, float] | None:
    """``box`` (xyxy) clipped to the image, or None when nothing of it lies inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = min(max(x0, 0.0), float(width)), min(max(x1, 0.0), float(width))
    y0, y1 = min(max(y0, 0.0), float(height)), min(max(y1, 0.0), float(height))
    if not (x1 > x0 and y1 > y0):
        return None
    return (x0, y0, x1, y1)


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _nms(boxes: Sequence[Sequence[float]], iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over boxes ALREADY sorted by descending score: the indices
    kept, in order. A box is dropped when its IoU with a kept box exceeds ``iou_threshold``."""
    kept: list[int] = []
    for i, box in enumerate(boxes):
        if all(_iou(box, boxes[j]) <= iou_threshold for j in kept):
            kept.append(i)
    return kept


_WORD = re.compile(r"\w+")


def _match_phrase(label: str, phrase_forms: Sequence[str]) -> int | None:
    """The index of the phrase a Grounding-DINO-style text label names, or None.

    Grounding DINO labels a box with the prompt tokens whose probability passed ``text_threshold``,
    decoded back to text: usually exactly one phrase (in the tokenizer's round-trip form, given in
    ``phrase_forms``), but sometimes part of one ("cat" of "a black cat") or words of two. An exact
    match wins; otherwise the phrase sharing the most words (ties: the earlier phrase).
    """
    label = label.strip()
    for index, form in enumerate(phrase_forms):
        if label == form:
            return index
    words = set(_WORD.findall(label.lower()))
    best, best_overlap = None, 0
    for index, form in enumerate(phrase_forms):
        overlap = len(words & set(_WORD.findall(form.lower())))
        if overlap > best_overlap:
            best, best_overlap = index, overlap
    return best


def _device_and_dtype(model):
    """The device and floating dtype of a model (a PreTrainedModel or any torch module)."""
    import torch

    device, dtype = getattr(model, "device", None), getattr(model, "dtype", None)
    if device is None or dtype is None:
        parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = device if device is not None else (parameter.device if parameter is not None else torch.device("cpu"))
        dtype = dtype if dtype is not None else (parameter.dtype if parameter is not None else torch.float32)
    return device, dtype


def _to_model(inputs, device, dtype) -> dict:
    """Tensors of a processor output on ``device``; floating tensors (pixel values) in the model's
    dtype, so that a float16 model gets float16 pixels."""
    moved = {}
    for key, value in dict(inputs).items():
        if hasattr(value, "to"):
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


# ---------------------------------------------------------------------------------------------
# The detector + segmenter
# ---------------------------------------------------------------------------------------------


class GroundedSegmenter:
    """Finds phrases in images with a zero-shot object detector and segments each found box with SAM.

    Example::

        grounded = GroundedSegmenter(detector, detector_processor, sam, sam_processor)
        found = grounded.detect_batch([image], [["a dog", "a red ball"]])[0]

    Args:
        detector: any ``AutoModelForZeroShotObjectDetection`` (OWL-ViT, OWLv2, Grounding DINO).
        detector_processor: its processor (``AutoProcessor``); its
            ``post_process_grounded_object_detection`` turns the outputs into boxes.
        segmenter: optional ``SamModel``; without it every mask is the detection's box.
        segmenter_processor: the ``SamProcessor`` of ``segmenter``.
        box_threshold: keep boxes whose score exceeds this (the post-processor's ``threshold``).
        text_threshold: Grounding DINO only: the prompt tokens whose probability exceeds this name
            the box's phrase. OWL models score each phrase as a whole and ignore it.
        batch_size: images per forward pass, for the detector and for the segmenter.
        max_detections: at most this many detections per phrase and image (the best ones); None
            keeps all.
        nms_threshold: per phrase, drop a box whose IoU with a better box of the same phrase exceeds
            this (open-vocabulary detectors return many near-duplicates of one object); None keeps
            duplicates.

    Batching does not change what is found for OWL models: the text queries that pad an image's
    phrase list up to the longest one in the batch are masked out. Grounding DINO pads images of
    a batch to a common size, which can move its scores slightly.
    """

    def __init__(
        self,
        detector,
        detector_processor,
        segmenter=None,
        segmenter_processor=None,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        batch_size: int = 4,
        max_detections: int | None = 10,
        nms_threshold: float | None = 0.5,
    ):
        if (segmenter is None) != (segmenter_processor is None):
            raise ValueError("give both segmenter and segmenter_processor, or neither")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_detections is not None and max_detections < 1:
            raise ValueError(f"max_detections must be >= 1 or None, got {max_detections}")
        self.detector = detector
        self.detector_processor = detector_processor
        self.segmenter = segmenter
        self.segmenter_processor = segmenter_processor
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.batch_size = batch_size
        self.max_detections = max_detections
        self.nms_threshold = nms_threshold
        post_process = getattr(detector_processor, "post_process_grounded_object_detection", None)
        if post_process is None:
            raise TypeError(
                f"{type(detector_processor).__name__} has no post_process_grounded_object_detection: "
                "pass the processor of a zero-shot object detector (AutoProcessor.from_pretrained)"
            )
        # Grounding DINO puts all phrases in one prompt and labels boxes with decoded prompt tokens
        # (it alone takes text_threshold); OWL models take one query per phrase and label boxes with
        # the query index.
        self._prompt_style = "text_threshold" in inspect.signature(post_process).parameters

    @classmethod
    def from_pretrained(
        cls,
        detector_name: str,
        segmenter_name: str | None = None,
        device=None,
        torch_dtype=None,
        **kwargs,
    ) -> GroundedSegmenter:
        """Loads the detector with ``AutoModelForZeroShotObjectDetection`` / ``AutoProcessor`` and,
        when ``segmenter_name`` is given, SAM with ``SamModel`` / ``SamProcessor``; both in eval mode
        on ``device``. ``torch_dtype`` goes to transformers' ``dtype=`` (transformers 5 renamed it).
        ``kwargs`` go to the constructor (thresholds, batch size).
        """
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, SamModel, SamProcessor

        load_kwargs = {} if torch_dtype is None else {"dtype": torch_dtype}
        detector = AutoModelForZeroShotObjectDetection.from_pretrained(detector_name, **load_kwargs).eval()
        detector_processor = AutoProcessor.from_pretrained(detector_name)
        segmenter = segmenter_processor = None
        if segmenter_name is not None:
            segmenter = SamModel.from_pretrained(segmenter_name, **load_kwargs).eval()
            segmenter_processor = SamProcessor.from_pretrained(segmenter_name)
        if device is not None:
            detector = detector.to(device)
            segmenter = segmenter.to(device) if segmenter is not None else None
        return cls(detector, detector_processor, segmenter, segmenter_processor, **kwargs)

    # -----------------------------------------------------------------------------------------

    def detect_batch(
        self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]
    ) -> list[list[Detection]]:
        """Finds each phrase of ``phrases[i]`` in ``images[i]``.

        Returns one list per image: the detections grouped by phrase in the order of
        ``phrases[i]`` (a repeated phrase counts once) and, within a phrase, by descending score.
        A phrase the image does not contain yields no detection; an image with no phrase gives [].
        Each box is clipped to its image (a box with nothing inside the image is dropped); a box
        goes to the one phrase the detector scores highest for it; per phrase, near-duplicates are
        suppressed (``nms_threshold``) and at most ``max_detections`` are kept.

        Raises:
            ValueError: ``images`` and ``phrases`` differ in length, or a phrase is empty.
            TypeError: an image is not a PIL image, or ``phrases[i]`` is a bare string.
        """
        if len(images) != len(phrases):
            raise ValueError(f"got {len(images)} images but {len(phrases)} phrase lists")
        queries: list[list[str]] = []
        for i, (image, item_phrases) in enumerate(zip(images, phrases)):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{i}] is a {type(image).__name__}, expected a PIL image")
            if isinstance(item_phrases, str):
                raise TypeError(f"phrases[{i}] is the string {item_phrases!r}; give a list of phrases per image")
            unique = []
            for phrase in item_phrases:
                if not isinstance(phrase, str) or not phrase.strip():
                    raise ValueError(f"phrases[{i}] holds an empty or non-string phrase: {phrase!r}")
                if phrase not in unique:
                    unique.append(phrase)
            queries.append(unique)
        rgb = [image.convert("RGB") for image in images]

        # (phrase index, score, clipped box) per image, from the detector.
        found: list[list[tuple[int, float, tuple[float, float, float, float]]]] = [[] for _ in images]
        active = [i for i, item in enumerate(queries) if item]
        for start in range(0, len(active), self.batch_size):
            chunk = active[start : start + self.batch_size]
            raw = self._detect_chunk([rgb[i] for i in chunk], [queries[i] for i in chunk])
            for i, hits in zip(chunk, raw):
                width, height = rgb[i].size
                for phrase_index, score, box in hits:
                    clipped = _clip_box(box, width, height)
                    if clipped is not None:
                        found[i].append((phrase_index, score, clipped))

        selected = [self._select(hits, len(queries[i])) for i, hits in enumerate(found)]
        masks = self._masks(rgb, [[box for _, _, box in hits] for hits in selected])
        return [
            [
                Detection(queries[i][phrase_index], box, score, mask)
                for (phrase_index, score, box), mask in zip(hits, masks[i])
            ]
            for i, hits in enumerate(selected)
        ]

    def _select(self, hits, num_phrases: int):
        """Hits grouped by phrase (in phrase order), by descending score within a phrase, after
        per-phrase NMS and the ``max_detections`` cap."""
        selected = []
        for phrase_index in range(num_phrases):
            # sorted() is stable: equal scores keep the detector's order, so results are reproducible
            mine = sorted((h for h in hits if h[0] == phrase_index), key=lambda h: -h[1])
            if self.nms_threshold is not None:
                mine = [mine[k] for k in _nms([h[2] for h in mine], self.nms_threshold)]
            if self.max_detections is not None:
                mine = mine[: self.max_detections]
            selected.extend(mine)
        return selected

    def _detect_chunk(self, images: list[Image.Image], queries: list[list[str]]):
        """Raw detections ``(phrase index, score, xyxy box in original pixels)`` per image, unclipped."""
        import torch

        device, dtype = _device_and_dtype(self.detector)
        target_sizes = [(image.height, image.width) for image in images]
        if self._prompt_style:
            # Grounding DINO: "a cat. a dog." as its processor builds it (lower case, ". " joined); built
            # here so that a phrase holding a "." does not silently turn off the processor's merging.
            prompts = [". ".join(p.strip().lower() for p in item) + "." for item in queries]
            inputs = self.detector_processor(images=images, text=prompts, padding="longest", return_tensors="pt")
        else:
            # One query per phrase, padded to the longest list of the chunk. The processor pads with " ",
            # which starts with BOS and so is NOT masked by OWL's query_mask (input_ids[..., 0] > 0): it
            # could win a box, and post-processing with text_labels then raises IndexError. Zeroed rows
            # are masked.
            longest = max(len(item) for item in queries)
            padded = [item + [" "] * (longest - len(item)) for item in queries]
            inputs = self.detector_processor(images=images, text=padded, return_tensors="pt")
            input_ids = inputs["input_ids"]
            if input_ids.shape[0] == len(images) * longest:
                input_ids = input_ids.clone()
                for row, item in enumerate(queries):
                    input_ids[row * longest + len(item) : (row + 1) * longest] = 0
                inputs["input_ids"] = input_ids
        model_inputs = _to_model(inputs, device, dtype)
        with torch.no_grad():
            outputs = self.detector(**model_inputs)
            if self._prompt_style:
                results = self.detector_processor.post_process_grounded_object_detection(
                    outputs,
                    input_ids=model_inputs["input_ids"],
                    threshold=self.box_threshold,
                    text_threshold=self.text_threshold,
                    target_sizes=target_sizes,
                )
            else:
                results = self.detector_processor.post_process_grounded_object_detection(
                    outputs, threshold=self.box_threshold, target_sizes=target_sizes
                )

        chunk_hits = []
        for item, result in zip(queries, results):
            scores = result["scores"].detach().float().cpu().tolist()
            boxes = result["boxes"].detach().float().cpu().tolist()
            if self._prompt_style:
                forms = [self._round_trip(p) for p in item]
                indices = [_match_phrase(self._strip_special(label), forms) for label in result["text_labels"]]
            else:
                indices = [int(v) for v in result["labels"].detach().cpu().tolist()]
            chunk_hits.append(
                [
                    (index, score, tuple(box))
                    for index, score, box in zip(indices, scores, boxes)
                    if index is not None and 0 <= index < len(item)
                ]
            )
        return chunk_hits

    def _strip_special(self, label: str) -> str:
        """A Grounding DINO label without special tokens and phrase separators: the post-processor
        masks only the first and the last of ``max_text_len`` positions, so "[SEP]" and "." of a
        short prompt reach the label when their probability passes ``text_threshold``."""
        for token in getattr(self.detector_processor.tokenizer, "all_special_tokens", []):
            label = label.replace(token, " ")
        return " ".join(word for word in label.split() if word not in (".", "?"))

    def _round_trip(self, phrase: str) -> str:
        """``phrase`` as a Grounding DINO label would spell it: lower-cased, tokenized, decoded."""
        tokenizer = self.detector_processor.tokenizer
        ids = tokenizer(phrase.strip().lower(), add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids).strip()

    def _masks(self, images: list[Image.Image], boxes: list[list[tuple]]) -> list[list[np.ndarray]]:
        """One boolean ``[height, width]`` mask per box: SAM's when there is a segmenter, else the box."""
        if self.segmenter is None:
            return [[box_mask(image.size, box) for box in item] for image, item in zip(images, boxes)]
        import torch

        masks: list[list[np.ndarray]] = [[] for _ in images]
        device, dtype = _device_and_dtype(self.segmenter)
        active = [i for i, item in enumerate(boxes) if item]
        for start in range(0, len(active), self.batch_size):
            chunk = active[start : start + self.batch_size]
            # SAM takes the same number of boxes for every image of a batch: pad with copies of an
            # image's last box (box prompts are decoded independently) and drop their masks.
            longest = max(len(boxes[i]) for i in chunk)
            prompts = [[list(b) for b in boxes[i]] + [list(boxes[i][-1])] * (longest - len(boxes[i])) for i in chunk]
            inputs = self.segmenter_processor(images=[images[i] for i in chunk], input_boxes=prompts, return_tensors="pt")
            with torch.no_grad():
                outputs = self.segmenter(
                    pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
                    input_boxes=inputs["input_boxes"].to(device=device, dtype=torch.float32),
                    multimask_output=True,
                )
            # pred_masks: [batch, boxes, candidates, h, w]; keep the candidate with the best predicted
            # IoU before upsampling (3x less work at the original size).
            best = outputs.iou_scores.argmax(dim=-1)
            low_res = torch.gather(
                outputs.pred_masks,
                2,
                best[:, :, None, None, None].expand(-1, -1, 1, *outputs.pred_masks.shape[-2:]),
            )
            upsampled = self.segmenter_processor.post_process_masks(
                list(low_res.float().cpu()), inputs["original_sizes"], inputs["reshaped_input_sizes"]
            )
            for row, i in enumerate(chunk):
                masks[i] = [upsampled[row][k, 0].numpy().astype(bool) for k in range(len(boxes[i]))]
        return masks
