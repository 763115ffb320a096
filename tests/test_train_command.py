"""``hf-cf train`` (hf_counterfactual.commands.train) end to end on a small procedural dataset, in-process."""

import json
import runpy
from types import SimpleNamespace
from pathlib import Path

import pytest
from transformers import AutoProcessor, CLIPModel

from hf_counterfactual.commands import UsageError
from hf_counterfactual.commands import train


SMALL = ["--num_train_scenes", "48", "--num_test_scenes", "12", "--num_train_epochs", "1", "--pretrain_epochs", "1",
         "--per_device_train_batch_size", "16", "--disable_tqdm", "True"]  # fmt: skip


def test_embedded_default_runs_saves_and_reports(tmp_path):
    out = tmp_path / "out"
    results = train.main(["--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL])
    assert set(results) == {"before", "after", "heldout_style"}
    assert results["after"]["all"]["count"] == results["before"]["all"]["count"] > 12  # several edits per test record
    assert {"attribute", "object", "count"} <= set(results["after"])
    # The same facts in the held-out rendering: as many groups, other scores.
    assert results["heldout_style"]["after"]["all"]["count"] == results["after"]["all"]["count"]
    assert json.loads((out / "evaluation_results.json").read_text()) == results
    model = CLIPModel.from_pretrained(out)
    assert len(AutoProcessor.from_pretrained(out).tokenizer) == model.config.text_config.vocab_size
    card = (out / "README.md").read_text()
    assert "model-index" in card and "group_score" in card and "grouping" in card


def test_embedded_defaults_do_not_apply_to_real_checkpoints():
    *_, training_args = train.parse_args(["--model_name_or_path", "some/clip", "--output_dir", "x"])
    assert training_args.learning_rate == 5e-5  # TrainingArguments' default, not the tiny model's 1e-3
    *_, training_args = train.parse_args([])
    assert training_args.learning_rate == train.EMBEDDED_DEFAULTS["learning_rate"]


def test_a_generative_checkpoint_defaults_to_cf_vlm_lm(tmp_path):
    from dummy_components import save_tiny_model
    from hf_counterfactual.tiny_models import build_tiny_clip, build_tiny_llava

    for name, build in (("llava", build_tiny_llava), ("clip", build_tiny_clip)):
        save_tiny_model(tmp_path / name, build)
    objective = lambda *argv: train.parse_args([*argv, "--output_dir", "x"])[2].objective  # noqa: E731
    assert objective("--model_name_or_path", str(tmp_path / "llava")) == "cf-vlm-lm"  # grouping would be refused
    assert objective("--model_name_or_path", str(tmp_path / "llava"), "--objective", "countercurate") == "countercurate"
    assert objective("--model_name_or_path", str(tmp_path / "clip")) == "grouping"
    assert objective("--model_name_or_path", "no/such-model") == "grouping"  # check_pretrained names it in main


def test_run_cf_llava_script_defaults_to_the_tiny_llava(monkeypatch):
    seen = []
    monkeypatch.setattr("hf_counterfactual.cli.main", lambda argv: seen.append(argv) or 0)
    for argv in ([], ["--model_type", "siglip"]):
        monkeypatch.setattr("sys.argv", ["run_cf_llava.py", *argv])
        with pytest.raises(SystemExit):
            runpy.run_path(str(Path(__file__).parents[1] / "examples" / "run_cf_llava.py"), run_name="__main__")
    assert seen == [["train", "--model_type", "llava"], ["train", "--model_type", "siglip"]]
    model_args, _, training_args = train.parse_args(seen[0][1:])
    assert model_args.model_type == "llava" and training_args.objective == "cf-vlm-lm"


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match=r"--test_split 'validation'.*splits are \['test', 'test_heldout_style', 'train'\]"):
        train.main(["--output_dir", str(tmp_path / "o"), "--num_train_scenes", "8", "--num_test_scenes", "4",
                          "--test_split", "validation", "--cache_dir", str(tmp_path / "cache")])  # fmt: skip


def test_embedded_default_starts_from_a_cached_pretrained_start(tmp_path, caplog):
    out, cache = tmp_path / "out", ["--cache_dir", str(tmp_path / "cache")]
    first = train.main(["--output_dir", str(out), *cache, *SMALL])
    start = out / "pretrained-start"
    assert (start / "config.json").exists() and (start / "pretraining.json").exists()
    saved = CLIPModel.from_pretrained(start)
    # "before" is the pretrained start, not the random initialisation it was trained from.
    model_args, _, training_args = train.parse_args(["--output_dir", str(out), "--pretrain_epochs", "0"])
    random_init, _ = train.load_model(model_args, training_args, train=None)
    assert not any(a.equal(b) for a, b in zip(random_init.state_dict().values(), saved.state_dict().values()) if a.is_floating_point())

    # A rerun reads the start instead of training it again: the same "before" scores.
    stamp = (start / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = train.main(["--output_dir", str(out), *cache, *SMALL])
    assert (start / "model.safetensors").stat().st_mtime_ns == stamp and "read from" in caplog.text
    assert again["before"] == first["before"]

    # Other pre-training settings never reuse it.
    caplog.clear()
    with caplog.at_level("WARNING"):
        train.main(["--output_dir", str(out), *cache, *SMALL, "--pretrain_learning_rate", "5e-4"])
    assert "other settings" in caplog.text and (start / "model.safetensors").stat().st_mtime_ns != stamp


def test_ablation_tables_average_each_evaluation_over_seeds():
    run_ablation = SimpleNamespace(**runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "run_ablation.py")))

    def scores(group: float) -> dict:
        return {subset: {"group_score": group} for subset in ("all", *run_ablation.KINDS)}

    def run(before: float, after: float, heldout_after: float) -> dict:
        return {"before": scores(before), "after": scores(after), "heldout_style": {"before": scores(before), "after": scores(heldout_after)}}

    results = {"clip": {0: run(0.1, 0.2, 0.3), 1: run(0.1, 0.4, 0.1)}, "grouping": {0: run(0.1, 0.8, 0.7), 1: run(0.1, 0.9, 0.9)}}
    test_table, style_table = run_ablation.format_tables(results, [0, 1]).split("Group score (%), ")[1:]
    assert "| pretrained start | 10.0 ± 0.0 |" in test_table
    assert "| `clip` | 30.0 ± 10.0 |" in test_table and "| `grouping` | 85.0 ± 5.0 |" in test_table
    assert style_table.startswith("held-out rendering style")
    assert "| `clip` | 20.0 ± 10.0 |" in style_table and "| `grouping` | 80.0 ± 10.0 |" in style_table


@pytest.mark.parametrize("flag", ["--model_name_or_path", "--model-name-or-path"])
def test_embedded_defaults_follow_the_parsed_model_not_the_flags_spelling(flag):
    model_args, _, training_args = train.parse_args([flag, "some/clip", "--output_dir", "x"])
    assert model_args.model_name_or_path == "some/clip"
    assert training_args.learning_rate == 5e-5 and training_args.num_train_epochs == 3  # TrainingArguments' own
    # An explicit value still wins over an embedded default.
    _, _, training_args = train.parse_args(["--learning_rate", "2e-4"])
    assert training_args.learning_rate == 2e-4 and training_args.num_train_epochs == train.EMBEDDED_DEFAULTS["num_train_epochs"]


def test_resume_from_the_last_complete_checkpoint(tmp_path, caplog):
    out, cache = tmp_path / "out", ["--cache_dir", str(tmp_path / "cache")]
    args = ["--output_dir", str(out), *cache, *SMALL, "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4"]
    train.main(args)
    assert (out / "checkpoint-4" / "trainer_state.json").exists()
    (out / "checkpoint-6").mkdir()  # killed mid-save: only the config was written
    (out / "checkpoint-6" / "config.json").write_text("{}")
    assert train.checkpoint_to_resume(train.parse_args([*args, "--resume_from_checkpoint", "last"])[2]) == str(out / "checkpoint-4")
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("checkpoint-[24]/*")}
    with caplog.at_level("INFO"):
        train.main([*args[:-1], "6", "--resume_from_checkpoint", "last"])
    assert "half-written checkpoint" in caplog.text
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    # Steps 1-4 were not run again: their checkpoints are untouched (a restart rewrites them).
    assert stamps and all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())


def test_resume_from_an_incomplete_checkpoint_is_an_error_before_any_work(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    with pytest.raises(UsageError, match="not a complete checkpoint"):
        train.main(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")])
    with pytest.raises(UsageError, match="no complete checkpoint"):
        train.main(["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "last"])


def test_a_dataset_of_other_columns_is_named_before_training(tmp_path):
    from datasets import Dataset, DatasetDict
    from PIL import Image

    rows = Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * 2, "text": ["a dog", "a cat"]})
    folder = tmp_path / "captions"
    DatasetDict({"train": rows, "test": rows}).save_to_disk(str(folder))
    raw = DatasetDict.load_from_disk(str(folder))
    with pytest.raises(UsageError, match=r"split 'train' is not a dataset of counterfactual records \(columns \['image', 'text'\]\).*row 0, field 'caption': missing"):
        train.select_split(raw, "train", "--train_split")


@pytest.mark.parametrize("model_type", ["llava", "siglip"])
def test_embedded_default_for_other_model_types(tmp_path, model_type):
    from huggingface_hub import ModelCard
    from transformers import AutoModel, AutoModelForImageTextToText

    out = tmp_path / "out"
    results = train.main(["--model_type", model_type, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL])
    assert results["after"]["all"]["count"] == results["before"]["all"]["count"] > 12
    auto = AutoModelForImageTextToText if model_type == "llava" else AutoModel
    assert type(auto.from_pretrained(out)).__name__ == {"llava": "LlavaForConditionalGeneration", "siglip": "SiglipModel"}[model_type]
    card = ModelCard.load(out / "README.md")
    assert model_type in card.data.tags and ("A tiny LLaVA" in card.text) == (model_type == "llava")
    assert card.data.pipeline_tag == ("image-text-to-text" if model_type == "llava" else "zero-shot-image-classification")
    _, _, training_args = train.parse_args(["--model_type", model_type])
    assert training_args.objective == ("cf-vlm-lm" if model_type == "llava" else "grouping")


def test_llava_with_lora_is_saved_merged_as_a_plain_llava(tmp_path):
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "out"
    train.main(["--model_type", "llava", "--use_peft", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL])
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert not any("lora_" in name for name in model.state_dict())
    assert not (out / "adapter_config.json").exists()


def test_llava_lora_adapter_saved_unmerged_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import LlavaForConditionalGeneration

    out = tmp_path / "out"
    train.main(["--model_type", "llava", "--use_peft", "--merge_lora", "False", "--output_dir", str(out),
                "--cache_dir", str(tmp_path / "cache"), *SMALL])  # fmt: skip
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    base = LlavaForConditionalGeneration.from_pretrained(out / "pretrained-start")  # what the adapters were trained on
    model = PeftModel.from_pretrained(base, out)
    assert any("lora_" in name for name, _ in model.named_parameters())


def test_read_on_the_tiny_default_pretrains_a_tiny_t5_once_and_saves_a_plain_clip(tmp_path):
    """``--objective read`` without ``--reconstruction_decoder``: the tiny T5 is pre-trained on the
    training captions (its loss falls), cached beside the pretrained start, reused by a rerun."""
    import json as json_

    out = tmp_path / "out"
    args = ["--objective", "read", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), *SMALL]
    train.main(args)
    decoder = out / "pretrained-start" / "reconstruction-decoder"
    assert (decoder / "pretraining.json").exists() and (decoder / "tokenizer.json").exists()
    losses = [e["loss"] for e in json_.loads((decoder / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    stamp = (decoder / "model.safetensors").stat().st_mtime_ns
    train.main(args)
    assert (decoder / "model.safetensors").stat().st_mtime_ns == stamp
    loaded, info = CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()) and not (out / "reconstruction_head.safetensors").exists()


def test_read_on_a_real_checkpoint_without_a_decoder_is_an_error_before_any_work(tmp_path):
    from dummy_components import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "clip")
    with pytest.raises(UsageError, match="pass --reconstruction_decoder"):
        train.main(["--model_name_or_path", model_dir, "--objective", "read", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(UsageError, match="--reconstruction_decoder"):
        train.main(["--model_name_or_path", model_dir, "--objective", "read", "--reconstruction_decoder", str(tmp_path / "missing"),
                    "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert not (tmp_path / "out").exists()
