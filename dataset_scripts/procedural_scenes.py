#!/usr/bin/env python
"""Builds the procedural counterfactual scenes in both configurations and publishes them to the Hub.

``default`` holds counterfactual records (the schema ``hf-cf train`` reads); ``winoground`` the same
scenes as Winoground rows (``hf-cf evaluate --benchmarks winoground --winoground org/procedural-scenes``
with ``--winoground_split test``). Both are written as Parquet in the Hub's layout with a README
``configs:`` block, so the folder and the Hub copy load alike::

    python dataset_scripts/procedural_scenes.py --output_dir procedural-scenes \\
        [--push_to_hub --hub_model_id org/procedural-scenes]
    load_dataset("procedural-scenes", "winoground", split="test")

The scenes are generated (no input data); record ``i`` of a split depends on ``(seed, split, i)`` only.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import yaml

from hf_counterfactual import __version__
from hf_counterfactual.builders import ProceduralScenesConfig, load_procedural_scenes
from hf_counterfactual.commands import UsageError, parse_arguments
from hf_counterfactual.commands.generate import push_dataset_folder

CONFIGS = {
    "default": "Counterfactual records: image, caption, paraphrases, counterfactuals (caption, image, edit, source, score).",
    "winoground": "The same scenes as Winoground rows (image_0, image_1, caption_0, caption_1, tag), one per counterfactual with an image.",
}


@dataclass
class ScriptArguments:
    output_dir: str = field(default="procedural-scenes", metadata={"help": "Where the Parquet files and README.md go."})
    num_train_scenes: int = field(default=ProceduralScenesConfig.num_train, metadata={"help": "Records of the train split."})
    num_test_scenes: int = field(default=ProceduralScenesConfig.num_test, metadata={"help": "Records of the test splits."})
    seed: int = field(default=ProceduralScenesConfig.seed, metadata={"help": "Dataset seed."})
    image_size: int = field(default=ProceduralScenesConfig.image_size, metadata={"help": "Side of the square images, in pixels."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the folder to the Hub dataset repo --hub_model_id."})
    hub_model_id: str | None = field(default=None, metadata={"help": "The dataset repo (e.g. org/procedural-scenes)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the repo private."})


def card(args: ScriptArguments, sizes: dict[str, dict[str, int]]) -> str:
    header = {
        "license": "apache-2.0",
        "tags": ["counterfactual", "compositionality", "synthetic", "hf-counterfactual"],
        "configs": [
            {"config_name": name, "data_files": [{"split": split, "path": f"{name}/{split}-*.parquet"} for split in sizes[name]],
             **({"default": True} if name == "default" else {})}
            for name in CONFIGS
        ],  # fmt: skip
    }
    lines = [
        "# Procedural counterfactual scenes",
        "",
        f"Built by `dataset_scripts/procedural_scenes.py` (hf-counterfactual {__version__}): coloured shapes on a grid, "
        "each record with counterfactuals that change one attribute, object, count, position or relation. The test "
        "scenes hold colour-shape pairs training never shows; `test_heldout_style` draws them in a rendering style "
        "training never shows.",
        "",
        f"Settings: seed {args.seed}, {args.num_train_scenes} train and {args.num_test_scenes} test records, {args.image_size} px images.",
        "",
    ]
    for name, description in CONFIGS.items():
        counts = ", ".join(f"{split} {n}" for split, n in sizes[name].items())
        lines.append(f"- `{name}`: {description} Rows: {counts}.")
    lines += ["", "```python", "from datasets import load_dataset", 'records = load_dataset("<this repo>", "default")', "```", ""]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Writes both configurations under ``--output_dir``; returns ``{config: {split: rows}}``."""
    (args,) = parse_arguments((ScriptArguments,), sys.argv[1:] if argv is None else argv, description=__doc__)
    if args.push_to_hub and not args.hub_model_id:
        raise UsageError("--push_to_hub needs --hub_model_id, the dataset repo (e.g. org/procedural-scenes)")
    # Built beside the output and moved into place at the end: an interrupted build leaves no mix.
    final, sizes = args.output_dir, {}
    build = tempfile.mkdtemp(prefix=".building-", dir=os.path.dirname(os.path.abspath(final)))
    for name in CONFIGS:
        data = load_procedural_scenes(
            name, cache_dir=args.cache_dir, num_train=args.num_train_scenes, num_test=args.num_test_scenes, seed=args.seed, image_size=args.image_size
        )
        os.makedirs(os.path.join(build, name))
        for split, rows in data.items():
            rows.to_parquet(os.path.join(build, name, f"{split}-00000-of-00001.parquet"))
        sizes[name] = {split: rows.num_rows for split, rows in data.items()}
    with open(os.path.join(build, "README.md"), "w") as f:
        f.write(card(args, sizes))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(build, final)
    if args.push_to_hub:
        push_dataset_folder(args.output_dir, args.hub_model_id, args.hub_private_repo)
    print(f"Wrote {sizes} to {args.output_dir}; read it with datasets.load_dataset({args.output_dir!r}, 'default')")
    return sizes


if __name__ == "__main__":
    try:
        main()
    except UsageError as err:
        sys.exit(f"procedural_scenes.py: error: {err}")
