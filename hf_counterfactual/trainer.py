"""``CounterfactualTrainer``: a ``transformers.Trainer`` whose loss is a counterfactual objective."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from contextlib import contextmanager

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .collator import CounterfactualCollator
from .image_processing import fast_image_transform
from .model_card import build_model_card
from .reconstruction import ReconstructionWrapper
from .scoring import DualEncoderScores, has_logit_bias, text_padding
from .training_args import CounterfactualTrainingArguments


class CounterfactualTrainer(Trainer):
    """Trains a dual encoder (``CLIPModel``, ``SiglipModel``) on counterfactual records.

    Only ``compute_loss``, ``log``, ``create_model_card`` and, for a reconstruction term, the model's
    saving and loading are overridden: the loop, accelerate,
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

    A term that reconstructs captions (``reconstruction``, the ``read`` preset) needs a decoder: the
    trainer loads ``args.reconstruction_decoder`` and trains a :class:`~hf_counterfactual.reconstruction.ReconstructionWrapper`
    of ``model`` (:attr:`model` is the wrapper, :attr:`dual_encoder` the model itself). What it saves
    is the dual encoder alone, a plain ``CLIPModel`` (or PEFT adapter) that loads with ``from_pretrained``.

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
        reconstruction_tokenizer = None
        if self.objective.uses_reconstruction:
            decoder, reconstruction_tokenizer = load_reconstruction_decoder(args.reconstruction_decoder, dtype=next(model.parameters()).dtype)
            model = ReconstructionWrapper(model, decoder, seed=args.seed)
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
                reconstruction_tokenizer=reconstruction_tokenizer,
                image_path=args.image_path,
                defer_normalization=True,  # uint8 to the device, normalised in compute_loss
            )
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs)
        # compute_loss returns a per-batch mean: Trainer must divide by the accumulation steps itself.
        self.model_accepts_loss_kwargs = False
        # The loss needs no labels: let evaluation call compute_loss.
        self.can_return_loss = True
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        # uint8 pixel values (the fast image path) are normalised on the device, in compute_loss.
        self._image_transform = getattr(data_collator, "image_transform", None)
        if self._image_transform is None and processing_class is not None and hasattr(processing_class, "image_processor"):
            self._image_transform = fast_image_transform(processing_class.image_processor, log=False)

    def _normalized_inputs(self, inputs):
        """``inputs`` with ``uint8`` ``pixel_values`` (the fast image path) rescaled and normalised on
        their device as the processor would (float32, as the processor gives them)."""
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None or pixel_values.dtype != torch.uint8:
            return inputs
        if self._image_transform is None:
            raise ValueError(
                "the batch's pixel_values are uint8 but the trainer knows no normalisation for them: pass the processor "
                "as processing_class, or a collator with an image_transform"
            )
        return {**inputs, "pixel_values": self._image_transform.normalize(pixel_values)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = self._normalized_inputs(inputs)
        if self.generative:
            from .vlm_scoring import VLMScorer, VLMScores

            several = self.args.world_size > 1
            # Across processes the step's pairs go through the wrapped model in ONE forward (DDP
            # allows one forward per backward): a first pass of the objective records what it asks.
            scorer = VLMScorer(
                self.accelerator.unwrap_model(model), self.processing_class, score=self.args.vlm_score,
                batch_size=None if several else self.args.vlm_batch_size, forward_model=model,
                image_path="exact",  # unused: the collator has pre-processed the step's images
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
        # The decoder runs inside the same forward (DDP / DeepSpeed see one model, one forward per backward).
        reconstruction = (
            {"reconstruction_rows": inputs["text_index"], "reconstruction_labels": inputs["reconstruction_labels"]}
            if self.objective.uses_reconstruction else {}
        )  # fmt: skip
        outputs = model(
            pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), **reconstruction
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


    # ------------------------------------------------------------------ the reconstruction wrapper

    @property
    def dual_encoder(self):
        """The model being trained, without the reconstruction wrapper (when there is one)."""
        return self.model.model if isinstance(self.model, ReconstructionWrapper) else self.model

    @dual_encoder.setter
    def dual_encoder(self, model) -> None:
        if isinstance(self.model, ReconstructionWrapper):
            self.model.model = model
        else:
            self.model = model

    @contextmanager
    def _as_dual_encoder(self):
        """``Trainer``'s saving and loading code run on the dual encoder alone, so it writes (and
        reads) a plain ``CLIPModel`` or PEFT adapter, not the wrapper's state dict."""
        wrapper = self.model
        self.model = wrapper.model
        try:
            yield wrapper
        finally:
            self.model = wrapper

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not isinstance(self.model, ReconstructionWrapper):
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        # Under DeepSpeed the state dict is the engine's, gathered: split it rather than read the parameters.
        model_state, head_state = ReconstructionWrapper.split_state_dict(self.model.state_dict() if state_dict is None else state_dict)
        with self._as_dual_encoder():
            super()._save(output_dir, state_dict=model_state)
        # A checkpoint keeps the projection, which a resumed run needs; the final model only when asked.
        checkpoint = os.path.basename(os.path.normpath(output_dir)).startswith(PREFIX_CHECKPOINT_DIR)
        if self.args.should_save and head_state and (checkpoint or self.args.save_reconstruction_head):
            ReconstructionWrapper.save_head(head_state, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if model is not None or not isinstance(self.model, ReconstructionWrapper):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        with self._as_dual_encoder() as wrapper:
            super()._load_from_checkpoint(resume_from_checkpoint)
        wrapper.load_head(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or not isinstance(self.model, ReconstructionWrapper):
            return super()._load_best_model()  # DeepSpeed's checkpoint holds the whole engine
        with self._as_dual_encoder() as wrapper:
            super()._load_best_model()
        wrapper.load_head(self.state.best_model_checkpoint)

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


def load_reconstruction_decoder(name_or_path: str | None, dtype: torch.dtype | None = None):
    """The frozen decoder of the reconstruction term and its tokenizer: any ``AutoModelForSeq2SeqLM``."""
    if name_or_path is None:
        raise ValueError(
            "the objective has a reconstruction term (READ-CLIP): set reconstruction_decoder (--reconstruction_decoder) "
            "to an encoder-decoder LM, e.g. google/flan-t5-base or google/t5-v1_1-large"
        )
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    decoder = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if len(tokenizer) <= 2:  # an offline load of a missing vocabulary can return an empty tokenizer
        raise ValueError(f"reconstruction_decoder {name_or_path!r}: its tokenizer has {len(tokenizer)} tokens; is the vocabulary missing?")
    return decoder, tokenizer


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
