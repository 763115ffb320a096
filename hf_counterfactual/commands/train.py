"""``hf-cf train``: counterfactual fine-tuning of CLIP with ``CounterfactualTrainer``.

With no arguments it runs the embedded default, offline, on procedural counterfactual scenes:

1. a tiny CLIP built from a config is pre-trained with InfoNCE on the factual pairs only, the
   stand-in for a pretrained checkpoint (cached in ``<output_dir>/pretrained-start``: reruns skip it);
2. it is fine-tuned from there with the default objective (the best in the README's ablation);
3. text / image / group scores per edit kind, before (the pretrained start) and after, on the
   held-out compositions of the test split and on the same scenes drawn in a rendering style
   training never saw::

    hf-cf train
    accelerate launch -m hf_counterfactual.cli train        # the same, on every process

With real weights and data (``--dataset_name``: any dataset of counterfactual records, e.g. one made
by ``hf-cf generate``)::

    accelerate launch -m hf_counterfactual.cli train \\
        --model_name_or_path openai/clip-vit-base-patch32 --dataset_name org/cf-coco \\
        --objective cf-vlm --learning_rate 1e-6 --output_dir out --push_to_hub --hub_model_id org/cf-clip

Resume an interrupted run with ``--resume_from_checkpoint last`` (the newest complete checkpoint in
``--output_dir``) or a checkpoint folder.

DeepSpeed: ``--deepspeed zero2`` (or ``zero3``: the configs shipped in
``hf_counterfactual/configs/deepspeed``, or a path to your own). LoRA: ``--use_peft`` (the adapters
are merged before saving, so the result loads with plain ``from_pretrained``).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import transformers
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor, set_seed

from ..benchmarks import MatchingBenchmark, counterfactual_records_benchmark, evaluate_benchmark, format_results
from ..distributed import full_parameters
from ..features import defer_image_decoding
from ..scoring import DualEncoderScorer
from ..trainer import CounterfactualTrainer, is_generative_model
from ..training_args import CounterfactualTrainingArguments
from .arguments import UsageError, parse_arguments
from .checks import check_pretrained, is_generative_checkpoint
from .data import load_dataset_dict, select_split

logger = logging.getLogger(__name__)

TINY_BUILDERS = {"clip": "build_tiny_clip", "siglip": "build_tiny_siglip", "llava": "build_tiny_llava"}
# The tiny model's pre-training (the stand-in for a pretrained checkpoint): each family's own loss,
# InfoNCE for CLIP, the sigmoid loss for SigLIP, the caption language-model loss for LLaVA.
PRETRAINING_OBJECTIVE = {"clip": "clip", "siglip": "sigmoid", "llava": "lm"}

# Defaults of the embedded default run (used when --model_name_or_path is not given): fine-tuning
# of the pretrained start; ModelArguments.pretrain_* set its pre-training.
EMBEDDED_DEFAULTS = dict(
    output_dir="outputs/cf-clip-tiny",
    heldout_style_split="test_heldout_style",
    num_train_epochs=16,
    per_device_train_batch_size=32,
    learning_rate=1e-3,
    weight_decay=0.1,
    warmup_steps=0.05,
    lr_scheduler_type="cosine",
    logging_steps=25,
    save_strategy="no",
    report_to="none",
    # The tiny default job trains on the CPU, where the step itself uses the cores and 32-px procedural
    # images cost ~0.1 ms each on the fast image path: workers would take turns with it (and re-fork
    # each epoch). With --model_name_or_path, dataloader_num_workers defaults to the cores
    # (CounterfactualTrainingArguments: default_num_workers).
    dataloader_num_workers=0,
)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint (hub id or path): a dual encoder (CLIP, SigLIP) or a generative VLM (LLaVA). "
            "Default: a tiny model of --model_type built from a config."
        },
    )
    model_type: str = field(
        default="clip",
        metadata={"help": "Without --model_name_or_path: the tiny model to build (clip, siglip or llava).", "choices": list(TINY_BUILDERS)},
    )
    image_size: int = field(default=32, metadata={"help": "Image size of the tiny default model."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="q_proj,v_proj", metadata={"help": "Comma-separated module names."})
    merge_lora: bool = field(
        default=True,
        metadata={"help": "With --use_peft: save a plain model with the adapters merged (False: save the adapter, for PeftModel.from_pretrained)."},
    )
    pretrain_epochs: float = field(
        default=8,
        metadata={
            "help": "Tiny default model only: epochs of pre-training on the factual pairs before fine-tuning (InfoNCE; "
            "the sigmoid loss for SigLIP, the captioning loss for LLaVA, 24 epochs by default) as the stand-in for a pretrained checkpoint; 0: fine-tune the random initialisation."
        },
    )
    pretrain_learning_rate: float = field(default=1e-3, metadata={"help": "Tiny default model only: pre-training learning rate."})
    pretrained_start_dir: str | None = field(
        default=None,
        metadata={"help": "Tiny default model only: where the pre-trained start is cached (default: <output_dir>/pretrained-start)."},
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset of counterfactual records (hub id or local folder). Default: procedural scenes."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    test_split: str = field(default="test", metadata={"help": "Held-out split to report text / image / group scores on."})
    heldout_style_split: str | None = field(
        default=None,
        metadata={"help": "A second test split to report on: the procedural test scenes drawn in a style training never saw."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training records."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep only the first N test records."})
    num_train_scenes: int = field(default=2000, metadata={"help": "Procedural scenes: training records."})
    num_test_scenes: int = field(default=400, metadata={"help": "Procedural scenes: held-out test records."})
    scene_seed: int = field(default=0, metadata={"help": "Procedural scenes: generation seed."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})


def load_data(data_args: DataArguments) -> datasets.DatasetDict:
    """The records: ``--dataset_name`` (see :func:`~.data.load_dataset_dict`), or the procedural
    scenes when it is not given."""
    if data_args.dataset_name is not None:
        return load_dataset_dict(data_args.dataset_name, "--dataset_name", data_args.dataset_config_name, data_args.cache_dir)
    from ..builders import load_procedural_scenes

    return load_procedural_scenes(
        num_train=data_args.num_train_scenes,
        num_test=data_args.num_test_scenes,
        seed=data_args.scene_seed,
        cache_dir=data_args.cache_dir,
    )


def load_model(model_args: ModelArguments, training_args: CounterfactualTrainingArguments, train: datasets.Dataset):
    if model_args.model_name_or_path is not None:
        auto = AutoModelForImageTextToText if is_generative_checkpoint(model_args.model_name_or_path) else AutoModel
        return auto.from_pretrained(model_args.model_name_or_path), AutoProcessor.from_pretrained(model_args.model_name_or_path)
    from .. import tiny_models
    from ..scenes import SCENE_VOCABULARY

    build = getattr(tiny_models, TINY_BUILDERS[model_args.model_type])
    model, processor = build(SCENE_VOCABULARY, image_size=model_args.image_size, seed=training_args.seed)
    if model_args.pretrain_epochs > 0:
        model = pretrained_start(model, processor, model_args, training_args, train)
    if training_args.build_objective().uses_reconstruction and training_args.reconstruction_decoder is None:
        training_args.reconstruction_decoder = tiny_reconstruction_decoder(model_args, training_args, train)
    return model, processor


# The tiny T5's pre-training, the stand-in for READ-CLIP's pretrained (then frozen) T5: rewriting each
# true caption of a training scene into each other one (its caption and paraphrases), as seq2seq.
DECODER_PRETRAINING = dict(num_train_epochs=3, learning_rate=1e-3, per_device_train_batch_size=64)


def tiny_reconstruction_decoder(model_args: ModelArguments, training_args, train: datasets.Dataset) -> str:
    """The folder of the tiny T5 the reconstruction term decodes with when no ``--reconstruction_decoder``
    is given: built from a config and pre-trained (:data:`DECODER_PRETRAINING`) on ``train``'s true
    captions, cached beside the pretrained start (a cache made otherwise is retrained)."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from ..scenes import SCENE_VOCABULARY
    from ..tiny_models import build_tiny_t5

    cache = os.path.join(pretrained_start_dir(model_args, training_args), "reconstruction-decoder")
    settings = {"seed": training_args.seed, "train_fingerprint": train._fingerprint, **DECODER_PRETRAINING}
    settings_file = os.path.join(cache, "pretraining.json")
    if _cache_made_with(settings_file, settings):
        return cache
    decoder, tokenizer = build_tiny_t5(SCENE_VOCABULARY, seed=training_args.seed)
    captions = train.select_columns(["caption", "paraphrases"])
    pairs = [(a, b) for row in captions for a in [row["caption"], *row["paraphrases"]] for b in [row["caption"], *row["paraphrases"]]]
    examples = datasets.Dataset.from_dict(
        {"input_ids": tokenizer([a for a, _ in pairs])["input_ids"], "labels": tokenizer([b for _, b in pairs])["input_ids"]}
    )
    logger.info("Pre-training the tiny T5 reconstruction decoder on %d caption pairs (cached in %s)", len(examples), cache)
    args = TrainingArguments(
        output_dir=cache, **DECODER_PRETRAINING, seed=training_args.seed, save_strategy="no", report_to="none",
        logging_steps=0.1, disable_tqdm=training_args.disable_tqdm, use_cpu=training_args.use_cpu,
    )  # fmt: skip
    trainer = Trainer(model=decoder.train(), args=args, train_dataset=examples, data_collator=DataCollatorForSeq2Seq(tokenizer, decoder))
    trainer.train()
    trainer.save_model()
    trainer.save_state()  # its losses, for audit
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(cache)
    _record_settings(trainer, settings_file, settings)
    return cache


def pretrained_start_dir(model_args: ModelArguments, training_args) -> str:
    """Where the tiny model's pretrained start (and its reconstruction decoder) is cached."""
    return model_args.pretrained_start_dir or os.path.join(training_args.output_dir, "pretrained-start")


def _cache_made_with(settings_file: str, settings: dict) -> bool | None:
    """Whether the cache whose ``settings_file`` :func:`_record_settings` wrote was made with ``settings``
    (``None``: no cache there)."""
    if not os.path.exists(settings_file):
        return None
    with open(settings_file) as f:
        return json.load(f) == json.loads(json.dumps(settings))


def _record_settings(trainer, settings_file: str, settings: dict) -> None:
    """Marks a cache complete (its settings are written last, on the main process)."""
    if trainer.is_world_process_zero():
        with open(settings_file, "w") as f:
            json.dump(settings, f, indent=2)


def pretrained_start(model, processor, model_args: ModelArguments, training_args, train: datasets.Dataset):
    """``model`` after pre-training on the factual pairs of ``train`` (:data:`PRETRAINING_OBJECTIVE`), from the cache when
    one was made with the same settings (a cache made otherwise is retrained, never reused)."""
    cache = pretrained_start_dir(model_args, training_args)
    settings = {
        "epochs": model_args.pretrain_epochs,
        "learning_rate": model_args.pretrain_learning_rate,
        "image_size": model_args.image_size,
        "model_type": model_args.model_type,
        "seed": training_args.seed,
        "train_fingerprint": train._fingerprint,
        "config": model.config.to_diff_dict(),
        # An init change that leaves the config alone (the tiny SigLIP's position embeddings) is a new start too.
        "initial_weights": weights_digest(model),
    }
    settings_file = os.path.join(cache, "pretraining.json")
    cached = _cache_made_with(settings_file, settings)
    if cached:
        logger.info("Pretrained start read from %s", cache)
        return type(model).from_pretrained(cache)
    if cached is False:
        logger.warning("The pretrained start in %s was made with other settings: pre-training again", cache)
    args = dataclasses.replace(
        training_args,
        output_dir=cache,
        objective=PRETRAINING_OBJECTIVE[model_args.model_type],
        loss_weights=None,  # the preset as it is
        num_train_epochs=model_args.pretrain_epochs,
        max_steps=-1,  # --max_steps bounds the fine-tuning, not the pre-training
        learning_rate=model_args.pretrain_learning_rate,
        save_strategy="no",
        push_to_hub=False,
        resume_from_checkpoint=None,
    )
    logger.info("Pre-training the tiny %s with %s on factual pairs for %s epochs (cached in %s)", model_args.model_type, args.objective, args.num_train_epochs, cache)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model()
    _record_settings(trainer, settings_file, settings)
    return trainer.model


def weights_digest(model) -> str:
    """A digest of ``model``'s parameters and buffers (names, dtypes, shapes, values)."""
    import hashlib

    from ..collator import content_key

    keys = ",".join(f"{name}:{content_key(tensor)}" for name, tensor in model.state_dict().items())
    return hashlib.sha1(keys.encode(), usedforsecurity=False).hexdigest()


def evaluate_on_main_process(model, processor, benchmark: MatchingBenchmark | None, vlm_score: str = "vqascore") -> dict | None:
    """Text / image / group scores of ``model`` where ``benchmark`` is given (the main process). Every
    process calls it: under DeepSpeed ZeRO-3 all of them must gather the partitioned parameters. A
    generative VLM is scored by ``vlm_score`` (the score it trains on)."""
    with full_parameters(model):
        if benchmark is None:
            return None
        if is_generative_model(model):
            from ..vlm_scoring import VLMScorer

            return evaluate_benchmark(VLMScorer(model, processor, score=vlm_score), benchmark)
        return evaluate_benchmark(DualEncoderScorer(model.eval(), processor), benchmark)


# The tiny LLaVA's embedded default: CF-VLM's recipe for a generative VLM (L_align becomes the
# caption language-model loss; the contrastive terms need a dual encoder), on fewer scenes, since
# every pair costs a language-model forward. 24 epochs of captioning pre-training: after 8 the start
# scored 14% on left/right and 46% on attribute edits (benchmarks/probe_vlm_edits.py).
LLAVA_EMBEDDED_DEFAULTS = dict(EMBEDDED_DEFAULTS, output_dir="outputs/cf-llava-tiny", objective="cf-vlm-lm", num_train_scenes=400,
                               num_test_scenes=100, num_train_epochs=8, per_device_train_batch_size=16, pretrain_epochs=24)  # fmt: skip


def embedded_defaults(parsed: tuple) -> dict:
    """The defaults that replace the arguments' own: :data:`EMBEDDED_DEFAULTS` (or the LLaVA ones)
    when no checkpoint is named; for a generative VLM checkpoint the objective ``cf-vlm-lm``, since the
    default ``grouping`` needs a dual encoder's all-pairs scores."""
    model_args = parsed[0]
    if model_args.model_name_or_path is None:
        return LLAVA_EMBEDDED_DEFAULTS if model_args.model_type == "llava" else EMBEDDED_DEFAULTS
    try:
        generative = is_generative_checkpoint(model_args.model_name_or_path)
    except (OSError, ValueError):  # not loadable: check_pretrained reports it in one line, before any work
        return {}
    return {"objective": "cf-vlm-lm"} if generative else {}


def shipped_deepspeed_config(value: str) -> str:
    """``zero2`` / ``zero3``: the DeepSpeed configs shipped in the package; anything else unchanged."""
    from importlib.resources import files

    shipped = files("hf_counterfactual") / "configs" / "deepspeed" / f"{value}.json"
    return str(shipped) if value in ("zero2", "zero3") else value


def parse_args(argv: list[str] | None = None):
    """The three argument dataclasses. Without ``--model_name_or_path`` (however it is spelled: the
    value decides, not the flag's spelling) :data:`EMBEDDED_DEFAULTS` replace the defaults of the
    arguments the command line leaves unset; ``--help`` shows the defaults for a real checkpoint."""
    return parse_arguments(
        (ModelArguments, DataArguments, CounterfactualTrainingArguments),
        sys.argv[1:] if argv is None else argv,
        prog="hf-cf train",
        description=__doc__,
        defaults=embedded_defaults,
        aliases={"deepspeed": shipped_deepspeed_config},
    )


def checkpoint_to_resume(training_args) -> str | None:
    """The checkpoint ``--resume_from_checkpoint`` names: a folder, or ``last`` for the newest complete
    ``checkpoint-N`` in ``output_dir``. A folder a kill interrupted mid-save (no ``trainer_state.json``,
    which ``Trainer`` writes after the weights) is skipped with a warning, or is an error when named."""
    wanted = training_args.resume_from_checkpoint
    if wanted is None:
        return None
    if wanted != "last":
        if not os.path.isfile(os.path.join(wanted, "trainer_state.json")):
            raise UsageError(f"--resume_from_checkpoint {wanted}: not a complete checkpoint (no trainer_state.json)")
        return wanted
    pattern = os.path.join(training_args.output_dir, "checkpoint-*")
    steps = {path: path.rsplit("-", 1)[-1] for path in glob.glob(pattern)}
    for path in sorted((p for p, n in steps.items() if n.isdigit()), key=lambda p: int(steps[p]), reverse=True):
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
        logger.warning("Skipping %s: a half-written checkpoint (no trainer_state.json)", path)
    raise UsageError(f"--resume_from_checkpoint last: no complete checkpoint in {training_args.output_dir}")


def main(argv: list[str] | None = None) -> dict:
    """``hf-cf train`` (``argv`` without the ``train`` word): returns the before / after scores."""
    model_args, data_args, training_args = parse_args(argv)
    # Before any work: a wrong name or folder fails at once, in one line.
    check_pretrained(
        model_args.model_name_or_path, "--model_name_or_path", tiny=False, hint="offline, leave it out to train the tiny default model"
    )
    check_pretrained(
        training_args.reconstruction_decoder, "--reconstruction_decoder", tiny=False, hint="leave it out on the tiny default model (a tiny T5)"
    )
    if model_args.model_name_or_path is not None and training_args.reconstruction_decoder is None and training_args.build_objective().uses_reconstruction:
        raise UsageError(
            f"--objective {training_args.objective} reconstructs captions: pass --reconstruction_decoder (an AutoModelForSeq2SeqLM, "
            "e.g. google/flan-t5-base)"
        )
    resume = checkpoint_to_resume(training_args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    raw = load_data(data_args)
    train, test = select_split(raw, data_args.train_split, "--train_split"), select_split(raw, data_args.test_split, "--test_split")
    heldout_style = select_split(raw, data_args.heldout_style_split, "--heldout_style_split") if data_args.heldout_style_split else None
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_test_samples is not None:
        test = test.select(range(min(data_args.max_test_samples, len(test))))
    # The collator decodes the images, so a corrupt one is an error naming its batch item and field.
    train = defer_image_decoding(train)
    model, processor = load_model(model_args, training_args, train)
    if model_args.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules.split(","),
        )  # fmt: skip
        model = get_peft_model(model, lora)

    trainer = CounterfactualTrainer(model=model, args=training_args, train_dataset=train, processing_class=processor)
    main_process = trainer.is_world_process_zero()
    benchmarks = {"test split": counterfactual_records_benchmark(test, name="test split") if main_process else None}
    if heldout_style is not None:
        benchmarks["held-out style"] = counterfactual_records_benchmark(heldout_style, name="held-out style") if main_process else None
    before = {name: evaluate_on_main_process(trainer.dual_encoder, processor, b, training_args.vlm_score) for name, b in benchmarks.items()}

    trainer.train(resume_from_checkpoint=resume)

    if model_args.use_peft and model_args.merge_lora:  # a plain model on disk, loadable without peft
        trainer.dual_encoder = trainer.dual_encoder.merge_and_unload()
    trainer.save_model()
    after = {name: evaluate_on_main_process(trainer.dual_encoder, processor, b, training_args.vlm_score) for name, b in benchmarks.items()}
    trainer.evaluation_results_before, trainer.evaluation_results = before["test split"], after["test split"]
    results = {}
    if main_process:
        for name in benchmarks:
            table = format_results(after[name], before=before[name])
            print(f"\nText / image / group score (%) on the {name} ({len(benchmarks[name])} groups), before -> after:\n{table}")
        print(f"\nModel and processor saved to {os.path.abspath(training_args.output_dir)}")
        results = {"before": before["test split"], "after": after["test split"]}
        if heldout_style is not None:
            results["heldout_style"] = {"before": before["held-out style"], "after": after["held-out style"]}
        with open(os.path.join(training_args.output_dir, "evaluation_results.json"), "w") as f:
            json.dump(results, f, indent=2)
        write_chart(training_args.output_dir, before["test split"], after["test split"])
    card = dict(
        dataset_name=data_args.dataset_name,
        benchmark=test_split_identity(data_args),
        base_model_description=None if model_args.model_name_or_path else tiny_start(model_args),
        chart=CHART if main_process else None,
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return results


CHART = "group_score_per_edit_kind.png"


def tiny_start(model_args: ModelArguments) -> str:
    """What the embedded default fine-tunes, in words (the model card's summary)."""
    name = {"clip": "CLIP", "siglip": "SigLIP", "llava": "LLaVA"}[model_args.model_type]
    if model_args.pretrain_epochs > 0:
        how = {"clip": "InfoNCE", "sigmoid": "the sigmoid loss", "lm": "the captioning loss"}[PRETRAINING_OBJECTIVE[model_args.model_type]]
        return f"a tiny {name} built from a config, pre-trained with {how} on the factual pairs for {model_args.pretrain_epochs:g} epochs"
    return f"a tiny {name} built from a config (random initialisation)"


def write_chart(output_dir: str, before: dict, after: dict) -> str:
    """The group score per edit kind, before and after, as ``output_dir/group_score_per_edit_kind.png``."""
    from ..figures import group_score_chart, save_figure
    from .evaluate import group_scores_per_subset as per_kind

    path = os.path.join(output_dir, CHART)
    save_figure(group_score_chart(per_kind(before), per_kind(after), title="group score per edit kind (test split)"), path)
    return path


def test_split_identity(data_args: DataArguments) -> tuple[str, str, str | None]:
    """The test split's name in the model-index, the one ``hf-cf evaluate`` gives the same data."""
    from .evaluate import EvaluationArguments, benchmark_identity

    if data_args.dataset_name is None:
        return benchmark_identity("procedural")
    args = EvaluationArguments(model_name_or_path="", records_dataset=data_args.dataset_name, records_split=data_args.test_split)
    return benchmark_identity("records", args)


if __name__ == "__main__":
    main()
