"""dataset_scripts/: each builds its dataset in the Hub's layout (Parquet + README configs:), loadable
with plain load_dataset, with a card that says which script made it; push uploads that folder."""

import runpy
from pathlib import Path

import datasets
import pytest

from generation_fixtures import english_pipeline, write_coco_photos
from hf_counterfactual.builders import load_procedural_scenes

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_scripts"


def script(name: str):
    return runpy.run_path(str(SCRIPTS / f"{name}.py"))


@pytest.fixture
def recording_hub(monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    return calls


def test_procedural_scenes_both_configs_load_as_the_builder_makes_them(tmp_path, recording_hub):
    out, cache = tmp_path / "procedural-scenes", str(tmp_path / "cache")
    sizes = script("procedural_scenes")["main"](["--output_dir", str(out), "--num_train_scenes", "8", "--num_test_scenes", "4",
                                                 "--cache_dir", cache, "--push_to_hub", "--hub_model_id", "org/procedural-scenes"])  # fmt: skip
    for name in ("default", "winoground"):
        loaded = datasets.load_dataset(str(out), name, cache_dir=cache)
        built = load_procedural_scenes(name, cache_dir=cache, num_train=8, num_test=4)
        assert {split: rows.num_rows for split, rows in loaded.items()} == sizes[name] == {s: r.num_rows for s, r in built.items()}
        assert loaded["test"]["caption" if name == "default" else "caption_0"] == built["test"]["caption" if name == "default" else "caption_0"]
    card = (out / "README.md").read_text()
    assert "dataset_scripts/procedural_scenes.py" in card and "config_name: winoground" in card
    assert recording_hub == [("create_repo", "org/procedural-scenes"), ("upload_folder", "org/procedural-scenes", ["README.md", "default", "winoground"])]
    assert not list(tmp_path.glob(".building-*"))

    # hf-cf evaluate reads a named configuration of it; the other configuration is not records, and says so.
    from dummy_components import save_tiny_model
    from hf_counterfactual.commands import UsageError, evaluate

    model = save_tiny_model(tmp_path / "clip")
    flags = ["--model_name_or_path", model, "--benchmarks", "records", "--records_dataset", str(out), "--cache_dir", cache, "--no_progress"]
    results = evaluate.main([*flags, "--records_config_name", "default"])["records"]
    assert results["all"]["count"] >= 4
    with pytest.raises(UsageError, match=r"split 'test' is not a dataset of counterfactual records \(columns \['id', 'image_0'"):
        evaluate.main([*flags, "--records_config_name", "winoground"])


def test_cf_coco_builds_every_split_into_one_folder_and_pushes_once(tmp_path, recording_hub):
    coco = write_coco_photos(tmp_path / "coco", "val")
    write_coco_photos(coco, "train")
    out = tmp_path / "cf-coco"
    stats = script("cf_coco")["main"](["--coco_root", str(coco), "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
                                       "--edits", "attribute,position", "--push_to_hub", "--hub_model_id", "org/cf-coco"])  # fmt: skip
    assert set(stats) == {"train", "val"}
    records = datasets.load_dataset(str(out))
    assert {split: rows.num_rows for split, rows in records.items()} == {s: v["num_records"] for s, v in stats.items()}
    card = (out / "README.md").read_text()
    assert "Made with hf-counterfactual's `dataset_scripts/cf_coco.py`" in card and str(tmp_path) not in card
    assert [c[:2] for c in recording_hub] == [("create_repo", "org/cf-coco"), ("upload_folder", "org/cf-coco")]  # one upload, both splits
