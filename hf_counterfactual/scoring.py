"""Image-text scores for dual encoders: ``logit_scale * cosine``, the same in training and evaluation."""

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


def logit_scale_from_outputs(outputs) -> torch.Tensor:
    """The temperature ``logit_scale.exp()`` that a ``CLIPModel`` forward applied, read off its outputs.

    Equal to ``model.logit_scale.exp()`` and differentiable with respect to it, but also right where
    the parameter is not readable outside the forward (DeepSpeed ZeRO-3 partitions it): the forward
    returns ``logits_per_text = scale * cos``, so the least-squares ratio recovers ``scale`` exactly.
    """
    cos = outputs.text_embeds @ outputs.image_embeds.T
    return (outputs.logits_per_text * cos).sum() / cos.square().sum()


class CLIPScorer:
    """Scores images against texts with a ``CLIPModel`` (or any model with ``get_image_features``,
    ``get_text_features`` and ``logit_scale``), encoding in batches without gradient.

    Example::

        scorer = CLIPScorer(model, processor)
        scores = scorer.score(images, texts)   # [len(images), len(texts)]
    """

    def __init__(self, model, processor, batch_size: int = 64, device: str | torch.device | None = None, show_progress: bool = True):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress

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
            encoded = self.processor.tokenizer(list(chunk), padding=True, truncation=True, return_tensors="pt").to(self.device)
            features = self.model.get_text_features(**encoded).pooler_output
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    def score_embeddings(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of already encoded images against already encoded texts."""
        return similarity(image_embeds, text_embeds, self.logit_scale)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[len(images), len(texts)]`` of every image against every text."""
        return self.score_embeddings(self.encode_images(images), self.encode_texts(texts))
