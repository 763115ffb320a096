"""The ``evaluate`` modules (offline, same numbers as hf_counterfactual.metrics) and ``hf-cf evaluate``."""

import configparser
import json
import math
from pathlib import Path

import evaluate
import numpy as np
import pytest
from huggingface_hub import ModelCard

from dummy_components import save_tiny_model
from hf_counterfactual import evaluate_metrics
from hf_counterfactual.builders import load_procedural_scenes
from hf_counterfactual.cli import main
from hf_counterfactual.metrics import match_outcomes, summarize, winoground_metrics

ROOT = Path(__file__).resolve().parents[1]

# [image][caption]; caption c true of image c.
WINO = [
    [[2.0, 1.0], [0.5, 3.0]],  # text, image, group
    [[1.0, 1.0], [0.0, 2.0]],  # tie c0_i0 == c1_i0: text fails; image holds
    [[1.0, 2.0], [0.0, 3.0]],  # text fails, image holds
    [[3.0, 0.0], [4.0, 5.0]],  # text holds, image fails
]
TAGS = ["object", "object", "relation", "both"]


def same(a, b):
    """Equal nested dicts, NaN == NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def test_winoground_module_matches_plain_function_and_hand_computed():
    winoground = evaluate.load(evaluate_metrics.path("winoground"))
    result = winoground.compute(scores=WINO)
    assert result == {"text_score": 0.5, "image_score": 0.75, "group_score": 0.25, "count": 4, "ties": 1}
    assert result == winoground_metrics(WINO)["all"]
    flat = [sum(grid, []) for grid in WINO]  # [c0_i0, c1_i0, c0_i1, c1_i1]
    with_tags = winoground.compute(scores=flat, tags=TAGS)
    plain = winoground_metrics(WINO, TAGS)
    assert same(with_tags, {**plain["all"], "macro": plain["macro"], "subsets": {t: plain[t] for t in ("both", "object", "relation")}})
    assert with_tags["subsets"]["object"] == {"text_score": 0.5, "image_score": 1.0, "group_score": 0.5, "count": 2, "ties": 1}
    assert with_tags["macro"]["text_score"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def test_winoground_module_rejects_other_shapes():
    with pytest.raises(ValueError):
        evaluate.load(evaluate_metrics.path("winoground")).compute(scores=[[1.0, 2.0, 3.0]])


def test_compositional_match_module_mixed_shapes_ties_and_subsets():
    scores = [
        [[0.9, 0.2]],  # 1 x 2, true first: text 1
        [[0.4, 0.4]],  # tie: text 0, ties
        [[0.5, 0.1, 0.2, 0.3, 0.6]],  # 1 x 5 order: a shuffle beats the original: text 0
        [[0.9, 0.1, 0.2, 0.3, 0.4]],  # text 1
        WINO[0],  # 2 x 2: text, image, group 1
    ]
    truth = [[[True, False]], [[True, False]], [[True] + [False] * 4], [[True] + [False] * 4], [[True, False], [False, True]]]
    subsets = ["replace-att", "replace-att", "coco-order", "coco-order", "winoground"]
    match = evaluate.load(evaluate_metrics.path("compositional_match"))

    plain = {name: np.empty(5) for name in ("text", "image", "group")} | {"ties": np.zeros(5, dtype=bool)}
    for i, (s, t) in enumerate(zip(scores, truth)):
        for name, value in match_outcomes([s], [t]).items():
            plain[name][i] = value[0]
    expected = summarize(plain, subsets)

    result = match.compute(scores=scores, truth=truth, subsets=subsets)
    assert same(result, {**expected["all"], "macro": expected["macro"], "subsets": {k: v for k, v in expected.items() if k not in ("all", "macro")}})
    assert result["text_score"] == pytest.approx(3 / 5) and result["ties"] == 1 and result["count"] == 5
    assert result["image_score"] == 1.0 and result["group_score"] == 1.0  # defined only for the 2 x 2 example
    assert result["macro"]["text_score"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert math.isnan(result["subsets"]["replace-att"]["image_score"])
    no_subsets = match.compute(scores=scores[:2], truth=truth[:2])
    assert no_subsets == {"text_score": 0.5, "image_score": no_subsets["image_score"], "group_score": no_subsets["group_score"], "count": 2, "ties": 1}
    assert math.isnan(no_subsets["image_score"])


def test_metric_path():
    assert (Path(evaluate_metrics.path("winoground")) / "winoground.py").is_file()
    with pytest.raises(ValueError, match="compositional_match"):
        evaluate_metrics.path("accuracy")


def test_console_script_is_declared():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "hf-cf = hf_counterfactual.cli:main" in config["options.entry_points"]["console_scripts"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_model(root / "model")
    rows = load_procedural_scenes(name="winoground", num_train=0, num_test=4, cache_dir=str(root / "cache"))["test"]
    rows.save_to_disk(str(root / "wino"))
    rows.to_parquet(str(root / "wino.parquet"))
    return root


def test_cli_procedural_and_winoground_write_json_and_model_card(saved_model, tmp_path, capsys):
    model_dir, out = saved_model / "model", tmp_path / "results.json"
    (model_dir / "README.md").unlink(missing_ok=True)
    common = ["--model_name_or_path", str(model_dir), "--cache_dir", str(saved_model / "cache"), "--no_progress"]
    assert main(["evaluate", *common, "--benchmarks", "procedural,winoground", "--num_test_scenes", "6",
                 "--winoground", str(saved_model / "wino"), "--output_file", str(out), "--add_to_model_card"]) == 0  # fmt: skip
    results = json.loads(out.read_text())
    assert set(results) == {"procedural", "winoground"}
    for name in results:
        assert {"all", "macro"} <= set(results[name])
        assert set(results[name]["all"]) == {"text_score", "image_score", "group_score", "count", "ties"}
    assert results["winoground"]["all"]["count"] == 16  # 4 records x 4 counterfactuals
    assert results["procedural"]["all"]["count"] > 6
    printed = capsys.readouterr().out
    assert "Winoground: 16 examples" in printed and "group" in printed

    card = ModelCard.load(model_dir / "README.md")
    index = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert index[("Winoground", "group_score")] == round(100 * results["winoground"]["all"]["group_score"], 2)
    assert ("procedural scenes (held-out test split)", "macro_text_score") in index
    assert card.text.count("<!-- hf-cf evaluate: winoground -->") == 1

    # Re-running one benchmark (here from Parquet) replaces its entries and keeps the rest of the card.
    card.text = card.text + "\nMy own notes.\n"
    card.save(model_dir / "README.md")
    main(["evaluate", *common, "--benchmarks", "winoground", "--winoground", str(saved_model / "wino.parquet"), "--add_to_model_card"])
    card = ModelCard.load(model_dir / "README.md")
    keys = [(r.dataset_name, r.metric_type) for r in card.data.eval_results]
    assert len(keys) == len(set(keys)) == len(index)
    assert "My own notes." in card.text and card.text.count("<!-- hf-cf evaluate: winoground -->") == 1
    assert "<!-- hf-cf evaluate: procedural -->" in card.text


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--benchmarks", "winoground"], "--winoground"),
        (["--benchmarks", "sugarcrepe", "--coco_images_dir", "."], "--sugarcrepe_dir"),
        (["--benchmarks", "aro-relation", "--aro_dir", "/no/such/dir", "--vg_images_dir", "."], "--aro_dir"),
        (["--benchmarks", "procedural,nope"], "nope"),
    ],
)
def test_cli_missing_data_is_a_clear_error_naming_the_flag(saved_model, capsys, extra, flag):
    assert main(["evaluate", "--model_name_or_path", str(saved_model / "model"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-cf evaluate: error: ") and flag in err and len(err.strip().splitlines()) == 1  # one line, no traceback


def test_cli_sugarcrepe_and_aro_on_tiny_local_files(saved_model, tmp_path):
    from PIL import Image

    from hf_counterfactual.benchmarks.sugarcrepe import SUGARCREPE_SUBSETS

    images = tmp_path / "images"
    images.mkdir()
    for k, color in enumerate(["red", "blue"]):
        Image.new("RGB", (40, 30), color).save(images / f"{k}.jpg")
    sugarcrepe = tmp_path / "sugarcrepe"
    sugarcrepe.mkdir()
    for subset in SUGARCREPE_SUBSETS:
        entries = {str(k): {"filename": f"{k}.jpg", "caption": "a red cube", "negative_caption": "a blue sphere"} for k in range(2)}
        (sugarcrepe / f"{subset}.json").write_text(json.dumps(entries))
    aro = tmp_path / "aro"
    aro.mkdir()
    box = {"bbox_x": 2, "bbox_y": 3, "bbox_w": 20, "bbox_h": 15}
    relation = [{"image_path": f"{k}.jpg", **box, "true_caption": "the cube is left of the sphere",
                 "false_caption": "the sphere is left of the cube", "relation_name": "left of"} for k in range(2)]  # fmt: skip
    attribution = [{"image_path": f"{k}.jpg", **box, "true_caption": "the red cube and the blue sphere",
                    "false_caption": "the blue cube and the red sphere", "attributes": ["red", "blue"]} for k in range(2)]  # fmt: skip
    (aro / "visual_genome_relation.json").write_text(json.dumps(relation))
    (aro / "visual_genome_attribution.json").write_text(json.dumps(attribution))

    out = tmp_path / "results.json"
    main(["evaluate", "--model_name_or_path", str(saved_model / "model"), "--no_progress", "--output_file", str(out),
          "--benchmarks", "sugarcrepe,aro-relation,aro-attribution", "--sugarcrepe_dir", str(sugarcrepe),
          "--coco_images_dir", str(images), "--aro_dir", str(aro), "--vg_images_dir", str(images)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["sugarcrepe"]["all"]["count"] == 2 * len(SUGARCREPE_SUBSETS)
    assert set(SUGARCREPE_SUBSETS) <= set(results["sugarcrepe"])
    assert results["sugarcrepe"]["all"]["image_score"] is None  # 1 image per example: undefined, null in JSON
    assert results["aro-relation"]["all"]["count"] == results["aro-attribution"]["all"]["count"] == 2


def test_cli_whatsup_and_valse_on_tiny_local_files(saved_model, tmp_path):
    from PIL import Image

    images = tmp_path / "whatsup_images"
    images.mkdir()
    Image.new("RGB", (40, 30), "red").save(images / "mug_left_of_plate.jpeg")
    rows = [{"image_path": "data/controlled_images/mug_left_of_plate.jpeg",
             "caption_options": ["A mug to the left of a plate", "A mug to the right of a plate",
                                 "A mug on a plate", "A mug under a plate"]}]  # fmt: skip
    whatsup_file = tmp_path / "controlled_images_dataset.json"
    whatsup_file.write_text(json.dumps(rows))
    valse_dir, valse_images = tmp_path / "valse", tmp_path / "valse_images" / "coco_2017"
    valse_dir.mkdir()
    valse_images.mkdir(parents=True)
    Image.new("RGB", (40, 30), "blue").save(valse_images / "1.jpg")
    entry = {"dataset": "coco_2017", "image_file": "1.jpg", "caption": "There are two cats.", "foil": "There are three cats.",
             "mturk": {"foil": 0, "caption": 3, "other": 0}}  # fmt: skip
    (valse_dir / "counting-hard.json").write_text(json.dumps({"0": entry}))

    out = tmp_path / "results.json"
    main(["evaluate", "--model_name_or_path", str(saved_model / "model"), "--no_progress", "--output_file", str(out),
          "--benchmarks", "whatsup,valse", "--whatsup_file", str(whatsup_file), "--whatsup_images_dir", str(images),
          "--valse_dir", str(valse_dir), "--valse_images_dir", str(tmp_path / "valse_images")])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["whatsup"]["all"]["count"] == 1 and results["valse"]["all"]["count"] == 1
    assert "counting" in results["valse"]  # subsets are the VALSE pieces


def test_model_card_of_a_pushed_model_is_loaded_and_pushed_back(monkeypatch):
    from huggingface_hub import ModelCard

    import huggingface_hub

    from hf_counterfactual.commands.evaluate import add_to_model_card

    pushed, uploaded = {}, []

    class RecordingApi:
        def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
            uploaded.append((repo_id, path_in_repo, open(path_or_fileobj, "rb").read(8)))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(ModelCard, "load", classmethod(lambda cls, repo_id, **kw: cls("---\nlicense: mit\n---\n\n# org/model\nKeep me.\n")))
    monkeypatch.setattr(ModelCard, "push_to_hub", lambda self, repo_id, **kw: pushed.update(repo=repo_id, card=self))
    results = {"procedural": {"all": {"text_score": 0.5, "image_score": 0.25, "group_score": 0.25, "count": 4, "ties": 0}}}
    assert add_to_model_card("org/model", results) == "org/model (Hub)"
    card = pushed["card"]
    assert pushed["repo"] == "org/model" and "Keep me." in card.text and card.data.license == "mit"
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {("text_score", 50.0), ("image_score", 25.0), ("group_score", 25.0)}
    # The chart goes up beside the card, which embeds it.
    assert uploaded == [("org/model", "group_score_procedural.png", b"\x89PNG\r\n\x1a\n")]
    assert "](group_score_procedural.png)" in card.text
