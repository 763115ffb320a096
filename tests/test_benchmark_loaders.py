"""SugarCrepe and ARO loaders on tiny fixtures in each benchmark's on-disk layout, scored by
hand-made scorers whose outcomes are computed by hand."""

import json
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from benchmark_fixtures import table_scorer, TableEmbeddingScorer, save_image, write_json
from hf_counterfactual.benchmarks import (
    ARO_SYMMETRIC_RELATIONS,
    SUGARCREPE_SUBSETS,
    aro_attribution_benchmark,
    aro_order_benchmark,
    aro_relation_benchmark,
    coco_captions,
    evaluate_benchmark,
    normalize_caption,
    shuffle_all_but_nouns_and_adjectives,
    shuffle_nouns_and_adjectives,
    shuffle_trigrams,
    shuffle_within_trigrams,
    sugarcrepe_benchmark,
)


def gradient_image(path, width=40, height=30):
    """A PNG whose pixel (x, y) is (x, y, 7): a crop shows exactly which pixels it kept."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = np.arange(width)[None, :]
    array[..., 1] = np.arange(height)[:, None]
    array[..., 2] = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


# ------------------------------------------------------------------------------- SugarCrepe


@pytest.fixture
def sugarcrepe(tmp_path):
    images, annotations = tmp_path / "val2017", tmp_path / "data"
    for k, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        save_image(images / f"00000000000{k}.jpg", color=color)
    write_json(
        annotations / "add_att.json",
        {
            str(i): {"filename": f"00000000000{i}.jpg", "caption": f"true {i}", "negative_caption": f"false {i}"}
            for i in range(3)
        },
    )
    # one entry, sharing image 0 with add_att; the model gets it wrong
    write_json(annotations / "swap_obj.json", {"7": {"filename": "000000000000.jpg", "caption": "dog bites man", "negative_caption": "man bites dog"}})
    return annotations, images


TABLE = {"true 0": 1.0, "true 1": 1.0, "true 2": 1.0, "man bites dog": 1.0}


def test_sugarcrepe_micro_and_macro_differ_with_subset_sizes(sugarcrepe):
    annotations, images = sugarcrepe
    benchmark = sugarcrepe_benchmark(annotations, images, subsets=["add_att", "swap_obj"])
    assert len(benchmark) == 4
    example = benchmark.examples[-1]
    assert example.id == "swap_obj/7" and example.subset == "swap_obj"
    assert example.texts == ("dog bites man", "man bites dog") and example.truth == ((True, False),)
    results = evaluate_benchmark(table_scorer(TABLE), benchmark)
    assert results["add_att"]["text_score"] == 1.0 and results["swap_obj"]["text_score"] == 0.0
    assert results["all"]["text_score"] == pytest.approx(3 / 4)  # micro: every entry weighs the same
    assert results["macro"]["text_score"] == pytest.approx(1 / 2)  # macro: every subset does
    assert np.isnan(results["all"]["image_score"])
    # the embedding path gives the same numbers
    embedded = evaluate_benchmark(TableEmbeddingScorer(TABLE), benchmark)
    assert {k: v["text_score"] for k, v in embedded.items()} == {k: v["text_score"] for k, v in results.items()}


def test_sugarcrepe_shared_images_are_loaded_once(sugarcrepe):
    annotations, images = sugarcrepe
    benchmark = sugarcrepe_benchmark(annotations, images, subsets=["add_att", "swap_obj"])
    assert benchmark.examples[0].images == benchmark.examples[3].images  # same COCO file, same ref
    loads = Counter()
    load = benchmark.load_image

    def counting(ref):
        loads[ref] += 1
        return load(ref)

    benchmark.load_image = counting
    evaluate_benchmark(TableEmbeddingScorer(TABLE), benchmark)
    assert sorted(loads.values()) == [1, 1, 1] and len(loads) == 3
    image = load(("000000000001.jpg", None))
    assert image.mode == "RGB" and image.size == (16, 12)


def test_sugarcrepe_ties_fail(sugarcrepe):
    annotations, images = sugarcrepe
    results = evaluate_benchmark(table_scorer({}), sugarcrepe_benchmark(annotations, images, subsets="add_att"))
    assert results["all"]["text_score"] == 0.0 and results["all"]["ties"] == 3


def test_sugarcrepe_errors(sugarcrepe, tmp_path):
    annotations, images = sugarcrepe
    with pytest.raises(ValueError, match="unknown SugarCrepe subset.*'add_attribute'.*add_att.*swap_obj"):
        sugarcrepe_benchmark(annotations, images, subsets=["add_attribute"])
    with pytest.raises(FileNotFoundError, match="add_obj.json"):
        sugarcrepe_benchmark(annotations, images)  # the default asks for all seven files
    assert set(SUGARCREPE_SUBSETS) >= {"add_att", "swap_obj", "replace_rel"} and len(SUGARCREPE_SUBSETS) == 7

    write_json(annotations / "replace_obj.json", {"12": {"filename": "000000000000.jpg", "caption": "a cat"}})
    with pytest.raises(ValueError, match=r"replace_obj.json, id '12'.*negative_caption"):
        sugarcrepe_benchmark(annotations, images, subsets=["replace_obj"])
    write_json(annotations / "replace_obj.json", {"13": {"filename": "missing.jpg", "caption": "a", "negative_caption": "b"}})
    with pytest.raises(FileNotFoundError, match=r"missing.jpg.*replace_obj.json, id '13'"):
        sugarcrepe_benchmark(annotations, images, subsets=["replace_obj"])
    (images / "broken.jpg").write_bytes(b"not an image")
    write_json(annotations / "replace_obj.json", {"14": {"filename": "broken.jpg", "caption": "a", "negative_caption": "b"}})
    benchmark = sugarcrepe_benchmark(annotations, images, subsets=["replace_obj"])
    with pytest.raises(ValueError, match=r"unreadable image file .*broken.jpg.*id '14'"):
        evaluate_benchmark(table_scorer({}), benchmark)


# ------------------------------------------------------------------------------ VG-Relation


def relation_row(image, true, false, relation, box=(5, 4, 10, 8)):
    x, y, w, h = box
    return {"image_path": image, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h,
            "true_caption": true, "false_caption": false, "relation_name": relation}


@pytest.fixture
def vg_relation(tmp_path):
    images = tmp_path / "images"
    array = gradient_image(images / "1.png")
    gradient_image(images / "2.png")
    rows = [
        relation_row("1.png", "the horse is on the grass", "the grass is on the horse", "on"),
        relation_row("2.png", "the cup is on the table", "the table is on the cup", "on", box=(0, 0, 40, 30)),
        relation_row("1.png", "the man is next to the car", "the car is next to the man", "next to", box=(1, 1, 3, 3)),
    ]
    annotations = tmp_path / "visual_genome_relation.json"
    write_json(annotations, rows)
    return annotations, images, array


RELATION_TABLE = {"the horse is on the grass": 1.0, "the cup is on the table": 1.0, "the car is next to the man": 1.0}


def test_vg_relation_crops_to_the_box(vg_relation):
    annotations, images, array = vg_relation
    benchmark = aro_relation_benchmark(annotations, images)
    assert benchmark.examples[0].images == (("1.png", (5, 4, 15, 12)),)
    assert len(benchmark.distinct_images()) == 3  # same file, different boxes: distinct refs
    seen = []
    evaluate_benchmark(table_scorer(RELATION_TABLE, seen), benchmark)
    assert seen[0].size == (10, 8)  # w x h of the box
    np.testing.assert_array_equal(np.asarray(seen[0]), array[4:12, 5:15])
    assert seen[1].size == (40, 30) and seen[2].size == (3, 3)
    np.testing.assert_array_equal(np.asarray(seen[2]), array[1:4, 1:4])


def test_vg_relation_symmetric_exclusion_changes_the_macro(vg_relation):
    annotations, images, _ = vg_relation
    scorer = table_scorer(RELATION_TABLE)
    full = evaluate_benchmark(scorer, aro_relation_benchmark(annotations, images))
    assert full["on"]["text_score"] == 1.0 and full["next to"]["text_score"] == 0.0
    assert full["all"]["text_score"] == pytest.approx(2 / 3)
    assert full["macro"]["text_score"] == pytest.approx(1 / 2) and full["macro"]["count"] == 2

    benchmark = aro_relation_benchmark(annotations, images, exclude_symmetric=True)
    assert [e.subset for e in benchmark.examples] == ["on", "on"] and benchmark.metadata["excluded_examples"] == 1
    kept = evaluate_benchmark(scorer, benchmark)
    assert "next to" not in kept
    assert kept["macro"]["text_score"] == 1.0 and kept["macro"]["count"] == 1 and kept["all"]["count"] == 2


def test_symmetric_list_is_the_aro_notebooks():
    # 149 relations + the 8 appended at the end of the ARO notebook's list
    assert len(ARO_SYMMETRIC_RELATIONS) == 157
    assert {"next to", "near", "with", "of", "by", "beside", "around", "on the side of", "wrapped in"} <= ARO_SYMMETRIC_RELATIONS
    assert not {"on", "above", "below", "behind", "in front of", "in", "holding", "wearing"} & ARO_SYMMETRIC_RELATIONS


def test_vg_relation_errors(vg_relation, tmp_path):
    annotations, images, _ = vg_relation
    rows = json.loads(annotations.read_text())

    bad = [rows[0], {k: v for k, v in rows[1].items() if k != "bbox_w"}]
    write_json(annotations, bad)
    with pytest.raises(ValueError, match=r"visual_genome_relation.json, row 1: bbox_w must be a number"):
        aro_relation_benchmark(annotations, images)
    write_json(annotations, [rows[0], {k: v for k, v in rows[1].items() if k != "relation_name"}])
    with pytest.raises(ValueError, match=r"row 1: 'relation_name'"):
        aro_relation_benchmark(annotations, images)
    write_json(annotations, [rows[0], relation_row("1.png", "a", "b", "on", box=(0, 0, 0, 5))])
    with pytest.raises(ValueError, match=r"row 1: invalid box"):
        aro_relation_benchmark(annotations, images)

    write_json(annotations, [rows[0], relation_row("nowhere/3.png", "a", "b", "on")])
    with pytest.raises(FileNotFoundError, match=r"nowhere/3.png.*row 1"):
        aro_relation_benchmark(annotations, images)

    write_json(annotations, [rows[0], relation_row("1.png", "a", "b", "on", box=(35, 4, 10, 8))])
    benchmark = aro_relation_benchmark(annotations, images)  # the box is checked against the image when loaded
    with pytest.raises(ValueError, match=r"crop box \(left=35, top=4, right=45, bottom=12\).*40x30 image .*1.png.*row 1"):
        evaluate_benchmark(table_scorer({}), benchmark)

    with pytest.raises(FileNotFoundError, match="nothing.json"):
        aro_relation_benchmark(tmp_path / "nothing.json", images)


# --------------------------------------------------------------------------- VG-Attribution


def test_vg_attribution_subsets_are_attribute_pairs(tmp_path):
    images = tmp_path / "images"
    gradient_image(images / "1.png")

    def row(true, false, attributes):
        return {"image_path": "1.png", "bbox_x": 0, "bbox_y": 0, "bbox_w": 20, "bbox_h": 10,
                "true_caption": true, "false_caption": false, "attributes": attributes}

    annotations = tmp_path / "visual_genome_attribution.json"
    write_json(annotations, [
        row("the white house and the red car", "the red house and the white car", ["white", "red"]),
        row("the white cat and the red door", "the red cat and the white door", ["white", "red"]),
        row("the paved road and the open door", "the open road and the paved door", ["paved", "open"]),
    ])
    scorer = table_scorer({"the white house and the red car": 1.0, "the open road and the paved door": 1.0})
    benchmark = aro_attribution_benchmark(annotations, images)
    assert [e.subset for e in benchmark.examples] == ["white_red", "white_red", "paved_open"]
    results = evaluate_benchmark(scorer, benchmark)
    assert results["white_red"]["text_score"] == 0.5 and results["paved_open"]["text_score"] == 0.0
    assert results["all"]["text_score"] == pytest.approx(1 / 3) and results["macro"]["text_score"] == pytest.approx(1 / 4)

    small_pairs_dropped = aro_attribution_benchmark(annotations, images, min_pair_count=2)
    assert [e.subset for e in small_pairs_dropped.examples] == ["white_red", "white_red"]

    write_json(annotations, [row("a", "b", ["white"])])
    with pytest.raises(ValueError, match=r"row 0: 'attributes' must be a pair"):
        aro_attribution_benchmark(annotations, images)


# ----------------------------------------------------------------------------------- Order

CAPTION = "a small white dog sitting on a red couch next to the big window in a sunny room"


def test_trigram_shuffles_keep_the_words_and_are_deterministic():
    words = CAPTION.split()
    trigrams = [words[i : i + 3] for i in range(0, len(words), 3)]
    for shuffle in (shuffle_trigrams, shuffle_within_trigrams):
        out = shuffle(CAPTION, random.Random(3))
        assert sorted(out.split()) == sorted(words)
        assert out == shuffle(CAPTION, random.Random(3))  # same seed, same shuffle
        assert len({shuffle(CAPTION, random.Random(seed)) for seed in range(10)}) > 1
    out = shuffle_trigrams(CAPTION, random.Random(0)).split()
    # whole trigrams move: the output is a concatenation of the original trigrams (the short one too)
    pieces, rest = [], out
    while rest:
        match = next(t for t in trigrams if rest[: len(t)] == t and t not in pieces)
        pieces.append(match)
        rest = rest[len(match):]
    assert sorted(map(tuple, pieces)) == sorted(map(tuple, trigrams))
    # within trigrams: each trigram keeps its place and its words
    out = shuffle_within_trigrams(CAPTION, random.Random(0)).split()
    assert [sorted(out[i : i + 3]) for i in range(0, len(out), 3)] == [sorted(t) for t in trigrams]
    assert shuffle_trigrams("dog", random.Random(0)) == "dog" and shuffle_within_trigrams("", random.Random(0)) == ""


def test_normalize_caption_is_aros_pre_caption():
    assert normalize_caption("A Dog (brown) sits; on: the \"mat\".") == "a dog brown sits on the mat"
    assert normalize_caption("A dog, a cat") == "a dog , a cat"
    assert normalize_caption(" ".join(["w"] * 40)).split() == ["w"] * 30


def _spacy_pipeline():
    from generation_fixtures import english_pipeline

    return english_pipeline()


def test_pos_shuffles_move_only_their_words():
    pipeline = _spacy_pipeline()
    caption = "a white dog sitting on a red couch"  # nouns: dog, couch; adjectives: white, red
    words = caption.split()
    out = shuffle_nouns_and_adjectives(caption, random.Random(0), pipeline=pipeline).split()
    assert sorted(out) == sorted(words)
    assert {out[2], out[7]} == {"dog", "couch"} and {out[1], out[6]} == {"white", "red"}
    assert [out[i] for i in (0, 3, 4, 5)] == ["a", "sitting", "on", "a"]
    assert any(shuffle_nouns_and_adjectives(caption, random.Random(s), pipeline=pipeline) != caption for s in range(10))
    assert out == shuffle_nouns_and_adjectives(caption, random.Random(0), pipeline=pipeline).split()

    out = shuffle_all_but_nouns_and_adjectives(caption, random.Random(1), pipeline=pipeline).split()
    assert sorted(out) == sorted(words)
    assert [out[i] for i in (1, 2, 6, 7)] == ["white", "dog", "red", "couch"]
    assert out == shuffle_all_but_nouns_and_adjectives(caption, random.Random(1), pipeline=pipeline).split()

    from hf_counterfactual.benchmarks.aro import load_spacy

    with pytest.raises(OSError, match=r"pipeline no_such_pipeline: not an installed spaCy pipeline; installed: \[.en_core_web"):
        load_spacy("no_such_pipeline")


def test_order_benchmark(tmp_path):
    pipeline = _spacy_pipeline()
    images = tmp_path / "val2017"
    save_image(images / "1.jpg")
    save_image(images / "2.jpg")
    annotation = tmp_path / "captions_val2017.json"
    write_json(annotation, {
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [
            {"image_id": 1, "caption": "A white dog sitting on a red couch."},
            {"image_id": 2, "caption": "Two people walking down a busy street next to tall buildings"},
            {"image_id": 2, "caption": "Dogs."},  # every shuffle is the caption itself
            {"image_id": 1, "caption": "a big dog"},  # 3 of the 4 shuffles are the caption itself
        ],
    })
    captions = coco_captions(annotation)
    assert captions[0] == {"image": "1.jpg", "caption": "A white dog sitting on a red couch."}

    benchmark = aro_order_benchmark(captions, images, seed=1, pipeline=pipeline)
    again = aro_order_benchmark(captions, images, seed=1, pipeline=pipeline)
    assert [e.texts for e in benchmark.examples] == [e.texts for e in again.examples]  # deterministic per seed
    meta = benchmark.metadata
    assert [e.id for e in benchmark.examples] == ["0", "1", "3"] and meta["dropped_examples"] == 1
    assert sum(len(e.texts) for e in benchmark.examples) + meta["dropped_examples"] + meta["dropped_options"] == 5 * 4
    for example in benchmark.examples:
        original = example.texts[0]
        assert original == normalize_caption(captions[int(example.id)]["caption"])
        assert example.truth == ((True,) + (False,) * (len(example.texts) - 1),)
        assert len(set(example.texts)) == len(example.texts)  # no false option equals the original
        assert all(sorted(text.split()) == sorted(original.split()) for text in example.texts)
    short = benchmark.examples[-1].texts  # only the within-trigram shuffle can differ
    assert short[0] == "a big dog" and len(short) == 2 and sorted(short[1].split()) == ["a", "big", "dog"]
    assert len(benchmark.examples[0].texts) == 5

    originals = {e.texts[0]: 1.0 for e in benchmark.examples}
    assert evaluate_benchmark(table_scorer(originals), benchmark)["all"]["text_score"] == 1.0  # Precision@1
    tied = evaluate_benchmark(table_scorer({}), benchmark)["all"]
    assert tied["text_score"] == 0.0 and tied["ties"] == 3

    karpathy = tmp_path / "coco_karpathy_test.json"
    write_json(karpathy, [{"image": "val2014/a.jpg", "caption": ["one", "two"]}])
    assert coco_captions(karpathy) == [{"image": "val2014/a.jpg", "caption": "one"}, {"image": "val2014/a.jpg", "caption": "two"}]

    with pytest.raises(FileNotFoundError, match=r"3.jpg.*captions\[1\]"):
        aro_order_benchmark([captions[0], {"image": "3.jpg", "caption": "a dog on a couch"}], images, pipeline=pipeline)
    with pytest.raises(ValueError, match=r"captions\[0\]"):
        aro_order_benchmark([{"caption": "a dog"}], images, pipeline=pipeline)
