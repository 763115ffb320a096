"""Rendering styles: how a scene is drawn, never what it shows.

A model trained on one rendering can score well by matching exact pixel values (a flat grey canvas,
exact fills), which is not binding: it fails on the same facts drawn another way. So every record
draws a :class:`RenderStyle` (background, outlines, object scale and jitter, blur and noise) and
renders its factual scene and all of its counterfactual scenes with it: an edit still changes only
what its caption says. The caption grammar ignores the style entirely.

Named styles, each a random family of :class:`RenderStyle`:

- ``plain``: the exact style: grey canvas, exact fills, no jitter (pixel-exact tests, mirrors).
- ``flat``: a plain background from :data:`BACKGROUNDS`, exact fills, object scale and jitter.
- ``outlined``: as ``flat``, with a dark or light outline around every object.
- ``textured``: a two-tone background: stripes (three orientations), checks or a gradient.
- ``noisy``: as ``flat``, then Gaussian blur and Gaussian pixel noise.
- ``shaded``: a gradient background, objects shaded from light (top) to dark (bottom) with a drop
  shadow. No other style shades or casts shadows; it is :data:`HELDOUT_STYLE`: never in the train
  split, it measures whether what was learned survives a change of rendering.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .model import BACKGROUND

RGB = tuple[int, int, int]

BACKGROUNDS: tuple[RGB, ...] = (
    (40, 40, 40),
    (90, 90, 90),
    (128, 128, 128),
    (175, 175, 175),
    (225, 225, 225),
    (200, 190, 160),
    (150, 165, 180),
    (120, 105, 95),
)
"""Background colours: greys and muted tones, each far from every object colour."""

OUTLINES: tuple[RGB, ...] = ((15, 15, 15), (245, 245, 245))
PATTERNS: tuple[str, ...] = ("vertical", "horizontal", "diagonal", "checks", "gradient")
STYLES: tuple[str, ...] = ("plain", "flat", "outlined", "textured", "noisy", "shaded")
HELDOUT_STYLE = "shaded"
TRAIN_STYLES: tuple[str, ...] = tuple(name for name in STYLES if name != HELDOUT_STYLE)
"""The styles of the train and test splits; the held-out style is drawn only for its own split."""


@dataclass(frozen=True)
class RenderStyle:
    """Every free parameter of a rendering. Lengths are in canvas units (see ``CANVAS_UNITS``), so a
    style looks the same at any pixel size.

    Attributes:
        name: the style family it was drawn from.
        background, pattern_colour: the canvas colour, and the second colour of ``pattern``.
        pattern: ``"plain"`` or one of :data:`PATTERNS`.
        pattern_period: stripe / check period.
        scale: every object's half-size is multiplied by it (at most 1, so objects stay in their cell).
        jitter: the most an object is shifted inside the room its smaller size leaves, as a fraction.
        outline, outline_width: outline colour and width (width 0: no outline).
        shading: brightness at the top and bottom of each object (1.0, 1.0: exact fills).
        shadow: drop-shadow offset (0: none).
        blur: Gaussian blur radius. noise: standard deviation of per-pixel noise, in grey levels.
        seed: the random stream of jitter and noise, so that a record's scenes share them.
    """

    name: str = "plain"
    background: RGB = BACKGROUND
    pattern: str = "plain"
    pattern_colour: RGB = BACKGROUND
    pattern_period: float = 8.0
    scale: float = 1.0
    jitter: float = 0.0
    outline: RGB = OUTLINES[0]
    outline_width: float = 0.0
    shading: tuple[float, float] = (1.0, 1.0)
    shadow: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in STYLES:
            raise ValueError(f"unknown rendering style {self.name!r}; choose from {STYLES}")
        if self.pattern != "plain" and self.pattern not in PATTERNS:
            raise ValueError(f"unknown background pattern {self.pattern!r}; choose from {('plain', *PATTERNS)}")
        if not 0.5 <= self.scale <= 1.0:
            raise ValueError(f"scale must be in [0.5, 1] (objects must stay in their cell), got {self.scale}")


PLAIN = RenderStyle()
"""The exact style: what :func:`~hf_counterfactual.scenes.render.render_scene` draws by default."""


def _two_backgrounds(rng: random.Random) -> tuple[RGB, RGB]:
    # Two background colours at least two grey steps apart, so a pattern is visible.
    first = rng.randrange(len(BACKGROUNDS))
    far = [i for i in range(len(BACKGROUNDS)) if abs(sum(BACKGROUNDS[i]) - sum(BACKGROUNDS[first])) >= 120]
    return BACKGROUNDS[first], BACKGROUNDS[rng.choice(far)]


def check_styles(names: tuple[str, ...]) -> None:
    """Raises ValueError unless ``names`` is a non-empty collection of :data:`STYLES`."""
    unknown = [name for name in names if name not in STYLES]
    if not names or unknown:
        raise ValueError(f"styles must be a non-empty subset of {STYLES}, got {tuple(names)}")


def sample_style(rng: random.Random, names: tuple[str, ...] = TRAIN_STYLES) -> RenderStyle:
    """A random :class:`RenderStyle` from a family chosen uniformly among ``names``."""
    check_styles(names)
    name = rng.choice(tuple(names))
    seed = rng.getrandbits(32)
    if name == "plain":
        return RenderStyle(seed=seed)
    geometry = dict(scale=rng.uniform(0.75, 1.0), jitter=rng.uniform(0.0, 1.0), seed=seed)
    if name == "flat":
        return RenderStyle(name, background=rng.choice(BACKGROUNDS), **geometry)
    if name == "outlined":
        return RenderStyle(
            name, background=rng.choice(BACKGROUNDS), outline=rng.choice(OUTLINES), outline_width=rng.uniform(0.75, 1.75), **geometry
        )
    if name == "textured":
        background, second = _two_backgrounds(rng)
        pattern = rng.choice(PATTERNS)
        return RenderStyle(name, background=background, pattern=pattern, pattern_colour=second, pattern_period=rng.uniform(4, 12), **geometry)
    if name == "noisy":
        return RenderStyle(name, background=rng.choice(BACKGROUNDS), blur=rng.uniform(0.3, 1.0), noise=rng.uniform(4, 16), **geometry)
    background, second = _two_backgrounds(rng)
    return RenderStyle(
        name,
        background=background,
        pattern="gradient",
        pattern_colour=second,
        shading=(rng.uniform(1.0, 1.15), rng.uniform(0.8, 0.9)),  # mild: dark yellow must not turn orange
        shadow=rng.uniform(1.5, 3.0),
        **geometry,
    )
