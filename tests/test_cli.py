"""The ``hf-cf`` tool as a user meets it: one argument convention, config files, one-line errors,
several splits in one folder, reruns with other flags, cards that say only what is true."""

import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from dummy_components import save_tiny_model
from generation_fixtures import english_pipeline, write_coco_photos
from hf_counterfactual.cli import COMMANDS, main, shipped_configs
from hf_counterfactual.commands import UsageError, generate, train
from hf_counterfactual.commands.arguments import parse_arguments
from hf_counterfactual.commands.generate import GenerationArguments

TEXT_ONLY = ["--edits", "attribute,position"]  # rules and flips: no model, a few seconds


@pytest.fixture
def coco(tmp_path):
    return write_coco_photos(tmp_path / "coco")


def _generate(coco, out, *extra, split="val"):
    return generate.main(["--coco_root", str(coco), "--split", split, "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
                          *TEXT_ONLY, *extra])  # fmt: skip


def test_version_and_shipped_configs(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and "hf-counterfactual" in capsys.readouterr().out
    assert main(["configs"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == shipped_configs() and any(p.endswith("deepspeed/zero2.json") for p in printed)
    # --deepspeed zero2 names the shipped file.
    *_, args = train.parse_args(["--model_name_or_path", "x", "--output_dir", "o", "--deepspeed", "zero2"])
    assert args.deepspeed == next(p for p in printed if p.endswith("zero2.json"))


def test_config_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("coco_root: data/coco\nedits: [attribute, count]\nmax-images: 5\nseed: 3\n")
    (args,) = parse_arguments((GenerationArguments,), [str(config), "--seed", "4"])
    assert (args.coco_root, args.edits, args.max_images, args.seed) == ("data/coco", "attribute,count", 5, 4)
    (args,) = parse_arguments((GenerationArguments,), ["--config", str(config)])
    assert args.seed == 3
    # A JSON file for train; embedded defaults apply only where neither file nor flag speaks.
    (tmp_path / "train.json").write_text(json.dumps({"learning_rate": 3e-4, "objective": "cf-vlm"}))
    _, _, training_args = train.parse_args([str(tmp_path / "train.json"), "--objective", "negclip"])
    assert training_args.learning_rate == 3e-4 and training_args.objective == "negclip"
    assert training_args.num_train_epochs == train.EMBEDDED_DEFAULTS["num_train_epochs"]
    config.write_text("coco_root: x\nedit_kinds: attribute\n")
    with pytest.raises(UsageError, match=r"unknown option\(s\) \['edit_kinds'\]"):
        parse_arguments((GenerationArguments,), [str(config)])


@pytest.mark.parametrize(
    "argv, names",
    [
        (["generate", "--output_dir", "o"], ["exactly one of --coco_root"]),
        (["generate", "--coco_root", "EMPTY"], ["--coco_root", "captions_train2017.json", "found: no annotations/ folder"]),
        (["generate", "--coco_root", "COCO", "--inpainting_model", "org/no-such-model"], ["--inpainting_model org/no-such-model", "tiny"]),
        (["generate", "--coco_root", "COCO", "--spacy_pipeline", "xx_no_such_pipeline"], ["--spacy_pipeline xx_no_such_pipeline", "installed"]),
        (["generate", "--coco_root", "COCO", "--push_to_hub"], ["--push_to_hub needs --hub_model_id"]),
        (["train", "--model_name_or_path", "org/no-such-clip"], ["--model_name_or_path org/no-such-clip", "tiny default model"]),
        (["train", "--dataset_name", "NOWHERE"], ["--dataset_name"]),
        (["evaluate", "--model_name_or_path", "./not-here"], ["--model_name_or_path ./not-here", "no such folder"]),
    ],
)
def test_mistakes_are_one_line_before_any_work(coco, tmp_path, capsys, monkeypatch, argv, names):
    (tmp_path / "empty").mkdir()
    swap = {"EMPTY": str(tmp_path / "empty"), "COCO": str(coco), "NOWHERE": str(tmp_path / "nowhere")}
    argv = [swap.get(a, a) for a in argv]
    if argv[0] != "evaluate" and "--output_dir" not in argv:
        argv += ["--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"hf-cf {argv[0]}: error: "), err
    assert all(name in err for name in names), err
    assert not (tmp_path / "out").exists()  # nothing started
    # Under accelerate launch only the main process says it.
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 2 and capsys.readouterr().err == ""


def test_splits_accumulate_in_one_folder_and_reruns_with_other_flags_are_refused(coco, tmp_path, capsys):
    from datasets import load_dataset

    write_coco_photos(coco, "train")
    out = tmp_path / "cf"
    _generate(coco, out, split="val")
    stats = _generate(coco, out, split="train")
    assert set(stats) == {"train", "val"}
    records = load_dataset(str(out))
    assert set(records) == {"train", "val"} and records["val"].num_rows == stats["val"]["num_records"]
    card = (out / "README.md").read_text()
    assert "## Split `val`" in card and "## Split `train`" in card
    # One line at the end: what, how many, skips by reason, and how to read it.
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"Wrote {stats['train']['num_records']} records of split 'train'") and "unreadable image" in last
    assert f"datasets.load_dataset({str(out)!r}, split='train')" in last

    # Training on it with the default --test_split names the splits there are.
    with pytest.raises(UsageError, match=r"--test_split 'test'.*splits are \['train', 'val'\]"):
        train.main(["--model_name_or_path", save_tiny_model(tmp_path / "clip"), "--dataset_name", str(out), "--output_dir", str(tmp_path / "t")])

    # The same split with other flags: refused, naming the difference; resumable with the same flags.
    with pytest.raises(UsageError, match=r"other settings \(edits: 'attribute,position' -> 'attribute'\)"):
        generate.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
                       "--edits", "attribute"])  # fmt: skip
    assert _generate(coco, out, split="val")["val"] == stats["val"]
    # --overwrite_output_dir starts that split again; the other split stays.
    again = generate.main(["--coco_root", str(coco), "--split", "val", "--output_dir", str(out), "--spacy_pipeline", english_pipeline(),
                           "--edits", "attribute", "--overwrite_output_dir"])  # fmt: skip
    assert "position" not in again["val"]["edits"] and again["train"] == stats["train"]
    card = (out / "README.md").read_text()
    assert f'"attribute": {again["val"]["edits"]["attribute"]}' in card and "kinds: attribute)" in card
    assert load_dataset(str(out))["val"].num_rows == again["val"]["num_records"]


def test_dataset_card_claims_only_what_the_input_says(coco, tmp_path):
    out = tmp_path / "cf"
    _generate(coco, out, "--preview", "3")
    card = (out / "README.md").read_text()
    # The fixture's annotations say they are scikit-image photos, not COCO: no COCO licence claimed.
    assert "COCO annotations are CC BY 4.0" not in card and "license: other" in card
    assert "a COCO-format folder (val2017 images and captions; its annotations say: 'hf-counterfactual test photos" in card
    assert str(tmp_path) not in card  # no local path
    # The preview: three records drawn, embedded in the card.
    assert "](preview_val.png)" in card
    from hf_counterfactual.figures import cell_size

    preview = Image.open(out / "preview_val.png")
    assert preview.height == 3 * cell_size()[1]

    annotations = coco / "annotations" / "captions_val2017.json"
    data = json.loads(annotations.read_text())
    data["info"] = {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org"}
    data["licenses"] = [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}]
    annotations.write_text(json.dumps(data))
    _generate(coco, tmp_path / "cf2")
    card = (tmp_path / "cf2" / "README.md").read_text()
    assert "From COCO 2017 Dataset (val2017 images and captions, http://cocodataset.org)" in card
    assert "COCO annotations are CC BY 4.0" in card and "(Attribution License)" in card


def test_interrupted_generation_says_how_to_resume(coco, tmp_path, monkeypatch, caplog):
    from hf_counterfactual.generation import CounterfactualGenerator

    def interrupted(self, indices, items):
        raise KeyboardInterrupt

    monkeypatch.setattr(CounterfactualGenerator, "make_records", interrupted)
    with caplog.at_level("ERROR"), pytest.raises(KeyboardInterrupt):
        _generate(coco, tmp_path / "cf")
    assert "rerun the same command to resume" in caplog.text


SMALL = ["--num_train_scenes", "32", "--num_test_scenes", "8", "--num_train_epochs", "1", "--pretrain_epochs", "1",
         "--per_device_train_batch_size", "16", "--disable_tqdm", "True"]  # fmt: skip


def test_model_card_after_training_and_three_evaluations(tmp_path):
    out, cache = tmp_path / "out", ["--cache_dir", str(tmp_path / "cache")]
    results = train.main(["--output_dir", str(out), *cache, *SMALL])
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and card.data.datasets is None  # nothing local is published
    assert str(tmp_path) not in card.content and "trained from scratch" not in card.content
    assert "A tiny CLIP built from a config, pre-trained with InfoNCE" in card.text
    assert "](group_score_per_edit_kind.png)" in card.text and Image.open(out / "group_score_per_edit_kind.png").width > 100
    trained = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert trained["group_score"] == round(100 * results["after"]["all"]["group_score"], 2)

    for _ in range(3):  # the same test records, as hf-cf evaluate names them
        assert main(["evaluate", "--model_name_or_path", str(out), "--benchmarks", "procedural", "--num_test_scenes", "8",
                     *cache, "--no_progress", "--add_to_model_card"]) == 0  # fmt: skip
    card = ModelCard.load(out / "README.md")
    keys = [(r.dataset_type, r.dataset_split, r.metric_type) for r in card.data.eval_results]
    assert len(keys) == len(set(keys)) == len(trained)  # replaced, never added beside
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == trained  # same model, same records
    assert "](group_score_procedural.png)" in card.text


def test_help_shows_the_defaults_of_a_real_checkpoint(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--learning_rate LEARNING_RATE" in text and "(default: 5e-05)" in text  # TrainingArguments', not the tiny model's 1e-3
    assert "(default: 0.001)" not in text.split("--learning_rate LEARNING_RATE")[1].split("--")[0]


@pytest.mark.parametrize("command", [name for name in COMMANDS if name != "configs"])  # configs takes no arguments
def test_every_commands_help_prints(command, capsys):
    """argparse formats each help with %: a stray percent sign in one breaks the whole --help."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--" in capsys.readouterr().out


def test_evaluate_scores_a_saved_siglip(tmp_path):
    from hf_counterfactual.tiny_models import build_tiny_siglip

    save_tiny_model(tmp_path / "siglip", build_tiny_siglip)
    out = tmp_path / "results.json"
    assert main(["evaluate", "--model_name_or_path", str(tmp_path / "siglip"), "--benchmarks", "procedural", "--num_test_scenes", "4",
                 "--cache_dir", str(tmp_path / "cache"), "--no_progress", "--output_file", str(out)]) == 0  # fmt: skip
    results = json.loads(out.read_text())["procedural"]
    assert results["all"]["count"] > 4 and 0 <= results["all"]["group_score"] <= 1
    assert (tmp_path / "group_score_procedural.png").exists()


@pytest.mark.parametrize("score", ["vqascore", "choice"])
def test_evaluate_scores_a_saved_llava(tmp_path, score):
    from hf_counterfactual.tiny_models import build_tiny_llava

    save_tiny_model(tmp_path / "llava", build_tiny_llava)
    out = tmp_path / "results.json"
    assert main(["evaluate", "--model_name_or_path", str(tmp_path / "llava"), "--score", score, "--benchmarks", "procedural",
                 "--num_test_scenes", "3", "--cache_dir", str(tmp_path / "cache"), "--no_progress", "--output_file", str(out)]) == 0  # fmt: skip
    results = json.loads(out.read_text())["procedural"]
    assert results["all"]["count"] >= 3 and 0 <= results["all"]["group_score"] <= 1


def test_score_flag_on_a_dual_encoder_is_an_error(tmp_path, capsys):
    assert main(["evaluate", "--model_name_or_path", save_tiny_model(tmp_path / "clip"), "--score", "vqascore", "--num_test_scenes", "2",
                 "--cache_dir", str(tmp_path / "cache")]) == 2  # fmt: skip
    assert "--score vqascore" in capsys.readouterr().err
