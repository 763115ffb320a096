#!/usr/bin/env python
"""Compositional evaluation of a saved model: ``hf-cf evaluate`` as a script (the same code and arguments).

Offline, on the held-out procedural scenes (a folder written by ``hf-cf train``, or a Hub id)::

    python examples/evaluate_compositionality.py --model_name_or_path outputs/cf-clip-tiny \\
        --benchmarks procedural --output_file results.json --add_to_model_card

On the public benchmarks (data you have downloaded; Winoground is gated on the Hub: accept its terms
and log in, or pass a local copy)::

    python examples/evaluate_compositionality.py --model_name_or_path openai/clip-vit-base-patch32 \\
        --benchmarks winoground,sugarcrepe,aro-relation,aro-attribution,coco-order \\
        --winoground facebook/winoground \\
        --sugarcrepe_dir data/sugarcrepe --coco_images_dir data/coco/val2017 \\
        --aro_dir data/aro --vg_images_dir data/vg/images \\
        --coco_captions_file data/coco/annotations/captions_val2017.json \\
        --output_file results.json

``--help`` lists every option (see :mod:`hf_counterfactual.commands.evaluate`).
"""

import sys

from hf_counterfactual.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
