"""The common benchmark form: each distinct image/text encoded once, two views of the same data agree."""

import numpy as np
import pytest
import torch

from dummy_components import get_dummy_components
from hf_counterfactual import DualEncoderScorer, evaluate_benchmark
from hf_counterfactual.benchmarks import (
    MatchingBenchmark,
    MatchingExample,
    counterfactual_records_benchmark,
    format_results,
    score_benchmark,
    winoground_benchmark,
)
from hf_counterfactual.builders import load_procedural_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("scenes"))
    kwargs = dict(num_train=4, num_test=6, cache_dir=cache, image_size=32)
    return load_procedural_scenes(**kwargs)["test"], load_procedural_scenes(name="winoground", **kwargs)["test"]


def test_records_and_winoground_views_give_the_same_scores(scenes):
    records, rows = scenes
    model, processor, _ = get_dummy_components()
    scorer = DualEncoderScorer(model, processor, show_progress=False)
    from_records = evaluate_benchmark(scorer, counterfactual_records_benchmark(records))
    from_rows = evaluate_benchmark(scorer, winoground_benchmark(rows))
    assert from_records["all"]["count"] == from_rows["all"]["count"] == 6 * 4
    for key in ("text_score", "image_score", "group_score"):
        assert from_records["all"][key] == pytest.approx(from_rows["all"][key])


def test_grids_match_a_direct_forward(scenes):
    records, _ = scenes
    model, processor, _ = get_dummy_components()
    benchmark = counterfactual_records_benchmark(records)
    grids = score_benchmark(DualEncoderScorer(model, processor, show_progress=False), benchmark)
    example = benchmark.examples[5]
    images = [benchmark.load_image(ref) for ref in example.images]
    inputs = processor(images=images, text=list(example.texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.numpy()
    np.testing.assert_allclose(grids[5], expected, rtol=1e-4, atol=1e-4)


def test_half_precision_model_scores_like_float32(scenes):
    """A bfloat16 CLIP (what a GPU user loads) scores as float32 does, up to bfloat16 rounding
    (8-bit mantissas through every layer: a few percent of the score range)."""
    records, _ = scenes
    model, processor, _ = get_dummy_components()
    benchmark = counterfactual_records_benchmark(records)
    full = score_benchmark(DualEncoderScorer(model, processor, show_progress=False), benchmark)
    half = score_benchmark(DualEncoderScorer(model.to(torch.bfloat16), processor, show_progress=False), benchmark)
    for a, b in zip(full, half):
        np.testing.assert_allclose(b, a, atol=0.1 * np.abs(a).max() + 1e-3)


def test_each_distinct_image_is_loaded_once():
    loads = []

    def load(ref):
        loads.append(ref)
        from PIL import Image

        return Image.new("RGB", (8, 8), (ref * 40, 0, 0))

    shared = [MatchingExample(id=str(i), images=(i % 2,), texts=("a", f"b{i}"), truth=((True, False),), subset=f"s{i % 3}") for i in range(6)]
    benchmark = MatchingBenchmark("toy", shared, load)
    model, processor, _ = get_dummy_components()
    results = evaluate_benchmark(DualEncoderScorer(model, processor, show_progress=False), benchmark)
    assert sorted(loads) == [0, 1]
    assert set(results) == {"all", "macro", "s0", "s1", "s2"}
    assert np.isnan(results["all"]["image_score"])  # one image per example: no image score
    assert "image" not in format_results(results).splitlines()[0]


def test_a_callable_scorer_is_called_per_example():
    benchmark = MatchingBenchmark(
        "toy",
        [MatchingExample(id="0", images=(0,), texts=("yes", "no", "maybe"), truth=((True, False, False),))],
        lambda ref: None,
    )
    results = evaluate_benchmark(lambda images, texts: np.array([[float(t == "yes") for t in texts]]), benchmark)
    assert results["all"]["text_score"] == 1.0
    with pytest.raises(ValueError, match=r"example '0': the scorer returned shape \(3,\)"):
        evaluate_benchmark(lambda images, texts: np.zeros(3), benchmark)


def test_truth_shape_is_checked():
    with pytest.raises(ValueError, match=r"example 'x': truth must be 1 x 2"):
        MatchingExample(id="x", images=(0,), texts=("a", "b"), truth=((True,),))


def test_image_names_that_leave_the_images_folder_are_refused(tmp_path):
    from hf_counterfactual.benchmarks.files import ImageFolder

    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "secret.png").write_bytes(b"")
    folder = ImageFolder(images, where={("../secret.png", None): "sugarcrepe/add_att.json, id 3"})
    with pytest.raises(ValueError, match=r"'\.\./secret\.png' leaves the images folder.*add_att\.json, id 3"):
        folder(("../secret.png", None))
    with pytest.raises(ValueError, match="leaves the images folder"):
        folder.check_files([(str(tmp_path / "secret.png"), None)])
    assert folder.path(("sub/a.png", None)) == str(images / "sub" / "a.png")


def test_a_non_utf8_annotation_file_is_named(tmp_path):
    from hf_counterfactual.benchmarks.files import read_json

    path = tmp_path / "add_att.json"
    path.write_bytes('{"0": {"caption": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"add_att\.json: SugarCrepe file is not UTF-8"):
        read_json(path, "SugarCrepe file")
