"""The text-plausibility stage of generation (issue 12): cross-fitted n-gram gaps on the record, the
per-kind filter and its counters, determinism per seed, the cached transformers scores, and the
adversarial refinement that finalize runs over every shard of a split (balanced, atomic, idempotent,
the same after a resumed run)."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from generation_fixtures import english_pipeline, write_coco_photos
from hf_counterfactual.features import InvalidRecordError, validate_record
from hf_counterfactual.generation import CounterfactualGenerator, FactualItem, GeneratedRecord, ShardedRecordWriter, finalize
from hf_counterfactual.generation.plausibility import adversarial_refine
from hf_counterfactual.generation.plausibility_stage import CachedScores, CrossFitNgram, PlausibilityStage, parse_threshold
from hf_counterfactual.generation.text_edits import TextEdit

CAPTIONS = [
    "a dog on a couch", "a cat on a bed", "a man riding a horse", "a woman holding an umbrella",
    "two dogs playing in the snow", "a red car parked on the street", "a plate of food on a table",
    "a bird sitting on a branch", "a boy flying a kite", "a train at the station",
]


class Scripted:
    """A text editor with fixed edits: one "object" and one "order" edit per caption."""

    def edit_batch(self, captions):
        return [[TextEdit(caption=c.replace("a ", "the ", 1) + " today", edit="object", source="rule"),
                 TextEdit(caption=" ".join(reversed(c.split())), edit="order", source="rule")] for c in captions]


def items(n=len(CAPTIONS)):
    image = Image.new("RGB", (8, 8), "gray")
    return [FactualItem(image=image, captions=[CAPTIONS[i % len(CAPTIONS)], f"photo number {i}"], id=i) for i in range(n)]


def test_cross_fit_scores_each_item_with_a_model_that_never_saw_it():
    captions = [[f"a dog named rex{i}"] for i in range(12)]
    ngram = CrossFitNgram(num_folds=3, seed=0).fit(captions)
    for i in range(12):
        model = ngram.models[ngram.folds[i]]
        assert f"rex{i}" not in model.vocab  # its own caption's word is unknown to its scorer
        others = [j for j in range(12) if ngram.folds[j] != ngram.folds[i]]
        assert all(f"rex{j}" in model.vocab for j in others)
    again = CrossFitNgram(num_folds=3, seed=0).fit(captions)
    assert np.array_equal(again.folds, ngram.folds)
    assert not np.array_equal(CrossFitNgram(num_folds=3, seed=1).fit(captions).folds, ngram.folds)
    with pytest.raises(ValueError, match="at least 2 items"):
        CrossFitNgram().fit([["one caption"]])


def test_half_models_split_the_other_folds_and_never_see_the_item():
    captions = [[f"a dog named rex{i}"] for i in range(40)]
    ngram = CrossFitNgram(num_folds=4, seed=0).fit(captions)
    texts, owners = [f"a dog named rex{i}" for i in range(40)], list(range(40))
    a, b = ngram.score_halves(texts, owners)
    assert a.shape == b.shape == (40,) and np.isfinite(a).all() and np.isfinite(b).all()
    for (fold, half), model in ngram._half_models.items():
        seen = {i for i in range(40) if f"rex{i}" in model.vocab}
        # exactly the items of the other folds in this half: never the fold scored, never the other half
        assert seen == {i for i in range(40) if ngram.folds[i] != fold and ngram.halves[i] == half}
    assert len(ngram._half_models) == 8 and 0.3 < ngram.halves.mean() < 0.7
    with pytest.raises(ValueError, match="num_folds >= 2"):
        CrossFitNgram(num_folds=1).fit(captions).score_halves(texts, owners)


def test_stage_puts_gaps_on_the_record_filters_per_kind_and_counts():
    data = items()
    stage = PlausibilityStage(ngram=CrossFitNgram(num_folds=2, seed=0), threshold={"order": 0.0}).fit(data)
    generator = CounterfactualGenerator([Scripted()], flip=False, plausibility=stage)
    results = generator.make_records(list(range(len(data))), data)
    counts = sum((r.counts for r in results), Counter())
    assert counts["plausibility/scored"] == 2 * len(data)
    assert counts["plausibility/filter/order/kept"] + counts["plausibility/filter/order/dropped"] == len(data)
    assert counts["plausibility/filter/order/dropped"] > 0 and "plausibility/filter/object/kept" not in counts  # object: no threshold
    ngram = stage.scorers["ngram"]
    for index, result in enumerate(results):
        if not isinstance(result, GeneratedRecord):
            continue
        record = result.record
        validate_record(record)
        for cf in record["counterfactuals"]:
            gap = cf["plausibility_gap"]
            assert gap["causal_lm"] is None and gap["classifier"] is None
            expected = ngram.score([record["caption"]], [index])[0] - ngram.score([cf["caption"]], [index])[0]
            assert gap["ngram"] == pytest.approx(expected)
            if cf["edit"] == "order":
                assert gap["ngram"] <= 0.0
    # the same seed: the same gaps, whatever the batch
    stage2 = PlausibilityStage(ngram=CrossFitNgram(num_folds=2, seed=0), threshold={"order": 0.0}).fit(data)
    halves = [CounterfactualGenerator([Scripted()], flip=False, plausibility=stage2).make_records(list(r), [data[i] for i in r])
              for r in (range(0, 4), range(4, len(data)))]
    def without_images(r):
        return r.reason if not isinstance(r, GeneratedRecord) else {k: v for k, v in r.record.items() if k != "image"}

    assert [without_images(r) for r in halves[0] + halves[1]] == [without_images(r) for r in results]
    assert "plausibility" in generator.timings


def test_several_scorers_gap_per_scorer_and_the_first_one_filters(tmp_path):
    class Length:  # a transformers-like scorer: longer captions are less plausible
        model = None

        def __init__(self):
            self.calls = 0

        def score(self, captions):
            self.calls += len(captions)
            return np.asarray([-len(c) for c in captions], dtype=float)

    inner = Length()
    cached = CachedScores(inner, model_name="length", cache_dir=tmp_path)
    stage = PlausibilityStage(causal_lm=cached, classifier=CachedScores(Length(), model_name="len2"), threshold=2.0)
    assert stage.names == ("causal_lm", "classifier") and stage.primary == "causal_lm"
    counts = [Counter()]
    (kept,) = stage.apply([0], ["a dog"], [[{"caption": "a big dog", "edit": "attribute"}, {"caption": "a cat", "edit": "object"}]], counts)
    assert [cf["caption"] for cf in kept] == ["a cat"]  # "a big dog": gap -5 - (-9) = 4 > 2, dropped
    assert kept[0]["plausibility_gap"] == {"ngram": None, "causal_lm": 0.0, "classifier": 0.0}
    assert counts[0] == {"plausibility/scored": 2, "plausibility/filter/attribute/dropped": 1, "plausibility/filter/object/kept": 1}
    # scores are cached on disk: a new stage (a rerun) runs no model on captions it has seen
    again = CachedScores(Length(), model_name="length", cache_dir=tmp_path)
    assert list(again.score(["a dog", "a cat"])) == [-5.0, -5.0] and again.scorer.calls == 0
    with open(tmp_path / CachedScores.CACHE_FILE, "a") as f:
        f.write('{"model": "length", "capt')  # a torn line from a kill
    torn = CachedScores(Length(), model_name="length", cache_dir=tmp_path)
    torn.score(["a new caption"])
    assert torn.scorer.calls == 1 and CachedScores(Length(), model_name="length", cache_dir=tmp_path).score(["a new caption"])[0] == -13.0


def test_thresholds_and_the_record_field_are_checked():
    assert parse_threshold(None) is None and parse_threshold("0.5") == 0.5
    assert parse_threshold("count=0.2, order=1") == {"count": 0.2, "order": 1.0}
    with pytest.raises(ValueError):
        parse_threshold("count=")
    with pytest.raises(ValueError, match="at least one scorer"):
        PlausibilityStage()
    record = {"image": Image.new("RGB", (4, 4)), "caption": "a dog", "counterfactuals": [
        {"caption": "a cat", "image": None, "edit": "object", "source": "rule", "score": None, "plausibility_gap": {"ngram": 0.5}}]}
    validate_record(record)
    record["counterfactuals"][0]["plausibility_gap"] = {"bigram": 0.5}
    with pytest.raises(InvalidRecordError, match="plausibility_gap"):
        validate_record(record)
    record["counterfactuals"][0]["plausibility_gap"] = {"ngram": "high"}
    with pytest.raises(InvalidRecordError, match=r"plausibility_gap\.ngram"):
        validate_record(record)


# ---------------------------------------------------------------------------------------------
# Refinement at finalize, over every shard

KINDS = ("object", "count")


def synthetic_record(index: int) -> dict:
    """Record ``index``: three text negatives with gaps drawn from the index (more positive than
    negative, as a blind LM finds rule edits)."""
    rng = np.random.default_rng(index)
    cfs = []
    for j in range(3):
        kind = KINDS[(index + j) % 2]
        cfs.append({"caption": f"edit {j} of caption {index}", "image": None, "edit": kind, "source": "rule", "score": None,
                    "plausibility_gap": {"ngram": float(np.round(rng.normal(0.4, 1.0), 3)), "causal_lm": None, "classifier": None}})
    return {"image": Image.new("RGB", (4, 4), (index, 0, 0)), "caption": f"caption {index}", "paraphrases": [], "counterfactuals": cfs}


def write_split(out, n=24, world_size=2, records_per_shard=5):
    for rank in range(world_size):
        ShardedRecordWriter(out, split="train", rank=rank, world_size=world_size, records_per_shard=records_per_shard).run(
            list(range(n)), lambda index, item: synthetic_record(index), progress=False)


SETTINGS = {"num_bins": 3, "seed": 0, "min_counterfactuals": 1, "center": "zero"}  # SugarCrepe's balance


def test_refinement_runs_over_every_shard_balanced_per_kind(tmp_path):
    from datasets import load_dataset

    out = tmp_path / "out"
    write_split(out)
    shards = sorted((out / "data").glob("train-r*.parquet"))
    assert len(shards) >= 4 and {p.name[:14] for p in shards} == {"train-r00000-0", "train-r00001-0"}  # two ranks, several shards
    stats = finalize(out, ["train"], refine={"train": SETTINGS})["train"]

    # the kept set is adversarial_refine over ALL the split's gaps at once (in input order), not per shard
    raw = [synthetic_record(i) for i in range(24)]
    gaps = np.asarray([cf["plausibility_gap"]["ngram"] for r in raw for cf in r["counterfactuals"]], dtype=np.float32).astype(np.float64)
    kinds = [cf["edit"] for r in raw for cf in r["counterfactuals"]]
    expected = set(adversarial_refine(gaps, kinds, num_bins=3, seed=0).tolist())
    flat = [(r["caption"], cf["caption"]) for r in raw for cf in r["counterfactuals"]]
    refined = load_dataset(str(out))["train"]
    got = {(r["caption"], cf["caption"]) for r in refined for cf in r["counterfactuals"]}
    assert got == {flat[i] for i in expected}
    # balanced: per kind, as many kept negatives with a positive gap as with a negative one
    for kind in KINDS:
        kept = [cf["plausibility_gap"]["ngram"] for r in refined for cf in r["counterfactuals"] if cf["edit"] == kind]
        assert kept and sum(g > 0 for g in kept) == sum(g < 0 for g in kept)
    # the counts kept and dropped, per kind, in the stats and the card's source
    refinement = stats["plausibility_refinement"]
    for kind in KINDS:
        of_kind = [i for i, k in enumerate(kinds) if k == kind]
        assert refinement["kinds"][kind] == {"pairs": len(of_kind), "kept": len(expected & set(of_kind)),
                                             "dropped": len(set(of_kind) - expected)}
    assert stats["num_records"] == refined.num_rows == 24 - refinement["records_dropped"]
    assert sum(stats["edits"].values()) == len(expected) and refinement["num_records_before"] == 24
    # the raw shards are untouched and load as the unrefined configuration
    assert load_dataset(str(out), "unrefined")["train"].num_rows == 24
    assert [p.read_bytes() for p in shards] == [p.read_bytes() for p in sorted((out / "data").glob("train-r*.parquet"))]


def test_reliability_centred_refinement(tmp_path):
    """``center="reliability"`` (the default): per kind, the n-gram gaps balanced around the centre
    estimated from half-data LMs on the records' own captions; written in the stats."""
    from hf_counterfactual.generation.plausibility import reliability_center

    rng = np.random.default_rng(0)
    nouns, rare = ["dog", "cat", "man", "woman", "horse", "car"], ["zebra", "kayak", "lamp"]
    places = ["on a couch", "in the park", "on the street", "near a tree"]

    def record(index):
        noun, place = nouns[rng.integers(len(nouns))], places[rng.integers(len(places))]
        caption = f"a {noun} {place}"
        cfs = [{"caption": f"a {new} {place}", "image": None, "edit": "object", "source": "rule", "score": None,
                "plausibility_gap": {"ngram": float(rng.normal(0.5, 0.5)), "causal_lm": None, "classifier": None}}
               for new in (rare[rng.integers(len(rare))], nouns[(nouns.index(noun) + 1) % len(nouns)])]
        return {"image": Image.new("RGB", (4, 4), (index, 0, 0)), "caption": caption, "paraphrases": [], "counterfactuals": cfs}

    records = [record(i) for i in range(120)]
    out = tmp_path / "out"
    ShardedRecordWriter(out, split="train", rank=0, world_size=1, records_per_shard=50).run(
        list(range(120)), lambda index, item: records[index], progress=False)
    stats = finalize(out, ["train"], refine={"train": {"num_bins": 3, "seed": 0, "ngram_folds": 5}})["train"]
    summary = stats["plausibility_refinement"]
    assert summary["settings"]["center"] == "reliability"
    entry = summary["kinds"]["object"]
    # the centre is reliability_center of the stored gaps and the half-data LMs' gaps
    true = [r["caption"] for r in records for cf in r["counterfactuals"]]
    negatives = [cf["caption"] for r in records for cf in r["counterfactuals"]]
    owners = [i for i, r in enumerate(records) for cf in r["counterfactuals"]]
    ngram = CrossFitNgram(order=2, num_folds=5, seed=0).fit([[r["caption"]] for r in records])
    (ta, tb), (na, nb) = ngram.score_halves(true, owners), ngram.score_halves(negatives, owners)
    gaps = np.asarray([cf["plausibility_gap"]["ngram"] for r in records for cf in r["counterfactuals"]], dtype=np.float32).astype(np.float64)
    center, rho = reliability_center(gaps, ta - na, tb - nb)
    assert rho is not None and entry["reliability"] == pytest.approx(rho) and entry["center"] == pytest.approx(center) and center < 0
    expected = set(adversarial_refine(gaps, ["object"] * len(gaps), num_bins=3, seed=0, center=center).tolist())
    assert entry["kept"] == len(expected) < len(adversarial_refine(gaps, num_bins=3, seed=0))  # a stricter balance than around 0
    from datasets import load_dataset

    kept = {(r["caption"], cf["caption"]) for r in load_dataset(str(out))["train"] for cf in r["counterfactuals"]}
    assert kept == {(true[i], negatives[i]) for i in expected}
    # the card names the centring and gives centre and reliability per kind, rounded
    from hf_counterfactual.generation.dataset_card import plausibility_lines

    line = next(x for x in plausibility_lines({"plausibility_refine": True}, stats) if "adversarial refinement" in x)
    assert "reliability-corrected centre" in line and f'"center": {round(center, 3)}' in line and f'"reliability": {round(rho, 3)}' in line
    with pytest.raises(ValueError, match="center"):
        finalize(out, ["train"], refine={"train": {"center": "median"}})


def test_too_few_records_for_a_reliability_estimate_balance_around_zero(tmp_path, caplog):
    out = tmp_path / "out"
    write_split(out, n=6)
    with caplog.at_level("WARNING"):
        stats = finalize(out, ["train"], refine={"train": {"num_bins": 3, "seed": 0}})["train"]
    assert "too few to estimate" in caplog.text
    kinds = stats["plausibility_refinement"]["kinds"]
    assert kinds and all("center" not in entry for entry in kinds.values())
    raw = [synthetic_record(i) for i in range(6)]
    gaps = np.asarray([cf["plausibility_gap"]["ngram"] for r in raw for cf in r["counterfactuals"]], dtype=np.float32).astype(np.float64)
    expected = adversarial_refine(gaps, [cf["edit"] for r in raw for cf in r["counterfactuals"]], num_bins=3, seed=0)
    assert sum(entry["kept"] for entry in kinds.values()) == len(expected)


def test_refinement_is_atomic_and_idempotent(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_split(out)
    finalize(out, ["train"])  # published unrefined first
    readme = (out / "README.md").read_text()

    calls = {"n": 0}
    real = pq.write_table

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        finalize(out, ["train"], refine={"train": SETTINGS})
    monkeypatch.setattr(pq, "write_table", real)
    # nothing half-written is published: the README is the old one, no refined folder but a temporary one
    assert (out / "README.md").read_text() == readme
    assert [p.name for p in (out / "refined").iterdir() if not p.name.startswith(".")] == []

    first = finalize(out, ["train"], refine={"train": SETTINGS})
    folders = [p for p in (out / "refined").iterdir()]
    assert len(folders) == 1 and not folders[0].name.startswith(".")  # the temporary folder is gone too
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folders[0].iterdir()}
    again = finalize(out, ["train"], refine={"train": SETTINGS})  # a rerun reuses the refined folder
    assert again == first
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folders[0].iterdir()} == files
    # other settings: a new folder, the old one removed once the README names the new one
    other = finalize(out, ["train"], refine={"train": {**SETTINGS, "seed": 1}})
    assert [p.name for p in (out / "refined").iterdir()] == [other["train"]["plausibility_refinement"]["path"].split("/")[-1]]
    # no refinement any more: back to the raw shards, no refined folder left
    finalize(out, ["train"])
    assert list((out / "refined").iterdir()) == [] and "unrefined" not in (out / "README.md").read_text()


def test_hf_cf_generate_filters_refines_and_a_resumed_run_gives_the_same(tmp_path):
    from hf_counterfactual.commands import generate

    coco = write_coco_photos(tmp_path / "coco")
    flags = ["--coco_root", str(coco), "--split", "val", "--spacy_pipeline", english_pipeline(), "--edits", "attribute,object,relation,count",
             "--records_per_shard", "2", "--batch_size", "3", "--plausibility_threshold", "count=0.5", "--plausibility_refine",
             "--plausibility_num_bins", "2", "--plausibility_folds", "3"]  # fmt: skip
    stats = generate.main([*flags, "--output_dir", str(tmp_path / "a")])["val"]
    counts = stats["counts"]
    assert counts["plausibility/scored"] > 0
    assert counts.get("plausibility/filter/count/kept", 0) + counts.get("plausibility/filter/count/dropped", 0) > 0
    refinement = stats["plausibility_refinement"]
    assert sum(k["kept"] for k in refinement["kinds"].values()) == sum(stats["edits"].values())
    card = (tmp_path / "a" / "README.md").read_text()
    assert "plausibility filter: a negative whose gap (first scorer) exceeds count=0.5" in card
    assert "adversarial refinement" in card and "config_name: unrefined" in card
    assert refinement["settings"]["center"] == "reliability" and "reliability-corrected centre" in card

    # a run killed after its first shard, then resumed: the same refined split
    b = tmp_path / "b"
    generate.main([*flags, "--output_dir", str(b)])
    progress_path = b / ".progress" / "val-r00000.json"
    progress = json.loads(progress_path.read_text())
    for entry in progress["shards"][1:]:
        if entry["file"]:
            (b / "data" / entry["file"]).unlink()
    progress["shards"], progress["complete"] = progress["shards"][:1], False
    progress_path.write_text(json.dumps(progress))
    shutil.rmtree(b / "refined")
    (b / "README.md").unlink()
    resumed = generate.main([*flags, "--output_dir", str(b)])["val"]
    assert resumed["plausibility_refinement"]["kinds"] == refinement["kinds"] and resumed["counts"] == counts

    def rows(folder, stats):
        path = folder / stats["plausibility_refinement"]["path"]
        return [r for p in sorted(path.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]

    assert rows(b, resumed) == rows(tmp_path / "a", stats)
