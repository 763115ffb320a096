#!/usr/bin/env python
"""Counterfactual fine-tuning of CLIP: ``hf-cf train`` as a script (the same code and arguments).

    accelerate launch examples/run_cf_clip.py                      # the offline embedded default
    accelerate launch examples/run_cf_clip.py \\
        --model_name_or_path openai/clip-vit-base-patch32 --dataset_name org/cf-coco \\
        --objective cf-vlm --learning_rate 1e-6 --output_dir out --deepspeed zero2

``--help`` lists every option (see :mod:`hf_counterfactual.commands.train`).
"""

import sys

from hf_counterfactual.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
