"""The scoring seam: scores ``S(image, text)`` for the pairs an objective or a benchmark asks for.

Training and evaluation read the same scores. A dual encoder (CLIP, SigLIP) gives
``S = scale * cosine + bias`` (``bias`` 0 for CLIP) for any pair, all pairs included ("dense"), from
one pass of each encoder; a generative VLM gives a score per pair it is asked about (each costs a
forward), so only record-local terms can use it. :class:`DualEncoderScores` is one training step's
scores of a dual encoder; :class:`DualEncoderScorer` scores images against texts for evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm


def similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``logit_scale * image_embeds @ text_embeds.T`` for L2-normalised embeddings: ``[..., num_images, num_texts]``
    (leading batch dimensions are kept)."""
    return logit_scale * image_embeds @ text_embeds.transpose(-1, -2)


def has_logit_bias(model) -> bool:
    """Whether a dual encoder adds a learned bias to its scores (SigLIP) or not (CLIP). Reads the
    attribute, not its value, so it also holds for a parameter ZeRO-3 has partitioned."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed engine
    return hasattr(model, "logit_bias")


def scale_and_bias_from_outputs(outputs, with_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``scale`` (``logit_scale.exp()``) and ``bias`` that a dual encoder's forward applied, read
    off its outputs: ``logits_per_text = scale * cos + bias``.

    Equal to the model's parameters and differentiable with respect to them, but also right where
    they are not readable outside the forward (DeepSpeed ZeRO-3 partitions them): least squares of
    the logits on the cosines recovers them exactly, through the origin for CLIP, with an intercept
    for SigLIP (``with_bias``; through the origin its scale would be wrong: 38.5 for a SigLIP at
    scale 10, bias -10). With a bias, the batch needs two different cosines to tell them apart.
    """
    cos = outputs.text_embeds @ outputs.image_embeds.T
    logits = outputs.logits_per_text
    if not with_bias:
        return (logits * cos).sum() / cos.square().sum(), None
    centred_cos, centred_logits = cos - cos.mean(), logits - logits.mean()
    spread = centred_cos.square().sum()
    if not spread > 0:
        raise ValueError("a batch with one image-text cosine cannot separate the scale from the bias: use at least 2 images or texts")
    scale = (centred_logits * centred_cos).sum() / spread
    return scale, logits.mean() - scale * cos.mean()


class DualEncoderScores:
    """One step's scores of a dual encoder over its distinct images and texts: ``S = scale * cosine
    + bias`` for any pair. Objectives ask for them by pair (:meth:`pairs`, what any scorer can
    give) or, being dense, as matrices over (possibly gathered) embeddings (:meth:`matrix`).

    Args:
        image_embeds ``[I, D]``, text_embeds ``[T, D]``: L2-normalised embeddings.
        scale: the temperature; bias: SigLIP's learned bias (``None``: no bias, as CLIP).
        reconstruction_logits: a reconstruction decoder's logits of the step's target captions
            (:class:`~hf_counterfactual.reconstruction.ReconstructionWrapper`), or ``None``.
    """

    dense = True

    def __init__(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float, bias: torch.Tensor | float | None = None,
        reconstruction_logits: torch.Tensor | None = None,
    ):  # fmt: skip
        self.image_embeds, self.text_embeds, self.scale, self.bias = image_embeds, text_embeds, scale, bias
        self.reconstruction_logits = reconstruction_logits

    @classmethod
    def from_outputs(cls, outputs, with_bias: bool = False) -> "DualEncoderScores":
        """From a ``CLIPModel`` / ``SiglipModel`` forward (see :func:`scale_and_bias_from_outputs`),
        with a :class:`~hf_counterfactual.reconstruction.ReconstructionWrapper`'s ``reconstruction_logits``."""
        scale, bias = scale_and_bias_from_outputs(outputs, with_bias)
        return cls(outputs.image_embeds, outputs.text_embeds, scale, bias, outputs.get("reconstruction_logits"))

    def _biased(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.bias is None else scores + self.bias

    def matrix(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of every image against every text ``[..., N, M]`` (embeddings of this step or gathered)."""
        return self._biased(similarity(image_embeds, text_embeds, self.scale))

    def pairwise(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs (broadcast over leading dimensions)."""
        return self._biased(self.scale * (image_embeds * text_embeds).sum(-1))

    def pairs(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """``S(image_index[..], text_index[..])`` over this step's distinct images and texts (indices
        broadcast against each other)."""
        image_index, text_index = torch.broadcast_tensors(image_index, text_index)
        return self.pairwise(self.image_embeds[image_index], self.text_embeds[text_index])


def text_padding(model) -> str | bool:
    """How ``model``'s text tower wants a batch of texts padded: SigLIP's was trained on texts padded
    to its full length and pools its last position (its docs: ``padding="max_length"``), so the
    padding changes its embeddings; every other model pads to the longest text."""
    return "max_length" if getattr(model.config, "model_type", "").startswith("siglip") else True


class DualEncoderScorer:
    """Scores images against texts with a dual encoder (``CLIPModel``, ``SiglipModel``, or any model
    with ``get_image_features``, ``get_text_features``, ``logit_scale`` and optionally ``logit_bias``),
    encoding in batches without gradient: ``S = scale * cosine + bias``, as in training.

    Example::

        scorer = DualEncoderScorer(model, processor)
        scores = scorer.score(images, texts)   # [len(images), len(texts)]
    """

    def __init__(self, model, processor, batch_size: int = 64, device: str | torch.device | None = None, show_progress: bool = True):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress
        self.text_padding = text_padding(model)

    def _batches(self, items: Sequence, desc: str):
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc=desc, disable=not self.show_progress or len(starts) < 2):
            yield items[start : start + self.batch_size]

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings ``[len(images), D]``."""
        chunks = []
        for chunk in self._batches(images, "Encoding images"):
            pixel_values = self.processor.image_processor(list(chunk), return_tensors="pt")["pixel_values"]
            # The model's dtype, not the processor's float32: CLIP casts inside, not every vision tower does.
            pixel_values = pixel_values.to(self.device, dtype=self.model.dtype)
            features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[len(texts), D]``."""
        chunks = []
        for chunk in self._batches(texts, "Encoding texts"):
            encoded = self.processor.tokenizer(list(chunk), padding=self.text_padding, truncation=True, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**encoded).pooler_output
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach().float()

    def score_embeddings(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of already encoded images against already encoded texts."""
        return DualEncoderScores(image_embeds, text_embeds, self.logit_scale, self.logit_bias).matrix(image_embeds, text_embeds)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[len(images), len(texts)]`` of every image against every text."""
        return self.score_embeddings(self.encode_images(images), self.encode_texts(texts))
