"""Image edits that make counterfactual images: a horizontal flip (CounterCurate's positional
counterfactual) and diffusion inpainting over masks (Sahin et al.'s generative negative mining),
with masks from COCO annotations (pycocotools) or from boxes (box-masked inpainting, the default
for count and position edits now that diffusers' GLIGEN pipelines are deprecated).

Nothing here loads a model: :class:`InpaintingEditor` wraps any diffusers inpainting pipeline,
e.g. ``AutoPipelineForInpainting.from_pretrained("stabilityai/stable-diffusion-2-inpainting")``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "CountEdit",
    "InpaintingEditor",
    "box_mask",
    "coco_instance_mask",
    "count_edit_masks",
    "flip_caption",
    "flip_counterfactual",
]

# ---------------------------------------------------------------------------------------------
# Flip (CounterCurate positional counterfactuals)
# ---------------------------------------------------------------------------------------------

_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_LEFT_RIGHT = re.compile(r"\b(leftmost|rightmost|left|right)\b", re.IGNORECASE)


def _keep_case(template: str, word: str) -> str:
    if template.isupper():
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


def flip_caption(caption: str) -> str | None:
    """``caption`` with left/right words swapped ("left" <-> "right", "leftmost" <-> "rightmost",
    case kept), or None when it has none. Hyphenated forms swap too ("left-hand" -> "right-hand").

    The rule is lexical: "he left the room" would also change; filter such captions upstream.
    """
    if not _LEFT_RIGHT.search(caption):
        return None
    return _LEFT_RIGHT.sub(lambda m: _keep_case(m.group(0), _SWAP[m.group(0).lower()]), caption)


def flip_counterfactual(image: Image.Image, caption: str) -> tuple[Image.Image, str] | None:
    """The mirrored image and its left/right-swapped caption (true of the mirrored image, false of
    ``image``), or None when the caption names no side: then the mirror is no counterfactual.

    Pixel ``(x, y)`` of the returned image is pixel ``(width - 1 - x, y)`` of ``image``.
    """
    flipped_caption = flip_caption(caption)
    if flipped_caption is None:
        return None
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped_caption


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------


def box_mask(size: tuple[int, int], box: Sequence[float], pad: int = 0, box_format: str = "xyxy") -> np.ndarray:
    """A boolean ``[height, width]`` mask that is True inside ``box`` grown by ``pad`` pixels (clipped
    to the image).

    Args:
        size: the image size as PIL gives it, ``(width, height)``.
        box: ``(x0, y0, x1, y1)`` in pixels (``box_format="xyxy"``) or COCO's ``(x, y, w, h)``
            (``box_format="xywh"``).
        pad: pixels added on every side (inpainting usually wants some context around an object).

    Raises:
        ValueError: the box is empty or does not lie inside the image.
    """
    width, height = size
    if box_format == "xywh":
        x0, y0, w, h = box
        x1, y1 = x0 + w, y0 + h
    elif box_format == "xyxy":
        x0, y0, x1, y1 = box
    else:
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"empty box {tuple(box)} ({box_format})")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(
            f"box {tuple(box)} ({box_format}) lies outside the {width}x{height} image "
            f"(x must be in [0, {width}], y in [0, {height}])"
        )
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    left, top = max(0, int(np.floor(x0)) - pad), max(0, int(np.floor(y0)) - pad)
    right, bottom = min(width, int(np.ceil(x1)) + pad), min(height, int(np.ceil(y1)) + pad)
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def coco_instance_mask(coco, annotation, size: tuple[int, int] | None = None) -> np.ndarray:
    """The boolean ``[height, width]`` mask of one COCO instance (polygon or RLE) via ``coco.annToMask``.

    Args:
        coco: a ``pycocotools.coco.COCO``.
        annotation: an annotation dict or its id.
        size: optional ``(width, height)`` of the image the mask will be used with; must match the
            annotation's image entry.

    Raises:
        ValueError: unknown annotation/image, a size mismatch, or a segmentation with no pixel
            inside the image (it lies outside it).
    """
    if not isinstance(annotation, dict):
        if annotation not in coco.anns:
            raise ValueError(f"annotation id {annotation!r} is not in this COCO file")
        annotation = coco.anns[annotation]
    image_id = annotation["image_id"]
    if image_id not in coco.imgs:
        raise ValueError(f"annotation {annotation.get('id')!r} refers to image {image_id!r}, which is not in this COCO file")
    info = coco.imgs[image_id]
    if size is not None and tuple(size) != (info["width"], info["height"]):
        raise ValueError(
            f"image {image_id} is {info['width']}x{info['height']} in the annotations, but the image given is {size[0]}x{size[1]}"
        )
    mask = coco.annToMask(annotation).astype(bool)
    if not mask.any():
        raise ValueError(
            f"annotation {annotation.get('id')!r} covers no pixel of its {info['width']}x{info['height']} image "
            "(its segmentation lies outside the image or is empty)"
        )
    return mask


# ---------------------------------------------------------------------------------------------
# Count edits: remove one instance, or add one in an empty box
# ---------------------------------------------------------------------------------------------


@dataclass
class CountEdit:
    """Where to inpaint for a count edit. ``kind`` is "remove" (``instance`` is the index of the
    removed instance; inpaint background over ``mask``) or "add" (``box`` is an empty ``xyxy`` box;
    inpaint one more object there)."""

    kind: str
    mask: np.ndarray
    box: tuple[int, int, int, int] | None = None
    instance: int | None = None


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _dilate(mask: np.ndarray, pad: int) -> np.ndarray:
    """Square dilation by ``pad`` pixels (separable shifted ORs)."""
    grown = mask.copy()
    for axis in (0, 1):
        source = grown.copy()
        for shift in range(1, pad + 1):
            if axis == 0:
                grown[shift:] |= source[:-shift]
                grown[:-shift] |= source[shift:]
            else:
                grown[:, shift:] |= source[:, :-shift]
                grown[:, :-shift] |= source[:, shift:]
    return grown


def count_edit_masks(
    size: tuple[int, int],
    boxes: Sequence[Sequence[float]],
    masks: Sequence[np.ndarray] | None = None,
    add_box_size: tuple[int, int] | None = None,
    pad: int = 4,
    seed: int = 0,
    avoid: Sequence[Sequence[float]] = (),
) -> list[CountEdit]:
    """Inpainting masks for count edits of an image with instances at ``boxes`` (``xyxy``).

    Returns one "remove" edit per instance (its instance mask, else its box, grown by ``pad``) and at
    most one "add" edit: a box of ``add_box_size`` (default: the median instance box) at a position
    drawn (seeded) from ALL integer positions where it overlaps no instance box and no box of
    ``avoid`` (other objects, ``xyxy``), each grown by ``pad``. No "add" edit when there is none.
    """
    width, height = size
    edits = []
    for i, box in enumerate(boxes):
        if masks is not None and masks[i] is not None:
            mask = np.asarray(masks[i], dtype=bool)
            if mask.shape != (height, width):
                raise ValueError(f"mask {i} has shape {mask.shape}, expected {(height, width)}")
            if pad:
                mask = _dilate(mask, pad)
        else:
            mask = box_mask(size, box, pad=pad)
        edits.append(CountEdit("remove", mask, instance=i))

    if add_box_size is None:
        if not len(boxes):
            return edits
        sizes = np.array([(b[2] - b[0], b[3] - b[1]) for b in boxes])
        add_box_size = tuple(int(round(v)) for v in np.median(sizes, axis=0))
    box_w, box_h = add_box_size
    if box_w <= 0 or box_h <= 0 or box_w > width or box_h > height:
        return edits
    # Occupied pixels (boxes grown by pad, open on the far side as in _overlaps), then a summed-area
    # table: a placement is free when the occupied count under it is zero.
    occupied = np.zeros((height, width), dtype=np.int32)
    for b in [*boxes, *avoid]:
        x0, y0 = max(0, int(np.floor(b[0] - pad))), max(0, int(np.floor(b[1] - pad)))
        x1, y1 = min(width, int(np.ceil(b[2] + pad))), min(height, int(np.ceil(b[3] + pad)))
        if x1 > x0 and y1 > y0:
            occupied[y0:y1, x0:x1] = 1
    table = np.pad(occupied.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    under = table[box_h:, box_w:] - table[:-box_h, box_w:] - table[box_h:, :-box_w] + table[:-box_h, :-box_w]
    free = np.argwhere(under == 0)  # (y0, x0) of every free placement
    if len(free):
        y0, x0 = (int(v) for v in free[np.random.default_rng(seed).integers(len(free))])
        candidate = (x0, y0, x0 + box_w, y0 + box_h)
        edits.append(CountEdit("add", box_mask(size, candidate), box=candidate))
    return edits


# ---------------------------------------------------------------------------------------------
# Diffusion inpainting
# ---------------------------------------------------------------------------------------------


class InpaintingEditor:
    """Batched, seeded inpainting with any diffusers inpainting pipeline.

    Example::

        pipe = AutoPipelineForInpainting.from_pretrained("stabilityai/stable-diffusion-2-inpainting",
                                                         torch_dtype=torch.float16).to("cuda")
        editor = InpaintingEditor(pipe, num_inference_steps=30)
        edited = editor.edit_batch(images, masks, ["a red car", ...])   # None where an edit failed

    Item ``i`` of a call is generated with ``torch.Generator().manual_seed(seed + i)`` (or
    ``seed + seeds[i]`` when ``seeds`` is given: pass global record indices so that sharded runs
    reproduce a single run), so an output depends on the seed and the item, not on the machine's
    RNG state. Images are resized to the pipeline's resolution (``size``, default
    ``unet.config.sample_size * vae_scale_factor``) and the output back to each original size.
    With ``keep_unmasked=True`` the original pixels are pasted back outside the mask (the VAE
    round trip otherwise changes them a little).
    """

    def __init__(
        self,
        pipeline,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        batch_size: int = 4,
        seed: int = 0,
        size: int | tuple[int, int] | None = None,
        keep_unmasked: bool = False,
        **pipeline_kwargs,
    ):
        self.pipeline = pipeline
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.seed = seed
        self.keep_unmasked = keep_unmasked
        self.pipeline_kwargs = pipeline_kwargs
        if size is None:
            unet = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
            sample_size = getattr(getattr(unet, "config", None), "sample_size", None)
            scale = getattr(pipeline, "vae_scale_factor", 8)
            if isinstance(sample_size, (list, tuple)):
                sample_size = sample_size[0]
            size = int(sample_size) * scale if sample_size else 512
        self.size = (size, size) if isinstance(size, int) else tuple(size)  # (width, height)
        if self.size[0] % 8 or self.size[1] % 8:
            raise ValueError(f"the pipeline size must be a multiple of 8, got {self.size}")

    def _generator(self, seed: int):
        import torch

        device = getattr(self.pipeline, "device", None)
        device = "cpu" if device is None or getattr(device, "type", "cpu") == "mps" else device
        return torch.Generator(device=device).manual_seed(seed)

    def edit_batch(
        self,
        images: Sequence[Image.Image],
        masks: Sequence[np.ndarray | Image.Image],
        prompts: Sequence[str],
        seeds: Sequence[int] | None = None,
    ) -> list[Image.Image | None]:
        """Inpaints ``masks[i]`` (True / white = repaint) of ``images[i]`` with ``prompts[i]``.

        Returns one RGB image per item at the item's original size, or None where the pipeline
        returned no image or a non-finite one (count those in the caller).
        """
        if not (len(images) == len(masks) == len(prompts)):
            raise ValueError(f"got {len(images)} images, {len(masks)} masks and {len(prompts)} prompts")
        if seeds is not None and len(seeds) != len(images):
            raise ValueError(f"got {len(seeds)} seeds for {len(images)} images")
        width, height = self.size
        prepared_images, prepared_masks = [], []
        for i, (image, mask) in enumerate(zip(images, masks)):
            mask_image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
            mask_image = mask_image.convert("L")
            if mask_image.size != image.size:
                raise ValueError(f"item {i}: mask is {mask_image.size[0]}x{mask_image.size[1]}, image is {image.size[0]}x{image.size[1]}")
            prepared_images.append(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC))
            prepared_masks.append(mask_image.resize((width, height), Image.Resampling.NEAREST))

        outputs: list[Image.Image | None] = []
        for start in range(0, len(images), self.batch_size):
            stop = min(start + self.batch_size, len(images))
            generators = [
                self._generator(self.seed + (seeds[i] if seeds is not None else i)) for i in range(start, stop)
            ]
            result = self.pipeline(
                prompt=list(prompts[start:stop]),
                image=prepared_images[start:stop],
                mask_image=prepared_masks[start:stop],
                height=height,
                width=width,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=generators,
                output_type="np",
                **self.pipeline_kwargs,
            )
            arrays = list(getattr(result, "images", result) if result is not None else [])
            for offset, i in enumerate(range(start, stop)):
                array = np.asarray(arrays[offset], dtype=np.float32) if offset < len(arrays) and arrays[offset] is not None else None
                if array is None or array.size == 0 or not np.isfinite(array).all():
                    outputs.append(None)
                    continue
                edited = Image.fromarray((np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)).convert("RGB")
                edited = edited.resize(images[i].size, Image.Resampling.BICUBIC)
                if self.keep_unmasked:
                    mask = masks[i] if not isinstance(masks[i], Image.Image) else np.asarray(masks[i].convert("L")) > 127
                    repaint = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
                    edited = Image.composite(edited, images[i].convert("RGB"), repaint)
                outputs.append(edited)
        return outputs
