"""Grounding + segmentation (GroundedSegmenter) with tiny random OWL-ViT / OWLv2 / Grounding DINO and
SAM models built from configs, plus stub detectors whose boxes are known, offline on CPU."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hf_counterfactual.generation import Detection, GroundedSegmenter
from hf_counterfactual.generation.image_edits import box_mask
from hf_counterfactual.tiny_models import build_tiny_grounding, build_word_level_tokenizer

WORDS = ["a", "person", "helmet", "cat", "black", "cup", "table", "dog", "rocket"]
# Phrase lists of different lengths, so that batching pads the shorter ones.
PHRASES = [["a person", "helmet"], ["a black cat"], ["cup", "table", "dog"]]
# Deliberately not square and all different: masks must come back at each original size.
SIZES = [(64, 64), (60, 40), (48, 36)]  # (width, height)


@pytest.fixture(scope="module")
def photos():
    from skimage import data

    arrays = [data.astronaut(), data.chelsea(), data.coffee()]
    return [Image.fromarray(a).resize(size, Image.Resampling.BILINEAR) for a, size in zip(arrays, SIZES)]


@pytest.fixture(scope="module")
def owl():
    return build_tiny_grounding(WORDS, seed=0, with_segmenter=True, detector="owlvit")


def _everything(parts, **kwargs):
    """A GroundedSegmenter that keeps every box (no threshold, no NMS, no cap) unless told otherwise."""
    settings = dict(box_threshold=0.0, text_threshold=0.0, nms_threshold=None, max_detections=None)
    settings.update(kwargs)
    return GroundedSegmenter(*parts, **settings)


def _raw_owl(detector, processor, image, phrases):
    """Per-box best score and the unclipped boxes, straight from the model and post-processor."""
    inputs = processor(images=[image], text=[phrases], return_tensors="pt")
    with torch.no_grad():
        outputs = detector(**inputs)
    scores = torch.sigmoid(outputs.logits[0]).max(dim=-1).values
    boxes = processor.post_process_grounded_object_detection(
        outputs, threshold=-1.0, target_sizes=[(image.height, image.width)]
    )[0]["boxes"]
    return scores.numpy(), boxes.numpy()


def _assert_same(a, b, masks_equal=True):
    assert [[d.phrase for d in item] for item in a] == [[d.phrase for d in item] for item in b]
    for item_a, item_b in zip(a, b):
        for da, db in zip(item_a, item_b):
            np.testing.assert_allclose(da.box, db.box, atol=1e-4)
            assert da.score == pytest.approx(db.score, abs=1e-5)
            if masks_equal:
                np.testing.assert_array_equal(da.mask, db.mask)


# ---------------------------------------------------------------------------------------------
# Tiny real detectors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["owlvit", "owlv2", "grounding-dino"])
def test_structure_and_box_masks(photos, detector):
    parts = build_tiny_grounding(WORDS, seed=0, with_segmenter=False, detector=detector)
    assert parts[2] is None and parts[3] is None
    results = _everything(parts).detect_batch(photos, PHRASES)
    assert len(results) == len(photos)
    for image, phrases, found in zip(photos, PHRASES, results):
        width, height = image.size
        assert found, "a zero threshold keeps some box of every image"
        order = [phrases.index(d.phrase) for d in found]
        assert order == sorted(order), "detections are grouped by phrase, in phrase order"
        for phrase_index in set(order):
            scores = [d.score for d in found if d.phrase == phrases[phrase_index]]
            assert scores == sorted(scores, reverse=True)
        for d in found:
            assert isinstance(d, Detection) and isinstance(d.score, float) and 0.0 <= d.score <= 1.0
            x0, y0, x1, y1 = d.box
            assert 0.0 <= x0 < x1 <= width and 0.0 <= y0 < y1 <= height
            assert d.mask.dtype == bool and d.mask.shape == (height, width)
            np.testing.assert_array_equal(d.mask, box_mask(image.size, d.box))
            rows, cols = np.nonzero(d.mask)
            assert cols.min() >= np.floor(x0) and cols.max() < np.ceil(x1)
            assert rows.min() >= np.floor(y0) and rows.max() < np.ceil(y1)


def test_each_box_goes_to_one_phrase_and_is_clipped(photos, owl):
    detector, processor = owl[:2]
    results = _everything(owl[:2]).detect_batch(photos, PHRASES)
    for image, phrases, found in zip(photos, PHRASES, results):
        scores, raw_boxes = _raw_owl(detector, processor, image, phrases)
        # OWL-ViT predicts one box per patch (16 here), all overlapping the image: each one is kept,
        # under exactly one phrase, with the model's best score over the phrases.
        assert len(found) == len(scores) == 16
        np.testing.assert_allclose(sorted(d.score for d in found), np.sort(scores), atol=1e-6)
        # OWL centres boxes on patch corners, so some stick out of the image: those are clipped.
        assert raw_boxes[:, 2].max() > image.width or raw_boxes[:, 3].max() > image.height
        clipped = np.stack([np.maximum(raw_boxes[:, :2], 0), np.minimum(raw_boxes[:, 2:], image.size)], axis=0)
        expected = {tuple(np.round(np.concatenate([lo, hi]), 3)) for lo, hi in zip(clipped[0], clipped[1])}
        assert {tuple(np.round(d.box, 3)) for d in found} == expected


def test_segmenter_masks(photos, owl):
    with_sam = _everything(owl).detect_batch(photos, PHRASES)
    boxes_only = _everything(owl[:2]).detect_batch(photos, PHRASES)
    # The segmenter changes the masks, nothing else.
    _assert_same(with_sam, boxes_only, masks_equal=False)
    differs = False
    for image, found, reference in zip(photos, with_sam, boxes_only):
        for d, r in zip(found, reference):
            assert d.mask.dtype == bool and d.mask.shape == (image.height, image.width)
            differs |= not np.array_equal(d.mask, r.mask)
    assert differs, "SAM masks are not just the boxes"

    # The first mask of image 1 is SAM's best-IoU candidate for that box, at the original size.
    sam, sam_processor = owl[2], owl[3]
    image, first = photos[1], with_sam[1][0]
    inputs = sam_processor(images=[image], input_boxes=[[list(first.box)]], return_tensors="pt")
    with torch.no_grad():
        outputs = sam(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].float(), multimask_output=True)
    candidates = sam_processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])[0]
    best = int(outputs.iou_scores[0, 0].argmax())
    np.testing.assert_array_equal(first.mask, candidates[0, best].numpy())


def test_batching_does_not_change_results(photos, owl):
    one = _everything(owl, batch_size=1).detect_batch(photos, PHRASES)
    for batch_size in (2, 3):
        _assert_same(_everything(owl, batch_size=batch_size).detect_batch(photos, PHRASES), one)


def test_box_threshold_filters(photos, owl):
    raw = [_raw_owl(owl[0], owl[1], image, phrases)[0] for image, phrases in zip(photos, PHRASES)]
    above_all = float(max(scores.max() for scores in raw)) + 1e-3
    assert _everything(owl[:2], box_threshold=above_all).detect_batch(photos, PHRASES) == [[], [], []]

    threshold = float(np.median(raw[1]))
    results = _everything(owl[:2], box_threshold=threshold).detect_batch(photos, PHRASES)
    for scores, found in zip(raw, results):
        assert len(found) == int((scores > threshold).sum())
        assert all(d.score > threshold for d in found)
    assert 0 < len(results[1]) < 16


def test_max_detections_and_nms(photos, owl):
    everything = _everything(owl[:2]).detect_batch(photos, PHRASES)
    capped = _everything(owl[:2], max_detections=1).detect_batch(photos, PHRASES)
    for full, top in zip(everything, capped):
        phrases = list(dict.fromkeys(d.phrase for d in full))
        assert [d.phrase for d in top] == phrases
        for d in top:
            assert d == next(f for f in full if f.phrase == d.phrase)

    suppressed = _everything(owl[:2], nms_threshold=0.1).detect_batch(photos, PHRASES)
    for full, kept in zip(everything, suppressed):
        for phrase in {d.phrase for d in kept}:
            mine = [d.box for d in kept if d.phrase == phrase]
            assert mine[0] == next(d.box for d in full if d.phrase == phrase), "the best box always survives"
            for i, a in enumerate(mine):
                for b in mine[i + 1 :]:
                    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
                    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
                    assert inter / union <= 0.1


def test_tiny_grounding_dino_with_sam(photos):
    parts = build_tiny_grounding(WORDS, seed=0, with_segmenter=True, detector="grounding-dino")
    results = _everything(parts).detect_batch(photos, PHRASES)
    for image, phrases, found in zip(photos, PHRASES, results):
        assert found and all(d.phrase in phrases for d in found)
        assert all(d.mask.shape == (image.height, image.width) and d.mask.dtype == bool for d in found)


# ---------------------------------------------------------------------------------------------
# Stub detectors: known boxes in, exactly those boxes out
# ---------------------------------------------------------------------------------------------


class _StubDetector(torch.nn.Module):
    """Returns nothing useful; records whether gradients were on during the forward pass."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, **inputs):
        self.calls.append({"grad": torch.is_grad_enabled(), "inputs": inputs})
        return SimpleNamespace()


class _StubQueryProcessor:
    """An OWL-style processor: one query per phrase, labels are query indices. ``boxes_for`` maps an
    image's first phrase to ``[(query index, score, xyxy box)]`` in original pixels."""

    def __init__(self, boxes_for):
        self.boxes_for = boxes_for
        self.calls = []

    def __call__(self, images, text, return_tensors="pt"):
        self._text = text
        rows = sum(len(item) for item in text)
        return {"input_ids": torch.ones(rows, 4, dtype=torch.long), "pixel_values": torch.zeros(len(images), 3, 4, 4)}

    def post_process_grounded_object_detection(self, outputs, threshold=0.1, target_sizes=None, text_labels=None):
        self.calls.append({"threshold": threshold, "target_sizes": target_sizes})
        results = []
        for queries in self._text:
            hits = [h for h in self.boxes_for.get(queries[0], []) if h[1] > threshold]
            results.append(
                {
                    "labels": torch.tensor([h[0] for h in hits], dtype=torch.long),
                    "scores": torch.tensor([h[1] for h in hits]),
                    "boxes": torch.tensor([h[2] for h in hits], dtype=torch.float32).reshape(-1, 4),
                }
            )
        return results


def test_stub_detector_box_is_clipped_and_masked():
    width, height = 40, 30
    image = Image.new("RGB", (width, height), "gray")
    detector = _StubDetector()
    processor = _StubQueryProcessor(
        {
            "cat": [
                (0, 0.9, (-5.0, 10.0, width + 20.0, 25.5)),  # sticks out left and right
                (0, 0.2, (1.0, 1.0, 5.0, 5.0)),  # below box_threshold
                (1, 0.8, (width + 1.0, 0.0, width + 9.0, 5.0)),  # entirely outside: dropped
            ]
        }
    )
    grounded = GroundedSegmenter(detector, processor, box_threshold=0.3)
    [found] = grounded.detect_batch([image], [["cat", "dog"]])
    assert found == [found[0]] and found[0].phrase == "cat" and found[0].score == pytest.approx(0.9)
    assert found[0].box == (0.0, 10.0, float(width), 25.5)
    np.testing.assert_array_equal(found[0].mask, box_mask((width, height), (0, 10, width, 25.5)))
    assert found[0].mask[10:26].all() and not found[0].mask[:10].any() and not found[0].mask[26:].any()
    # The post-processor got the original (height, width) and the box threshold; no gradients.
    assert processor.calls == [{"threshold": 0.3, "target_sizes": [(height, width)]}]
    assert detector.calls[0]["grad"] is False


def test_padding_queries_are_masked():
    """A batch pads shorter phrase lists; OWL masks a query whose first token id is 0."""
    detector = _StubDetector()
    processor = _StubQueryProcessor({})
    images = [Image.new("RGB", (8, 8)) for _ in range(2)]
    GroundedSegmenter(detector, processor, batch_size=2).detect_batch(images, [["cat", "dog", "cup"], ["cat"]])
    assert processor._text == [["cat", "dog", "cup"], ["cat", " ", " "]]
    first_tokens = detector.calls[0]["inputs"]["input_ids"][:, 0].tolist()
    assert first_tokens == [1, 1, 1, 1, 0, 0]


class _StubPromptProcessor:
    """A Grounding-DINO-style processor: one prompt per image, boxes labelled with decoded text."""

    def __init__(self, labels):
        self.labels = labels  # [(text label, score, xyxy box)]
        self.tokenizer = build_word_level_tokenizer(WORDS)
        self.prompts = None

    def __call__(self, images, text, padding=None, return_tensors="pt"):
        self.prompts = text
        return {"input_ids": torch.ones(len(images), 4, dtype=torch.long), "pixel_values": torch.zeros(len(images), 3, 4, 4)}

    def post_process_grounded_object_detection(self, outputs, input_ids=None, threshold=0.25, text_threshold=0.25, target_sizes=None):
        return [
            {
                "scores": torch.tensor([s for _, s, _ in self.labels]),
                "boxes": torch.tensor([b for _, _, b in self.labels], dtype=torch.float32),
                "text_labels": [t for t, _, _ in self.labels],
            }
            for _ in target_sizes
        ]


def test_prompt_style_labels_map_to_phrases():
    processor = _StubPromptProcessor(
        [
            ("a black cat", 0.5, (0, 0, 4, 4)),
            ("cat", 0.7, (1, 1, 5, 5)),  # part of a phrase: the phrase sharing most words
            ("dog <eos>", 0.6, (2, 2, 6, 6)),  # special tokens are not words of the label
            ("", 0.9, (3, 3, 7, 7)),  # no token passed text_threshold: no phrase
            ("rocket", 0.9, (3, 3, 7, 7)),  # names no phrase of this image
        ]
    )
    grounded = GroundedSegmenter(_StubDetector(), processor, nms_threshold=None)
    [found] = grounded.detect_batch([Image.new("RGB", (10, 10))], [["A Black Cat", "dog"]])
    assert processor.prompts == ["a black cat. dog."]
    assert [(d.phrase, d.score) for d in found] == [
        ("A Black Cat", pytest.approx(0.7)),
        ("A Black Cat", pytest.approx(0.5)),
        ("dog", pytest.approx(0.6)),
    ]


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


class _ExplodingDetector(_StubDetector):
    def forward(self, **inputs):
        raise AssertionError("the detector must not run")


def test_empty_phrase_lists_give_no_detection_and_no_forward():
    grounded = GroundedSegmenter(_ExplodingDetector(), _StubQueryProcessor({}))
    images = [Image.new("RGB", (8, 8)) for _ in range(2)]
    assert grounded.detect_batch(images, [[], []]) == [[], []]
    assert grounded.detect_batch([], []) == []


def test_input_errors(photos, owl):
    grounded = GroundedSegmenter(*owl[:2])
    with pytest.raises(ValueError, match="3 images but 2 phrase lists"):
        grounded.detect_batch(photos, PHRASES[:2])
    with pytest.raises(TypeError, match=r"phrases\[0\] is the string 'cat'"):
        grounded.detect_batch(photos[:1], ["cat"])
    with pytest.raises(ValueError, match=r"phrases\[1\]"):
        grounded.detect_batch(photos[:2], [["cat"], ["dog", "  "]])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        grounded.detect_batch([np.zeros((4, 4, 3))], [["cat"]])
    with pytest.raises(ValueError, match="segmenter"):
        GroundedSegmenter(*owl[:2], segmenter=owl[2])
