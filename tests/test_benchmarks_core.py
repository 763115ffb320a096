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


class _TableScorer:
    """An embedding scorer whose scores are a known table: image ``i`` is the one-hot row ``i``, text
    ``t`` the column ``W[:, t]``, so ``S(i, t) = W[i, t]``."""

    def __init__(self, table: np.ndarray, texts: list[str]):
        self.table, self.column = torch.tensor(table, dtype=torch.float64), {text: c for c, text in enumerate(texts)}

    def encode_images(self, images):
        return torch.eye(len(self.table), dtype=torch.float64)[[int(ref) for ref in images]]

    def encode_texts(self, texts):
        return self.table.T[[self.column[text] for text in texts]]

    def score_embeddings(self, image_embeds, text_embeds):
        return image_embeds @ text_embeds.transpose(-1, -2)


def test_mixed_shapes_and_truths_give_each_examples_own_outcome():
    """The embedding path gathers the grids of each shape with index arrays and shares one truth mask
    where every example of a shape has the same: with three shapes interleaved and truths that differ
    within a shape, every example's grid is its slice of the known table and its outcomes are those
    of its own truth, computed here by hand."""
    texts = ["red", "green", "blue", "a dog", "a cat", "two cats"]
    rng = np.random.default_rng(0)
    table = rng.permutation(36).reshape(6, 6).astype(np.float64)  # distinct scores: no ties
    diagonal, anti = ((True, False), (False, True)), ((False, True), (True, False))
    specs = [("a", (0, 1), (0, 1), diagonal), ("b", (2,), (2, 3, 4), ((False, True, True),)), ("c", (3, 4), (5, 0), anti),
             ("d", (5,), (1, 2), ((True, False),)), ("e", (1, 0), (3, 4), diagonal), ("f", (4,), (0, 5, 2), ((True, False, False),))]
    examples = [MatchingExample(id=i, images=images, texts=tuple(texts[t] for t in cols), truth=truth, subset=i) for i, images, cols, truth in specs]
    table[3, 0], table[3, 5], table[4, 5], table[4, 0] = 30, 1, 31, 2  # "c" wins only under its own (anti-diagonal) truth
    benchmark = MatchingBenchmark("mixed", examples, lambda ref: ref)  # the images are their row numbers
    grids = score_benchmark(_TableScorer(table, texts), benchmark)
    results = evaluate_benchmark(_TableScorer(table, texts), benchmark)
    for (name, images, cols, truth), grid in zip(specs, grids):
        np.testing.assert_array_equal(grid, table[np.ix_(images, cols)])
        s, t = grid, np.asarray(truth)
        text = all(s[i][t[i]].min() > s[i][~t[i]].max() for i in range(len(images)) if t[i].any() and (~t[i]).any())
        columns = [c for c in range(len(cols)) if t[:, c].any() and (~t[:, c]).any()]
        image = all(s[t[:, c], c].min() > s[~t[:, c], c].max() for c in columns) if columns else None
        assert results[name]["text_score"] == float(text), name
        if image is None:
            assert np.isnan(results[name]["image_score"]), name
        else:
            assert results[name]["image_score"] == float(image) and results[name]["group_score"] == float(text and image), name
    assert results["c"]["group_score"] == 1.0


def test_a_repeated_evaluation_reuses_its_plan_until_an_example_changes(monkeypatch):
    """The per-example bookkeeping is made once per benchmark; replacing, adding or removing an
    example (or the whole list) makes it again, and the results follow the new examples."""
    from hf_counterfactual.benchmarks import core

    made = []
    original = core._Plan.of.__func__
    monkeypatch.setattr(core._Plan, "of", classmethod(lambda cls, examples: made.append(len(examples)) or original(cls, examples)))
    texts = ["red", "green", "blue"]
    table = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 5.0]])  # image i matches text i best
    right = lambda i, j: MatchingExample(id=f"{i}{j}", images=(i, j), texts=(texts[i], texts[j]), truth=((True, False), (False, True)))  # noqa: E731
    wrong = MatchingExample(id="swapped", images=(0, 1), texts=(texts[1], texts[0]), truth=((True, False), (False, True)))
    benchmark = MatchingBenchmark("plan", [right(0, 1), right(1, 2)], lambda ref: ref)
    scorer = _TableScorer(table, texts)
    assert evaluate_benchmark(scorer, benchmark)["all"]["group_score"] == 1.0
    assert evaluate_benchmark(scorer, benchmark)["all"]["group_score"] == 1.0 and made == [2]
    benchmark.examples[1] = wrong  # replaced in place
    assert evaluate_benchmark(scorer, benchmark)["all"]["group_score"] == 0.5 and made == [2, 2]
    benchmark.examples.append(right(0, 2))
    results = evaluate_benchmark(scorer, benchmark)
    assert results["all"]["count"] == 3 and results["all"]["group_score"] == pytest.approx(2 / 3) and made == [2, 2, 3]
    benchmark.examples = [wrong]
    assert evaluate_benchmark(scorer, benchmark)["all"]["group_score"] == 0.0 and benchmark.distinct_texts() == ["green", "red"]
    assert made == [2, 2, 3, 1]


def test_a_pair_scorers_grids_are_checked_like_a_callables():
    """A ``score_groups`` scorer's grid of the wrong shape, or too few grids, is an error naming the examples."""
    benchmark = MatchingBenchmark("toy", [MatchingExample(id=str(i), images=(i,), texts=("a", "b"), truth=((True, False),)) for i in range(3)], lambda ref: ref)

    class Pairs:
        def __init__(self, grid, drop=0):
            self.grid, self.drop = grid, drop

        def score_groups(self, groups):
            return [self.grid for _ in groups[self.drop :]]

    assert evaluate_benchmark(Pairs([[1.0, 0.0]]), benchmark)["all"]["text_score"] == 1.0
    with pytest.raises(ValueError, match=r"example '0': the scorer returned shape \(2,\), expected \(1, 2\)"):
        evaluate_benchmark(Pairs([1.0, 0.0]), benchmark)
    with pytest.raises(ValueError, match=r"examples '0'..'2': the scorer returned 2 grids for 3 examples"):
        score_benchmark(Pairs([[1.0, 0.0]], drop=1), benchmark)


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
