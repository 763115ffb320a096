#!/usr/bin/env python
"""``hf-cf generate``: counterfactual records from image-caption data: text edits, flips, inpainted objects and counts.

Reads a COCO-format folder (``--coco_root``: ``annotations/captions_{split}2017.json``, and
``instances_{split}2017.json`` when present, and the images in ``{split}2017/``) or any ``datasets``
image-caption dataset (``--dataset_name``, e.g. Flickr30k: an image column and a caption column
holding a string or a list of strings; no instance annotations, so image edits need a detector).
For each image the first caption is the factual caption and the others its paraphrases. Counterfactuals, in the stages of
:class:`hf_counterfactual.generation.CounterfactualGenerator`:

- text edits: rules on a spaCy parse (``--edits``), optionally an LLM concept editor (``--llm_model``);
- flips: the mirrored image with left/right swapped (CounterCurate), for ``position``;
- image edits (``--inpainting_model``): object / attribute edits repaint the object's COCO instance
  mask, count edits remove one instance or add one in an empty box; without instance annotations
  a grounding detector + segmenter finds the objects (``--detector_model``, ``--segmenter_model``);
- filters: the pixel change inside/outside the mask and the CLIP score of the edited pair
  (``--clip_filter_model``); the scores stay on the record;
- text plausibility (``--plausibility``, implied by the other ``--plausibility_*`` flags): blind text
  scorers (an n-gram LM fitted on this input's own captions, cross-fitted by image; optionally a
  causal LM, ``--plausibility_causal_lm``, and a grammaticality classifier,
  ``--plausibility_classifier``) score each counterfactual caption against its caption; the gaps
  stay on the record (``plausibility_gap``); ``--plausibility_threshold`` drops negatives far less
  plausible than their caption, ``--plausibility_refine`` balances what a blind model prefers per
  edit kind over the whole split when it is finalised (SugarCrepe's adversarial refinement, centred
  so that a held-out blind LM is at chance too: ``--plausibility_refine_center``; the raw shards
  stay loadable as the ``unrefined`` configuration).

Each process takes a block of the images and writes Parquet shards; a rerun after a kill resumes::

    accelerate launch -m hf_counterfactual.cli generate --coco_root coco --split train \\
        --edits attribute,object,position,count --output_dir cf-coco \\
        --inpainting_model stabilityai/stable-diffusion-2-inpainting --clip_filter_model openai/clip-vit-base-patch32 \\
        [--preview 8] [--push_to_hub --hub_model_id org/cf-coco]

Each split generated into one folder (``--split train``, then ``--split val``) stays loadable: the
README's ``configs:`` lists every split there. A rerun into a folder with other settings for the same
split is refused (``--overwrite_output_dir`` starts that split again). On a machine without GPUs,
``accelerate launch --multi_gpu --num_processes 2 ... --use_cpu`` runs two processes (``--cpu`` would
start one). The output loads with ``load_dataset("cf-coco")`` (or the Hub id) and feeds ``hf-cf train``.
``tiny`` as a model name builds a random tiny model from a config (offline smoke runs and tests).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..generation import (
    CounterfactualGenerator,
    FactualItem,
    ImageTextMatchFilter,
    InpaintingEditor,
    PixelChangeFilter,
    RuleBasedEditor,
    ShardedRecordWriter,
    finalize,
)
from ..generation.dataset_card import generation_card
from ..generation.inputs import DatasetItems, InputError, read_coco
from ..generation.writer import PROGRESS_DIR
from ..image_processing import STORAGE_JPEG_QUALITY
from ..model_card import hub_id
from .arguments import UsageError, parse_arguments
from .checks import TINY, check_pretrained, check_spacy_pipeline
from .data import load_split

logger = logging.getLogger(__name__)

TEXT_EDITS = ("attribute", "object", "relation", "position", "count", "order")
IMAGE_EDITS = ("object", "attribute", "count")


@dataclass
class GenerationArguments:
    coco_root: str | None = field(default=None, metadata={"help": "Folder holding annotations/captions_{split}2017.json and {split}2017/."})
    dataset_name: str | None = field(default=None, metadata={"help": "Or: a datasets image-caption dataset (Hub id or local folder)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration name."})
    image_column: str = field(default="image", metadata={"help": "With --dataset_name: the image column."})
    caption_column: str = field(default="caption", metadata={"help": "With --dataset_name: the caption column (a string or a list of strings)."})
    split: str = field(default="train", metadata={"help": "COCO split (train or val) or the dataset's split."})
    output_dir: str = field(default="cf-coco", metadata={"help": "Where the Parquet shards and README.md go."})
    edits: str = field(default="attribute,object,relation,position,count", metadata={"help": f"Comma-separated, from {TEXT_EDITS}."})
    spacy_pipeline: str = field(default="auto", metadata={"help": "An installed English spaCy pipeline; auto: the first installed one."})
    min_counterfactuals: int = field(default=1, metadata={"help": "Skip images with fewer counterfactuals (counted)."})
    max_counterfactuals: int = field(default=8, metadata={"help": "Keep at most this many per record."})
    max_images: int | None = field(default=None, metadata={"help": "Only the first N images (by image id)."})
    records_per_shard: int = field(default=500, metadata={"help": "Records per Parquet shard."})
    batch_size: int = field(default=16, metadata={"help": "Images per batch through the model stages."})
    seed: int = field(default=0, metadata={"help": "Seed of the text edits, instance choices and inpainting."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start this split again when the folder holds it made with other settings (other splits are kept)."}
    )
    preview: int = field(default=0, metadata={"help": "Draw the first N records (images and captions) into preview_<split>.png, shown in the card."})
    dataset_license: str | None = field(default=None, metadata={"help": "The card's licence (an SPDX id such as cc-by-4.0); default: other."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the folder to the Hub dataset repo --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The dataset repo to push to (e.g. org/cf-coco)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo private."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even with GPUs (with accelerate launch --multi_gpu on a CPU-only machine)."})
    # image edits
    inpainting_model: str | None = field(default=None, metadata={"help": "A diffusers inpainting checkpoint (or 'tiny'); None: no inpainting."})
    image_edits: str = field(default="object,attribute,count", metadata={"help": f"Text edit kinds realised as images, from {IMAGE_EDITS}."})
    max_image_edits: int = field(default=2, metadata={"help": "Inpainted counterfactuals per image at most."})
    image_short_side: int | None = field(
        default=None,
        metadata={
            "help": "Store every image (factual and edited) with its short side scaled down to this many pixels, as JPEG "
            "(--image_quality), after the filters: at the target model's own short side (224 for CLIP ViT-B/32, 336 for "
            "LLaVA-1.5) training crops without resampling (about 2.5x the pre-processing speed). Default: as generated."
        },
    )
    image_quality: int = field(
        default=STORAGE_JPEG_QUALITY,
        metadata={"help": "JPEG quality of the images --image_short_side stores (90 decodes about a fifth faster than 95)."},
    )
    num_inference_steps: int = field(default=30, metadata={"help": "Diffusion steps per inpainting."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    inpainting_batch_size: int = field(default=8, metadata={"help": "Images per inpainting pipeline call."})
    torch_dtype: str = field(default="auto", metadata={"help": "float16 | bfloat16 | float32 | auto (float16 on GPU)."})
    detector_model: str | None = field(default=None, metadata={"help": "Zero-shot detector for images without instance annotations (or 'tiny')."})
    segmenter_model: str | None = field(default=None, metadata={"help": "SAM checkpoint turning detected boxes into masks (or 'tiny'); None: box masks."})
    box_threshold: float = field(default=0.3, metadata={"help": "Detector score threshold."})
    # filters
    min_pixel_change: float = field(default=0.05, metadata={"help": "Mean change inside the mask at least (0..1)."})
    max_outside_change: float = field(default=0.02, metadata={"help": "Mean change outside the mask at most (0..1)."})
    clip_filter_model: str | None = field(default=None, metadata={"help": "CLIP checkpoint scoring edited pairs (or 'tiny'); None: no CLIP filter."})
    clip_threshold: float = field(default=0.2, metadata={"help": "Cosine of the edited image with the edited caption at least."})
    clip_margin: float | None = field(default=None, metadata={"help": "... and above its cosine with the original caption by this much."})
    # LLM stages
    llm_model: str | None = field(default=None, metadata={"help": "Causal LM proposing concept swaps (Sahin et al.); None: rules only."})
    paraphrase_model: str | None = field(default=None, metadata={"help": "Causal LM writing paraphrases for images with too few captions."})
    min_paraphrases: int = field(default=1, metadata={"help": "Paraphrase images with fewer other true captions than this."})
    cache_dir: str | None = field(default=None, metadata={"help": "LLM cache folder (default: {output_dir}/.cache)."})
    # text plausibility (blind scorers)
    plausibility: bool = field(
        default=False, metadata={"help": "Score each counterfactual caption against its caption with blind text scorers; gaps kept as plausibility_gap."}
    )
    plausibility_ngram: bool = field(
        default=True, metadata={"help": "The n-gram LM fitted on this input's own captions, cross-fitted by image (--no_plausibility_ngram: off)."}
    )
    plausibility_ngram_order: int = field(default=2, metadata={"help": "n of the n-gram LM."})
    plausibility_folds: int = field(default=5, metadata={"help": "Cross-fitting folds of the images (1: one LM on every caption, which memorises them)."})
    plausibility_causal_lm: str | None = field(default=None, metadata={"help": "Also score with this causal LM (mean token log-probability; or 'tiny')."})
    plausibility_classifier: str | None = field(default=None, metadata={"help": "Also score with this grammaticality classifier (probability of 'acceptable')."})
    plausibility_classifier_label: str | None = field(default=None, metadata={"help": "The classifier's acceptable label (name or id) when not 'acceptable'."})
    plausibility_threshold: str | None = field(
        default=None, metadata={"help": "Drop a negative whose gap (first scorer) exceeds this: a number, or kind=number,... per edit kind."}
    )
    plausibility_refine: bool = field(default=False, metadata={"help": "Adversarial refinement per edit kind over the whole split, when it is finalised."})
    plausibility_num_bins: int = field(default=10, metadata={"help": "Refinement: gap magnitude bins per edit kind and scorer."})
    plausibility_refine_center: str = field(
        default="reliability",
        metadata={"help": "Refinement: balance the n-gram gaps around the centre that leaves a held-out blind LM at chance too, "
                          "estimated per kind from half-data LMs ('reliability'), or around 0 as SugarCrepe does ('zero')."},
    )


def _split(value: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise UsageError(f"--{name}: unknown kind(s) {unknown}; choose from {allowed}")
    return values


def _dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if getattr(device, "type", "cpu") == "cuda" else torch.float32
    return getattr(torch, name)


def plausibility_on(args: GenerationArguments) -> bool:
    """Whether the text-plausibility stage runs: ``--plausibility`` or any flag that needs it."""
    return bool(args.plausibility or args.plausibility_causal_lm or args.plausibility_classifier
                or args.plausibility_threshold or args.plausibility_refine)


def build_plausibility(args: GenerationArguments, device, items, cache_dir: str):
    """The text-plausibility stage the arguments ask for, its n-gram LMs fitted on ``items``."""
    from ..generation.plausibility import CausalLMScorer, SequenceClassifierScorer
    from ..generation.plausibility_stage import CachedScores, CrossFitNgram, PlausibilityStage

    ngram = CrossFitNgram(order=args.plausibility_ngram_order, num_folds=args.plausibility_folds, seed=args.seed) if args.plausibility_ngram else None
    causal_lm = classifier = None
    if args.plausibility_causal_lm:
        model, tokenizer = _causal_lm(args.plausibility_causal_lm, device, _dtype(args.torch_dtype, device))
        causal_lm = CachedScores(CausalLMScorer(model, tokenizer, batch_size=args.batch_size * 4), cache_dir=cache_dir)
    if args.plausibility_classifier:
        label = args.plausibility_classifier_label
        label = int(label) if label is not None and label.isdigit() else label
        scorer = SequenceClassifierScorer.from_pretrained(args.plausibility_classifier, device=str(device), label=label, batch_size=args.batch_size * 4)
        classifier = CachedScores(scorer, model_name=f"{args.plausibility_classifier}:{scorer.label_id}", cache_dir=cache_dir)
    stage = PlausibilityStage(ngram=ngram, causal_lm=causal_lm, classifier=classifier, threshold=args.plausibility_threshold)
    return stage.fit(items) if items is not None else stage


def refine_settings(arguments: dict) -> dict | None:
    """``finalize``'s refinement settings of a split from its recorded arguments (None: not refined)."""
    if not arguments.get("plausibility_refine"):
        return None
    return {"num_bins": arguments.get("plausibility_num_bins", 10), "seed": arguments.get("seed", 0),
            "min_counterfactuals": arguments.get("min_counterfactuals", 1),
            "center": arguments.get("plausibility_refine_center", "reliability"),
            "ngram_order": arguments.get("plausibility_ngram_order", 2), "ngram_folds": arguments.get("plausibility_folds", 5)}


def build_generator(args: GenerationArguments, device, items=None) -> CounterfactualGenerator:
    """The stages the arguments ask for, models loaded with the ordinary ``from_pretrained``;
    ``items``: the whole input, on which the text-plausibility n-gram LM is fitted."""
    edits = _split(args.edits, TEXT_EDITS, "edits")
    image_edits = _split(args.image_edits, IMAGE_EDITS, "image_edits")
    cache_dir = args.cache_dir or os.path.join(args.output_dir, ".cache")
    dtype = _dtype(args.torch_dtype, device)
    editors = [RuleBasedEditor(pipeline=args.spacy_pipeline, kinds=edits, seed=args.seed)]
    if args.llm_model:
        from hf_counterfactual.generation import LLMConceptEditor

        model, tokenizer = _causal_lm(args.llm_model, device, dtype)
        editors.append(LLMConceptEditor(model, tokenizer, cache_dir=cache_dir, batch_size=args.batch_size))
    paraphraser = None
    if args.paraphrase_model:
        from hf_counterfactual.generation import LLMParaphraser

        model, tokenizer = _causal_lm(args.paraphrase_model, device, dtype)
        paraphraser = LLMParaphraser(model, tokenizer, cache_dir=cache_dir, batch_size=args.batch_size)

    inpainter = grounder = match_filter = None
    if args.inpainting_model:
        if args.inpainting_model == TINY:
            from hf_counterfactual.tiny_models import build_tiny_inpainting_pipeline

            pipe = build_tiny_inpainting_pipeline("a an the of background".split() + list(edits), seed=args.seed)
        else:
            from diffusers import AutoPipelineForInpainting

            pipe = AutoPipelineForInpainting.from_pretrained(args.inpainting_model, dtype=dtype)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        inpainter = InpaintingEditor(
            pipe,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            batch_size=args.inpainting_batch_size,
            seed=args.seed,
            keep_unmasked=True,  # the VAE round trip would otherwise fail max_outside_change
        )
        if args.detector_model:
            from hf_counterfactual.generation import GroundedSegmenter

            if args.detector_model == TINY:
                from hf_counterfactual.tiny_models import build_tiny_grounding

                detector, detector_processor, segmenter, segmenter_processor = build_tiny_grounding(
                    "a the dog cat cup person".split(), seed=args.seed, with_segmenter=args.segmenter_model is not None
                )
                grounder = GroundedSegmenter(detector, detector_processor, segmenter, segmenter_processor, box_threshold=args.box_threshold)
            else:
                grounder = GroundedSegmenter.from_pretrained(args.detector_model, args.segmenter_model, device=device, box_threshold=args.box_threshold)
    if args.clip_filter_model:
        from hf_counterfactual.scoring import DualEncoderScorer

        if args.clip_filter_model == TINY:
            from hf_counterfactual.scenes import SCENE_VOCABULARY
            from hf_counterfactual.tiny_models import build_tiny_clip

            clip, processor = build_tiny_clip(SCENE_VOCABULARY, seed=args.seed)
        else:
            from transformers import AutoModel, AutoProcessor

            clip = AutoModel.from_pretrained(args.clip_filter_model, dtype=dtype)
            processor = AutoProcessor.from_pretrained(args.clip_filter_model)
        scorer = DualEncoderScorer(clip.to(device).eval(), processor, batch_size=args.inpainting_batch_size, show_progress=False)
        match_filter = ImageTextMatchFilter(scorer, threshold=args.clip_threshold, margin=args.clip_margin)

    return CounterfactualGenerator(
        text_editors=editors,
        flip="position" in edits,
        inpainter=inpainter,
        image_edit_kinds=image_edits,
        max_image_edits=args.max_image_edits,
        grounder=grounder,
        paraphraser=paraphraser,
        min_paraphrases=args.min_paraphrases,
        pixel_filter=PixelChangeFilter(min_inside=args.min_pixel_change, max_outside=args.max_outside_change) if inpainter else None,
        match_filter=match_filter,
        min_counterfactuals=args.min_counterfactuals,
        max_counterfactuals=args.max_counterfactuals,
        image_short_side=args.image_short_side,
        image_quality=args.image_quality,
        seed=args.seed,
        plausibility=build_plausibility(args, device, items, cache_dir) if plausibility_on(args) else None,
    )


def _causal_lm(name: str, device, dtype):
    if name == TINY:
        from hf_counterfactual.tiny_models import build_tiny_causal_lm

        return build_tiny_causal_lm("a the dog cat on of caption old new phrase paraphrase : .".split())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval(), tokenizer


# Fields that change where or how fast a run goes, not what it writes: a rerun may change them.
RUN_ONLY_FIELDS = (
    "output_dir", "overwrite_output_dir", "use_cpu", "preview", "cache_dir", "dataset_license", "push_to_hub", "hub_model_id", "hub_private_repo",
)  # fmt: skip
MODEL_FLAGS = {  # flag -> the file that makes a folder or repo that model
    "inpainting_model": "model_index.json",
    "detector_model": "config.json",
    "segmenter_model": "config.json",
    "clip_filter_model": "config.json",
    "llm_model": "config.json",
    "paraphrase_model": "config.json",
    "plausibility_causal_lm": "config.json",
    "plausibility_classifier": "config.json",
}
# Fields that only change how finalize publishes the shards: a rerun may change them (the split is
# refined again from the same shards), and the card still names them.
FINALIZE_FIELDS = ("plausibility_refine", "plausibility_num_bins", "plausibility_refine_center")


def check_arguments(args: GenerationArguments) -> GenerationArguments:
    """Every mistake the arguments alone show, before any input is read or model loaded; returns the
    arguments with ``spacy_pipeline`` resolved (``auto`` -> the installed pipeline's name)."""
    if (args.coco_root is None) == (args.dataset_name is None):
        raise UsageError("give exactly one of --coco_root (a COCO-format folder) and --dataset_name (a datasets image-caption dataset)")
    _split(args.edits, TEXT_EDITS, "edits")
    _split(args.image_edits, IMAGE_EDITS, "image_edits")
    if args.detector_model and not args.inpainting_model:
        raise UsageError("--detector_model needs --inpainting_model: detections only place image edits")
    if args.segmenter_model and not args.detector_model:
        raise UsageError("--segmenter_model needs --detector_model: it segments the detected boxes")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id, the dataset repo (e.g. org/cf-coco)")
    if args.preview < 0:
        raise UsageError(f"--preview {args.preview}: give a number of records >= 0")
    if args.image_short_side is not None and args.image_short_side < 1:
        raise UsageError(f"--image_short_side {args.image_short_side}: give a size in pixels >= 1")
    if not 1 <= args.image_quality <= 100:
        raise UsageError(f"--image_quality {args.image_quality}: give a JPEG quality in 1..100")
    if plausibility_on(args):
        if not (args.plausibility_ngram or args.plausibility_causal_lm or args.plausibility_classifier):
            raise UsageError("--no_plausibility_ngram leaves no blind scorer: add --plausibility_causal_lm or --plausibility_classifier")
        if args.plausibility_folds < 1 or args.plausibility_ngram_order < 1 or args.plausibility_num_bins < 1:
            raise UsageError("--plausibility_folds, --plausibility_ngram_order and --plausibility_num_bins must be >= 1")
        from ..generation.plausibility_stage import REFINE_CENTERS, parse_threshold

        if args.plausibility_refine_center not in REFINE_CENTERS:
            raise UsageError(f"--plausibility_refine_center {args.plausibility_refine_center!r}: choose from {', '.join(REFINE_CENTERS)}")
        if args.plausibility_classifier == TINY:
            raise UsageError("--plausibility_classifier has no tiny model: give a checkpoint")
        try:
            parse_threshold(args.plausibility_threshold)
        except ValueError as err:
            raise UsageError(f"--plausibility_threshold: {err}") from None
    for flag, marker in MODEL_FLAGS.items():
        check_pretrained(getattr(args, flag), f"--{flag}", marker=marker)
    return dataclasses.replace(args, spacy_pipeline=check_spacy_pipeline(args.spacy_pipeline))


def read_inputs(args: GenerationArguments) -> tuple[Sequence[FactualItem], dict]:
    """The factual items and what the card says of them: ``source`` (in words, never a local path),
    ``licence`` (a sentence) and ``annotated`` (instance annotations present)."""
    try:
        if args.coco_root is not None:
            coco = read_coco(args.coco_root, args.split, args.max_images)
            where = f"{args.split}2017 images and captions"
            if coco.is_coco:
                source = f"{coco.description} ({where}" + (f", {coco.url}" if coco.url else "") + ")"
            else:
                source = f"a COCO-format folder ({where}" + (f"; its annotations say: {coco.description!r}" if coco.description else "") + ")"
            if coco.licenses:
                licence = f"The images keep the licences their annotations list ({'; '.join(coco.licenses)})."
            else:
                licence = "The input's annotations state no licence: the images and captions keep their owners' terms."
            if coco.is_coco:
                licence = "COCO annotations are CC BY 4.0 (cocodataset.org/#termsofuse). " + licence
            return coco.items, {"source": source, "licence": licence, "annotated": coco.items[0].instances is not None}
        dataset = load_split(args.dataset_name, args.split, "--dataset_name", config_name=args.dataset_config_name)
        if args.max_images is not None:
            dataset = dataset.select(range(min(args.max_images, len(dataset))))
        name = hub_id(args.dataset_name)
        source = f"[`{name}`](https://huggingface.co/datasets/{name}) (split {args.split})" if name else f"a local image-caption dataset (split {args.split})"
        licence = f"The licence of the source dataset, {name}: see its card." if name else "The licence of the source dataset."
        return DatasetItems(dataset, args.image_column, args.caption_column), {"source": source, "licence": licence, "annotated": False}
    except InputError as err:
        raise UsageError(str(err)) from None


def _settings_file(output_dir: str, split: str) -> str:
    return os.path.join(output_dir, PROGRESS_DIR, f"{split}.settings.json")


def _content_settings(args: GenerationArguments) -> dict:
    return {k: v for k, v in dataclasses.asdict(args).items() if k not in RUN_ONLY_FIELDS}


def prepare_output_dir(args: GenerationArguments, inputs: dict, main_process: bool) -> None:
    """Refuses a folder whose split was generated with other settings (naming them), unless
    ``--overwrite_output_dir``, which removes that split's shards and progress (not other splits).
    Records this run's settings for the card and the next rerun."""
    path = _settings_file(args.output_dir, args.split)
    wanted = _content_settings(args)
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)["arguments"]
        changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k) and k not in FINALIZE_FIELDS)
        if changed and not args.overwrite_output_dir:
            detail = ", ".join(f"{k}: {previous.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
            raise UsageError(
                f"--output_dir {args.output_dir} holds split {args.split!r} made with other settings ({detail}); "
                "rerun with the same flags to resume, pass --overwrite_output_dir to start this split again, or use another --output_dir"
            )
    elif glob.glob(os.path.join(args.output_dir, PROGRESS_DIR, f"{args.split}-r*.json")) and not args.overwrite_output_dir:
        raise UsageError(
            f"--output_dir {args.output_dir} holds split {args.split!r} from a run whose settings were not recorded; "
            "pass --overwrite_output_dir to start it again"
        )
    if not main_process:
        return
    if args.overwrite_output_dir:
        removed = glob.glob(os.path.join(args.output_dir, "data", f"{args.split}-r*.parquet"))
        removed += glob.glob(os.path.join(args.output_dir, PROGRESS_DIR, f"{args.split}-r*.json"))
        removed += glob.glob(os.path.join(args.output_dir, f"preview_{args.split}.png"))
        for file in removed:
            os.remove(file)
        if removed:
            logger.warning("--overwrite_output_dir: removed %d files of split %r in %s", len(removed), args.split, args.output_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"arguments": wanted, **inputs}, f, indent=2)
    os.replace(path + ".tmp", path)


def generated_splits(output_dir: str) -> dict[str, dict]:
    """``{split: settings}`` of every split this command generated into ``output_dir``."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(output_dir, PROGRESS_DIR, "*.settings.json"))):
        with open(path) as f:
            runs[os.path.basename(path)[: -len(".settings.json")]] = json.load(f)
    return runs


def complete(output_dir: str, split: str) -> bool:
    """Every process of ``split`` finished (its progress files say so)."""
    progresses = []
    for path in glob.glob(os.path.join(output_dir, PROGRESS_DIR, f"{split}-r*.json")):
        with open(path) as f:
            progresses.append(json.load(f))
    return bool(progresses) and all(p.get("complete") for p in progresses) and len(progresses) == progresses[0]["world_size"]


def write_preview(output_dir: str, split: str, num_records: int) -> str:
    """The first ``num_records`` records of ``split`` drawn as ``preview_<split>.png`` beside the data."""
    import pyarrow.parquet as pq

    from ..figures import preview_grid, save_figure

    rows = []
    for shard in sorted(glob.glob(os.path.join(output_dir, "data", f"{split}-r*.parquet"))):
        rows += pq.read_table(shard).slice(0, num_records - len(rows)).to_pylist()
        if len(rows) >= num_records:
            break
    name = f"preview_{split}.png"
    save_figure(preview_grid(rows, num_records=num_records), os.path.join(output_dir, name))
    return name


def summary_line(output_dir: str, split: str, stats: dict) -> str:
    """What a person needs at the end: records written, skips by reason, where, how to read it."""
    s = stats[split]
    skips = ", ".join(f"{reason} {n}" for reason, n in sorted(s["skip_reasons"].items(), key=lambda kv: -kv[1])) or "none"
    return (
        f"Wrote {s['num_records']} records of split {split!r} from {s['num_items']} images to {output_dir} "
        f"(skipped {s['num_skipped']}: {skips}). Read it with datasets.load_dataset({output_dir!r}, split={split!r})."
    )


def push_dataset_folder(output_dir: str, repo_id: str, private: bool = False) -> None:
    """Uploads a generated folder to the Hub dataset repo ``repo_id`` (the resume bookkeeping and the
    LLM caches stay local), where ``load_dataset(repo_id)`` reads its Parquet."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=output_dir, ignore_patterns=[f"{PROGRESS_DIR}/*", ".cache/*", "refined/.*"])


def main(argv: Sequence[str] | None = None) -> dict:
    """``hf-cf generate`` (``argv`` without the ``generate`` word): returns the stats of every split in
    the output folder."""
    (args,) = parse_arguments((GenerationArguments,), sys.argv[1:] if argv is None else argv, prog="hf-cf generate", description=__doc__)
    return run(args)


def run(args: GenerationArguments, script: str = "`hf-cf generate`") -> dict:
    """Generates split ``args.split`` into ``args.output_dir`` (resuming what is there), finalizes
    every complete split of the folder, pushes when asked. ``script``: what the card says made it."""
    from accelerate import PartialState

    args = check_arguments(args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    state = PartialState(cpu=args.use_cpu)
    items, inputs = read_inputs(args)
    prepare_output_dir(args, inputs, state.is_main_process)
    state.wait_for_everyone()
    generator = build_generator(args, state.device, items)
    writer = ShardedRecordWriter(
        args.output_dir, split=args.split, records_per_shard=args.records_per_shard, rank=state.process_index, world_size=state.num_processes
    )
    try:
        writer.run_batched(items, generator.make_records, batch_size=args.batch_size)
    except BaseException:
        if state.is_main_process:
            logger.error("Interrupted: the shards written so far are kept in %s; rerun the same command to resume where it stopped", args.output_dir)
        raise
    logger.info("rank %d stage timings: %s", state.process_index, json.dumps(generator.timing_report()))
    state.wait_for_everyone()
    stats = {}
    if state.is_main_process:
        runs = {split: run for split, run in generated_splits(args.output_dir).items() if complete(args.output_dir, split)}
        previews = {split: f"preview_{split}.png" for split in runs if os.path.isfile(os.path.join(args.output_dir, f"preview_{split}.png"))}
        if args.preview:
            previews[args.split] = write_preview(args.output_dir, args.split, args.preview)
        card = lambda stats: generation_card(runs, stats, script=script, license=args.dataset_license, previews=previews)  # noqa: E731
        refine = {split: s for split, run in runs.items() if (s := refine_settings(run["arguments"])) is not None}
        stats = finalize(args.output_dir, list(runs), dataset_card=card, refine=refine)
        logger.info("generation stats: %s", json.dumps(stats[args.split]))
        if args.push_to_hub:
            push_dataset_folder(args.output_dir, args.hub_model_id, args.hub_private_repo)
        print(summary_line(args.output_dir, args.split, stats), flush=True)
    return stats
