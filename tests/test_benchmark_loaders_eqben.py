"""EqBen loader on tiny fixtures in the authors' published layouts, scored by hand-made scorers
whose Winoground outcomes are computed by hand."""

import numpy as np
import pytest
import torch

from benchmark_fixtures import save_image, write_json
from hf_counterfactual.benchmarks import EQBEN_SOURCES, eqben_benchmark, evaluate_benchmark

RED, GREEN, BLUE, WHITE, GRAY, YELLOW, BGR_FRAME0, BGR_FRAME1 = (
    (200, 30, 30), (30, 200, 30), (30, 30, 200), (250, 250, 250), (120, 120, 120), (220, 220, 20), (200, 20, 10), (10, 20, 200),
)
COLORS = [RED, GREEN, BLUE, WHITE, GRAY, YELLOW, BGR_FRAME0, BGR_FRAME1]

# score of (image colour, caption); 0 when absent
TABLE = {
    # eqbenag: all right (text, image, group)
    (RED, "a person opens the door"): 2, (RED, "a person closes the door"): 1,
    (GREEN, "a person opens the door"): 1, (GREEN, "a person closes the door"): 2,
    # eqbenkubric_cnt: text right (2 > 1, 6 > 5), image wrong (2 < 5)
    (BLUE, "two cubes"): 2, (BLUE, "three cubes"): 1, (WHITE, "two cubes"): 5, (WHITE, "three cubes"): 6,
    # eqbenkubric_loc: text fails on a tie (1 = 1), image right (1 > 0, 2 > 1)
    (GRAY, "a ball left of a cube"): 1, (GRAY, "a ball right of a cube"): 1, (YELLOW, "a ball right of a cube"): 2,
    # eqbenyoucook2: nothing scored (all 0): every outcome a tie
}


def color_scorer(images, texts):
    return np.array([[TABLE.get((image.getpixel((0, 0)), text), 0.0) for text in texts] for image in images])


class ColorEmbeddingScorer:
    """Embedding-style: image = one-hot of its colour, text = its score with each colour."""

    def encode_images(self, images):
        return torch.tensor([[float(image.getpixel((0, 0)) == c) for c in COLORS] for image in images])

    def encode_texts(self, texts):
        return torch.tensor([[float(TABLE.get((c, text), 0.0)) for c in COLORS] for text in texts])

    def score_embeddings(self, image_embeds, text_embeds):
        return torch.einsum("nid,ntd->nit", image_embeds, text_embeds)


def save_bgr_frame(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = np.zeros((6, 8, 3), dtype=np.uint8)
    frame[...] = rgb[::-1]  # the authors' YouCook2 frames are BGR arrays
    np.save(path, frame)


@pytest.fixture
def eqben(tmp_path):
    """images/{eqbenag,eqbenkubric_cnt,eqbenkubric_loc,eqbenyoucook2}/ and an all_select.json-style list."""
    images = tmp_path / "images"
    save_image(images / "eqbenag" / "0A8CF" / "frame_0001.png", color=RED)
    save_image(images / "eqbenag" / "0A8CF" / "frame_0007.png", color=GREEN)
    save_image(images / "eqbenkubric_cnt" / "00012" / "rgba_00000.png", color=BLUE)
    save_image(images / "eqbenkubric_cnt" / "00012" / "rgba_00023.png", color=WHITE)
    save_image(images / "eqbenkubric_loc" / "00077" / "rgba_00000.png", color=GRAY)
    save_image(images / "eqbenkubric_loc" / "00077" / "rgba_00023.png", color=YELLOW)
    save_bgr_frame(images / "eqbenyoucook2" / "vid3" / "0012.npy", BGR_FRAME0)
    save_bgr_frame(images / "eqbenyoucook2" / "vid3" / "0015.npy", BGR_FRAME1)
    pairs = [
        {"image0": "eqbenag/0A8CF/frame_0001.png", "caption0": "a person opens the door",
         "image1": "eqbenag/0A8CF/frame_0007.png", "caption1": "a person closes the door"},
        {"image0": "eqbenkubric_cnt/00012/rgba_00000.png", "caption0": "two cubes",
         "image1": "eqbenkubric_cnt/00012/rgba_00023.png", "caption1": "three cubes"},
        {"image0": "eqbenkubric_loc/00077/rgba_00000.png", "caption0": "a ball left of a cube",
         "image1": "eqbenkubric_loc/00077/rgba_00023.png", "caption1": "a ball right of a cube"},
        {"image0": "eqbenyoucook2/vid3/0012.npy", "caption0": "add the salt",
         "image1": "eqbenyoucook2/vid3/0015.npy", "caption1": "stir the soup"},
    ]
    annotations = tmp_path / "all_select.json"
    write_json(annotations, pairs)
    return annotations, images, pairs


def test_eqben_list_layout_winoground_scores_per_source(eqben):
    annotations, images, _ = eqben
    benchmark = eqben_benchmark(annotations, images)
    assert len(benchmark) == 4 and benchmark.metadata["subsets"] is True
    first = benchmark.examples[0]
    assert first.id == "all_select/0" and first.subset == "eqbenag"
    assert first.images == (("eqbenag/0A8CF/frame_0001.png", None), ("eqbenag/0A8CF/frame_0007.png", None))
    assert first.texts == ("a person opens the door", "a person closes the door")
    assert first.truth == ((True, False), (False, True))
    assert [e.subset for e in benchmark.examples] == ["eqbenag", "eqbenkubric_cnt", "eqbenkubric_loc", "eqbenyoucook2"]
    assert set(e.subset for e in benchmark.examples) <= set(EQBEN_SOURCES)
    # the .npy frame is BGR: loaded as RGB, as the authors' process_img_npy does
    frame = benchmark.load_image(benchmark.examples[3].images[0])
    assert frame.mode == "RGB" and frame.size == (8, 6) and frame.getpixel((0, 0)) == BGR_FRAME0

    for scorer in (color_scorer, ColorEmbeddingScorer()):
        results = evaluate_benchmark(scorer, benchmark)
        assert results["all"]["text_score"] == pytest.approx(2 / 4)
        assert results["all"]["image_score"] == pytest.approx(2 / 4)
        assert results["all"]["group_score"] == pytest.approx(1 / 4)
        assert results["all"]["ties"] == 2  # kubric_loc's text tie, youcook2's all-zero grid
        assert results["eqbenag"]["group_score"] == 1.0
        assert (results["eqbenkubric_cnt"]["text_score"], results["eqbenkubric_cnt"]["image_score"]) == (1.0, 0.0)
        assert (results["eqbenkubric_loc"]["text_score"], results["eqbenkubric_loc"]["image_score"]) == (0.0, 1.0)
        assert results["eqbenyoucook2"]["group_score"] == 0.0
        assert results["macro"]["text_score"] == pytest.approx((1 + 1 + 0 + 0) / 4)
        assert results["macro"]["image_score"] == pytest.approx((1 + 0 + 1 + 0) / 4)


def test_eqben_groups_and_no_subsets(eqben, tmp_path):
    annotations, images, pairs = eqben
    grouped = evaluate_benchmark(color_scorer, eqben_benchmark(annotations, images, subset_by="group"))
    assert set(grouped) == {"all", "macro", "eqbenag", "eqbenkubric", "eqbenyoucook2"}
    assert grouped["eqbenkubric"]["count"] == 2
    assert (grouped["eqbenkubric"]["text_score"], grouped["eqbenkubric"]["image_score"], grouped["eqbenkubric"]["group_score"]) == (0.5, 0.5, 0.0)
    assert grouped["macro"]["text_score"] == pytest.approx((1 + 0.5 + 0) / 3)
    flat = eqben_benchmark(annotations, images, subset_by=None)
    assert {e.subset for e in flat.examples} == {""} and "macro" not in evaluate_benchmark(color_scorer, flat)
    # the 10% subset is "not classified to each category": paths without a source folder, no subsets
    for name, color in (("00001_0.png", RED), ("00001_1.png", GREEN)):
        save_image(images / name, color=color)
    ten_percent = tmp_path / "eqben_subset_10percent_final.json"
    write_json(ten_percent, [{"image0": "00001_0.png", "caption0": "a person opens the door",
                              "image1": "00001_1.png", "caption1": "a person closes the door"}])
    subsetless = eqben_benchmark(ten_percent, images)
    assert subsetless.metadata["subsets"] is False and subsetless.examples[0].subset == ""
    assert evaluate_benchmark(color_scorer, subsetless)["all"]["group_score"] == 1.0
    mixed = tmp_path / "mixed.json"
    write_json(mixed, [pairs[0], {"image0": "00001_0.png", "caption0": "a", "image1": "00001_1.png", "caption1": "b"}])
    with pytest.raises(ValueError, match=r"mixed\.json, row 1: image0 '00001_0\.png' does not start with an EqBen source"):
        eqben_benchmark(mixed, images)
    assert len(eqben_benchmark(mixed, images, subset_by=None)) == 2
    with pytest.raises(ValueError, match="subset_by must be"):
        eqben_benchmark(annotations, images, subset_by="video")


def test_eqben_per_source_nested_layouts(eqben, tmp_path):
    _, images, _ = eqben
    # EqBenAG: {video: {subject: [pair]}} with caption lists (the first caption is used)
    ag = tmp_path / "eqben_ag.json"
    write_json(ag, {"0A8CF.mp4": {"person_1": [
        {"image0": "eqbenag/0A8CF/frame_0001.png", "caption0": ["a person opens the door", "someone opens a door"],
         "image1": "eqbenag/0A8CF/frame_0007.png", "caption1": ["a person closes the door"]},
    ]}})
    benchmark = eqben_benchmark(ag, images)
    assert [e.id for e in benchmark.examples] == ["eqben_ag/0A8CF.mp4/person_1/0"]
    assert benchmark.examples[0].texts == ("a person opens the door", "a person closes the door")
    assert evaluate_benchmark(color_scorer, benchmark)["eqbenag"]["group_score"] == 1.0
    # EqBenYoucook2 / EqBenGEBC: {video: [pair]}
    youcook = tmp_path / "eqben_youcook2.json"
    write_json(youcook, {"vid3": [{"image0": "eqbenyoucook2/vid3/0012.npy", "caption0": "add the salt",
                                   "image1": "eqbenyoucook2/vid3/0015.npy", "caption1": "stir the soup"}]})
    benchmark = eqben_benchmark(youcook, images)
    assert [(e.id, e.subset) for e in benchmark.examples] == [("eqben_youcook2/vid3/0", "eqbenyoucook2")]
    table = {(BGR_FRAME0, "add the salt"): 1, (BGR_FRAME1, "stir the soup"): 1}
    scores = evaluate_benchmark(lambda ims, txts: np.array([[table.get((im.getpixel((0, 0)), t), 0) for t in txts] for im in ims]), benchmark)
    assert scores["all"]["group_score"] == 1.0  # right only if the BGR -> RGB swap happened


def test_eqben_errors_name_file_and_row(eqben, tmp_path):
    annotations, images, pairs = eqben
    with pytest.raises(FileNotFoundError, match="EqBen annotation file not found"):
        eqben_benchmark(tmp_path / "missing.json", images)
    bad = tmp_path / "bad.json"
    write_json(bad, [pairs[0], {"image0": "eqbenag/0A8CF/frame_0001.png", "caption0": "x", "image1": "eqbenag/0A8CF/frame_0007.png"}])
    with pytest.raises(ValueError, match=r"bad\.json, row 1: missing \['caption1'\]"):
        eqben_benchmark(bad, images)
    write_json(bad, {"vid3": [pairs[3], {**pairs[3], "caption0": ""}]})
    with pytest.raises(ValueError, match=r"bad\.json, row vid3/1: 'caption0' must be a non-empty string"):
        eqben_benchmark(bad, images)
    write_json(bad, {"vid3": "eqbenyoucook2/vid3/0012.npy"})
    with pytest.raises(ValueError, match=r"bad\.json, row vid3: expected a list of pairs"):
        eqben_benchmark(bad, images)
    write_json(bad, [pairs[0], "eqbenag/0A8CF/frame_0001.png"])
    with pytest.raises(ValueError, match=r"bad\.json, row 1: expected an object"):
        eqben_benchmark(bad, images)
    write_json(bad, [{"image": "eqbenag/0A8CF/frame_0001.png", "caption": "a person opens the door"}])
    with pytest.raises(ValueError, match=r"bad\.json: this is a list of single"):
        eqben_benchmark(bad, images)
    write_json(bad, [])
    with pytest.raises(ValueError, match=r"bad\.json: no EqBen pairs"):
        eqben_benchmark(bad, images)
    write_json(bad, [pairs[0], {**pairs[1], "image1": "eqbenkubric_cnt/00012/rgba_00099.png"}])
    with pytest.raises(FileNotFoundError, match=r"rgba_00099\.png \(used by .*bad\.json, row 1\)"):
        eqben_benchmark(bad, images)
    # a malformed .npy frame fails on load, naming the file and row
    np.save(images / "eqbenyoucook2" / "vid3" / "0012.npy", np.zeros((6, 8), dtype=np.uint8))
    write_json(bad, [pairs[3]])
    benchmark = eqben_benchmark(bad, images)
    with pytest.raises(ValueError, match=r"0012\.npy \(used by .*bad\.json, row 0\): expected uint8 \[H, W, 3\]"):
        evaluate_benchmark(color_scorer, benchmark)


def test_cli_runs_eqben(eqben, tmp_path):
    import json

    from hf_counterfactual.cli import main
    from dummy_components import save_tiny_model

    save_tiny_model(tmp_path / "model")
    annotations, images, pairs = eqben
    out = tmp_path / "results.json"
    main(["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--no_progress", "--output_file", str(out),
          "--benchmarks", "eqben", "--eqben_file", str(annotations), "--eqben_images_dir", str(images)])  # fmt: skip
    results = json.loads(out.read_text())["eqben"]
    assert results["all"]["count"] == len(pairs) and results["macro"]["count"] == 4
