#!/usr/bin/env python
"""Builds cf-coco, counterfactual records of COCO 2017, and publishes it to the Hub.

A thin call of ``hf-cf generate`` for each split of ``--splits`` into one folder (resumable, sharded
across processes under ``accelerate launch``), then one upload; the card says it was made here and
how. With ``datasets`` >= 4 this is a build script, not a loading script: the Hub copy is Parquet
with a README ``configs:`` block, read by ``load_dataset("org/cf-coco")``::

    accelerate launch dataset_scripts/cf_coco.py --coco_root coco --output_dir cf-coco \\
        --inpainting_model stabilityai/stable-diffusion-2-inpainting \\
        --clip_filter_model openai/clip-vit-base-patch32 --preview 8 \\
        --push_to_hub --hub_model_id org/cf-coco

Add ``--plausibility_threshold count=0.5 --plausibility_refine`` to drop and balance the text
negatives a text-only model can tell from COCO's captions (an n-gram LM fitted on COCO's own
captions, cross-fitted by image; the card counts what was kept and dropped per edit kind).

``--coco_root`` holds ``annotations/captions_{train,val}2017.json`` (and ``instances_*`` for masks)
and ``train2017/``, ``val2017/``. Every ``hf-cf generate`` option applies (``--help``); offline,
``tiny`` names a random tiny model wherever a model is asked for.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

from hf_counterfactual import __version__
from hf_counterfactual.cli import is_main_process
from hf_counterfactual.commands import UsageError, parse_arguments
from hf_counterfactual.commands.generate import GenerationArguments, push_dataset_folder, run


@dataclass
class ScriptArguments:
    splits: str = field(default="train,val", metadata={"help": "COCO splits to build, comma-separated."})


def main(argv: list[str] | None = None) -> dict:
    script, args = parse_arguments((ScriptArguments, GenerationArguments), sys.argv[1:] if argv is None else argv, description=__doc__)
    if args.coco_root is None:
        raise UsageError("--coco_root is required: the folder holding COCO 2017's annotations/ and images")
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id, the dataset repo (e.g. org/cf-coco)")
    made_here = f"`dataset_scripts/cf_coco.py` (hf-counterfactual {__version__})"
    stats = {}
    for split in [s.strip() for s in script.splits.split(",") if s.strip()]:
        stats = run(dataclasses.replace(args, split=split, push_to_hub=False), script=made_here)
    if args.push_to_hub and stats:  # stats: the main process, after the last split
        push_dataset_folder(args.output_dir, args.hub_model_id, args.hub_private_repo)
    return stats


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        if is_main_process():
            print(f"cf_coco.py: error: {err}", file=sys.stderr)
        sys.exit(2)
