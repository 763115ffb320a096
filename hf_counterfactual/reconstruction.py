"""READ-CLIP's token-level reconstruction: a frozen text decoder rebuilds a true caption of the image
from the dual encoder's pooled text embedding of the factual caption.

:class:`ReconstructionWrapper` holds the dual encoder, the frozen decoder (any
``AutoModelForSeq2SeqLM``: READ-CLIP uses ``google/t5-v1_1-large``) and the one trainable piece
between them, ``Linear(text_hidden, d_model, bias=False)``, whose output is the decoder's one-token
encoder output. It is one ``nn.Module``, so ``Trainer``, DDP, DeepSpeed and PEFT see one model; the
:class:`~hf_counterfactual.trainer.CounterfactualTrainer` builds it when a term reconstructs
(``reconstruction_decoder``) and saves only the dual encoder, as a plain ``CLIPModel`` (or PEFT
adapter), with the projection beside it only when asked (:data:`HEAD_FILE`; checkpoints always
hold it, so that a resumed run continues with it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import ModelOutput

#: The projection's file beside the saved dual encoder.
HEAD_FILE = "reconstruction_head.safetensors"
_HEAD_PREFIX = "projection."
_MODEL_PREFIX = "model."


@dataclass
class ReconstructionOutput(ModelOutput):
    """What a reconstructing forward returns: the dual encoder's scores and embeddings, and the
    decoder's logits of the target captions. (A class of its own: DDP rebuilds outputs by their
    class, so the dual encoder's output class cannot carry an extra field.)"""

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    reconstruction_logits: torch.Tensor | None = None


class ReconstructionWrapper(nn.Module):
    """A dual encoder, a frozen seq2seq decoder and the trainable projection between them.

    ``forward`` runs the dual encoder on its usual inputs; given ``reconstruction_rows`` (text rows,
    ``[N]``) and ``reconstruction_labels`` (the decoder tokenizer's ids of each row's target caption,
    ``[N, L]``, -100 at padding), it also projects the pooled text states of those rows, feeds each
    to the decoder as a one-token encoder output, and returns a :class:`ReconstructionOutput` with
    the decoder's logits ``[N, L, V]`` as ``reconstruction_logits``. The pooled state is the text tower's, before CLIP's
    ``text_projection``, as READ-CLIP takes it (read at that layer's input: transformers 5 returns
    the projected embedding as ``text_model_output.pooler_output``); a model without a text
    projection (SigLIP) gives its pooled output. The decoder stays in eval mode (frozen: no dropout noise).

    Args:
        model: a ``CLIPModel`` / ``SiglipModel`` (or a PEFT model of one).
        decoder: an encoder-decoder LM (``T5ForConditionalGeneration``, ...); its weights are frozen.
        seed: draw the projection's init from this seed (``None``: from the global generator). The
            trainer passes its seed, so that the init does not depend on what loading drew before
            (ZeRO-3's partitioned load draws, a plain load does not).
    """

    def __init__(self, model: nn.Module, decoder: nn.Module, seed: int | None = None):
        super().__init__()
        if not hasattr(decoder, "prepare_decoder_input_ids_from_labels"):
            raise TypeError(f"the reconstruction decoder must be an encoder-decoder LM (AutoModelForSeq2SeqLM); got {type(decoder).__name__}")
        self.model = model
        self.decoder = decoder.requires_grad_(False).eval()
        text_hidden = model.config.text_config.hidden_size
        parameter = next(model.parameters())
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.projection = nn.Linear(text_hidden, decoder.config.hidden_size, bias=False, device=parameter.device, dtype=parameter.dtype)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT
        self._pooled: list[torch.Tensor] | None = None  # filled by the hook during a reconstructing forward
        if getattr(base, "text_projection", None) is not None:
            base.text_projection.register_forward_pre_hook(self._keep_pooled)

    def _keep_pooled(self, module, args) -> None:
        if self._pooled is not None:
            self._pooled.append(args[0])

    @property
    def config(self):
        """The dual encoder's config (what ``Trainer`` and DeepSpeed read)."""
        return self.model.config

    def train(self, mode: bool = True) -> "ReconstructionWrapper":
        super().train(mode)
        self.decoder.eval()
        return self

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs)

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs)

    def forward(self, reconstruction_rows: torch.Tensor | None = None, reconstruction_labels: torch.Tensor | None = None, **inputs):
        if reconstruction_labels is None:
            return self.model(**inputs)
        self._pooled = []
        try:
            outputs = self.model(**inputs)
            pooled = self._pooled[-1] if self._pooled else outputs.text_model_output.pooler_output
        finally:
            self._pooled = None
        pooled = pooled[reconstruction_rows]
        decoder_dtype = next(self.decoder.parameters()).dtype
        encoder_states = self.projection(pooled).unsqueeze(1).to(decoder_dtype)  # [N, 1, d_model]
        decoder_input_ids = self.decoder.prepare_decoder_input_ids_from_labels(labels=reconstruction_labels)
        decoded = self.decoder(
            encoder_outputs=(encoder_states,),
            attention_mask=torch.ones(encoder_states.shape[:2], dtype=torch.long, device=encoder_states.device),
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return ReconstructionOutput(
            logits_per_image=outputs.logits_per_image,
            logits_per_text=outputs.logits_per_text,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            reconstruction_logits=decoded.logits,
        )

    # ------------------------------------------------------------------ saving

    @staticmethod
    def split_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A state dict of the wrapper (``Trainer``'s, gathered under ZeRO-3) as the dual encoder's
        own (its keys, without the wrapper's prefix) and the projection's; the frozen decoder's is
        dropped (it is the checkpoint it was loaded from)."""
        model = {key[len(_MODEL_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(_MODEL_PREFIX)}
        head = {key[len(_HEAD_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(_HEAD_PREFIX)}
        return model, head

    @staticmethod
    def save_head(head_state_dict: dict[str, torch.Tensor], directory: str) -> str:
        """Writes the projection's weights (from :meth:`split_state_dict`) to ``directory/HEAD_FILE``."""
        path = os.path.join(directory, HEAD_FILE)
        save_file({key: value.detach().contiguous().cpu() for key, value in head_state_dict.items()}, path, metadata={"format": "pt"})
        return path

    def load_head(self, directory: str) -> None:
        """Reads the projection saved by :meth:`save_head` in ``directory``; raises if it is missing
        or of another shape (a checkpoint of another decoder)."""
        path = os.path.join(directory, HEAD_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory} has no {HEAD_FILE}: it was not saved by a run with a reconstruction term")
        self.projection.load_state_dict(load_file(path, device=str(self.projection.weight.device)))
