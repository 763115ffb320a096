"""``CounterfactualTrainer``: a ``transformers.Trainer`` whose loss is a counterfactual objective."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import torch
from transformers import Trainer

from .collator import CounterfactualCollator
from .model_card import build_model_card
from .scoring import DualEncoderScores, has_logit_bias, text_padding
from .training_args import CounterfactualTrainingArguments


class CounterfactualTrainer(Trainer):
    """Trains a dual encoder (``CLIPModel``, ``SiglipModel``) on counterfactual records.

    Only ``compute_loss``, ``log`` and ``create_model_card`` are overridden: the loop, accelerate,
    DeepSpeed/FSDP, PEFT and checkpointing are ``Trainer``'s. Each step encodes every distinct image and text once (one
    forward of the model), computes the objective's terms, and logs each term averaged over
    processes as ``loss/<term>``.

    Args:
        model: a ``CLIPModel`` or ``SiglipModel`` (or a PEFT-wrapped one); scores are
            ``scale * cosine + bias`` (:class:`~hf_counterfactual.scoring.DualEncoderScores`).
        args: :class:`CounterfactualTrainingArguments`.
        processing_class: the model's processor; used to build the default
            :class:`CounterfactualCollator` when ``data_collator`` is not given.
        Other arguments are ``Trainer``'s.

    Set :attr:`evaluation_results` (and :attr:`evaluation_results_before`) to the output of
    :func:`~hf_counterfactual.benchmarks.evaluate_benchmark` before ``push_to_hub`` to put them in
    the model card.
    """

    evaluation_results: dict | None = None
    evaluation_results_before: dict | None = None

    def __init__(self, model, args: CounterfactualTrainingArguments, data_collator=None, processing_class=None, **kwargs):
        if not isinstance(args, CounterfactualTrainingArguments):
            raise TypeError(f"args must be CounterfactualTrainingArguments, got {type(args).__name__}")
        self.objective = args.build_objective()
        # A dual encoder gives all-pairs scores; a generative VLM (LLaVA: image features, no text
        # features) scores the pairs a record-local term asks for.
        if not hasattr(model, "get_image_features"):
            raise TypeError(
                f"CounterfactualTrainer trains dual encoders (CLIPModel, SiglipModel) and generative VLMs "
                f"(LlavaForConditionalGeneration); {type(model).__name__} has no get_image_features"
            )
        self.generative = is_generative_model(model)
        self.objective.check(dense=not self.generative, model_name=_model_name(model))
        self._with_bias = has_logit_bias(model)
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class= (the model's processor) or a data_collator")
            data_collator = CounterfactualCollator(
                processing_class,
                num_counterfactuals=args.num_counterfactuals,
                use_counterfactual_texts=self.objective.uses_counterfactual_texts,
                use_counterfactual_images=self.objective.uses_counterfactual_images,
                use_paraphrases=self.objective.uses_paraphrases,
                counterfactual_fraction=args.counterfactual_fraction,
                max_length=args.max_text_length or _text_positions(model),
                truncation=args.truncate_texts,
                padding=text_padding(model),
            )
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs)
        # compute_loss returns a per-batch mean: Trainer must divide by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        # The loss needs no labels: let evaluation call compute_loss.
        self.can_return_loss = True
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.generative:
            from .vlm_scoring import VLMScorer, VLMScores

            several = self.args.world_size > 1
            # Across processes the step's pairs go through the wrapped model in ONE forward (DDP
            # allows one forward per backward): a first pass of the objective records what it asks.
            scorer = VLMScorer(
                self.accelerator.unwrap_model(model), self.processing_class, score=self.args.vlm_score,
                batch_size=None if several else self.args.vlm_batch_size, forward_model=model,
            )  # fmt: skip
            scores = VLMScores(scorer, inputs["pixel_values"], inputs["texts"])
            if several:
                recorder = VLMScores(scorer, None, inputs["texts"])
                with torch.random.fork_rng(devices=[]):  # the same random draws in both passes
                    self.objective(recorder, inputs)
                scores.prefetch(recorder.asked)
            terms = self.objective(scores, inputs)
            loss = self.objective.total(terms)
            self._record(terms)
            return (loss, None) if return_outputs else loss
        outputs = model(
            pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        )
        # Scale and bias as the forward applied them (readable under ZeRO-3, where the parameters are not).
        scores = DualEncoderScores.from_outputs(outputs, with_bias=self._with_bias)
        terms = self.objective(scores, inputs)
        loss = self.objective.total(terms)
        self._record(terms, scores.scale)
        return (loss, outputs) if return_outputs else loss

    def _record(self, terms: dict[str, torch.Tensor], logit_scale: torch.Tensor | None = None) -> None:
        """Stores the process-averaged terms for ``log``, and stops on a non-finite one."""
        names = list(terms)
        scale = logit_scale.detach().float() if logit_scale is not None else torch.tensor(float("nan"), device=terms[names[0]].device)
        values = torch.stack([terms[n].detach().float() for n in names] + [scale])
        values = self.accelerator.gather(values).view(-1, len(names) + 1).mean(dim=0).tolist()
        bad = [name for name, value in zip(names, values) if not math.isfinite(value)]
        if bad:
            found = ", ".join(f"{n}={v}" for n, v in zip(names, values))
            raise FloatingPointError(
                f"non-finite loss term(s) {bad} at step {self.state.global_step} ({found}, logit_scale={values[-1]}); "
                "check the inputs for NaN and lower the learning rate"
            )
        mode = "train" if self.model.training else "eval"
        for name, value in zip(names, values):
            self._metrics[mode][f"loss/{name}"].append(value)
        if logit_scale is not None:
            self._metrics[mode]["logit_scale"].append(values[-1])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {name: sum(v) / len(v) for name, v in self._metrics[mode].items() if v}
        if mode == "eval":
            averaged = {f"eval_{name}": value for name, value in averaged.items()}
        self._metrics[mode].clear()
        logs.update(averaged)  # in place: evaluate() returns the dict it logs
        super().log(logs, start_time)


    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        benchmark: tuple[str, str, str | None] | None = None,
        base_model_description: str | None = None,
        chart: str | None = None,
        **kwargs,
    ) -> None:
        """Writes ``README.md`` in ``output_dir``: base model, dataset, objective and evaluation table
        (see :func:`~hf_counterfactual.model_card.build_model_card`; local paths are left out)."""
        if not self.is_world_process_zero():
            return
        base_model = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        card = build_model_card(
            model_name or os.path.basename(os.path.normpath(self.args.output_dir)),
            base_model=base_model,
            dataset_name=dataset_name,
            objective=self.args.objective,
            weights=self.objective.weights,
            num_counterfactuals=self.args.num_counterfactuals,
            results=self.evaluation_results,
            results_before=self.evaluation_results_before,
            base_model_description=base_model_description or ("a model trained from a random initialisation" if not base_model else None),
            chart=chart,
            repo_id=self.hub_model_id,
            model_type=getattr(getattr(self.model, "config", None), "model_type", "clip"),
            generative=self.generative,
            **({"benchmark": benchmark} if benchmark else {}),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))


def is_generative_model(model) -> bool:
    """A generative VLM (image features, no text features: LLaVA) rather than a dual encoder."""
    return not hasattr(model, "get_text_features")


def _model_name(model) -> str:
    """The class name of the model under any PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__


def _text_positions(model) -> int | None:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None)
    return getattr(text_config, "max_position_embeddings", None)
