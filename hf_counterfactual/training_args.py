"""Training arguments of :class:`~hf_counterfactual.trainer.CounterfactualTrainer`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .objectives import OBJECTIVE_PRESETS, TERMS, CounterfactualObjective, parse_loss_weights


@dataclass
class CounterfactualTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the counterfactual objective.

    The objective is a preset (``objective``: ``clip``, ``negclip``, ``grouping``, ``cf-vlm``, ...) whose
    term weights ``loss_weights`` replaces or extends (``{"csd": 0, "local": 1}``, or on the command
    line ``--loss_weights csd=0,local=1``); a weight of 0 switches a term off.
    """

    objective: str = field(
        default="grouping",
        metadata={
            "help": f"Loss preset, one of {list(OBJECTIVE_PRESETS)} (grouping: best in the README's ablation; hf-cf train picks cf-vlm-lm for a generative VLM).",
            "choices": list(OBJECTIVE_PRESETS),
        },
    )
    loss_weights: dict | str | None = field(
        default=None,
        metadata={
            "help": "Term weights replacing or joining the preset's, as term=weight,... (e.g. csd=0,local=1; 0 switches a term "
            "off) or a JSON object. Terms: " + ", ".join(f"{name} ({term.description.rstrip('.')})" for name, term in TERMS.items()) + "."
        },
    )
    csd_margin: float = field(default=1.0, metadata={"help": "CF-VLM margin m1, in score units (logit_scale * cosine)."})
    fcd_margin: float = field(default=1.0, metadata={"help": "CF-VLM margin m2, in score units (logit_scale * cosine)."})
    num_counterfactuals: int = field(default=4, metadata={"help": "K: counterfactuals used per record."})
    vlm_score: str = field(
        default="loglik_mean",
        metadata={
            "help": "Generative VLMs (LLaVA): the pair score the terms train on, one of vqascore, yes_logprob, loglik, "
            "loglik_mean (hf_counterfactual.vlm_scoring); margins are in its units."
        },
    )
    vlm_batch_size: int = field(default=16, metadata={"help": "Generative VLMs: sequences per language-model forward."})
    counterfactual_fraction: float = field(
        default=1.0,
        metadata={"help": "Share of records whose counterfactuals enter a batch; the rest give only real pairs (GNM uses 0.5)."},
    )
    reconstruction_decoder: str | None = field(
        default=None,
        metadata={
            "help": "The frozen decoder of the reconstruction term (READ-CLIP; the read preset): any AutoModelForSeq2SeqLM "
            "name or path with its tokenizer, e.g. google/flan-t5-base or google/t5-v1_1-large (READ-CLIP's). hf-cf train's "
            "tiny default model builds a tiny T5 when it is not given."
        },
    )
    save_reconstruction_head: bool = field(
        default=False,
        metadata={
            "help": "Also save the reconstruction projection (reconstruction_head.safetensors) beside the final model; "
            "checkpoints always hold it, for resuming."
        },
    )
    gather_features: bool = field(
        default=True, metadata={"help": "Use every process's features as in-batch negatives (global batch)."}
    )
    max_text_length: int | None = field(
        default=None, metadata={"help": "Longest text in tokens; defaults to the text encoder's max positions."}
    )
    truncate_texts: bool = field(
        default=False, metadata={"help": "Truncate longer texts instead of raising (may cut off the edited words)."}
    )
    image_path: str = field(
        default="fast",
        metadata={
            "help": "Image pre-processing: fast (JPEG draft decode, one resize of the crop, uint8 to the device, normalised "
            "there; the processor's own geometry and statistics, falls back to the processor with a logged reason) or "
            "exact (the image processor's own float tensors).",
            "choices": ["fast", "exact"],
        },
    )
    dataloader_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader worker processes. Default: sized from the CPU cores this process may use, divided among "
            "the node's processes (LOCAL_WORLD_SIZE): min(16, cores per process), 0 under 2 cores per process."
        },
    )
    # The collator reads record columns the model's forward does not name.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False: the collator needs the record columns."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation reports the loss terms only."})

    def __post_init__(self) -> None:
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = default_num_workers()
        if self.image_path not in ("fast", "exact"):
            raise ValueError(f"image_path must be fast or exact, got {self.image_path!r}")
        super().__post_init__()
        self.loss_weights = parse_loss_weights(self.loss_weights) or None  # a dict from here on (saved as such)
        if self.num_counterfactuals < 0:
            raise ValueError(f"num_counterfactuals must be >= 0, got {self.num_counterfactuals}")
        if not 0.0 <= self.counterfactual_fraction <= 1.0:
            raise ValueError(f"counterfactual_fraction must be in [0, 1], got {self.counterfactual_fraction}")
        if self.deepspeed:
            from .integrations.deepspeed import patch_zero_dim_broadcast

            patch_zero_dim_broadcast()  # before the model loads: ZeRO-3 partitions at from_pretrained
        from .vlm_scoring import PAIR_SCORES

        if self.vlm_score not in PAIR_SCORES:
            raise ValueError(f"vlm_score must be one of {PAIR_SCORES} (a score of one pair), got {self.vlm_score!r}")
        objective = self.build_objective()  # validates the preset and the weights
        if self.num_counterfactuals == 0 and (objective.uses_counterfactual_texts or objective.uses_counterfactual_images):
            raise ValueError(f"objective {self.objective!r} uses counterfactuals but num_counterfactuals=0")

    def build_objective(self) -> CounterfactualObjective:
        """The :class:`CounterfactualObjective` these arguments describe."""
        return CounterfactualObjective.from_preset(
            self.objective,
            self.loss_weights,
            csd_margin=self.csd_margin,
            fcd_margin=self.fcd_margin,
            gather=self.gather_features,
        )


MAX_DEFAULT_WORKERS = 16


def default_num_workers() -> int:
    """DataLoader workers when the user sets none: the CPU cores this process may use, divided among the
    node's training processes (``LOCAL_WORLD_SIZE``, set by torchrun / accelerate), at most
    :data:`MAX_DEFAULT_WORKERS`; 0 (load in the main process) below 2 cores per process, where a
    worker would only take turns with the training step. Image decoding and pre-processing are
    what limit a GPU's step (a ViT-B/32 needs ~7,000 images/s), and workers run them beside it
    (measured 1.6x samples/s with 2 workers on 2 cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return 0 if per_process < 2 else min(MAX_DEFAULT_WORKERS, per_process)
