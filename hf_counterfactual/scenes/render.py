"""Pillow rendering of scenes in a :class:`~hf_counterfactual.scenes.styles.RenderStyle`.

The default style (``PLAIN``: grey canvas, exact fills, no anti-aliasing) is pixel-exact and
mirror-symmetric: the rendering of :func:`~hf_counterfactual.scenes.edits.mirror_left_right` of a
scene equals the left/right flip of the scene's rendering, pixel for pixel. Bounding boxes are
computed by flooring the left edge and ceiling the right one (so a mirrored box is the mirrored pixel
span), circles and squares are drawn by Pillow (symmetric within their box), and triangles are
filled row by row with equal margins on both sides because ``ImageDraw.polygon`` is not
mirror-symmetric.

Other styles draw every object as a mask (the same shapes) composited over a patterned canvas, with
optional outline, shading and shadow, then blur and noise. Jitter and noise come from the style's
seed, so a record's factual and counterfactual scenes (which share a style) differ only where the
edit changed the scene.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .model import CANVAS_UNITS, COLOURS, RADIUS, Scene, SceneObject
from .styles import PLAIN, RenderStyle

Box = tuple[int, int, int, int]


def pixel_box(obj: SceneObject, image_size: int, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> Box:
    """Pixel bounding box ``(left, top, right, bottom)`` of ``obj``, right and bottom exclusive.

    ``scale`` multiplies the half-size and ``offset`` shifts the centre (canvas units). The
    arithmetic is exact for the default style: integers times ``image_size / 64`` are exact floats.
    """
    radius = RADIUS[obj.size] * scale
    x, y = obj.x + offset[0], obj.y + offset[1]
    unit = image_size / CANVAS_UNITS
    return (
        math.floor((x - radius) * unit),
        math.floor((y - radius) * unit),
        math.ceil((x + radius) * unit),
        math.ceil((y + radius) * unit),
    )


def _fill_triangle(draw: ImageDraw.ImageDraw, box: Box, fill) -> None:
    # An upward isosceles triangle, sampled at pixel-row centres; the same margin on both sides of
    # every row keeps it exactly symmetric.
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    for row in range(height):
        margin = width * (2 * (height - row) - 1) // (4 * height)
        draw.rectangle((left + margin, top + row, right - 1 - margin, top + row), fill=fill)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    elif shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    elif shape == "triangle":
        _fill_triangle(draw, box, fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}")


@functools.lru_cache(maxsize=64)  # a record's scenes share their style: draw its canvas once
def _background(style: RenderStyle, image_size: int) -> Image.Image:
    if style.pattern == "plain":
        return Image.new("RGB", (image_size, image_size), style.background)
    unit = image_size / CANVAS_UNITS
    ys, xs = np.mgrid[0:image_size, 0:image_size] / unit  # canvas units at pixel corners
    if style.pattern == "gradient":
        weight = (ys / CANVAS_UNITS)[..., None]
    else:
        period = style.pattern_period
        phase = {
            "vertical": xs // (period / 2),
            "horizontal": ys // (period / 2),
            "diagonal": (xs + ys) // (period / 2),
            "checks": xs // (period / 2) + ys // (period / 2),
        }[style.pattern]
        weight = (phase % 2)[..., None]
    first, second = np.array(style.background, float), np.array(style.pattern_colour, float)
    return Image.fromarray(np.rint(first + weight * (second - first)).astype(np.uint8), "RGB")


def object_boxes(scene: Scene, image_size: int, style: RenderStyle = PLAIN) -> list[Box]:
    """The pixel box of each object of ``scene`` as ``style`` draws it (scaled and jittered).

    Jitter is one shift per grid cell from the style's seed: an object keeps its shift across the
    record's edits (recolouring, reshaping), and stays inside the box its full size would take.
    """
    rng = random.Random(style.seed)
    shifts = {cell: (rng.uniform(-1, 1), rng.uniform(-1, 1)) for cell in ((0, 0), (1, 0), (0, 1), (1, 1))}
    boxes = []
    for obj in scene.objects:
        room = style.jitter * RADIUS[obj.size] * (1.0 - style.scale)  # shrinking frees this much on each side
        dx, dy = shifts[obj.cell]
        boxes.append(pixel_box(obj, image_size, style.scale, (dx * room, dy * room)))
    return boxes


def _shaded_fill(colour: tuple[int, int, int], box: Box, style: RenderStyle, image_size: int) -> Image.Image:
    # Brightness runs from shading[0] on the object's top row to shading[1] on its bottom row.
    top, bottom = style.shading
    t = np.clip((np.arange(image_size) - box[1]) / max(box[3] - box[1] - 1, 1), 0.0, 1.0)
    rows = np.clip(np.outer(top + t * (bottom - top), colour), 0, 255)  # [H, 3]
    return Image.fromarray(np.rint(np.broadcast_to(rows[:, None], (image_size, image_size, 3))).astype(np.uint8), "RGB")


def render_scene(scene: Scene, image_size: int = 64, style: RenderStyle = PLAIN) -> Image.Image:
    """Draws ``scene`` on a square canvas of ``image_size`` pixels in ``style``; returns an RGB image."""
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    image = _background(style, image_size).copy()
    unit = image_size / CANVAS_UNITS
    for obj, box in zip(scene.objects, object_boxes(scene, image_size, style)):
        mask = Image.new("L", (image_size, image_size), 0)
        _draw_shape(ImageDraw.Draw(mask), obj.shape, box, 255)
        if style.shadow:
            shift, shadow = round(style.shadow * unit), Image.new("L", image.size, 0)
            shadow.paste(mask, (shift, shift))  # down and to the right, cropped at the border
            shadow = shadow.filter(ImageFilter.GaussianBlur(max(shift / 2, 0.5)))
            image.paste((0, 0, 0), mask=shadow.point(lambda v: v * 3 // 5))
        colour = COLOURS[obj.colour]
        image.paste(_shaded_fill(colour, box, style, image_size) if style.shading != (1.0, 1.0) else colour, mask=mask)
        if style.outline_width:
            width = max(1, round(style.outline_width * unit))
            inner = mask.filter(ImageFilter.MinFilter(2 * width + 1))
            image.paste(style.outline, mask=ImageChops.subtract(mask, inner))
    if style.blur:
        image = image.filter(ImageFilter.GaussianBlur(style.blur * unit))
    if style.noise:
        noisy = np.asarray(image, np.float32) + _noise(style, image_size)
        image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    return image


@functools.lru_cache(maxsize=64)
def _noise(style: RenderStyle, image_size: int) -> np.ndarray:
    noise = np.random.default_rng(style.seed).normal(0.0, style.noise, (image_size, image_size, 3)).astype(np.float32)
    noise.flags.writeable = False  # shared by the record's scenes
    return noise
