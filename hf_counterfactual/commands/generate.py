#!/usr/bin/env python
"""Counterfactual records from image-caption data: text edits, flips, inpainted objects and counts.

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
  (``--clip_filter_model``); the scores stay on the record.

Each process takes a block of the images and writes Parquet shards; a rerun after a kill resumes::

    accelerate launch examples/generate_cf_coco.py --coco_root coco --split train \\
        --edits attribute,object,position,count --output_dir cf-coco \\
        --inpainting_model stabilityai/stable-diffusion-2-inpainting --clip_filter_model openai/clip-vit-base-patch32 \\
        [--push_to_hub org/cf-coco]

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2 ... --use_cpu`` runs two
processes (``--cpu`` would start one). The output loads with ``load_dataset("cf-coco")`` (or the Hub id) and feeds ``run_cf_clip.py``.
``tiny`` as a model name builds a random tiny model from a config (offline smoke runs and tests).
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from accelerate import PartialState
from transformers import HfArgumentParser

from hf_counterfactual.generation import (
    CounterfactualGenerator,
    FactualItem,
    ImageTextMatchFilter,
    InpaintingEditor,
    Instance,
    PixelChangeFilter,
    RuleBasedEditor,
    ShardedRecordWriter,
    coco_instance_mask,
    finalize,
)

logger = logging.getLogger(__name__)

TEXT_EDITS = ("attribute", "object", "relation", "position", "count", "order")
IMAGE_EDITS = ("object", "attribute", "count")
TINY = "tiny"


@dataclass
class GenerationArguments:
    coco_root: str | None = field(default=None, metadata={"help": "Folder holding annotations/captions_{split}2017.json and {split}2017/."})
    dataset_name: str | None = field(default=None, metadata={"help": "Or: a datasets image-caption dataset (Hub id or local folder)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Its configuration name."})
    image_column: str = field(default="image", metadata={"help": "With --dataset_name: the image column."})
    caption_column: str = field(default="caption", metadata={"help": "With --dataset_name: the caption column (a string or a list of strings)."})
    split: str = field(default="train", metadata={"help": "COCO split (train or val) or the dataset's split."})
    output_dir: str = field(default="cf-coco", metadata={"help": "Where the Parquet shards and README.md go."})
    edits: str = field(default="attribute,object,relation,position,count", metadata={"help": f"Comma-separated, from {TEXT_EDITS}."})
    spacy_pipeline: str = field(default="en_core_web_sm", metadata={"help": "An installed English spaCy pipeline."})
    min_counterfactuals: int = field(default=1, metadata={"help": "Skip images with fewer counterfactuals (counted)."})
    max_counterfactuals: int = field(default=8, metadata={"help": "Keep at most this many per record."})
    max_images: int | None = field(default=None, metadata={"help": "Only the first N images (by image id)."})
    records_per_shard: int = field(default=500, metadata={"help": "Records per Parquet shard."})
    batch_size: int = field(default=16, metadata={"help": "Images per batch through the model stages."})
    seed: int = field(default=0, metadata={"help": "Seed of the text edits, instance choices and inpainting."})
    push_to_hub: str | None = field(default=None, metadata={"help": "Dataset repo id to upload the output to."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on CPU even with GPUs (with accelerate launch --multi_gpu on a CPU-only machine)."})
    # image edits
    inpainting_model: str | None = field(default=None, metadata={"help": "A diffusers inpainting checkpoint (or 'tiny'); None: no inpainting."})
    image_edits: str = field(default="object,attribute,count", metadata={"help": f"Text edit kinds realised as images, from {IMAGE_EDITS}."})
    max_image_edits: int = field(default=2, metadata={"help": "Inpainted counterfactuals per image at most."})
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


def _split(value: str, allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    values = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"--{name}: unknown kind(s) {unknown}; choose from {allowed}")
    return values


def load_coco(coco_root: str, split: str, max_images: int | None = None) -> list[FactualItem]:
    """COCO captions (and instances, when the file exists) as :class:`FactualItem` s ordered by image
    id, a stable, shardable order. Instance masks are decoded only when an edit needs them."""
    annotations = os.path.join(coco_root, "annotations", f"captions_{split}2017.json")
    with open(annotations, encoding="utf-8") as f:
        data = json.load(f)
    captions = defaultdict(list)
    for annotation in data["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"].strip())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    image_ids = [i for i in sorted(captions) if i in files][:max_images]

    instances_file = os.path.join(coco_root, "annotations", f"instances_{split}2017.json")
    instances: dict[int, list[Instance]] | None = None
    if os.path.exists(instances_file):
        from pycocotools.coco import COCO

        coco = COCO(instances_file)
        names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
        instances = {}
        for image_id in image_ids:
            instances[image_id] = [
                Instance(
                    names[a["category_id"]],
                    (a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
                    mask=lambda a=a: coco_instance_mask(coco, a),
                )
                for a in coco.imgToAnns.get(image_id, [])
                if not a.get("iscrowd")
            ]
    return [
        FactualItem(
            image=os.path.join(coco_root, f"{split}2017", files[image_id]),
            captions=captions[image_id],
            instances=None if instances is None else instances[image_id],
            id=image_id,
        )
        for image_id in image_ids
    ]


class DatasetItems(Sequence):
    """A ``datasets`` image-caption split seen as :class:`FactualItem` s, row by row (nothing is
    decoded before a process reaches its own block)."""

    def __init__(self, dataset, image_column: str, caption_column: str):
        missing = [c for c in (image_column, caption_column) if c not in dataset.column_names]
        if missing:
            raise ValueError(f"column(s) {missing} not in the dataset; it has {dataset.column_names} (set --image_column / --caption_column)")
        self.dataset, self.image_column, self.caption_column = dataset, image_column, caption_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> FactualItem:
        row = self.dataset[index]
        captions = row[self.caption_column]
        captions = [captions] if isinstance(captions, str) else [c for c in (captions or []) if isinstance(c, str)]
        return FactualItem(image=row[self.image_column], captions=captions, instances=None, id=index)


def load_image_captions(args: GenerationArguments) -> Sequence[FactualItem]:
    """The input items: a COCO-format folder or a ``datasets`` dataset (exactly one of them)."""
    if (args.coco_root is None) == (args.dataset_name is None):
        raise ValueError("give exactly one of --coco_root (a COCO-format folder) and --dataset_name (a datasets dataset)")
    if args.coco_root is not None:
        return load_coco(args.coco_root, args.split, args.max_images)
    from datasets import load_dataset

    dataset = load_dataset(args.dataset_name, args.dataset_config, split=args.split)
    if args.max_images is not None:
        dataset = dataset.select(range(min(args.max_images, len(dataset))))
    return DatasetItems(dataset, args.image_column, args.caption_column)


def _dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if getattr(device, "type", "cpu") == "cuda" else torch.float32
    return getattr(torch, name)


def build_generator(args: GenerationArguments, device) -> CounterfactualGenerator:
    """The stages the arguments ask for, models loaded with the ordinary ``from_pretrained``."""
    edits = _split(args.edits, TEXT_EDITS, "edits")
    image_edits = _split(args.image_edits, IMAGE_EDITS, "image_edits")
    if args.detector_model and not args.inpainting_model:
        raise ValueError("--detector_model needs --inpainting_model: detections only place image edits")
    if args.segmenter_model and not args.detector_model:
        raise ValueError("--segmenter_model needs --detector_model: it segments the detected boxes")
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
        from hf_counterfactual.scoring import CLIPScorer

        if args.clip_filter_model == TINY:
            from hf_counterfactual.scenes import SCENE_VOCABULARY
            from hf_counterfactual.tiny_models import build_tiny_clip

            clip, processor = build_tiny_clip(SCENE_VOCABULARY, seed=args.seed)
        else:
            from transformers import AutoModel, AutoProcessor

            clip = AutoModel.from_pretrained(args.clip_filter_model, dtype=dtype)
            processor = AutoProcessor.from_pretrained(args.clip_filter_model)
        scorer = CLIPScorer(clip.to(device).eval(), processor, batch_size=args.inpainting_batch_size, show_progress=False)
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
        seed=args.seed,
    )


def _causal_lm(name: str, device, dtype):
    if name == TINY:
        from hf_counterfactual.tiny_models import build_tiny_causal_lm

        return build_tiny_causal_lm("a the dog cat on of caption old new phrase paraphrase : .".split())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval(), tokenizer


def pass_rates(counts: dict[str, int]) -> dict[str, str]:
    """``{"pixel_change": "7/9 (77.8%)", ...}`` from the ``filter/<name>/passed|failed`` counters."""
    rates = {}
    for name in sorted({key.split("/")[1] for key in counts if key.startswith("filter/")}):
        passed, failed = counts.get(f"filter/{name}/passed", 0), counts.get(f"filter/{name}/failed", 0)
        rates[name] = f"{passed}/{passed + failed} ({100 * passed / (passed + failed):.1f}%)" if passed + failed else "0/0"
    return rates


def dataset_card(args: GenerationArguments, annotated: bool = True):
    """The README body, given the writer's merged stats (edit counts, skip reasons, filter counts);
    ``annotated``: the input had instance annotations (else masks came from the detector)."""

    if args.coco_root is not None:
        source, split = "COCO", f"{args.split}2017"
        licence = "Licence: COCO annotations are CC BY 4.0; the images keep their Flickr licences (see cocodataset.org)."
    else:
        source, split = args.dataset_name, args.split
        licence = f"Licence: that of the source dataset, {args.dataset_name}: see its card."

    def card(stats: dict) -> str:
        s = stats[args.split]
        counts = s.get("counts", {})
        made_with = [f"rule-based text edits on a spaCy parse ({args.spacy_pipeline}; kinds: {args.edits})"]
        if args.llm_model:
            made_with.append(f"LLM concept replacements ({args.llm_model})")
        if "position" in args.edits:
            made_with.append("mirrored images with left/right swapped (CounterCurate)")
        if args.inpainting_model:
            detected = f"{args.detector_model} detections" + (f" segmented by {args.segmenter_model}" if args.segmenter_model else "")
            if not annotated:
                masks = detected if args.detector_model else "no masks (no instance annotations, no detector)"
            else:
                masks = "COCO instance masks (pycocotools)"
            made_with.append(
                f"diffusion inpainting with {args.inpainting_model} ({args.num_inference_steps} steps, guidance "
                f"{args.guidance_scale}) over {masks}, for {args.image_edits} edits; count edits remove one instance "
                "or add one in an empty box"
            )
        if args.paraphrase_model:
            made_with.append(f"paraphrases by {args.paraphrase_model} for images with fewer than {args.min_paraphrases} other captions")
        filters = [f"pixel change inside the mask >= {args.min_pixel_change}, outside <= {args.max_outside_change}"] if args.inpainting_model else []
        if args.clip_filter_model:
            filters.append(f"{args.clip_filter_model} cosine of the edited pair >= {args.clip_threshold}"
                           + (f", beating the original caption by {args.clip_margin}" if args.clip_margin is not None else ""))
        lines = [
            "---",
            f"license: {'cc-by-4.0' if args.coco_root is not None else 'other'}",
            "tags: [counterfactual, compositionality, hf-counterfactual]",
            "---",
            "",
            f"# Counterfactual {source} captions",
            "",
            f"Made with hf-counterfactual's `examples/generate_cf_coco.py` from {source} {split} (seed {args.seed}): "
            "the first caption of each image is the factual caption, the others are paraphrases; counterfactuals are "
            + "; ".join(made_with) + ".",
            "",
            f"- records: {s['num_records']} from {s['num_items']} images; skipped: {s['num_skipped']}",
            f"- counterfactuals per edit kind: {json.dumps(s['edits'], sort_keys=True)}",
            f"- by source: {json.dumps(s['sources'], sort_keys=True)}",
            f"- skip reasons: {json.dumps(s['skip_reasons'], sort_keys=True)}",
        ]
        if filters:
            lines.append(f"- filters: {'; '.join(filters)}. An image edit that fails one keeps only its caption, as a text-only negative.")
            lines.append(f"- filter pass rates: {json.dumps(pass_rates(counts), sort_keys=True)}")
        if counts:
            lines.append(f"- stage counters: {json.dumps(counts, sort_keys=True)}")
        lines += ["", licence]
        return "\n".join(lines) + "\n"

    return card


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(GenerationArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    state = PartialState(cpu=args.use_cpu)
    items = load_image_captions(args)
    generator = build_generator(args, state.device)
    writer = ShardedRecordWriter(
        args.output_dir, split=args.split, records_per_shard=args.records_per_shard, rank=state.process_index, world_size=state.num_processes
    )
    writer.run_batched(items, generator.make_records, batch_size=args.batch_size)
    logger.info("rank %d stage timings: %s", state.process_index, json.dumps(generator.timing_report()))
    state.wait_for_everyone()
    stats = {}
    if state.is_main_process:
        annotated = bool(items) and items[0].instances is not None
        stats = finalize(args.output_dir, [args.split], dataset_card=dataset_card(args, annotated))
        logger.info("generation stats: %s", json.dumps(stats[args.split]))
        if args.push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(args.push_to_hub, repo_type="dataset", exist_ok=True)
            api.upload_folder(repo_id=args.push_to_hub, repo_type="dataset", folder_path=args.output_dir, ignore_patterns=[".progress/*", ".cache/*"])
    return stats


if __name__ == "__main__":
    main()
