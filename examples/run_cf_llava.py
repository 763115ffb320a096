#!/usr/bin/env python
"""Counterfactual fine-tuning of LLaVA: ``hf-cf train`` as a script, its offline default a tiny LLaVA.

    accelerate launch examples/run_cf_llava.py                     # the offline embedded default
    accelerate launch examples/run_cf_llava.py \\
        --model_name_or_path llava-hf/llava-1.5-7b-hf --dataset_name org/cf-coco --test_split val \\
        --use_peft --lora_r 16 --gradient_checkpointing --bf16 --deepspeed zero3 --output_dir out

The same code and arguments as ``examples/run_cf_clip.py``; only the tiny model built when no
checkpoint is named differs (``--model_type llava``). A generative checkpoint trains ``cf-vlm-lm``
unless ``--objective`` says otherwise. The result loads with
``LlavaForConditionalGeneration.from_pretrained(out)`` (adapters merged) or, with
``--merge_lora False``, ``PeftModel.from_pretrained``. ``--help`` lists every option.
"""

import sys

from hf_counterfactual.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(arg.split("=")[0] in ("--model_type", "--model-type") for arg in argv):
        argv = ["--model_type", "llava", *argv]
    sys.exit(main(["train", *argv]))
