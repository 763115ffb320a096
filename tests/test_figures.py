import io
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageFont

from hf_counterfactual import figures
from hf_counterfactual.figures import (
    AFTER_COLOR,
    BEFORE_COLOR,
    PLACEHOLDER_COLOR,
    PLOT_H,
    cell_size,
    group_score_chart,
    preview_grid,
    save_figure,
    thumb_box,
)

RED, BLUE, GREEN = (220, 20, 20), (20, 40, 220), (20, 160, 60)


def solid(color, size=(64, 64)):
    return Image.new("RGB", size, color)


def png_dict(color, size=(64, 64)):
    buffer = io.BytesIO()
    solid(color, size).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def cf(caption, image=None, edit="attribute", source="rule"):
    return {"caption": caption, "image": image, "edit": edit, "source": source, "score": None}


def record(caption="a blue square", image=None, counterfactuals=()):
    return {
        "image": solid(BLUE) if image is None else image,
        "caption": caption,
        "paraphrases": [],
        "counterfactuals": list(counterfactuals),
    }


def region(grid, box):
    return np.asarray(grid)[box[1] : box[3], box[0] : box[2]]


# preview_grid


def test_grid_is_rows_by_columns_of_cells():
    records = [
        record(counterfactuals=[cf("a red square", solid(RED)), cf("a blue circle"), cf("a blue line")]),
        record(counterfactuals=[cf("two blue squares", edit="count")]),
        record(counterfactuals=[cf("no blue square", edit="negation")]),
    ]
    width, height = cell_size(100)
    assert preview_grid(records, thumb_size=100).size == (4 * width, 3 * height)
    # Columns are capped by max_counterfactuals, rows by num_records.
    assert preview_grid(records, num_records=2, thumb_size=100, max_counterfactuals=2).size == (3 * width, 2 * height)
    assert preview_grid(records, thumb_size=100, max_counterfactuals=0).size == (width, 3 * height)
    # Records may come from any iterable (e.g. a streamed dataset): only the first num_records are read.
    assert preview_grid(iter(records * 100), num_records=5, thumb_size=100).size == (4 * width, 5 * height)


def test_cells_show_their_images_or_the_placeholder():
    records = [
        record(counterfactuals=[cf("a red square", solid(RED), source="inpaint"), cf("a blue circle", edit="object")]),
        record(image=png_dict(GREEN), counterfactuals=[cf("a red thing", png_dict(RED, size=(40, 40)))]),
    ]
    grid = preview_grid(records, thumb_size=80)
    assert (region(grid, thumb_box(0, 0, 80)) == BLUE).all()
    assert (region(grid, thumb_box(0, 1, 80)) == RED).all()
    # Text-only: the placeholder grey, but for the "text only" label in its middle.
    placeholder = region(grid, thumb_box(0, 2, 80))
    assert (placeholder == PLACEHOLDER_COLOR).all(axis=-1).mean() > 0.9
    assert not (placeholder == RED).all(axis=-1).any()
    # Undecoded {"bytes", "path"} images are decoded, and small images scaled up to the thumbnail.
    assert (region(grid, thumb_box(1, 0, 80)) == GREEN).all()
    assert (region(grid, thumb_box(1, 1, 80)) == RED).all()
    # Row 1 has fewer counterfactuals: its remaining cell stays blank.
    assert (region(grid, thumb_box(1, 2, 80)) == 255).all()


def test_non_square_image_is_contained_and_centred():
    grid = preview_grid([record(image=solid(RED, size=(200, 100)), counterfactuals=[])], thumb_size=80)
    thumb = region(grid, thumb_box(0, 0, 80))
    red_rows = (thumb == RED).all(axis=(1, 2))
    assert red_rows.sum() == 40 and red_rows[20:60].all()
    assert (thumb[:20] == 255).all() and (thumb[60:] == 255).all()


def test_captions_are_written_under_the_thumbnail_and_stay_in_their_cell():
    long = " ".join(["a very long caption about a red square"] * 10)
    grid = preview_grid([record(caption=long, counterfactuals=[cf(long, solid(RED))])], thumb_size=80)
    pixels = np.asarray(grid)
    width, height = cell_size(80)
    left, _, right, bottom = thumb_box(0, 0, 80)
    assert (pixels[bottom:, left:right] < 128).any()  # text is drawn below the thumbnail
    text = (pixels < 250).any(axis=-1)
    text[:, width - 1] = False  # the line between the factual column and the counterfactuals
    assert not text[height - figures.PAD + 1 :].any()  # text is cut before the cell's bottom margin
    # No text spills into the padding right of a column's thumbnails.
    for col in range(2):
        assert not text[:, col * width + right - left + figures.PAD + 1 : (col + 1) * width].any()


def test_wrap_cuts_with_an_ellipsis():
    font = ImageFont.load_default(size=12)
    lines = figures._wrap("word " * 100, font, 100, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 100 for line in lines)
    assert figures._wrap("short", font, 100, 3) == ["short"]
    assert all(font.getlength(line) <= 50 for line in figures._wrap("x" * 80, font, 50, 10))


@pytest.mark.parametrize(
    "field, break_record",
    [
        ("caption", lambda r: r.pop("caption")),
        ("counterfactuals", lambda r: r.pop("counterfactuals")),
        ("image", lambda r: r.pop("image")),
        ("counterfactuals[0].caption", lambda r: r["counterfactuals"][0].pop("caption")),
    ],
)
def test_malformed_record_names_row_and_field(field, break_record):
    bad = record(counterfactuals=[cf("x")])
    break_record(bad)
    with pytest.raises(ValueError, match=re.escape(f"row 1, field '{field}'")):
        preview_grid([record(), bad])


def test_unreadable_image_and_empty_records_raise():
    with pytest.raises(ValueError, match=r"row 0, field 'counterfactuals\[0\].image'"):
        preview_grid([record(counterfactuals=[cf("x", {"bytes": b"not a png", "path": None})])])
    with pytest.raises(ValueError, match="no records"):
        preview_grid([])
    with pytest.raises(ValueError):
        preview_grid([record()], num_records=0)


# group_score_chart


def bars(chart, color):
    """(left, right, height) of each bar of ``color``, left to right: the columns of that colour
    touching the baseline (the lowest row of either bar colour), grouped into runs."""
    pixels = np.asarray(chart)
    masks = {c: (pixels == c).all(axis=-1) for c in (BEFORE_COLOR, AFTER_COLOR)}
    bottom = max(np.nonzero(m)[0].max() for m in masks.values() if m.any())
    mask = masks[color]
    columns = np.nonzero(mask[bottom])[0]
    found = []
    for run in np.split(columns, np.nonzero(np.diff(columns) > 1)[0] + 1) if len(columns) else []:
        middle = mask[: bottom + 1, run[len(run) // 2]][::-1]
        height = len(middle) if middle.all() else int(np.argmin(middle))
        found.append((int(run[0]), int(run[-1]), height))
    return found


def test_bar_heights_are_proportional_to_the_values():
    chart = group_score_chart({"attribute": 25, "object": 75}, {"attribute": 75, "object": 25})
    before, after = bars(chart, BEFORE_COLOR), bars(chart, AFTER_COLOR)
    assert [h for *_, h in before] == pytest.approx([PLOT_H * 0.25, PLOT_H * 0.75], abs=1)
    assert [h for *_, h in after] == pytest.approx([PLOT_H * 0.75, PLOT_H * 0.25], abs=1)
    assert abs(before[1][2] - 3 * before[0][2]) <= 2
    # Before and after bars of a group are side by side, the before bar on the left.
    for (b_left, b_right, _), (a_left, _, _) in zip(before, after):
        assert b_right < a_left < b_right + 10
    assert before[0][1] < after[0][0] < before[1][0]
    full = bars(group_score_chart({"a": 100}, {"a": 50.5}), BEFORE_COLOR)
    assert full[0][2] == PLOT_H


def test_groups_follow_the_order_of_after():
    chart = group_score_chart({"a": 25, "b": 75, "only_before": 50}, {"b": 10, "a": 90})
    assert [h for *_, h in bars(chart, BEFORE_COLOR)] == pytest.approx([0.75 * PLOT_H, 0.25 * PLOT_H, 0.5 * PLOT_H], abs=1)
    assert [h for *_, h in bars(chart, AFTER_COLOR)] == pytest.approx([0.10 * PLOT_H, 0.90 * PLOT_H], abs=1)


def test_missing_values_draw_no_bar_but_a_label():
    chart = group_score_chart({"a": 40, "c": None}, {"a": 60, "b": 80, "c": float("nan")})
    before, after = bars(chart, BEFORE_COLOR), bars(chart, AFTER_COLOR)
    assert len(before) == 1 and len(after) == 2
    assert before[0][1] < after[0][0] < after[1][0]
    # The before slot of "b" (just left of its after bar) holds the "n/a" label, not a bar.
    pixels = np.asarray(chart)
    bottom = max(np.nonzero((pixels == c).all(axis=-1))[0].max() for c in (BEFORE_COLOR, AFTER_COLOR))
    a_left, a_right, _ = after[1]
    slot = pixels[bottom - 20 : bottom + 1, a_left - (a_right - a_left) - 3 : a_left - 1]
    assert (slot < 160).any() and not (slot == BEFORE_COLOR).all(axis=-1).any()
    # A group where both sides are missing has no bars at all.
    only_nan = group_score_chart({"a": 50, "b": None}, {"a": 50, "b": float("nan")})
    assert len(bars(only_nan, BEFORE_COLOR)) == len(bars(only_nan, AFTER_COLOR)) == 1


@pytest.mark.parametrize("value", [100.5, -1, "lots"])
def test_values_outside_0_100_name_the_key(value):
    with pytest.raises(ValueError, match="'relation'"):
        group_score_chart({"relation": value}, {"relation": 50})
    with pytest.raises(ValueError, match=r"after\['relation'\]"):
        group_score_chart({}, {"object": 3, "relation": value})


def test_chart_without_keys_raises_and_wide_charts_grow():
    with pytest.raises(ValueError):
        group_score_chart({}, {})
    narrow = group_score_chart({}, {"a": 1})
    wide = group_score_chart({}, {f"kind {i}": i for i in range(20)})
    assert wide.height == narrow.height and wide.width > narrow.width
    assert len(bars(wide, AFTER_COLOR)) == 19  # kind 0 is 0%: a zero-height bar


# save_figure


def test_save_figure_writes_the_png_atomically(tmp_path):
    image = preview_grid([record(counterfactuals=[cf("a red square", solid(RED))])], thumb_size=32)
    path = save_figure(image, tmp_path / "new" / "folder" / "grid.png")
    assert path == tmp_path / "new" / "folder" / "grid.png"
    assert os.listdir(path.parent) == ["grid.png"]
    with Image.open(path) as written:
        assert written.format == "PNG"
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(image))
    # Overwriting replaces the file; the string form of the path works too.
    save_figure(solid(RED), str(path))
    with Image.open(path) as written:
        assert written.size == (64, 64)


def test_interrupted_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save_figure(solid(GREEN), tmp_path / "chart.png")
    before = path.read_bytes()

    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_figure(solid(RED), path)
    assert os.listdir(tmp_path) == ["chart.png"]
    assert path.read_bytes() == before
