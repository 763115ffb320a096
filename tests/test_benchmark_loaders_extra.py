"""VL-CheckList and CREPE loaders on tiny fixtures in each benchmark's published layout, scored by
hand-made scorers whose outcomes are computed by hand."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from benchmark_fixtures import TableEmbeddingScorer, save_image, table_scorer, write_json
from hf_counterfactual.benchmarks import (
    crepe_benchmark,
    evaluate_benchmark,
    vl_checklist_benchmark,
    vl_checklist_category,
)

# ------------------------------------------------------------------------------ VL-CheckList


@pytest.fixture
def checklist(tmp_path):
    """The authors' data/ layout (three categories, three corpora) and $DATASET/{vg,swig,hake}."""
    data, dataset = tmp_path / "vl-checklist" / "data", tmp_path / "DATASET"
    for rel in ("vg/VG_100K/1.jpg", "vg/VG_100K_2/2.jpg", "swig/dialing_8.jpg", "hake/hcvrd/107905.jpg"):
        save_image(dataset / rel)
    write_json(data / "Attribute" / "vg" / "color.json", [
        ["VG_100K/1.jpg", {"POS": ["brown knob"], "NEG": ["teal knob"]}],
        ["VG_100K_2/2.jpg", {"POS": ["red bottle"], "NEG": ["silver bottle"]}],
    ])
    write_json(data / "Attribute" / "vaw" / "color.json", [["VG_100K/1.jpg", {"POS": ["white shirt"], "NEG": ["gray shirt"]}]])
    write_json(data / "Object" / "Location" / "swig_location" / "swig_agent" / "swig_agent_mid.json", [
        ["dialing_8.jpg", {"POS": ["a man dials", "a person dials"], "NEG": ["a bird dials", "a flower dials"]}],
    ])
    write_json(data / "Object" / "Size" / "hake_size" / "hake_obj_small.json", [
        ["hcvrd/107905.jpg", {"POS": ["person carry bottle"], "NEG": ["person carry teddy bear"]}],
    ])
    write_json(data / "Relation" / "swig_action.json", [["dialing_8.jpg", {"POS": ["a man dials"], "NEG": ["a phone dials"]}]])
    return data, dataset


def test_vl_checklist_category_from_the_authors_paths(tmp_path):
    data = tmp_path / "data"
    assert vl_checklist_category(data / "Attribute/vg/color.json") == ("Attribute/color", "vg")
    assert vl_checklist_category(data / "Attribute/vaw/action.json") == ("Attribute/action", "vaw")
    assert vl_checklist_category(data / "Attribute/vg/spatial.json") == ("Relation/spatial", "vg")
    assert vl_checklist_category(data / "Object/Location/swig_location/swig_tool/swig_tool_center.json") == ("Object/Location/center", "swig_tool")
    assert vl_checklist_category(data / "Object/Size/vg_size/vg_subj_large.json") == ("Object/Size/large", "vg_subj")
    assert vl_checklist_category(data / "Object/Size/hake_size/hake_obj_medium.json") == ("Object/Size/medium", "hake_obj")
    assert vl_checklist_category(data / "Relation/vg/spatial.json") == ("Relation/spatial", "vg")
    assert vl_checklist_category(data / "Relation/hake_action.json") == ("Relation/action", "hake")
    with pytest.raises(ValueError, match="cannot tell the VL-CheckList category"):
        vl_checklist_category(tmp_path / "color.json")


def test_vl_checklist_first_pairs_scores_and_subsets(checklist):
    data, dataset = checklist
    benchmark = vl_checklist_benchmark(data, dataset)
    assert len(benchmark) == 6
    by_id = {e.id: e for e in benchmark.examples}
    first = by_id["Attribute/vg/color/0"]
    assert first.images == ((str(dataset / "vg" / "VG_100K" / "1.jpg"), None),)
    assert first.texts == ("brown knob", "teal knob") and first.truth == ((True, False),) and first.subset == "Attribute/color"
    # the authors' itc evaluation: POS[0] against NEG[0] only
    assert by_id["Object/Location/swig_location/swig_agent/swig_agent_mid/0"].texts == ("a man dials", "a bird dials")
    assert by_id["Object/Size/hake_size/hake_obj_small/0"].images[0][0] == str(dataset / "hake" / "hcvrd" / "107905.jpg")
    assert {e.subset for e in benchmark.examples} == {"Attribute/color", "Object/Location/mid", "Object/Size/small", "Relation/action"}
    # right: brown knob, white shirt (color 2/3), a man dials vs a bird (location 1/1); wrong: red
    # bottle ties silver bottle, person carry bottle < teddy bear (size 0/1), a man dials ties a
    # phone dials (action 0/1)
    table = {"brown knob": 2, "teal knob": 1, "red bottle": 1, "silver bottle": 1, "white shirt": 3, "gray shirt": 0,
             "a man dials": 1, "a bird dials": 0, "a phone dials": 1, "person carry bottle": 0, "person carry teddy bear": 1}
    seen = []
    results = evaluate_benchmark(table_scorer(table, seen), benchmark)
    assert results["all"]["text_score"] == pytest.approx(3 / 6) and results["all"]["ties"] == 2
    assert results["Attribute/color"]["text_score"] == pytest.approx(2 / 3) and results["Attribute/color"]["count"] == 3
    assert results["Object/Location/mid"]["text_score"] == 1.0
    assert results["Object/Size/small"]["text_score"] == 0.0 and results["Relation/action"]["text_score"] == 0.0
    assert results["macro"]["text_score"] == pytest.approx((2 / 3 + 1 + 0 + 0) / 4)
    assert np.isnan(results["all"]["image_score"])
    assert seen[0].size == (16, 12) and seen[0].mode == "RGB"
    assert evaluate_benchmark(TableEmbeddingScorer(table), benchmark)["all"]["text_score"] == pytest.approx(3 / 6)


def test_vl_checklist_aligned_all_corpus_subsets_and_mapping(checklist):
    data, dataset = checklist
    folders = {"vg": dataset / "vg", "swig": dataset / "swig", "hake": dataset / "hake"}
    swig_file = data / "Object" / "Location" / "swig_location" / "swig_agent" / "swig_agent_mid.json"
    aligned = vl_checklist_benchmark([swig_file], folders, pairs="aligned", subset_by="corpus")
    assert [e.texts for e in aligned.examples] == [("a man dials", "a bird dials"), ("a person dials", "a flower dials")]
    assert [e.id[-2:] for e in aligned.examples] == ["/0", "/1"]
    assert {e.subset for e in aligned.examples} == {"Object/Location/mid/swig_agent"}
    every = vl_checklist_benchmark([swig_file], folders, pairs="all", subset_by="file")
    assert len(every) == 4 and every.examples[0].subset == "Object/Location/swig_location/swig_agent/swig_agent_mid"
    colors = vl_checklist_benchmark([data / "Attribute" / "vg" / "color.json", data / "Attribute" / "vaw" / "color.json"], folders, subset_by="corpus")
    assert [e.subset for e in colors.examples] == ["Attribute/color/vg", "Attribute/color/vg", "Attribute/color/vaw"]
    with pytest.raises(ValueError, match="no image folder for corpus 'hake_obj'"):
        vl_checklist_benchmark(data / "Object" / "Size", {"vg": dataset / "vg"})
    with pytest.raises(ValueError, match="pairs must be one of"):
        vl_checklist_benchmark(data, dataset, pairs="some")


def test_vl_checklist_errors_name_file_and_item(checklist, tmp_path):
    data, dataset = checklist
    with pytest.raises(FileNotFoundError, match="VL-CheckList annotation file not found"):
        vl_checklist_benchmark(data / "Attribute" / "vg" / "size.json", dataset)
    bad = data / "Attribute" / "vg" / "material.json"
    write_json(bad, [["VG_100K/1.jpg", {"POS": ["wooden table"], "NEG": ["metal table"]}], ["VG_100K/1.jpg", {"POS": ["x"]}]])
    with pytest.raises(ValueError, match=r"material\.json, item 1: 'NEG' must be a non-empty list"):
        vl_checklist_benchmark(bad, dataset)
    write_json(bad, [{"path": "VG_100K/1.jpg"}])
    with pytest.raises(ValueError, match=r"material\.json, item 0: expected \[image_path"):
        vl_checklist_benchmark(bad, dataset)
    write_json(bad, [["VG_100K/1.jpg", {"POS": ["a", "b"], "NEG": ["c"]}]])
    with pytest.raises(ValueError, match=r"item 0: pairs='aligned' needs as many"):
        vl_checklist_benchmark(bad, dataset, pairs="aligned")
    write_json(bad, [["VG_100K/1.jpg", {"POS": ["a"], "NEG": ["c"]}], ["VG_100K/404.jpg", {"POS": ["a"], "NEG": ["c"]}]])
    with pytest.raises(FileNotFoundError, match=r"404\.jpg \(used by .*material\.json, item 1\)"):
        vl_checklist_benchmark(bad, dataset)
    # the authors' loader skips items without an image: on request, counted
    skipped = vl_checklist_benchmark(bad, dataset, skip_missing_images=True)
    assert len(skipped) == 1 and skipped.metadata["missing_images"] == {str(bad): 1}


# ------------------------------------------------------------------------------------- CREPE


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture
def crepe(tmp_path):
    """prod_hard_negatives/{atom,swap}/..._complexity_{n}.csv, a systematicity file, VG_100K{,_2}/."""
    vg = tmp_path / "visual_genome"
    left = Image.new("RGB", (20, 10), (255, 0, 0))
    left.paste((0, 0, 255), (10, 0, 20, 10))  # red left half, blue right half
    (vg / "VG_100K").mkdir(parents=True)
    left.save(vg / "VG_100K" / "1.jpg", quality=100)
    save_image(vg / "VG_100K_2" / "2.jpg", size=(30, 20))
    prod = tmp_path / "crepe" / "prod_hard_negatives"
    # pandas.to_csv writes the index as a first, unnamed column; the negatives as a list literal
    header = ["", "region_id", "image_id", "caption", "x", "y", "width", "height", "hard_negs"]
    write_csv(prod / "atom" / "prod_vg_hard_negs_atom_complexity_4.csv", header, [
        [0, 11, 1, "a red wall", 0, 0, 10, 10, str(["a green wall", "a blue wall"])],
        [1, 12, 2, "a small dog", 5, 5, 10, 8, str(["a big dog", "a small cat"])],
    ])
    write_csv(prod / "swap" / "prod_vg_hard_negs_swap_complexity_5.csv", header, [
        [0, 13, 2, "a dog on a bed", 0, 0, 30, 20, str(["a bed on a dog", "a dog on a dog", "a bed on a bed"])],
    ])
    syst = tmp_path / "crepe" / "syst_hard_negatives" / "syst_vg_hard_negs_seen_compounds_in_laion.csv"
    write_csv(syst, ["region_id", "caption", "x", "y", "width", "height", "valid_hard_negs_comp", "valid_hard_negs_atom", "image_id"], [
        [374, "a red brick sidewalk", 0, 0, 20, 10, str(["a red mall and blue sidewalk"]), str(["a brown brick sidewalk", "a white brick sidewalk"]), 1],
        [375, "a white dog", 0, 0, 20, 10, "[]", str(["a black dog"]), 1],
    ])
    return prod, syst, vg


def test_crepe_productivity_rows_crops_and_recall_at_1(crepe):
    prod, _, vg = crepe
    benchmark = crepe_benchmark(prod, vg)
    assert len(benchmark) == 3
    first = benchmark.examples[0]
    assert first.id == "prod_vg_hard_negs_atom_complexity_4/0"
    assert first.images == ((str(vg / "VG_100K" / "1.jpg"), (0, 0, 10, 10)),)
    assert first.texts == ("a red wall", "a green wall", "a blue wall") and first.truth == ((True, False, False),)
    assert first.subset == "productivity/atom/complexity_4"
    # the image id is looked up in VG_100K, then VG_100K_2 (the authors' get_image_by_id)
    assert benchmark.examples[1].images[0][0] == str(vg / "VG_100K_2" / "2.jpg")
    assert benchmark.examples[2].subset == "productivity/swap/complexity_5" and len(benchmark.examples[2].texts) == 4
    # the crop is the region: the red left half of image 1
    region = benchmark.load_image(first.images[0])
    assert region.size == (10, 10) and region.getpixel((5, 5))[0] > 200 and region.getpixel((5, 5))[2] < 60
    # right: row 0 (red wall 3 > 1, 2); wrong: row 1 ("a big dog" ties the caption), swap row (a bed on a dog wins)
    table = {"a red wall": 3, "a green wall": 1, "a blue wall": 2, "a small dog": 2, "a big dog": 2, "a small cat": 0,
             "a dog on a bed": 1, "a bed on a dog": 2}
    results = evaluate_benchmark(table_scorer(table), benchmark)
    assert results["all"]["text_score"] == pytest.approx(1 / 3) and results["all"]["ties"] == 1
    assert results["productivity/atom/complexity_4"]["text_score"] == pytest.approx(1 / 2)
    assert results["productivity/swap/complexity_5"]["text_score"] == 0.0
    assert results["macro"]["text_score"] == pytest.approx(1 / 4)
    assert evaluate_benchmark(TableEmbeddingScorer(table), benchmark)["all"]["text_score"] == pytest.approx(1 / 3)
    only_swap = crepe_benchmark(prod, [vg / "VG_100K", vg / "VG_100K_2"], negative_type="swap", crop=False)
    assert len(only_swap) == 1 and only_swap.examples[0].images == ((str(vg / "VG_100K_2" / "2.jpg"), None),)


def test_crepe_systematicity_both_types_and_empty_negatives(crepe):
    _, syst, vg = crepe
    benchmark = crepe_benchmark(syst, vg)
    assert [(e.id, e.subset) for e in benchmark.examples] == [
        ("syst_vg_hard_negs_seen_compounds_in_laion/0/atom", "systematicity/seen_compounds_in_laion/atom"),
        ("syst_vg_hard_negs_seen_compounds_in_laion/0/comp", "systematicity/seen_compounds_in_laion/comp"),
        ("syst_vg_hard_negs_seen_compounds_in_laion/1/atom", "systematicity/seen_compounds_in_laion/atom"),
    ]
    assert benchmark.examples[0].texts == ("a red brick sidewalk", "a brown brick sidewalk", "a white brick sidewalk")
    assert benchmark.metadata["rows_without_negatives"] == {str(syst): 1}  # row 1 has no comp negative
    table = {"a red brick sidewalk": 1, "a red mall and blue sidewalk": 2, "a white dog": 1}
    results = evaluate_benchmark(table_scorer(table), benchmark)
    assert results["systematicity/seen_compounds_in_laion/atom"]["text_score"] == 1.0
    assert results["systematicity/seen_compounds_in_laion/comp"]["text_score"] == 0.0
    comp = crepe_benchmark(syst, vg, negative_type="comp")
    assert [e.subset for e in comp.examples] == ["systematicity/seen_compounds_in_laion/comp"]
    with pytest.raises(ValueError, match="systematicity has the negative types"):
        crepe_benchmark(syst, vg, negative_type="swap")


def test_crepe_errors_name_file_and_row(crepe, tmp_path):
    prod, _, vg = crepe
    with pytest.raises(ValueError, match="not a CREPE hard-negative file name"):
        crepe_benchmark(tmp_path / "negatives.csv", vg)
    with pytest.raises(FileNotFoundError, match="CREPE hard-negative file not found"):
        crepe_benchmark(tmp_path / "prod_vg_hard_negs_negate_complexity_6.csv", vg)
    with pytest.raises(ValueError, match="unknown CREPE negative type"):
        crepe_benchmark(prod, vg, negative_type="shuffle")
    bad = tmp_path / "bad" / "prod_vg_hard_negs_negate_complexity_6.csv"
    header = ["image_id", "caption", "x", "y", "width", "height", "hard_negs"]
    write_csv(bad, header[:-1], [[1, "a cat", 0, 0, 5, 5]])
    with pytest.raises(ValueError, match=r"complexity_6\.csv: missing column\(s\) \['hard_negs'\]"):
        crepe_benchmark(bad, vg)
    write_csv(bad, header, [[1, "a cat", 0, 0, 5, 5, "['a dog']"], [1, "a cat", 0, 0, 5, 5, "a dog, a cow"]])
    with pytest.raises(ValueError, match=r"complexity_6\.csv, row 1: 'hard_negs' must be a Python list"):
        crepe_benchmark(bad, vg)
    write_csv(bad, header, [[1, "a cat", 0, 0, 0, 5, "['a dog']"]])
    with pytest.raises(ValueError, match=r"complexity_6\.csv, row 0: invalid box"):
        crepe_benchmark(bad, vg)
    write_csv(bad, header, [[1, "a cat", "left", 0, 5, 5, "['a dog']"]])
    with pytest.raises(ValueError, match=r"row 0: 'x' must be a number"):
        crepe_benchmark(bad, vg)
    write_csv(bad, header, [[1, "a cat", 0, 0, 5, 5, "['a dog']"], [404, "a cat", 0, 0, 5, 5, "['a dog']"]])
    with pytest.raises(FileNotFoundError, match=r"404\.jpg .*\(used by .*complexity_6\.csv, row 1\)"):
        crepe_benchmark(bad, vg)


def test_cli_runs_vl_checklist_and_crepe(checklist, crepe, tmp_path):
    from hf_counterfactual.cli import main
    from dummy_components import save_tiny_model

    save_tiny_model(tmp_path / "model")
    (data, dataset), (prod, _, vg) = checklist, crepe
    out = tmp_path / "results.json"
    main(["evaluate", "--model_name_or_path", str(tmp_path / "model"), "--no_progress", "--output_file", str(out),
          "--benchmarks", "vl-checklist,crepe", "--vl_checklist_dir", str(data), "--vl_checklist_images_dir", str(dataset),
          "--crepe_dir", str(prod.parent), "--vg_images_dir", str(vg)])  # fmt: skip
    results = json.loads(out.read_text())
    assert results["vl-checklist"]["all"]["count"] == 6
    assert results["crepe"]["all"]["count"] > 0 and "macro" in results["crepe"]
