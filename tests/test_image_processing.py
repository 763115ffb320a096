"""The fast image path (hf_counterfactual.image_processing): agreement with the image processors, the
exact switch, normalisation on the device, fallbacks, and what the collator, trainer and scorer give."""

import io
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

from dummy_components import get_dummy_components
from hf_counterfactual import CounterfactualCollator, CounterfactualTrainer, CounterfactualTrainingArguments, DualEncoderScorer
from hf_counterfactual import image_processing
from hf_counterfactual.collator import load_image
from hf_counterfactual.image_processing import fast_image_transform, resolve_image_transform
from hf_counterfactual.training_args import default_num_workers

# Agreement of the draft-decoded path with the processor, in normalised units (README, module docstring).
MEAN_TOLERANCE, P99_TOLERANCE = 0.04, 0.3


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour noise with a few sharp shapes: edges and gradients, like a photo."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 16 + 2, width // 16 + 2, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + width // 6, y + height // 6]
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


def encoded(image: Image.Image, fmt: str, **save) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return {"bytes": buffer.getvalue(), "path": None}


PROCESSORS = {
    "clip-224": lambda: CLIPImageProcessorPil(),
    "clip-32": lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "clip-crop-wide": lambda: CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 64}),
    "siglip-224": lambda: SiglipImageProcessorPil(),
    "siglip-wide": lambda: SiglipImageProcessorPil(size={"height": 48, "width": 80}),
    # A filter torch's interpolation does not compute: Pillow's resize of the crop region (box=).
    "clip-lanczos": lambda: CLIPImageProcessorPil(resample=Image.Resampling.LANCZOS),
}
SIZES = [(640, 480), (480, 640), (333, 250), (224, 224), (298, 224), (900, 300), (100, 150), (20, 31)]  # the last two need upscaling; (298, 224) is stored at the model size (a crop)


@pytest.mark.parametrize("name", list(PROCESSORS))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_fast_path_agrees_with_the_processor(name, fmt):
    processor = PROCESSORS[name]()
    transform = fast_image_transform(processor)
    assert transform is not None
    for i, (width, height) in enumerate(SIZES):
        stored = encoded(photo_like(width, height, seed=i), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        decoded = load_image(stored, "test")
        expected = processor(decoded, return_tensors="pt")["pixel_values"]
        pixels = transform([stored])
        assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape
        difference = (transform.normalize(pixels) - expected).abs()
        where = f"{name} {fmt} {width}x{height}"
        if fmt == "PNG":  # no draft decode: the processor's pixels up to rounding (see close_to_exact)
            close_to_exact(difference, transform, where)
        else:
            assert difference.mean() <= MEAN_TOLERANCE, f"{where}: mean {difference.mean():.4f}"
            assert difference.flatten().quantile(0.99) <= P99_TOLERANCE, f"{where}: p99 {difference.flatten().quantile(0.99):.4f}"
        # Without the draft decode, a JPEG too gives the processor's pixels.
        exact_geometry = replace(transform, draft=False).normalize(replace(transform, draft=False)([stored]))
        close_to_exact((exact_geometry - expected).abs(), transform, where)


def close_to_exact(difference: torch.Tensor, transform, where: str) -> None:
    """Resampling only the crop is resize-then-crop's arithmetic, except that Pillow may run its two
    1-D passes in the other order for the smaller job, which rounds the intermediate image
    differently: a few uint8 levels at a few pixels."""
    level = 1 / 255 / min(transform.std)
    assert difference.max() <= 6 * level, f"{where}: max {difference.max() / level:.1f} levels"
    assert difference.mean() <= 0.25 * level, f"{where}: mean {difference.mean() / level:.3f} levels"


def test_draft_decode_reduces_the_decoded_image():
    transform = fast_image_transform(CLIPImageProcessorPil())
    stored = encoded(photo_like(1280, 960), "JPEG")
    assert transform.open(stored).size == (320, 240)  # 1/4: still >= the 298 x 224 the processor resizes to
    assert transform.open(Image.open(io.BytesIO(stored["bytes"]))).size == (1280, 960)  # already decoded: as is


def test_exif_orientation_is_applied_as_datasets_does():
    processor = CLIPImageProcessorPil()
    image = photo_like(640, 480)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored = encoded(image, "JPEG", exif=exif.tobytes(), quality=90)
    decoded = load_image(stored, "test")
    assert decoded.size == (480, 640)
    transform = fast_image_transform(processor)
    difference = (transform.normalize(transform([stored])) - processor(decoded, return_tensors="pt")["pixel_values"]).abs()
    assert difference.mean() <= MEAN_TOLERANCE and difference.flatten().quantile(0.99) <= P99_TOLERANCE


def test_normalisation_on_the_device_equals_the_processors_float_output():
    processor = CLIPImageProcessorPil()
    image = photo_like(224, 224)  # already the output size: the resize keeps every pixel
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    transform = fast_image_transform(processor)
    expected = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(transform.normalize(pixels), expected, rtol=0, atol=2e-6)
    assert transform.normalize(pixels, torch.bfloat16).dtype == torch.bfloat16
    # Read from the processor, not hard-coded.
    other = CLIPImageProcessorPil(image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.6, 0.7], rescale_factor=1 / 127.5)
    torch.testing.assert_close(
        fast_image_transform(other).normalize(pixels), other(image, return_tensors="pt")["pixel_values"], rtol=0, atol=2e-6
    )
    plain = CLIPImageProcessorPil(do_normalize=False, do_rescale=False)
    torch.testing.assert_close(fast_image_transform(plain).normalize(pixels), plain(image, return_tensors="pt")["pixel_values"].float())


class _PaddingProcessor(CLIPImageProcessorPil):
    def _preprocess(self, images, **kwargs):  # not the standard pipeline
        return super()._preprocess(images, **kwargs)


@pytest.mark.parametrize(
    "processor, reason",
    [
        (lambda: CLIPImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 64}), "size="),
        (lambda: CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 48, "width": 48}), "larger than"),
        (lambda: CLIPImageProcessorPil(do_pad=True), "do_pad"),
        (lambda: CLIPImageProcessorPil(do_resize=False), "do_resize"),
        (lambda: CLIPImageProcessorPil(do_convert_rgb=False), "do_convert_rgb"),
        (lambda: _PaddingProcessor(), "standard"),
    ],
)
def test_unsupported_settings_fall_back_to_the_processor_with_a_reason(processor, reason, caplog):
    processor = processor()
    with caplog.at_level(logging.WARNING, logger="hf_counterfactual.image_processing"):
        assert resolve_image_transform(processor, "fast") is None
    assert reason in caplog.text and "using the processor itself" in caplog.text


def test_the_switch_gives_exactly_the_processors_tensors():
    _, processor, records = get_dummy_components(num_records=4)
    records = [dict(r, image=encoded(photo_like(96, 64, seed=i), "JPEG")) for i, r in enumerate(records)]
    exact = CounterfactualCollator(processor, image_path="exact")
    assert exact.image_transform is None
    batch = exact(records)
    images = [load_image(r["image"], "test") for r in records]
    expected = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"][batch["image_index"]], expected)
    with pytest.raises(ValueError, match="image_path"):
        CounterfactualCollator(processor, image_path="quick")


def test_the_collators_batch_contract_is_unchanged_by_the_fast_path():
    _, processor, records = get_dummy_components(num_records=6)
    # Undecoded JPEGs, two records sharing one photo: one row, one content key.
    photos = [encoded(photo_like(120, 90, seed=i), "JPEG") for i in range(5)]
    records = [dict(r, image=photos[min(i, 4)] if i != 5 else dict(photos[0])) for i, r in enumerate(records)]
    batches = {}
    for path in ("fast", "exact"):
        torch.manual_seed(0)
        batches[path] = CounterfactualCollator(processor, image_path=path)(records)
    fast, exact = batches["fast"], batches["exact"]
    assert fast.keys() == exact.keys()
    for key, value in exact.items():
        if isinstance(value, torch.Tensor):
            assert fast[key].shape == value.shape, key
            if key not in ("pixel_values", "image_key"):
                assert torch.equal(fast[key], value), key
    assert fast["image_index"][5] == fast["image_index"][0]  # the shared photo: one row
    assert len(set(fast["image_key"].tolist())) == fast["pixel_values"].shape[0]
    # Deferred normalisation (the trainer's collator): uint8, normalised later to the very same floats.
    torch.manual_seed(0)
    collator = CounterfactualCollator(processor, defer_normalization=True)
    deferred = collator(records)
    assert deferred["pixel_values"].dtype == torch.uint8 and fast["pixel_values"].dtype == torch.float32
    assert torch.equal(collator.normalize_pixel_values(deferred["pixel_values"]), fast["pixel_values"])
    assert torch.equal(deferred["image_key"], fast["image_key"])
    # Content keys are equal for equal content in every collator call (and process).
    again = CounterfactualCollator(processor)([records[5], records[1]])
    assert again["image_key"][0] == fast["image_key"][fast["image_index"][0]]


def make_args(tmp_path, **kwargs):
    return CounterfactualTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, use_cpu=True, **kwargs,
    )  # fmt: skip


def test_a_trainer_step_gives_the_same_loss_on_the_fast_and_exact_paths(tmp_path):
    model, processor, records = get_dummy_components(num_records=4)
    records = [dict(r, image=encoded(photo_like(160, 120, seed=i), "JPEG", quality=90)) for i, r in enumerate(records)]
    losses, terms = {}, {}
    for path in ("fast", "exact"):
        trainer = CounterfactualTrainer(model=model, args=make_args(tmp_path, image_path=path, objective="cf-vlm"), processing_class=processor)
        torch.manual_seed(0)
        batch = trainer.data_collator(records)
        assert batch["pixel_values"].dtype == (torch.uint8 if path == "fast" else torch.float32)
        with torch.no_grad():
            losses[path] = trainer.compute_loss(model, batch).item()
        terms[path] = {name: values[-1] for name, values in trainer._metrics["train"].items()}
    assert losses["fast"] == pytest.approx(losses["exact"], rel=0.02, abs=1e-3)
    for name, value in terms["exact"].items():
        assert terms["fast"][name] == pytest.approx(value, rel=0.05, abs=1e-2), name


def test_the_trainer_normalises_a_fast_batch_as_the_processor(tmp_path):
    model, processor, records = get_dummy_components(num_records=4)
    trainer = CounterfactualTrainer(model=model, args=make_args(tmp_path), processing_class=processor)
    batch = trainer.data_collator(records)
    normalized = trainer._normalized_inputs(batch)["pixel_values"]
    assert normalized.dtype == torch.float32
    exact = processor.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(normalized[batch["image_index"]], exact, rtol=0, atol=1.01 / 255 / min(processor.image_processor.image_std))


def test_unset_dataloader_workers_are_sized_from_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert default_num_workers() == 4
    assert make_args(tmp_path).dataloader_num_workers == 4
    assert make_args(tmp_path, dataloader_num_workers=0).dataloader_num_workers == 0
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_num_workers() == 0  # one core a process: load in the main process
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert default_num_workers() == 16


def test_the_scorer_encodes_through_workers_and_the_fast_path():
    model, processor, _ = get_dummy_components()
    images = [photo_like(64 + 8 * i, 48, seed=i) for i in range(10)]
    stored = [encoded(image, "PNG") for image in images]
    exact = DualEncoderScorer(model, processor, batch_size=4, image_path="exact", num_workers=0, show_progress=False)
    reference = exact.encode_images(images)
    for workers in (0, 2):
        fast = DualEncoderScorer(model, processor, batch_size=4, num_workers=workers, show_progress=False, pixel_cache=None)  # every image through the workers
        assert fast.image_transform is not None
        torch.testing.assert_close(fast.encode_images(images), reference, rtol=0, atol=2e-3)
        torch.testing.assert_close(fast.encode_images(stored), reference, rtol=0, atol=2e-3)  # undecoded images too
    batches = list(exact.pixel_batches(images))
    assert [b.shape[0] for b in batches] == [4, 4, 2] and batches[0].dtype == torch.float32
    assert DualEncoderScorer(model, processor, batch_size=4, num_workers=8, show_progress=False)._workers(10) == 2


def test_the_vlm_scorer_uses_the_fast_path_where_its_processor_allows():
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.tiny_models import build_tiny_llava
    from hf_counterfactual.vlm_scoring import VLMScorer

    model, processor = build_tiny_llava(SCENE_VOCABULARY)
    images = [photo_like(64, 48 + 8 * i, seed=i) for i in range(3)]
    fast, exact = VLMScorer(model, processor), VLMScorer(model, processor, image_path="exact")
    assert fast.image_transform is not None and exact.image_transform is None
    with torch.no_grad():
        for a, b in zip(fast.image_features(images), exact.image_features(images)):
            torch.testing.assert_close(a, b, rtol=0, atol=5e-3)


def test_an_image_stored_at_the_models_size_is_cropped_not_resampled(monkeypatch):
    """Short side already the processor's shortest_edge: the crop alone, equal to the processor's output."""
    processor = CLIPImageProcessorPil()  # shortest_edge 224, crop 224
    transform = fast_image_transform(processor)
    image = photo_like(298, 224)
    calls = []
    original, interpolate = Image.Image.resize, torch.nn.functional.interpolate
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: calls.append(a) or interpolate(*a, **k))
    fast = transform([encoded(image, "PNG")])
    assert not calls
    monkeypatch.undo()
    expected = processor(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(transform.normalize(fast), expected, rtol=0, atol=1e-5)


def test_resize_for_storage_scales_the_short_side_down_never_up():
    from hf_counterfactual.image_processing import resize_for_storage

    stored = load_image(resize_for_storage(photo_like(300, 200), 48), "test")
    assert stored.size == (72, 48) and Image.open(io.BytesIO(resize_for_storage(photo_like(300, 200), 48)["bytes"])).format == "JPEG"
    assert load_image(resize_for_storage(photo_like(20, 31), 48), "test").size == (20, 31)
    with pytest.raises(ValueError, match="short_side"):
        resize_for_storage(photo_like(20, 31), 0)
    with pytest.raises(ValueError, match="quality"):
        resize_for_storage(photo_like(20, 31), 16, quality=0)
    sizes = [len(resize_for_storage(photo_like(300, 200), 100, quality)["bytes"]) for quality in (50, 90, 95)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]  # the quality asked for, not a fixed one


@pytest.mark.parametrize("resample, torch_mode", [(Image.Resampling.BICUBIC, "bicubic"), (Image.Resampling.BILINEAR, "bilinear"),
                                                  (Image.Resampling.LANCZOS, None)])  # fmt: skip
def test_bicubic_and_bilinear_resample_with_torch_other_filters_with_pillow(monkeypatch, resample, torch_mode):
    """The agreement test above covers both resamplers only if each filter takes the one named here."""
    transform = fast_image_transform(CLIPImageProcessorPil(resample=resample))
    stored = [encoded(photo_like(333, 250), "PNG"), encoded(photo_like(640, 427), "JPEG")]  # 427: a partial draft block
    modes, boxes = [], []
    original, interpolate = Image.Image.resize, torch.nn.functional.interpolate
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: boxes.append(k.get("box")) or original(self, *a, **k))
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: modes.append(k["mode"]) or interpolate(*a, **k))
    pixels = transform(stored)
    assert pixels.shape == (2, 3, 224, 224)
    if torch_mode is None:
        assert not modes and len(boxes) == 2 and all(box is not None for box in boxes)
    else:
        assert modes == [torch_mode, torch_mode] and not boxes


def test_image_pixels_reads_pillows_memory_or_copies_it_and_the_output_is_the_same():
    from hf_counterfactual.image_processing import image_pixels

    image = photo_like(53, 37)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    shared = image_pixels(image)  # Pillow's own 4-byte pixels, no copy
    assert shared.shape == (1, 4, 37, 53) and torch.equal(shared[0, :3], expected)
    assert shared.permute(0, 2, 3, 1).is_contiguous()  # channels-last: torch's vectorised uint8 layout
    large = Image.new("RGB", (4000, 3000), (10, 20, 30))  # several memory blocks: Pillow cannot export it, so a copy
    copied = image_pixels(large)
    assert copied.shape == (1, 3, 3000, 4000) and torch.equal(copied[0, :, -1, -1], torch.tensor([10, 20, 30], dtype=torch.uint8))


def test_a_crop_without_resampling_owns_its_memory():
    """Stored at the resized size, the fast path's output must not be a view of the decoded image's read-only memory."""
    transform = fast_image_transform(CLIPImageProcessorPil())
    image = photo_like(298, 224)
    pixels = transform.load(image)
    pixels.zero_()  # would write into Pillow's buffer if it were a view
    assert np.array(image).any() and transform.load(image).any()


def test_a_batch_resamples_images_of_one_stored_size_in_one_call_each_as_it_would_alone(monkeypatch):
    """FastImageTransform.stack: images torch resamples whole from one stored size share an
    F.interpolate call, and each row is what to_uint8 gives that image alone; the others (another
    size, a draft decode with a partial block, an image stored at the resized size) take their own path."""
    transform = fast_image_transform(PROCESSORS["clip-32"]())
    grey = photo_like(64, 64, seed=9).convert("L")  # RGB once decoded: it joins the 64 x 64 images
    stored = [encoded(photo_like(64, 64, seed=i), "PNG") for i in range(3)] + [
        encoded(photo_like(48, 40, seed=3), "PNG"),
        encoded(photo_like(43, 32, seed=4), "PNG"),  # short side 32 already: a crop, no resampling
        encoded(photo_like(640, 427, seed=5), "JPEG"),  # drafted to 1/8: 53.4 rows, a partial block
        encoded(grey, "PNG"),
        encoded(photo_like(64, 64, seed=6), "PNG"),
        encoded(photo_like(80, 80, seed=7), "PNG"),  # resized to 32 x 32 too, from another size
    ]
    decoded = [transform.decode(value) for value in stored]
    alone = torch.stack([transform.to_uint8(*d) for d in decoded])
    sizes = []
    interpolate = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda pixels, **k: sizes.append(tuple(pixels.shape)) or interpolate(pixels, **k))
    batched = transform.stack(decoded)
    assert torch.equal(batched, alone) and batched.shape == (9, 3, 32, 32)
    assert sorted(sizes) == sorted([(5, 4, 64, 64), (1, 4, 80, 80), (1, 4, 40, 48), (1, 4, 54, 80)])
    assert torch.equal(transform(stored), alone) and transform([]).shape == (0, 3, 32, 32)
    # Calls of at most _RESAMPLE_BYTES of input (here room for two 64 x 64 images): the same rows.
    monkeypatch.setattr(image_processing, "_RESAMPLE_BYTES", 2 * 4 * 64 * 64 + 1)
    sizes.clear()
    assert torch.equal(transform.stack(decoded), alone)
    assert sorted(sizes) == sorted([(2, 4, 64, 64), (2, 4, 64, 64), (1, 4, 64, 64), (1, 4, 80, 80), (1, 4, 40, 48), (1, 4, 54, 80)])
