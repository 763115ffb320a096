"""A few ``CounterfactualTrainer`` steps under DeepSpeed on CPU; run by ``tests/test_distributed.py`` as

    torchrun --standalone --nproc_per_node 2 tests/_deepspeed_worker.py CONFIG MODEL_DIR OUTPUT_DIR [lora] [read=DECODER_DIR]

CONFIG is a shipped DeepSpeed config (``hf_counterfactual/configs/deepspeed/zero{2,3}.json``, "auto" values filled
from the training arguments) or ``none`` (plain DDP, the reference). The model and processor load
from MODEL_DIR with ``from_pretrained`` (under ZeRO-3: partitioned, through ``zero.Init``), train
for a few steps on procedural records, and are saved to OUTPUT_DIR with ``trainer.save_model()``.
With ``lora``, PEFT LoRA adapters (q_proj, v_proj) train instead of all weights and
OUTPUT_DIR holds the adapter. With ``read=DECODER_DIR``, the objective is READ-CLIP's ``read`` with that
reconstruction decoder (the trainer's wrapper around the model). Rank 0 prints one ``RESULT {json}`` line (world size, ZeRO stage, logged losses).

Two things are added to DeepSpeed runs, and why:

- CPU only: ``deepspeed.init_distributed("gloo")`` before the training arguments, and
  ``use_cpu=True``. On GPUs accelerate's DeepSpeed path initialises deepspeed.comm itself; on CPU it
  does not, and then (a) without ``use_cpu`` accelerate finds no backend and reports ONE process
  (DeepSpeed's train_batch_size check fails, the data is not sharded) and (b) with ``use_cpu``
  ZeRO-3's ``zero.Init`` reads the world size before initialising deepspeed.comm, counts 1, and
  fails the same check.
- Any device: DeepSpeed cannot broadcast 0-dim parameters such as ``CLIPModel.logit_scale``; the
  training arguments apply ``hf_counterfactual.integrations.deepspeed.patch_zero_dim_broadcast``
  when ``deepspeed`` is set, and this worker shows that nothing more is needed.
"""

from __future__ import annotations

import functools
import json
import sys

import datasets
import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES
from hf_counterfactual.scenes import generate_record

PER_DEVICE_BATCH, STEPS = 8, 3


def record_engines() -> list:
    """The DeepSpeed engines created from now on."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    engines = []
    original_init = DeepSpeedEngine.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        engines.append(self)

    DeepSpeedEngine.__init__ = __init__
    return engines


def main() -> None:
    config, model_dir, output_dir = sys.argv[1:4]
    extra = sys.argv[4:]
    lora = "lora" in extra
    decoder = next((arg.split("=", 1)[1] for arg in extra if arg.startswith("read=")), None)
    from hf_counterfactual.commands.checks import is_generative_checkpoint

    generative = is_generative_checkpoint(model_dir)
    config = None if config == "none" else config
    torch.set_num_threads(1)
    engines = []
    if config is not None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        engines = record_engines()

    # Arguments first: with ZeRO-3 they make from_pretrained build the model partitioned (zero.Init).
    args = CounterfactualTrainingArguments(
        output_dir=output_dir,
        deepspeed=config,
        use_cpu=True,
        per_device_train_batch_size=PER_DEVICE_BATCH,
        max_steps=STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        seed=0,
        # A generative VLM (LLaVA) trains on the record-local terms and its captioning loss.
        **({"objective": "cf-vlm-lm", "num_counterfactuals": 2} if generative else {}),
        **({"objective": "read", "reconstruction_decoder": decoder} if decoder else {}),
    )
    auto = AutoModelForImageTextToText if generative else AutoModel
    model, processor = auto.from_pretrained(model_dir), AutoProcessor.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        set_seed(0)  # the adapters' init: ZeRO-3's partitioned load draws from the generator, DDP's does not
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    records = [generate_record(i, "train", seed=0, image_size=32) for i in range(PER_DEVICE_BATCH * 2 * STEPS)]
    train = datasets.Dataset.from_list(records, features=COUNTERFACTUAL_FEATURES)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
    trainer.train()
    trainer.save_model()

    if trainer.is_world_process_zero():
        result = {
            "world_size": args.world_size,
            "deepspeed_enabled": trainer.is_deepspeed_enabled,
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        }
        if engines:
            engine = engines[-1]
            result.update(
                zero_stage=engine.zero_optimization_stage(),
                dp_world_size=engine.dp_world_size,
                train_batch_size=engine.train_batch_size(),
            )
        print("RESULT " + json.dumps(result), flush=True)

    # Tear the process group down before the interpreter does: leaving it to exit-time destructors
    # aborted a rank now and then ("terminate called without an active exception", exit -6). With the
    # group destroyed it still happened, rarely (once in ~30 ZeRO-3 runs, after RESULT and the saved
    # model), in the interpreter's own teardown: so once everything is written, skip that teardown.
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
