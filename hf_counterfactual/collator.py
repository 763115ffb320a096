"""Turns counterfactual records into one batch of distinct images and texts plus index tensors.

Every loss term reads its scores out of one image-embedding matrix and one text-embedding matrix,
so each distinct image and text is encoded exactly once per step whatever the number of terms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .features import InvalidRecordError, normalize_caption, validate_record
from .image_processing import IMAGE_PATHS, FastImageTransform, resolve_image_transform


_DATASETS_IMAGE = datasets.Image()


def load_image(value: Any, where: str) -> Image.Image:
    """Returns an RGB ``PIL.Image`` from a decoded or undecoded ``datasets`` image, or raises naming ``where``.

    An undecoded image (a ``{"bytes", "path"}`` dict: a column cast to ``Image(decode=False)``, see
    :func:`~hf_counterfactual.features.defer_image_decoding`) is decoded by ``datasets.Image`` itself,
    as indexing the decoding dataset would have (EXIF orientation applied, a Hub path read), so both
    give the same pixels; a file it cannot read is an :class:`InvalidRecordError` naming ``where``.
    """
    return to_rgb(_read_image(value, where, _decode))


def _decode(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    return _DATASETS_IMAGE.decode_example({"bytes": value.get("bytes"), "path": value.get("path")})


def _read_image(value: Any, where: str, decode: Callable[[Any], Any]):
    """``decode(value)`` of a PIL image or an undecoded ``{"bytes", "path"}`` dict; anything else, or
    a file ``decode`` cannot read, is an :class:`InvalidRecordError` naming ``where``."""
    if not isinstance(value, Image.Image) and not (isinstance(value, Mapping) and (value.get("bytes") is not None or value.get("path") is not None)):
        raise InvalidRecordError(f"{where}: expected an image, got {type(value).__name__}")
    try:
        return decode(value)
    except Exception as err:  # PIL raises several unrelated types for corrupt files
        path = value.get("path") if isinstance(value, Mapping) else None
        named = f" {path!r}" if path else ""
        raise InvalidRecordError(f"{where}: unreadable image{named} ({type(err).__name__}: {err})") from err


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16- and 32-bit integer greyscale (``I;16`` PNGs) is scaled to 0-255 first:
    Pillow's ``convert`` clips it instead, so an ordinary 16-bit photo would come out near-white.
    Transparency is composited onto white (as the image processors' ``convert_to_rgb``)."""
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.float64)
        # I;16* is 16-bit by its mode, even when dark. Plain I (32-bit) says nothing of its range: it is
        # read as 16-bit data (as a 16-bit PNG converted to I is) unless every value fits in 8 bits.
        sixteen_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
        scale = 255.0 / 65535.0 if sixteen_bit else 1.0
        image = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
    if image.mode != "RGB" and ("A" in image.getbands() or image.info.get("transparency") is not None):
        # Transparency composited onto white, as the image processors' own convert_to_rgb does.
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    return image if image.mode == "RGB" else image.convert("RGB")


def content_key(tensor: torch.Tensor) -> int:
    """A 63-bit key of a tensor's values (dtype and shape included), equal in every process.

    Python's ``hash`` of bytes is salted per process, so it cannot tell two processes' columns apart;
    a digest can. SHA-1 because it is the fastest digest in ``hashlib`` on CPUs with SHA extensions
    (about 0.3-0.5 ms for a 224x224 float image); nothing here is security-relevant.
    """
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha1(f"{tensor.dtype}{tuple(tensor.shape)}".encode(), usedforsecurity=False)
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


class _Interner:
    """Assigns each distinct key a row, in first-seen order."""

    def __init__(self) -> None:
        self.index: dict[Any, int] = {}
        self.items: list[Any] = []

    def add(self, key: Any, item: Any = None) -> int:
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(key if item is None else item)
        return self.index[key]


def _merge_equal_rows(keys: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Rows with equal keys merged into the first: (rows kept, new row of every old row, keys of the kept rows)."""
    kept = _Interner()
    new_row = torch.tensor([kept.add(key, row) for row, key in enumerate(keys)], dtype=torch.long)
    return kept.items, new_row, torch.tensor(list(kept.index), dtype=torch.long)


def _remap(index: torch.Tensor, new_row: torch.Tensor) -> torch.Tensor:
    """``index`` (-1 where unused) through ``new_row``."""
    return torch.where(index >= 0, new_row[index.clamp(min=0)], index)


def _reject_counterfactuals_read_as_their_caption(records, text_index: torch.Tensor, cf_text_index: torch.Tensor) -> None:
    # validate_record compares normalised strings; the tokenizer may merge more (unknown words,
    # punctuation). A counterfactual with its own caption's token ids would be trained as a
    # negative against itself.
    same = (cf_text_index == text_index.unsqueeze(1)).nonzero().tolist()
    if same:
        b, j = same[0]
        raise InvalidRecordError(
            f"batch item {b} (caption {records[b]['caption']!r}): a counterfactual caption has the caption's own "
            f"token ids (slot {j}), so the model cannot tell them apart; {len(same)} such counterfactual(s) in this batch"
        )


@dataclass
class CounterfactualCollator:
    """Collates counterfactual records (:data:`~hf_counterfactual.features.COUNTERFACTUAL_FEATURES`) for a dual encoder.

    Returns a dict with

    - ``pixel_values`` ``[I, 3, H, W]``: each distinct image once (identical pixels share a row); the
      distinct factual images come first. Float32, as the processor gives them; ``uint8`` with
      ``defer_normalization=True`` (what :class:`~hf_counterfactual.trainer.CounterfactualTrainer`
      builds), for the model side to normalise on its device (:meth:`normalize_pixel_values`).
    - ``input_ids``, ``attention_mask`` ``[T, L]``: each distinct text once: texts equal under
      :func:`~hf_counterfactual.features.normalize_caption`, or with equal token ids (a tokenizer may
      normalise more, e.g. punctuation), share a row.
    - ``image_index``, ``text_index`` ``[B]``: rows of each record's factual image and caption.
    - ``cf_text_index`` ``[B, K]``: rows of the ``K`` counterfactual captions, ``-1`` where unused.
    - ``cf_image_index`` ``[B, K]``: rows of the counterfactual images, ``-1`` for text-only negatives
      or when images are not requested.
    - ``texts``: the ``T`` distinct texts as strings (what a generative VLM's scorer builds prompts from).
    - ``text_key`` ``[T]``, ``image_key`` ``[I]`` int64: content keys of each row (:func:`content_key` of
      the text's token ids, of the image's pixel values), equal for equal content in every process.
      The objective gathers them with the columns to find false negatives across the global batch
      (two records with the same caption or image), which local row numbers cannot.

    Args:
        processor: a processor with ``image_processor`` and ``tokenizer`` (e.g. ``CLIPProcessor``).
        num_counterfactuals: ``K``; a record with fewer raises, one with more contributes a random ``K``.
        use_counterfactual_texts / use_counterfactual_images: leave out what the objective does not
            score, so that it is not encoded.
        counterfactual_fraction: share of records whose counterfactuals enter the batch (Generative
            Negative Mining mixes r=0.5 generated with real pairs); the others give only their factual pair.
        max_length: longest tokenized text allowed (the text encoder's positions).
        truncation: cut longer texts to ``max_length``. Off by default: cutting can erase the very
            words a counterfactual edited, so a long text is an error instead.
        use_paraphrases: add one random paraphrase of each record that has any (``paraphrase_index``
            ``[B]``, a text row, -1 where a record has none), for paraphrase alignment (READ-CLIP).
        padding: ``True`` (to the longest text) or ``"max_length"`` (every text to ``max_length``:
            what SigLIP's text tower needs, see :func:`~hf_counterfactual.scoring.text_padding`).
            The batch holds ``attention_mask`` only where the tokenizer returns one by default
            (SigLIP's does not: it is run without).
        image_path: ``"fast"`` (default): :class:`~hf_counterfactual.image_processing.FastImageTransform`
            (JPEG draft decode of undecoded images, one resize of the crop, ``uint8`` out), where the
            processor allows it (else the processor, with the reason logged); ``"exact"``: the
            processor's own float tensors. :attr:`image_transform` is the transform in use (``None``: exact).
        defer_normalization: on the fast path, return ``pixel_values`` as ``uint8`` (a quarter of the
            bytes to pass between processes and to the device) and leave the rescaling and
            normalisation to the model side (:meth:`normalize_pixel_values`, which the trainer calls in
            ``compute_loss``). Off by default, so that a batch fed to the model by hand is its input.
        reconstruction_tokenizer: the reconstruction decoder's tokenizer (READ-CLIP): each record
            gets a target, a random true caption of its image (the caption or one of its
            paraphrases), as ``reconstruction_labels`` ``[B, L]`` (that tokenizer's ids, -100 at
            padding, cut to ``max_length`` tokens). ``None``: no targets.
    """

    processor: Any
    num_counterfactuals: int = 4
    use_counterfactual_texts: bool = True
    use_counterfactual_images: bool = True
    counterfactual_fraction: float = 1.0
    max_length: int | None = None
    truncation: bool = False
    padding: bool | str = True
    use_paraphrases: bool = False
    reconstruction_tokenizer: Any = None
    image_path: str = "fast"
    defer_normalization: bool = False
    image_transform: FastImageTransform | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.image_path not in IMAGE_PATHS:
            raise ValueError(f"image_path must be one of {IMAGE_PATHS}, got {self.image_path!r}")
        self.image_transform = resolve_image_transform(self.processor.image_processor, self.image_path)
        if not 0.0 <= self.counterfactual_fraction <= 1.0:
            raise ValueError(f"counterfactual_fraction must be in [0, 1], got {self.counterfactual_fraction}")
        if self.num_counterfactuals < 0:
            raise ValueError(f"num_counterfactuals must be >= 0, got {self.num_counterfactuals}")
        if self.max_length is None:
            self.max_length = self.processor.tokenizer.model_max_length

    @property
    def _uses_counterfactuals(self) -> bool:
        return self.num_counterfactuals > 0 and (self.use_counterfactual_texts or self.use_counterfactual_images)

    def __call__(self, records: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        k = self.num_counterfactuals if self._uses_counterfactuals else 0
        batch_size = len(records)
        images: list[Any] = []  # PIL images (exact path) or DecodedImages (fast path)
        texts = _Interner()
        text_index = torch.empty(batch_size, dtype=torch.long)
        cf_text_index = torch.full((batch_size, k), -1, dtype=torch.long)
        cf_image_index = torch.full((batch_size, k), -1, dtype=torch.long)

        for b, record in enumerate(records):
            where = f"batch item {b} (caption {record.get('caption') if isinstance(record, Mapping) else None!r})"
            try:
                validate_record(record, row=b, min_counterfactuals=k)
            except InvalidRecordError as err:
                raise InvalidRecordError(f"{where}: {err}") from None
            images.append(self._load_image(record["image"], f"{where}, field 'image'"))
            text_index[b] = texts.add(normalize_caption(record["caption"]), record["caption"].strip())

        paraphrase_index = torch.full((batch_size,), -1, dtype=torch.long)
        if self.use_paraphrases:
            for b, record in enumerate(records):
                paraphrases = record.get("paraphrases") or []
                if paraphrases:
                    chosen = paraphrases[int(torch.randint(len(paraphrases), ()))]
                    paraphrase_index[b] = texts.add(normalize_caption(chosen), chosen.strip())

        # Counterfactual images come after all B factual images: image rows 0..B-1 are the factual ones.
        if k:
            use = torch.rand(batch_size) < self.counterfactual_fraction
            for b, record in enumerate(records):
                if not use[b]:
                    continue
                counterfactuals = record["counterfactuals"]
                chosen = torch.randperm(len(counterfactuals))[:k].tolist() if len(counterfactuals) > k else range(k)
                for j, c in enumerate(chosen):
                    cf = counterfactuals[c]
                    if self.use_counterfactual_texts:
                        cf_text_index[b, j] = texts.add(normalize_caption(cf["caption"]), cf["caption"].strip())
                    if self.use_counterfactual_images and cf.get("image") is not None:
                        where = f"batch item {b} (caption {record['caption']!r}), field 'counterfactuals[{c}].image'"
                        cf_image_index[b, j] = len(images)
                        images.append(self._load_image(cf["image"], where))

        encoded = self._tokenize(texts.items)
        # Keys of the token ids a text encoder reads (padding left out, whichever side it is on).
        text_keys = [content_key(ids[mask.bool()]) for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        text_rows, new_text_row, text_key = _merge_equal_rows(text_keys)
        text_index, cf_text_index = new_text_row[text_index], _remap(cf_text_index, new_text_row)
        paraphrase_index = _remap(paraphrase_index, new_text_row)
        _reject_counterfactuals_read_as_their_caption(records, text_index, cf_text_index)
        if self.image_transform is not None:
            pixel_values = self.image_transform.stack(images)  # uint8: content keys of 1 byte a value (equal content, equal key)
        else:
            pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        # An identical image (the same photo in two records) is encoded once.
        image_rows, new_image_row, image_key = _merge_equal_rows([content_key(pixels) for pixels in pixel_values])
        text_inputs = {"input_ids": encoded["input_ids"][text_rows]}
        if "attention_mask" in self.processor.tokenizer.model_input_names:
            text_inputs["attention_mask"] = encoded["attention_mask"][text_rows]
        reconstruction = {"reconstruction_labels": self._reconstruction_labels(records)} if self.reconstruction_tokenizer is not None else {}
        return {
            **text_inputs,
            "pixel_values": pixel_values[image_rows] if self.defer_normalization else self.normalize_pixel_values(pixel_values[image_rows]),
            "image_index": new_image_row[:batch_size],
            "text_index": text_index,
            "cf_text_index": cf_text_index,
            "cf_image_index": _remap(cf_image_index, new_image_row),
            "text_key": text_key,
            "image_key": image_key,
            "texts": [texts.items[row] for row in text_rows],
            **({"paraphrase_index": paraphrase_index} if self.use_paraphrases else {}),
            **reconstruction,
        }

    def _load_image(self, value: Any, where: str):
        """One image as the image path needs it: an RGB PIL image (exact) or a
        :class:`~hf_counterfactual.image_processing.DecodedImage` (fast: resized with the batch's others)."""
        if self.image_transform is None:
            return load_image(value, where)
        return _read_image(value, where, self.image_transform.decode)

    def normalize_pixel_values(self, pixel_values: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The model's input from this collator's ``pixel_values``: ``uint8`` ones normalised (on their
        device) as the processor would; float ones unchanged."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        return self.image_transform.normalize(pixel_values, dtype)

    def _reconstruction_labels(self, records: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        targets = []
        for record in records:
            captions = [record["caption"], *(record.get("paraphrases") or [])]
            targets.append(captions[int(torch.randint(len(captions), ()))].strip())
        encoded = self.reconstruction_tokenizer(
            targets, padding=True, truncation=True, max_length=self.max_length, return_attention_mask=True, return_tensors="pt"
        )
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.processor.tokenizer(
            texts,
            padding=self.padding,
            truncation=self.truncation,
            max_length=self.max_length if self.truncation or self.padding == "max_length" else None,
            return_attention_mask=True,  # the collator's own use (lengths, content keys), whatever the model reads
            return_tensors="pt",
        )
        if not self.truncation:
            lengths = encoded["attention_mask"].sum(dim=1)
            too_long = (lengths > self.max_length).nonzero().flatten().tolist()
            if too_long:
                first = too_long[0]
                raise ValueError(
                    f"text {texts[first]!r} is {int(lengths[first])} tokens, longer than max_length={self.max_length} "
                    f"({len(too_long)} such text(s) in this batch); shorten it or pass truncation=True"
                )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
