"""Figures drawn with Pillow only: a preview grid of counterfactual records and a before/after bar chart.

Every function here is pure (records and scores in, a ``PIL.Image`` out) except :func:`save_figure`,
which writes a PNG atomically. Nothing here needs matplotlib.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .collator import load_image

#: Fill of the "before" and "after" bars of :func:`group_score_chart` (tests find the bars by them).
BEFORE_COLOR = (150, 150, 158)
AFTER_COLOR = (45, 110, 200)
#: Fill of the thumbnail of a text-only counterfactual in :func:`preview_grid`.
PLACEHOLDER_COLOR = (224, 224, 224)
GRID_COLOR = (226, 226, 226)
#: Height in pixels of the 0..100 span of :func:`group_score_chart`'s y-axis.
PLOT_H = 300
PAD, HEADER_H, LINE_H, CAPTION_LINES = 8, 18, 15, 3
_WHITE, _TEXT, _MUTED, _NEGATIVE = (255, 255, 255), (20, 20, 20), (100, 100, 100), (165, 40, 40)


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """``text`` wrapped to lines of at most ``width`` pixels; past ``max_lines`` cut with an ellipsis."""
    text = " ".join(str(text).split())
    chars = max(1, int(width * 26 / font.getlength("abcdefghijklmnopqrstuvwxyz")))
    while True:
        lines = textwrap.wrap(text, chars) or [""]
        if chars == 1 or all(font.getlength(line) <= width for line in lines):
            break
        chars -= 1
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + "…"]
    return lines


def cell_size(thumb_size: int = 160) -> tuple[int, int]:
    """(width, height) in pixels of one cell of :func:`preview_grid`: header, thumbnail, caption lines."""
    return thumb_size + 2 * PAD, PAD + HEADER_H + thumb_size + 4 + CAPTION_LINES * LINE_H + PAD


def thumb_box(row: int, col: int, thumb_size: int = 160) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the thumbnail of cell (``row``, ``col``) of :func:`preview_grid`."""
    width, height = cell_size(thumb_size)
    left, top = col * width + PAD, row * height + PAD + HEADER_H
    return left, top, left + thumb_size, top + thumb_size


def _draw_cell(canvas: Image.Image, row: int, col: int, thumb_size: int, image: Image.Image | None,
               header: str, caption: str, header_color: tuple[int, int, int]) -> None:
    draw, small, font = ImageDraw.Draw(canvas), _font(11), _font(12)
    left, top, right, bottom = thumb_box(row, col, thumb_size)
    draw.text((left, top - HEADER_H + 2), _wrap(header, small, thumb_size, 1)[0], fill=header_color, font=small)
    if image is None:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=PLACEHOLDER_COLOR)
        draw.text(((left + right) / 2, (top + bottom) / 2), "text only", fill=_MUTED, font=font, anchor="mm")
    else:
        thumb = ImageOps.contain(image, (thumb_size, thumb_size))
        canvas.paste(thumb, (left + (thumb_size - thumb.width) // 2, top + (thumb_size - thumb.height) // 2))
    for i, line in enumerate(_wrap(caption, font, thumb_size, CAPTION_LINES)):
        draw.text((left, bottom + 4 + i * LINE_H), line, fill=_TEXT, font=font)


def preview_grid(records: Iterable[Mapping[str, Any]], num_records: int = 8, thumb_size: int = 160,
                 max_counterfactuals: int = 4) -> Image.Image:
    """A grid of the first ``num_records`` records, one row each: the image with its caption, then one
    cell per counterfactual (up to ``max_counterfactuals``), headed "edit · source", showing the edited
    image or a grey "text only" placeholder, with the edited caption under it.

    The grid has ``1 + min(max_counterfactuals, most counterfactuals in a shown record)`` columns of
    :func:`cell_size` cells. Raises ``ValueError`` naming the row and field of a malformed record.
    """
    if num_records < 1 or max_counterfactuals < 0 or thumb_size < 16:
        raise ValueError("num_records must be >= 1, max_counterfactuals >= 0 and thumb_size >= 16")
    rows = []
    for i, record in enumerate(itertools.islice(records, num_records)):
        if not isinstance(record, Mapping):
            raise ValueError(f"row {i}: expected a record (a mapping), got {type(record).__name__}")
        for field in ("image", "caption", "counterfactuals"):
            if record.get(field) is None:
                raise ValueError(f"row {i}, field {field!r}: missing")
        cells = [(load_image(record["image"], f"row {i}, field 'image'"), "original", record["caption"], _MUTED)]
        for j, cf in enumerate(list(record["counterfactuals"])[:max_counterfactuals]):
            if not isinstance(cf, Mapping) or cf.get("caption") is None:
                raise ValueError(f"row {i}, field 'counterfactuals[{j}].caption': missing")
            image = cf.get("image")
            image = None if image is None else load_image(image, f"row {i}, field 'counterfactuals[{j}].image'")
            header = f"{cf.get('edit') or '?'} · {cf.get('source') or '?'}"
            cells.append((image, header, cf["caption"], _NEGATIVE))
        rows.append(cells)
    if not rows:
        raise ValueError("preview_grid: no records")
    width, height = cell_size(thumb_size)
    columns = max(len(cells) for cells in rows)
    canvas = Image.new("RGB", (columns * width, len(rows) * height), _WHITE)
    draw = ImageDraw.Draw(canvas)
    for r, cells in enumerate(rows):
        for c, (image, header, caption, color) in enumerate(cells):
            _draw_cell(canvas, r, c, thumb_size, image, header, caption, color)
        if r:
            draw.line((0, r * height, canvas.width, r * height), fill=GRID_COLOR)
    if columns > 1:  # sets the factual column apart from the counterfactuals
        draw.line((width - 1, 0, width - 1, canvas.height), fill=GRID_COLOR)
    return canvas


def _percent(side: str, scores: Mapping[str, Any], key: str) -> float | None:
    value = scores.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{side}[{key!r}] = {value!r}: expected a number") from None
    if math.isnan(number):
        return None
    if not 0.0 <= number <= 100.0:
        raise ValueError(f"{side}[{key!r}] = {value!r}: expected a percentage in [0, 100]")
    return number


def group_score_chart(before: Mapping[str, float], after: Mapping[str, float],
                      title: str = "group score per edit kind", metric_label: str = "group score (%)") -> Image.Image:
    """A grouped bar chart of percentages: one group per key (``after``'s order, then keys only in
    ``before``), a grey "before" and a blue "after" bar (:data:`BEFORE_COLOR`, :data:`AFTER_COLOR`)
    each labelled with its value. A missing, None or NaN value draws no bar and is labelled "n/a".
    The y-axis runs 0..100 over ``PLOT_H`` pixels, so bar heights are proportional to the values.
    Raises ``ValueError`` naming the key of a value outside [0, 100], or when there are no keys.
    """
    keys = list(after) + [key for key in before if key not in after]
    if not keys:
        raise ValueError("group_score_chart: no keys in before or after")
    values = [(_percent("before", before, k), _percent("after", after, k)) for k in keys]
    font, small, big = _font(12), _font(11), _font(15)
    bar_w, group_w, left, top = 30, 96, 70, 74
    base = top + PLOT_H
    width = max(left + len(keys) * group_w + 20, 440)
    canvas = Image.new("RGB", (width, base + 44), _WHITE)
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 16), title, fill=_TEXT, font=big, anchor="mm")
    legend_x = width / 2 - 70
    for label, color in (("before", BEFORE_COLOR), ("after", AFTER_COLOR)):
        draw.rectangle((legend_x, 38, legend_x + 11, 49), fill=color)
        draw.text((legend_x + 17, 44), label, fill=_TEXT, font=font, anchor="lm")
        legend_x += 80
    right = left + len(keys) * group_w
    for tick in (0, 25, 50, 75, 100):
        y = base - round(tick / 100 * PLOT_H)
        draw.line((left, y, right, y), fill=_MUTED if tick == 0 else GRID_COLOR)
        draw.text((left - 6, y), str(tick), fill=_MUTED, font=small, anchor="rm")
    axis = Image.new("RGB", (int(font.getlength(metric_label)) + 4, 16), _WHITE)
    ImageDraw.Draw(axis).text((2, 8), metric_label, fill=_MUTED, font=font, anchor="lm")
    axis = axis.rotate(90, expand=True)
    canvas.paste(axis, (6, max(0, top + (PLOT_H - axis.height) // 2)))
    for i, (key, pair) in enumerate(zip(keys, values)):
        x0 = left + i * group_w + (group_w - 2 * bar_w - 2) // 2
        for x, value, color in ((x0, pair[0], BEFORE_COLOR), (x0 + bar_w + 2, pair[1], AFTER_COLOR)):
            height = 0 if value is None else round(value / 100 * PLOT_H)
            if height:
                draw.rectangle((x, base - height, x + bar_w - 1, base - 1), fill=color)
            label = "n/a" if value is None else f"{value:.1f}".removesuffix(".0")
            draw.text((x + bar_w / 2, base - height - 3), label, fill=_MUTED if value is None else _TEXT,
                      font=small, anchor="mb")
        for j, line in enumerate(_wrap(key, font, group_w - 6, 2)):
            draw.text((left + i * group_w + group_w / 2, base + 8 + j * LINE_H), line, fill=_TEXT, font=font, anchor="mt")
    return canvas


def save_figure(image: Image.Image, path: str | os.PathLike) -> Path:
    """Writes ``image`` as a PNG at ``path``, creating its folder, and returns the path.

    The PNG is written to a temporary file in the same folder and moved into place with
    ``os.replace``, so an interrupted run leaves the old file (or none), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, as open() would
    try:
        with os.fdopen(fd, "wb") as file:
            image.save(file, format="PNG")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
