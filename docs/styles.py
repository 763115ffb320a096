"""Writes docs/styles.png: one row per rendering style (the last, shaded, is held out of training);
each pair of columns is a test scene and its first counterfactual.  python docs/styles.py"""

from pathlib import Path

from PIL import Image

from hf_counterfactual.scenes import STYLES, render_record, sample_scene_record

size, gap, pairs = 64, 4, 4
sheet = Image.new("RGB", (2 * pairs * (size + gap), len(STYLES) * (size + gap)), "white")
for row, style in enumerate(STYLES):
    for pair in range(pairs):
        record = render_record(sample_scene_record(pair + pairs * row, "test", styles=(style,)), size)
        for offset, image in enumerate((record["image"], record["counterfactuals"][0]["image"])):
            sheet.paste(image, ((2 * pair + offset) * (size + gap), row * (size + gap)))
sheet.save(Path(__file__).with_name("styles.png"))
