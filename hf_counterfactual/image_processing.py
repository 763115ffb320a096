"""A fast image path for dual encoders: what the model's image processor computes, at a fraction of the CPU cost.

The processor (``CLIPImageProcessor``: resize the shortest edge, then centre-crop; ``SiglipImageProcessor``:
resize to a fixed size) resizes the whole decoded image in float-free PIL, crops, then rescales and
normalises in NumPy float on the CPU. :class:`FastImageTransform` gives the same pixels with less work:

1. an undecoded JPEG (a ``{"bytes", "path"}`` dict, see
   :func:`~hf_counterfactual.features.defer_image_decoding`, or a file path) is decoded in PIL's draft
   mode (the JPEG decoder's DCT scaling, :meth:`PIL.Image.Image.draft`) at the smallest of 1/2, 1/4,
   1/8 that still holds the resized image's resolution;
2. one resample at the processor's scale, then the crop: bicubic and bilinear (CLIP's and SigLIP's
   filters) by torch's antialiased ``uint8`` interpolation, which computes Pillow's filter (same
   kernel and support; fixed-point weights of its own: within a few uint8 levels at a few pixels)
   about 2.5x faster per output pixel than Pillow on a CPU with AVX2; other filters resample only
   the crop, in one Pillow ``Image.resize(..., box=...)`` whose box is the crop's region in the
   (draft) image (the same filter, scale and pixel centres as resize-then-crop). Without a draft
   decode the result is the processor's resized-and-cropped pixels up to that rounding; an image
   stored at the resized size is cropped, not resampled. The images of a batch that torch resamples
   whole from one stored size share one call (:meth:`FastImageTransform.stack`);
3. the pixels stay ``uint8`` (a quarter of float32's bytes to copy between processes and to the
   device) and :meth:`FastImageTransform.normalize` rescales and normalises them on the model's
   device (:class:`~hf_counterfactual.trainer.CounterfactualTrainer` in ``compute_loss``,
   :class:`~hf_counterfactual.scoring.DualEncoderScorer` before the forward).

Every parameter (``size``, ``crop_size``, ``resample``, ``image_mean``, ``image_std``, ``do_rescale`` /
``rescale_factor``, ``do_normalize``, ``do_center_crop``, ``do_convert_rgb``) is read from the
processor. A processor whose pipeline is not the standard resize / crop / rescale / normalise one, or
a setting this path does not reproduce (padding, ``size`` with ``longest_edge``, a crop larger than
the resized image, ...), gets the exact processor path, with the reason logged
(:func:`fast_image_transform`).

Agreement with the processor: up to rounding without a draft decode (decoded images, PNGs); with
one, measured mean absolute difference ~0.025 and 99th percentile ~0.14 in normalised units on
640x480 JPEGs at ViT-B/32's 224 px (the 1/2-scale DCT decode is a slightly different low-pass than
bicubic downsampling); tests hold JPEGs of several sizes and aspect ratios to mean <= 0.04,
p99 <= 0.3 (``tests/test_image_processing.py``).

``image_path="exact"`` (:data:`IMAGE_PATHS`, on :class:`~hf_counterfactual.collator.CounterfactualCollator`,
:class:`~hf_counterfactual.training_args.CounterfactualTrainingArguments` and
:class:`~hf_counterfactual.scoring.DualEncoderScorer`) returns the processor's own float tensors.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pyarrow
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

__all__ = ["IMAGE_PATHS", "FastImageTransform", "fast_image_transform", "normalize_pixel_values", "resolve_image_transform"]

logger = logging.getLogger(__name__)

IMAGE_PATHS = ("fast", "exact")
_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_PIL_FILTERS = {int(f) for f in (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC,
                                 Image.Resampling.LANCZOS, Image.Resampling.BOX, Image.Resampling.HAMMING)}  # fmt: skip
# Pillow filters that torch's antialiased interpolation computes (on uint8, in fixed point, as Pillow does).
_TORCH_FILTERS = {int(Image.Resampling.BILINEAR): "bilinear", int(Image.Resampling.BICUBIC): "bicubic"}
# Input bytes per batched F.interpolate call (FastImageTransform.stack): about a core's L2 cache. 32
# 64-px images in one call took 11 us each against 31 alone, but 32 640x480 ones 1,141 us against 465.
_RESAMPLE_BYTES = 2**20


def _is_pixel_crop(box: tuple[float, float, float, float], width: int, height: int) -> bool:
    """Whether ``box`` is ``width`` x ``height`` whole pixels (no resampling needed)."""
    left, top, right, bottom = box
    whole = all(abs(coordinate - round(coordinate)) < 1e-6 for coordinate in box)
    return whole and round(right - left) == width and round(bottom - top) == height


def is_local_path(path) -> bool:
    """Whether ``path`` (a stored image's ``path``) names a local file: not a URL or a chained
    ``fsspec`` path, which only ``datasets``' own reader opens."""
    return isinstance(path, str) and "://" not in path and "::" not in path


def _as_dict(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        items = dict(value)
    elif hasattr(value, "__dict__"):  # transformers' SizeDict
        items = dict(vars(value))
    else:
        return None
    return {k: v for k, v in items.items() if v is not None}


def _resample(value) -> int | None:
    """The PIL filter of a processor's ``resample`` (a PIL enum or int, or a torchvision InterpolationMode)."""
    if value is None:
        return int(Image.Resampling.BILINEAR)  # the PIL backend's default
    if isinstance(value, (int, np.integer)) and int(value) in _PIL_FILTERS:
        return int(value)
    name = getattr(value, "name", None) or getattr(value, "value", None)
    if isinstance(name, str) and name.upper() in Image.Resampling.__members__:
        return int(Image.Resampling[name.upper()])
    return None


def _three(values, name: str) -> tuple[float, float, float]:
    values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise _Unsupported(f"{name} has {len(values)} values, not 3 (RGB)")
    return tuple(values)  # type: ignore[return-value]


class _Unsupported(Exception):
    pass


class DecodedImage(NamedTuple):
    """An image as :meth:`FastImageTransform.decode` gives it, ready to resize."""

    image: Image.Image  # RGB, upright
    full_size: tuple[int, int] | None  # (height, width) of the whole upright image; None: the image's own
    scale: float  # the draft decode's scale (1, 1/2, 1/4 or 1/8)


@dataclass(frozen=True)
class FastImageTransform:
    """Resize + crop to ``uint8`` ``[3, H, W]`` and normalisation, as an image processor configures them.

    Build it with :func:`fast_image_transform` (from a processor) rather than by hand.

    Args:
        shortest_edge: resize so that the shorter side is this long (CLIP), or ``None``;
        size: ``(height, width)`` to resize to when ``shortest_edge`` is ``None`` (SigLIP);
        crop_size: ``(height, width)`` of the centre crop after resizing, or ``None``;
        resample: the PIL filter;
        rescale_factor, mean, std: ``(x * rescale_factor - mean) / std`` per channel;
        draft: decode undecoded JPEGs at a reduced scale when that still holds the output's resolution;
        torch_resize: resample bicubic and bilinear with torch's ``uint8`` kernel (:meth:`to_uint8`);
            ``False``: with Pillow, as other filters are.
    """

    shortest_edge: int | None
    size: tuple[int, int] | None
    crop_size: tuple[int, int] | None
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    draft: bool = True
    torch_resize: bool = True

    # ------------------------------------------------------------------ geometry

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of the whole image after the processor's resize (as
        ``transformers.image_transforms.get_resize_output_image_size``)."""
        if self.shortest_edge is None:
            return self.size  # type: ignore[return-value]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def output_size(self) -> tuple[int, int]:
        """``(height, width)`` of every output image."""
        return self.crop_size if self.crop_size is not None else self.size  # type: ignore[return-value]

    def box(self, height: int, width: int) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        """The crop's region in an image of ``height`` x ``width`` (PIL box: left, top, right, bottom)
        and the resized image's size, as resize-then-``center_crop`` would cut it."""
        new_h, new_w = self.resized_size(height, width)
        if self.crop_size is None:
            return (0.0, 0.0, float(width), float(height)), (new_h, new_w)
        crop_h, crop_w = self.crop_size
        top, left = self.crop_offset(new_h, new_w)
        sy, sx = height / new_h, width / new_w
        return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy), (new_h, new_w)

    # ------------------------------------------------------------------ decoding

    def open(self, value: Any) -> Image.Image:
        """An RGB image from a PIL image, a ``{"bytes", "path"}`` dict or a local path; undecoded JPEGs
        are decoded in draft mode at the smallest scale that holds the resized image (:meth:`decode`)."""
        return self.decode(value).image

    def decode(self, value: Any) -> DecodedImage:
        """A PIL image, a ``{"bytes", "path"}`` dict or a local path as RGB, with the geometry of its
        decode: undecoded JPEGs are decoded in draft mode at the smallest scale that holds the resized
        image. EXIF orientation is applied, as ``datasets.Image`` does. Raises what PIL raises for
        unreadable data."""
        from .collator import to_rgb

        if isinstance(value, Image.Image):
            return DecodedImage(to_rgb(value), None, 1.0)
        if isinstance(value, Mapping):
            data, path = value.get("bytes"), value.get("path")
            if data is not None:
                image = Image.open(io.BytesIO(data))
            elif is_local_path(path):
                image = Image.open(path)
            else:  # a remote path: datasets' own reader
                from .collator import _DATASETS_IMAGE

                return DecodedImage(to_rgb(_DATASETS_IMAGE.decode_example({"bytes": None, "path": path})), None, 1.0)
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        else:
            raise TypeError(f"expected an image, got {type(value).__name__}")
        orientation = image.getexif().get(_ORIENTATION)
        width, height = image.size
        if orientation in _ROTATED:
            height, width = width, height  # the upright image is transposed
        scale = 1.0
        if self.draft and image.format == "JPEG":
            new_h, new_w = self.resized_size(height, width)
            drafted = image.draft(None, (new_h, new_w) if orientation in _ROTATED else (new_w, new_h))
            if drafted is not None:  # (mode, box): box is the full image in the reduced image's pixels
                stored_w = height if orientation in _ROTATED else width
                scale = drafted[1][2] / stored_w
        image.load()
        if orientation is not None:
            image = ImageOps.exif_transpose(image)
        return DecodedImage(to_rgb(image), (height, width), scale)

    # ------------------------------------------------------------------ pixels

    def crop_offset(self, new_h: int, new_w: int) -> tuple[int, int]:
        """``(top, left)`` of the centre crop in the resized ``new_h`` x ``new_w`` image (as ``center_crop``)."""
        if self.crop_size is None:
            return 0, 0
        return (new_h - self.crop_size[0]) // 2, (new_w - self.crop_size[1]) // 2

    def to_uint8(self, image: Image.Image, full_size: tuple[int, int] | None = None, scale: float = 1.0) -> torch.Tensor:
        """``uint8`` ``[3, H, W]`` of one image (possibly a view of channels-last memory, as
        ``np.array(image)`` permuted). ``full_size`` and ``scale``: the geometry of a draft decode
        (:meth:`decode`); by default the image's own.

        Bicubic and bilinear (CLIP's and SigLIP's filters) resample the whole (draft) image to the
        processor's resized size with torch's antialiased ``uint8`` kernel, which computes Pillow's
        filter (same support, ``a = -0.5``, fixed-point rounding within a uint8 level or two) about 2.5x
        faster per output pixel than Pillow on a vectorising CPU, then crop; other filters resample
        the crop region only, in one Pillow ``resize(box=...)``. An image already at the resized size
        is cropped without resampling."""
        from .collator import to_rgb

        image = to_rgb(image)
        height, width = full_size if full_size is not None else (image.size[1], image.size[0])
        out_h, out_w = self.output_size()
        mode = self._torch_mode()
        if mode is not None:
            pixels = self._torch_resize(image, height, width, scale, mode)
            if pixels is not None:
                return pixels
        box, _ = self.box(height, width)
        if scale != 1.0:
            box = tuple(coordinate * scale for coordinate in box)
        if _is_pixel_crop(box, out_w, out_h):
            # Stored at the model's size already: a resample at scale 1 on whole pixels is the crop itself.
            resized = image.crop(tuple(round(coordinate) for coordinate in box))
        else:
            resized = image.resize((out_w, out_h), resample=self.resample, box=box)
        return torch.from_numpy(np.array(resized)).permute(2, 0, 1)

    def _torch_mode(self) -> str | None:
        """``F.interpolate``'s mode for the processor's filter, ``None``: Pillow resamples."""
        return _TORCH_FILTERS.get(self.resample) if self.torch_resize else None

    def _geometry(self, image: Image.Image, height: int, width: int, scale: float) -> tuple[tuple[int, int], bool]:
        """The processor's resized size of the ``height`` x ``width`` image, and whether ``image`` (its
        decode at ``scale``) holds exactly that whole image (not a draft decode with a partial block)."""
        region_h, region_w = height * scale, width * scale  # the whole image in the (draft) image's pixels
        return self.resized_size(height, width), abs(region_h - image.height) < 1e-6 and abs(region_w - image.width) < 1e-6

    def _crop(self, resized: torch.Tensor) -> torch.Tensor:
        """The centre crop ``[3, H, W]`` of a resized ``[C, h, w]`` (``C`` = 3, or 4 with Pillow's padding byte)."""
        top, left = self.crop_offset(resized.shape[-2], resized.shape[-1])
        out_h, out_w = self.output_size()
        return resized[:3, top : top + out_h, left : left + out_w]

    def _torch_resize(self, image: Image.Image, height: int, width: int, scale: float, mode: str) -> torch.Tensor | None:
        """The crop of ``image`` (RGB, ``scale`` times the ``height`` x ``width`` image) resized as the
        processor resizes, by ``F.interpolate(antialias=True)`` on ``uint8``; ``None`` where it cannot,
        or need not (no resampling)."""
        (new_h, new_w), whole = self._geometry(image, height, width, scale)
        if whole and (image.height, image.width) == (new_h, new_w):
            # Stored at the resized size: Pillow's crop, whose HWC copy is 4x cheaper than torch's
            # strided copy out of the 4-byte pixels.
            return None
        if whole:
            # Channels-last memory (torch's vectorised uint8 layout), RGB plus Pillow's padding byte: the
            # kernel resamples 4 channels as fast as 3, and the 4th is dropped from the small output.
            return self._crop(F.interpolate(image_pixels(image), size=(new_h, new_w), mode=mode, antialias=True)[0])
        # A draft decode of a size the DCT scale does not divide: its last row or column holds a
        # partial block. Map coordinates with the true scale (as resize(box=...) would), not the
        # decoded size, and resample a little past the resized image.
        factors = (new_h / (height * scale), new_w / (width * scale))
        if any(math.floor(n * f) < m for n, f, m in zip((image.height, image.width), factors, (new_h, new_w))):
            return None
        pixels = F.interpolate(image_pixels(image), scale_factor=factors, mode=mode, antialias=True, recompute_scale_factor=False)
        return self._crop(pixels[0, :, :new_h, :new_w])

    def stack(self, decoded: Sequence[DecodedImage]) -> torch.Tensor:
        """``uint8`` ``[N, 3, H, W]`` of images from :meth:`decode`, each as :meth:`to_uint8` gives it.
        Those that torch resamples whole from one stored size (a dataset's images usually share it)
        are resampled together, in calls of up to ~1 MiB of input: a call's fixed cost is most of a
        small image's resize (64 x 64 scenes to 32 px: ~30 us an image one at a time, ~10 in a call
        of 32), while larger calls of large images run out of cache."""
        out: list[torch.Tensor | None] = [None] * len(decoded)
        mode, groups = self._torch_mode(), {}
        for k, (image, full_size, scale) in enumerate(decoded):
            height, width = full_size if full_size is not None else (image.height, image.width)
            size, whole = self._geometry(image, height, width, scale)
            if mode is not None and whole and (image.height, image.width) != size and image.mode == "RGB":
                pixels = image_pixels(image)
                groups.setdefault((tuple(pixels.shape), size), []).append((k, pixels))
            else:
                out[k] = self.to_uint8(image, full_size, scale)
        for (_, size), members in groups.items():
            per_call = max(1, _RESAMPLE_BYTES // members[0][1].numel())
            for start in range(0, len(members), per_call):
                chunk = members[start : start + per_call]
                pixels = chunk[0][1] if len(chunk) == 1 else torch.cat([pixels for _, pixels in chunk])
                resized = F.interpolate(pixels, size=size, mode=mode, antialias=True)
                for row, (k, _) in enumerate(chunk):
                    out[k] = self._crop(resized[row])
        if not out:
            return torch.empty((0, 3, *self.output_size()), dtype=torch.uint8)
        return torch.stack(out)

    def load(self, value: Any) -> torch.Tensor:
        """``uint8`` ``[3, H, W]`` of a PIL image, an undecoded ``{"bytes", "path"}`` dict or a path."""
        return self.to_uint8(*self.decode(value))

    def __call__(self, images: Sequence[Any]) -> torch.Tensor:
        """``uint8`` ``[N, 3, H, W]`` of ``images`` (PIL images, undecoded dicts or paths)."""
        return self.stack([self.decode(image) for image in images])

    def normalize(self, pixel_values: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(x * rescale_factor - mean) / std`` of ``uint8`` ``[N, 3, H, W]`` on their own device, in
        float32 (the processor's dtype), then cast to ``dtype``."""
        return normalize_pixel_values(pixel_values, self.rescale_factor, self.mean, self.std).to(dtype)


def image_pixels(image: Image.Image) -> torch.Tensor:
    """``uint8`` ``[1, C, H, W]`` (channels-last strides) of an RGB image: Pillow's own memory, 4 bytes a
    pixel (RGB and a padding byte, ``C`` = 4), exported without a copy through the Arrow C data interface
    (Pillow >= 11.2, an image in one memory block) and read-only; otherwise ``np.array``'s copy
    (``C`` = 3). The copy packs 4 bytes into 3, about 0.1-0.2 ms for a 341x256 image: a tenth of the
    fast path's time there."""
    try:
        exported = pyarrow.array(image)  # fixed_size_list<uint8>[4]; raises for images in several blocks
        memory = exported.values.to_numpy(zero_copy_only=True)
    except (TypeError, ValueError, AttributeError):  # ArrowInvalid is a ValueError
        memory = None
    channels = None if memory is None or memory.dtype != np.uint8 else memory.size // max(image.height * image.width, 1)
    if channels not in (3, 4) or memory.size != channels * image.height * image.width:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    # Read-only memory: nothing writes to it (the fast path resamples it into new memory).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's warning about a non-writable array
        pixels = torch.from_numpy(memory)
    return pixels.view(1, image.height, image.width, channels).permute(0, 3, 1, 2)


def normalize_pixel_values(pixel_values: torch.Tensor, rescale_factor: float, mean, std) -> torch.Tensor:
    """``(pixel_values * rescale_factor - mean) / std`` in float32 on ``pixel_values``' device (per channel, dimension -3)."""
    # Two fused passes over a fresh float32 copy: x * (rescale / std) + (-mean / std).
    scale, shift = _affine(rescale_factor, tuple(mean), tuple(std), pixel_values.device)
    return pixel_values.to(torch.float32, copy=True).mul_(scale).add_(shift)


@functools.lru_cache(maxsize=16)
def _affine(rescale_factor: float, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`normalize_pixel_values`' per-channel scale and shift ``[C, 1, 1]`` (made once per device:
    read, never written). Normal tensors even when first asked for under ``torch.inference_mode``,
    so that a training step can use them later."""
    with torch.inference_mode(False):
        scale = torch.tensor([rescale_factor / s for s in std], dtype=torch.float32, device=device).view(-1, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=device).view(-1, 1, 1)
    return scale, shift


def _standard_pipeline(image_processor) -> bool:
    """Whether the processor runs transformers' standard resize / crop / rescale / normalise ``_preprocess``."""
    try:
        from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    except ImportError:  # transformers < 5
        return False
    method = getattr(type(image_processor), "_preprocess", None)
    return method is PilBackend._preprocess or method is TorchvisionBackend._preprocess


def _transform_of(ip) -> FastImageTransform:
    if not _standard_pipeline(ip):
        raise _Unsupported(f"{type(ip).__name__} does not run transformers' standard resize/crop/normalise pipeline")
    if getattr(ip, "do_pad", False):
        raise _Unsupported("do_pad=True")
    if not getattr(ip, "do_resize", True):
        raise _Unsupported("do_resize=False (images of any size)")
    if getattr(ip, "do_convert_rgb", True) is False:
        raise _Unsupported("do_convert_rgb=False")
    size = _as_dict(getattr(ip, "size", None)) or {}
    shortest_edge, fixed = None, None
    if set(size) == {"shortest_edge"}:
        shortest_edge = int(size["shortest_edge"])
    elif set(size) == {"height", "width"}:
        fixed = (int(size["height"]), int(size["width"]))
    else:
        raise _Unsupported(f"size={size} (supported: shortest_edge alone, or height and width)")
    resample = _resample(getattr(ip, "resample", None))
    if resample is None:
        raise _Unsupported(f"resample={getattr(ip, 'resample', None)!r}")
    crop = None
    if getattr(ip, "do_center_crop", False):
        crop_size = _as_dict(getattr(ip, "crop_size", None)) or {}
        if set(crop_size) != {"height", "width"}:
            raise _Unsupported(f"crop_size={crop_size}")
        crop = (int(crop_size["height"]), int(crop_size["width"]))
        smallest = (shortest_edge, shortest_edge) if shortest_edge is not None else fixed
        if crop[0] > smallest[0] or crop[1] > smallest[1]:
            raise _Unsupported(f"crop_size {crop} larger than the resized image (the processor pads)")
    rescale = float(getattr(ip, "rescale_factor", 1 / 255)) if getattr(ip, "do_rescale", True) else 1.0
    if getattr(ip, "do_normalize", True):
        mean, std = _three(getattr(ip, "image_mean"), "image_mean"), _three(getattr(ip, "image_std"), "image_std")
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return FastImageTransform(shortest_edge, fixed, crop, resample, rescale, mean, std)


def fast_image_transform(image_processor, log: bool = True) -> FastImageTransform | None:
    """The :class:`FastImageTransform` equal to ``image_processor``, or ``None`` (with the reason logged
    as a warning) when it runs something the fast path does not reproduce."""
    try:
        return _transform_of(image_processor)
    except _Unsupported as why:
        if log:
            logger.warning("image_path='fast' is not available for this image processor (%s): using the processor itself", why)
        return None


def resolve_image_transform(image_processor, image_path: str) -> FastImageTransform | None:
    """The fast transform for ``image_path="fast"`` when the processor allows it; ``None`` means the
    exact processor path (``image_path="exact"``, or a fallback)."""
    if image_path not in IMAGE_PATHS:
        raise ValueError(f"image_path must be one of {IMAGE_PATHS}, got {image_path!r}")
    return fast_image_transform(image_processor) if image_path == "fast" else None


#: JPEG quality of images stored pre-resized (:func:`resize_for_storage`): 90, as FFCV stores its
#: training images. Decoding a 341x256 JPEG at 90 takes ~20% less time than at 95 (the entropy
#: decoder reads a third fewer bits), for ~0.4 uint8 levels more error after the processor.
STORAGE_JPEG_QUALITY = 90


def resize_for_storage(image: Image.Image, short_side: int, quality: int = STORAGE_JPEG_QUALITY) -> dict:
    """``image`` with its short side scaled to ``short_side`` (never enlarged; bicubic, as CLIP's and
    SigLIP's processors resample), as undecoded JPEG bytes (``{"bytes", "path": None}``, JPEG
    ``quality``), what a ``datasets.Image`` column stores as it is. Stored at the model's own short
    side, the fast path then crops without resampling: 700-1,000 images/s per core against 300-370
    for full-size 640x480 JPEGs (``benchmarks/bench_data.py``)."""
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    from .collator import to_rgb

    image = to_rgb(image)
    scale = short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return {"bytes": buffer.getvalue(), "path": None}
