"""``hf-cf generate`` (hf_counterfactual.commands.generate) on a COCO-format fixture: records, skips, load_dataset, one training step."""

import io

import numpy as np
import pytest
from PIL import Image

from dummy_components import save_tiny_model
from generation_fixtures import english_pipeline, write_coco_photos
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES

from hf_counterfactual.commands import generate, train
from hf_counterfactual.tiny_models import build_tiny_clip


@pytest.fixture
def coco(tmp_path):
    return write_coco_photos(tmp_path / "coco")


TINY_MODELS = ["--inpainting_model", "tiny", "--num_inference_steps", "2", "--clip_filter_model", "tiny", "--clip_threshold", "-1"]


def test_generate_load_and_train_one_step(coco, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "cf-coco"
    stats = generate.main(
        ["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,position,count", "--records_per_shard", "2", "--batch_size", "3", *TINY_MODELS]
    )["val"]  # fmt: skip
    assert stats["num_items"] == 8 and stats["num_records"] == 6 and stats["num_skipped"] == 2
    assert stats["skip_reasons"] == {"no editable word": 1, "unreadable image (OSError)": 1}
    assert {"flip", "inpaint", "box-inpaint", "rule"} == set(stats["sources"])
    assert {"attribute", "object", "position", "count"} == set(stats["edits"])
    counts = stats["counts"]
    assert counts["image_edit/skipped: mask outside the image"] == 1  # item 8's cup box
    assert counts["filter/pixel_change/passed"] + counts.get("filter/pixel_change/failed", 0) == counts["image_edit/inpainted"]
    assert counts["image_edit/kept"] == stats["sources"]["inpaint"] + stats["sources"]["box-inpaint"]

    records = load_dataset(str(out))["val"]
    assert records.features == COUNTERFACTUAL_FEATURES and records.num_rows == 6
    first = records[0]
    assert first["caption"] == "an american flag to the left of a smiling woman"
    assert first["paraphrases"] == ["a woman in an orange suit next to a black helmet"]
    flip = next(cf for cf in first["counterfactuals"] if cf["source"] == "flip")
    assert flip["caption"] == "an american flag to the right of a smiling woman" and flip["edit"] == "position"
    original = np.asarray(Image.open(coco / "val2017" / "000000000001.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(flip["image"]), original[:, ::-1])
    # Inpainted counterfactuals: the original pixels outside the mask, a filter score kept for audit.
    for record in records:
        for cf in record["counterfactuals"]:
            if cf["source"] in ("inpaint", "box-inpaint"):
                assert cf["image"].size == record["image"].size and cf["score"] is not None
            elif cf["source"] == "rule":
                assert cf["image"] is None and cf["score"] is None
    coffee = records[2]
    cup = next(cf for cf in coffee["counterfactuals"] if cf["caption"].startswith("a green cup"))
    assert cup["source"] == "inpaint" and cup["edit"] == "attribute"
    changed = (np.asarray(cup["image"]) != np.asarray(coffee["image"])).any(-1)
    ys, xs = np.nonzero(changed)
    assert changed.any() and xs.min() >= 43 and xs.max() < 103 and ys.max() < 77  # inside the cup's box (43.75, 4.5, 102.5, 76.25)

    card = (out / "README.md").read_text()
    assert "records: 6 from 8 images; skipped: 2" in card and "configs:" in card
    assert '"pixel_change": "' in card and "filter pass rates" in card and "diffusion inpainting with a random tiny model" in card

    # The generated folder feeds hf-cf train unchanged (a tiny CLIP that knows the records' words,
    # so that no edit reads as its caption's own token ids)
    words = {w.strip(".,") for r in records for c in [r["caption"], *(cf["caption"] for cf in r["counterfactuals"])] for w in c.lower().split()}
    model = save_tiny_model(tmp_path / "model", build=lambda vocabulary: build_tiny_clip(sorted(set(vocabulary) | words)))
    results = train.main(
        ["--model_name_or_path", model, "--dataset_name", str(out), "--train_split", "val",
         "--test_split", "val", "--objective", "negclip", "--num_counterfactuals", "1", "--max_steps", "1",
         "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "trained"), "--report_to", "none",
         "--cache_dir", str(tmp_path / "cache")]
    )  # fmt: skip
    # every image-bearing counterfactual (flip, inpaint, box-inpaint) makes one 2x2 group
    assert results["after"]["all"]["count"] == sum(cf["image"] is not None for r in records for cf in r["counterfactuals"])


def test_unknown_edit_kind_is_an_error(coco, tmp_path):
    with pytest.raises(ValueError, match=r"--edits: unknown kind\(s\) \['colour'\]"):
        generate.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(tmp_path / "o"), "--edits", "colour"])


# ----------------------------------------------------------------------------- optional stages
# The fixture without instances_val2017.json: every image edit has to come from the grounding path.


@pytest.fixture(scope="module")
def coco_without_instances(tmp_path_factory):
    root = write_coco_photos(tmp_path_factory.mktemp("coco-without-instances"))
    (root / "annotations" / "instances_val2017.json").unlink()
    return root


def _generate(coco_root, output_dir, *extra):
    return generate.main(
        ["--coco_root", str(coco_root), "--split", "val", "--output_dir", str(output_dir), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,position,count", "--batch_size", "4", *extra]
    )["val"]  # fmt: skip


def _changed(record, cf) -> np.ndarray:
    return (np.asarray(cf["image"]) != np.asarray(record["image"])).any(-1)


@pytest.mark.parametrize("segmenter", [None, "tiny"])
def test_grounding_detector_and_segmenter(coco_without_instances, tmp_path, segmenter):
    from datasets import load_dataset

    out = tmp_path / "cf-coco"
    extra = ["--segmenter_model", segmenter] if segmenter else []
    stats = _generate(coco_without_instances, out, "--inpainting_model", "tiny", "--num_inference_steps", "2",
                      "--detector_model", "tiny", "--box_threshold", "0.0", *extra)  # fmt: skip
    assert stats["num_records"] == 6 and stats["skip_reasons"] == {"no editable word": 1, "unreadable image (OSError)": 1}
    counts = stats["counts"]
    # No annotations: the objects are the detector's (any box passes threshold 0), and the image
    # edits repaint them. Detected boxes are clipped to the image: item 8's bad annotation box is gone.
    assert counts["grounding/detections"] > 0 and counts["image_edit/planned"] > 0
    assert stats["sources"].get("inpaint", 0) > 0
    assert counts["image_edit/kept"] == stats["sources"]["inpaint"] + stats["sources"].get("box-inpaint", 0)
    assert "image_edit/skipped: mask outside the image" not in counts

    card = (out / "README.md").read_text()
    assert "over the boxes detected by a random tiny model" in card and "COCO instance masks" not in card  # detections only
    assert ("segmented by a random tiny model" in card) == (segmenter is not None)

    # Box masks repaint a filled rectangle (keep_unmasked pastes the original outside the mask):
    # the changed pixels fill their bounding box (1.0 measured). SAM masks (of a random SAM,
    # upsampled from 16x16 logits) are blobs: 0.16 to 0.42 of their bounding box measured.
    fills = []
    for record in load_dataset(str(out))["val"]:
        for cf in record["counterfactuals"]:
            if cf["source"] == "inpaint":
                changed = _changed(record, cf)
                ys, xs = np.nonzero(changed)
                fills.append(changed.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)))
    assert len(fills) == stats["sources"]["inpaint"]
    if segmenter is None:
        assert min(fills) > 0.9, fills
    else:
        assert max(fills) < 0.9, fills


def _lines(path) -> int:
    return len(path.read_text().splitlines())


def test_llm_and_paraphrase_models_cache_and_reject_garbage(coco_without_instances, tmp_path):
    from datasets import load_dataset

    from generation_fixtures import ITEMS

    llm = ["--llm_model", "tiny", "--paraphrase_model", "tiny", "--min_paraphrases", "1"]
    first = tmp_path / "first"
    stats = _generate(coco_without_instances, first, *llm)

    # The tiny random LMs' output is rejected and the run goes on: no concept swap, no paraphrase.
    # (With seed 0 their first greedy token is <eos>, so every generation decodes to "".)
    assert stats["num_records"] == 6 and "llm" not in stats["sources"], stats
    assert stats["counts"].get("paraphrase/generated", 0) == 0, stats
    for record in load_dataset(str(first))["val"]:
        captions = next(texts for _, texts, _ in ITEMS.values() if texts[0] == record["caption"])
        assert record["paraphrases"] == captions[1:]

    # Cached under {output_dir}/.cache: one generation per readable image's caption (the corrupt
    # JPEG is skipped before the text stages), paraphrases for the images with no second caption.
    readable = [texts for name, texts, _ in ITEMS.values() if name is not None]
    concept_cache, paraphrase_cache = first / ".cache" / "llm_concept_edits.jsonl", first / ".cache" / "llm_paraphrases.jsonl"
    assert _lines(concept_cache) == len(readable)
    assert _lines(paraphrase_cache) == sum(len(texts) < 2 for texts in readable)
    before = concept_cache.read_text(), paraphrase_cache.read_text()

    # A rerun into a fresh folder with the same cache runs no model: the caches do not grow.
    second = tmp_path / "second"
    assert _generate(coco_without_instances, second, *llm, "--cache_dir", str(first / ".cache")) == stats
    assert (concept_cache.read_text(), paraphrase_cache.read_text()) == before
    assert not (second / ".cache").exists()


def test_push_to_hub_uploads_the_dataset_folder(coco, tmp_path, monkeypatch):
    """No hub here: HfApi is replaced by a recorder; what would be uploaded is checked on disk."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    out = tmp_path / "cf-coco"
    generate.main(
        ["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,position", "--push_to_hub", "--hub_model_id", "org/cf-coco"]
    )  # fmt: skip
    assert [c[:2] for c in calls] == [("create_repo", "org/cf-coco"), ("upload_folder", "org/cf-coco")]
    assert calls[0][2] == {"repo_type": "dataset", "exist_ok": True, "private": False}
    upload = calls[1][2]
    assert upload["repo_type"] == "dataset" and upload["folder_path"] == str(out)
    # the resume bookkeeping, the LLM caches and an unfinished refinement stay local; the README and data go up
    assert set(upload["ignore_patterns"]) == {".progress/*", ".cache/*", "refined/.*"}
    assert (out / "README.md").exists() and list((out / "data").glob("val-r00000-*.parquet"))


def test_saved_checkpoints_load_through_from_pretrained(coco, tmp_path):
    """The real-checkpoint path (AutoPipelineForInpainting / AutoModel + AutoProcessor
    .from_pretrained) on tiny checkpoints saved to disk."""
    from hf_counterfactual.tiny_models import build_tiny_inpainting_pipeline

    inpainting = tmp_path / "tiny-inpainting"
    build_tiny_inpainting_pipeline("a an the green cup dog background".split()).save_pretrained(inpainting)
    clip = save_tiny_model(tmp_path / "tiny-clip")
    out = tmp_path / "cf-coco"
    stats = generate.main(
        ["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,count", "--inpainting_model", str(inpainting), "--num_inference_steps", "2",
         "--clip_filter_model", clip, "--clip_threshold", "-1", "--max_images", "3"]
    )["val"]  # fmt: skip
    counts = stats["counts"]
    assert counts["image_edit/inpainted"] > 0 and counts["filter/image_text/passed"] == counts["filter/pixel_change/passed"]
    assert stats["sources"]["inpaint"] == counts["image_edit/kept"] - stats["sources"].get("box-inpaint", 0)
    card = (out / "README.md").read_text()
    # Local paths are never published: the card says what the models were, not where they lay.
    assert "diffusion inpainting with a local checkpoint" in card and str(tmp_path) not in card


def test_saved_detector_and_segmenter_load_through_from_pretrained(coco_without_instances, tmp_path):
    """GroundedSegmenter.from_pretrained (AutoModelForZeroShotObjectDetection + SamModel, their
    AutoProcessors) on tiny checkpoints saved to disk, through the driver's flags."""
    from hf_counterfactual.tiny_models import build_tiny_grounding

    detector, detector_processor, segmenter, segmenter_processor = build_tiny_grounding("a the cup cat woman man".split())
    for model, processor, name in ((detector, detector_processor, "detector"), (segmenter, segmenter_processor, "sam")):
        model.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    stats = _generate(coco_without_instances, tmp_path / "out", "--detector_model", str(tmp_path / "detector"),
                      "--segmenter_model", str(tmp_path / "sam"), "--box_threshold", "0.0", "--inpainting_model", "tiny",
                      "--num_inference_steps", "2")  # fmt: skip
    assert stats["counts"]["grounding/detections"] > 0 and stats["sources"].get("inpaint", 0) > 0


@pytest.mark.parametrize(
    "flags, message",
    [(["--detector_model", "tiny"], "--detector_model needs --inpainting_model"),
     (["--inpainting_model", "tiny", "--segmenter_model", "tiny"], "--segmenter_model needs --detector_model"),
     (["--image_edits", "position"], r"--image_edits: unknown kind\(s\) \['position'\]")],
)  # fmt: skip
def test_inconsistent_flags_are_errors(coco, tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        generate.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(tmp_path / "o"), *flags])


def test_any_image_caption_dataset_through_the_grounding_path(coco, tmp_path):
    """--dataset_name: a datasets image-caption dataset (here a local Parquet folder of the photos,
    a list-of-captions column as in Flickr30k); no annotations, so objects come from the detector."""
    import datasets

    from generation_fixtures import ITEMS

    rows = [(image_id, captions) for image_id, (name, captions, _) in ITEMS.items() if name is not None][:4]
    source = datasets.Dataset.from_dict(
        {"img": [str(coco / "val2017" / f"{i:012d}.jpg") for i, _ in rows], "sentences": [c for _, c in rows]},
        features=datasets.Features({"img": datasets.Image(), "sentences": datasets.List(datasets.Value("string"))}),
    )
    (tmp_path / "flickr-like" / "data").mkdir(parents=True)
    source.to_parquet(str(tmp_path / "flickr-like" / "data" / "test-00000.parquet"))
    out = tmp_path / "out"
    stats = generate.main(
        ["--dataset_name", str(tmp_path / "flickr-like"), "--split", "test", "--image_column", "img",
         "--caption_column", "sentences", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,position,count", "--inpainting_model", "tiny", "--num_inference_steps", "2",
         "--detector_model", "tiny", "--box_threshold", "0.0"]
    )["test"]  # fmt: skip
    assert stats["num_items"] == 4 and stats["num_records"] == 4
    assert stats["counts"]["grounding/detections"] > 0 and stats["sources"].get("inpaint", 0) > 0
    records = datasets.load_dataset(str(out))["test"]
    assert [r["caption"] for r in records] == [c[0] for _, c in rows]
    assert records[0]["paraphrases"] == rows[0][1][1:]
    card = (out / "README.md").read_text()
    assert "From a local image-caption dataset (split test)" in card and str(tmp_path) not in card
    assert "license: other" in card and "COCO instance masks" not in card

    with pytest.raises(ValueError, match="exactly one of --coco_root"):
        generate.main(["--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"column\(s\) \['caption'\] not in the dataset"):
        generate.main(["--dataset_name", str(tmp_path / "flickr-like"), "--split", "test", "--image_column", "img",
                               "--output_dir", str(tmp_path / "o2")])  # fmt: skip


def test_dataset_name_reads_what_hf_cf_train_reads(tmp_path):
    """--dataset_name takes a save_to_disk folder and a single file as well as a load_dataset source,
    with --dataset_config_name, and a missing split names the splits there are."""
    import datasets
    from PIL import Image

    from hf_counterfactual.commands.arguments import UsageError

    image = Image.new("RGB", (8, 8), "red")
    source = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"image": [image, image], "caption": ["a red square", "a red box"]})})
    source.save_to_disk(str(tmp_path / "disk"))
    source["test"].to_parquet(str(tmp_path / "one.parquet"))
    for name, split in ((tmp_path / "disk", "test"), (tmp_path / "one.parquet", "anything: one table")):
        args = generate.GenerationArguments(dataset_name=str(name), split=split, output_dir=str(tmp_path / "o"))
        items, described = generate.read_inputs(args)
        assert len(items) == 2 and items[1].captions == ["a red box"] and str(tmp_path) not in described["source"]
    with pytest.raises(UsageError, match=r"--dataset_name .*'train': the dataset has no such split; its splits are \['test'\]"):
        generate.read_inputs(generate.GenerationArguments(dataset_name=str(tmp_path / "disk"), split="train", output_dir=str(tmp_path / "o")))


def test_images_stored_pre_resized_for_the_fast_image_path(coco, tmp_path):
    """--image_short_side: every stored image (factual, flipped, inpainted) is a JPEG with that short
    side (never enlarged), at --image_quality, the flip still mirrors its factual image, and the card says so."""
    from datasets import load_dataset

    out = tmp_path / "cf-coco"
    generate.main(
        ["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
         "--edits", "attribute,object,position,count", "--image_short_side", "48", "--image_quality", "80", *TINY_MODELS]
    )  # fmt: skip
    reference = io.BytesIO()
    Image.new("RGB", (8, 8)).save(reference, format="JPEG", quality=80)
    quality_80 = Image.open(reference).quantization  # the quantisation tables quality 80 writes
    records = load_dataset(str(out))["val"]
    sizes = set()
    for record in records:
        images = [record["image"], *(cf["image"] for cf in record["counterfactuals"] if cf["image"] is not None)]
        assert all(image.format == "JPEG" and image.size == record["image"].size and image.quantization == quality_80 for image in images)
        sizes.add(min(record["image"].size))
        flip = next((cf for cf in record["counterfactuals"] if cf["source"] == "flip"), None)
        if flip is not None:  # mirrored, up to JPEG rounding
            difference = np.abs(np.asarray(flip["image"], dtype=float) - np.asarray(record["image"], dtype=float)[:, ::-1])
            assert difference.mean() < 3
    assert sizes == {48}
    assert "images stored pre-resized: short side at most 48 px, JPEG quality 80" in (out / "README.md").read_text()
    # Another size into the same folder is other settings: refused, naming the field.
    with pytest.raises(Exception, match="image_short_side"):
        generate.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
                       "--edits", "attribute,object,position,count", "--image_short_side", "32", *TINY_MODELS])  # fmt: skip
