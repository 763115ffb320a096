"""Image edits (flip, masks, tiny diffusers inpainting) and edit filters, offline on CPU."""

import json

import numpy as np
import pytest
from PIL import Image

from hf_counterfactual.generation.filters import FilterResult, ImageTextMatchFilter, PixelChangeFilter, pixel_change
from hf_counterfactual.generation.image_edits import (
    InpaintingEditor,
    box_mask,
    coco_instance_mask,
    count_edit_masks,
    flip_caption,
    flip_counterfactual,
)

# All boxes below are hand-written for this size (width, height): deliberately not square, so that
# resizing to the pipeline's square resolution and back is exercised.
SIZE = (96, 72)
BOX = (20, 12, 60, 48)  # xyxy


def _real_photo():
    """A real photo shipped by an installed package, or None."""
    try:
        from skimage import data

        return Image.fromarray(data.astronaut())
    except Exception:
        pass
    try:
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            return Image.open(f).convert("RGB")
    except Exception:
        pass
    try:
        from sklearn.datasets import load_sample_images

        return Image.fromarray(load_sample_images().images[0])
    except Exception:
        return None


def _textured_image():
    """Fallback when no package ships a photo: a deterministic textured image with no symmetry."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:256].astype(np.float32)
    base = np.stack([x, y, (x * 0.7 + y * 0.3) % 256], axis=-1)
    noise = rng.normal(0, 20, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photo():
    image = _real_photo() or _textured_image()
    return image.convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)


# ----------------------------------------------------------------------------------------------
# flip
# ----------------------------------------------------------------------------------------------


def test_flip_mirrors_image_and_swaps_words(photo):
    caption = "A dog to the LEFT of a cat; the Rightmost cup is left-hand of the leftmost one."
    flipped, new_caption = flip_counterfactual(photo, caption)
    assert new_caption == "A dog to the RIGHT of a cat; the Leftmost cup is right-hand of the rightmost one."
    assert flipped.size == photo.size
    a, b = np.asarray(photo), np.asarray(flipped)
    w = photo.size[0]
    for x, y in [(0, 0), (5, 17), (w - 1, 40), (33, 71)]:
        assert (b[y, x] == a[y, w - 1 - x]).all()
    assert (b == a[:, ::-1]).all()
    # the flip is an involution on both sides
    back, caption_back = flip_counterfactual(flipped, new_caption)
    assert caption_back == caption and (np.asarray(back) == a).all()


def test_flip_needs_a_side_word(photo):
    assert flip_counterfactual(photo, "a dog next to a cat") is None
    assert flip_counterfactual(photo, "a bright light on the leftover cake") is None  # no whole word
    assert flip_caption("Right.") == "Left."


# ----------------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------------


def test_box_mask_shape_coverage_and_errors():
    mask = box_mask(SIZE, BOX)
    assert mask.shape == (SIZE[1], SIZE[0]) and mask.dtype == bool
    assert mask.sum() == (60 - 20) * (48 - 12)
    assert mask[12, 20] and mask[47, 59] and not mask[48, 59] and not mask[47, 60]
    # COCO xywh is the same box
    assert (box_mask(SIZE, (20, 12, 40, 36), box_format="xywh") == mask).all()
    # pad grows on every side and is clipped to the image
    assert box_mask(SIZE, BOX, pad=2).sum() == 44 * 40
    assert box_mask(SIZE, (0, 0, 10, 10), pad=5).sum() == 15 * 15
    with pytest.raises(ValueError, match="outside"):
        box_mask(SIZE, (80, 10, 100, 20))
    with pytest.raises(ValueError, match="outside"):
        box_mask(SIZE, (-1, 10, 10, 20))
    with pytest.raises(ValueError, match="empty"):
        box_mask(SIZE, (10, 10, 10, 20))


def _write_coco(tmp_path, annotations):
    data = {
        "images": [{"id": 1, "file_name": "photo.png", "width": SIZE[0], "height": SIZE[1]}],
        "categories": [{"id": 1, "name": "person"}],
        "annotations": annotations,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    from pycocotools.coco import COCO

    return COCO(str(path))


def test_coco_instance_mask(tmp_path, photo):
    photo.save(tmp_path / "photo.png")
    square = [20, 12, 60, 12, 60, 48, 20, 48]  # the hand-written box as a polygon
    triangle = [10, 10, 50, 10, 10, 50]
    coco = _write_coco(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "area": 1440.0, "bbox": [20, 12, 40, 36], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [triangle], "area": 800.0, "bbox": [10, 10, 40, 40], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[200, 200, 250, 200, 250, 250]], "area": 1250.0, "bbox": [200, 200, 50, 50], "iscrowd": 0},
        ],
    )
    mask = coco_instance_mask(coco, coco.anns[1], size=Image.open(tmp_path / "photo.png").size)
    assert mask.shape == (SIZE[1], SIZE[0]) and mask.dtype == bool
    assert abs(int(mask.sum()) - 40 * 36) <= 40 + 36  # polygon rasterisation may differ by an edge
    assert (mask & box_mask(SIZE, BOX, pad=1)).sum() == mask.sum()  # it lies in its box
    triangle_mask = coco_instance_mask(coco, 2)  # by id
    assert abs(int(triangle_mask.sum()) - 800) <= 60
    with pytest.raises(ValueError, match="outside"):
        coco_instance_mask(coco, 3)
    with pytest.raises(ValueError, match="given"):
        coco_instance_mask(coco, 1, size=(100, 100))
    with pytest.raises(ValueError, match="not in"):
        coco_instance_mask(coco, 99)


def test_count_edit_masks():
    boxes = [(4, 4, 20, 20), (70, 40, 90, 66)]
    edits = count_edit_masks(SIZE, boxes, pad=2, seed=0)
    removes = [e for e in edits if e.kind == "remove"]
    adds = [e for e in edits if e.kind == "add"]
    assert [e.instance for e in removes] == [0, 1]
    assert removes[0].mask.sum() == 20 * 20  # 16x16 box grown by 2
    assert len(adds) == 1
    x0, y0, x1, y1 = adds[0].box
    assert (x1 - x0, y1 - y0) == (18, 21)  # median instance box
    for bx0, by0, bx1, by1 in boxes:  # the new box overlaps no instance
        assert x1 <= bx0 - 2 or bx1 + 2 <= x0 or y1 <= by0 - 2 or by1 + 2 <= y0
    assert adds[0].mask.sum() == 18 * 21
    assert count_edit_masks(SIZE, boxes, pad=2, seed=0)[2].box == adds[0].box  # seeded
    # instance masks are used (and grown) when given
    mask = np.zeros((SIZE[1], SIZE[0]), dtype=bool)
    mask[10, 10] = True
    assert count_edit_masks(SIZE, boxes[:1], masks=[mask], pad=1, add_box_size=(90, 70))[0].mask.sum() == 9
    # no room to add: remove edits only
    assert [e.kind for e in count_edit_masks(SIZE, [(0, 0, 96, 72)], add_box_size=(10, 10))] == ["remove"]
    # every free placement is found, even the only one: a 10x10 box fits only at the bottom-right
    # corner of an image whose other pixels are covered by `avoid` boxes (pad 0)
    only = count_edit_masks((30, 20), [(0, 0, 20, 20)], add_box_size=(10, 10), pad=0, avoid=[(20, 0, 30, 10)])
    assert [e.box for e in only if e.kind == "add"] == [(20, 10, 30, 20)]
    # and the draw covers the free placements: over seeds, several distinct ones, all free
    placed = {count_edit_masks(SIZE, boxes, pad=2, seed=s)[2].box for s in range(20)}
    assert len(placed) > 5


# ----------------------------------------------------------------------------------------------
# tiny diffusers inpainting
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_inpaint_pipeline():
    from hf_counterfactual.tiny_models import build_tiny_inpainting_pipeline

    return build_tiny_inpainting_pipeline("a red blue car dog cat person on the street".split())


def test_inpainting_editor_deterministic_and_sized(tiny_inpaint_pipeline, photo):
    editor = InpaintingEditor(tiny_inpaint_pipeline, num_inference_steps=2, batch_size=2, seed=0)
    assert editor.size == (64, 64)  # unet sample_size 32 x vae_scale_factor 2
    other = photo.resize((80, 64)).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    images = [photo, other, photo]
    masks = [box_mask(photo.size, BOX), box_mask(other.size, (0, 0, 40, 32)), box_mask(photo.size, BOX)]
    prompts = ["a red car", "a blue dog", "a red car"]
    first = editor.edit_batch(images, masks, prompts)
    assert [im.size for im in first] == [photo.size, other.size, photo.size]
    assert all(im.mode == "RGB" for im in first)
    again = editor.edit_batch(images, masks, prompts)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))  # bit-identical
    second = InpaintingEditor(tiny_inpaint_pipeline, num_inference_steps=2, batch_size=3, seed=0).edit_batch(images, masks, prompts)
    for a, b in zip(first, second):  # another batching: same output up to float round-off (1/255)
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1
    # items 0 and 2 are the same input with seeds 0 and 2: different noise, different output
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[2]))
    # explicit seeds make the output independent of the position in the call
    (alone,) = editor.edit_batch([photo], [masks[2]], [prompts[2]], seeds=[2])
    assert np.abs(np.asarray(alone, dtype=int) - np.asarray(first[2], dtype=int)).max() <= 1
    # keep_unmasked pastes the original outside the mask
    (kept,) = InpaintingEditor(tiny_inpaint_pipeline, num_inference_steps=2, keep_unmasked=True).edit_batch(
        [photo], [masks[0]], ["a red car"]
    )
    assert pixel_change(photo, kept, masks[0])[1] == 0.0
    with pytest.raises(ValueError, match="prompts"):
        editor.edit_batch(images, masks, prompts[:2])


def test_inpainting_editor_drops_missing_or_nan_outputs(photo):
    class BrokenPipeline:  # returns a NaN image for the first item and nothing for the second
        vae_scale_factor = 8

        def __call__(self, prompt, **kwargs):
            images = np.zeros((1, 64, 64, 3), dtype=np.float32)
            images[0, 0, 0, 0] = np.nan
            return type("Output", (), {"images": images})()

    editor = InpaintingEditor(BrokenPipeline(), size=64)
    mask = box_mask(photo.size, BOX)
    assert editor.edit_batch([photo, photo], [mask, mask], ["a", "b"]) == [None, None]


# ----------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------


def test_pixel_change_filter(photo):
    mask = box_mask(photo.size, BOX)
    check = PixelChangeFilter(min_inside=0.05, max_outside=0.02)

    unchanged = check(photo, photo.copy(), mask)
    assert isinstance(unchanged, FilterResult)
    assert not unchanged.passed and unchanged.score == 0.0 and "inside" in unchanged.reason

    edited = np.asarray(photo).copy()
    edited[mask] = 255 - edited[mask]  # invert only the masked region
    edited = Image.fromarray(edited)
    inside, outside = pixel_change(photo, edited, mask)
    assert inside > 0.05 and outside == 0.0
    result = check(photo, edited, mask)
    assert result.passed and result and result.score == pytest.approx(inside)

    everywhere = Image.fromarray(255 - np.asarray(photo))
    assert not check(photo, everywhere, mask).passed  # changed outside too
    with pytest.raises(ValueError, match="empty"):
        pixel_change(photo, edited, np.zeros_like(mask))
    with pytest.raises(ValueError):
        pixel_change(photo, edited.resize((10, 10)), mask)


def test_image_text_match_filter(photo):
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.scoring import DualEncoderScorer
    from hf_counterfactual.tiny_models import build_tiny_clip

    model, processor = build_tiny_clip(SCENE_VOCABULARY)
    scorer = DualEncoderScorer(model, processor, batch_size=2, show_progress=False)
    words = sorted(SCENE_VOCABULARY)
    images = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", photo.size, "red")]
    texts = [f"a {words[0]}", f"a {words[1]} {words[2]}", f"{words[3]}"]

    matcher = ImageTextMatchFilter(scorer, threshold=0.0)
    scores = matcher.scores_batch(images, texts)
    assert scores.shape == (3,) and np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-5).all()
    full = scorer.encode_images(images) @ scorer.encode_texts(texts).T  # the diagonal of the cosine matrix
    np.testing.assert_allclose(scores, full.diagonal().numpy(), atol=1e-5)

    results = matcher.batch(images, texts)
    assert [r.score for r in results] == pytest.approx(scores.tolist())
    threshold = float(np.median(scores))
    decisions = [r.passed for r in ImageTextMatchFilter(scorer, threshold=threshold).batch(images, texts)]
    assert decisions == [bool(s >= threshold) for s in scores]
    assert not ImageTextMatchFilter(scorer, threshold=1.5)(images[0], texts[0]).passed

    # margin: the edited caption must beat the original caption on the edited image
    pair = matcher.scores_batch([images[0], images[0]], [texts[0], texts[1]])
    better, worse = (texts[0], texts[1]) if pair[0] >= pair[1] else (texts[1], texts[0])
    with_margin = ImageTextMatchFilter(scorer, threshold=-1.0, margin=0.0)
    assert with_margin(images[0], better, original_caption=worse).passed
    if pair[0] != pair[1]:
        refused = with_margin(images[0], worse, original_caption=better)
        assert not refused.passed and "margin" in refused.reason
    assert not ImageTextMatchFilter(scorer, threshold=-1.0, margin=0.01)(images[0], better, original_caption=better).passed
    assert ImageTextMatchFilter(scorer, threshold=-1.0, margin=0.01)(images[0], better).passed  # no original: no margin test
