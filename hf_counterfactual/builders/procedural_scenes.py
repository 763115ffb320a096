"""A `datasets` builder for the procedural counterfactual scenes of :mod:`hf_counterfactual.scenes`.

datasets >= 4 has no loading scripts, so the builder is used in code::

    builder = ProceduralScenes(config_name="default", cache_dir=..., num_train=2000, num_test=400)
    builder.download_and_prepare()
    ds = builder.as_dataset()  # DatasetDict with "train" and "test"

Three splits: ``train``, ``test`` (every scene shows a held-out colour-shape pair) and
``test_heldout_style``: the test split's very scenes drawn in the rendering style that training
never sees (:data:`~hf_counterfactual.scenes.HELDOUT_STYLE`), so that the two test scores differ
only by rendering.

Two configs share the same records:

- ``default``: one row per record, features :data:`~hf_counterfactual.features.COUNTERFACTUAL_FEATURES`.
- ``winoground``: the Winoground Hub schema, one row per (record, counterfactual): ``image_0`` /
  ``caption_0`` the factual pair, ``image_1`` / ``caption_1`` the counterfactual pair; each caption
  is true of its own image only. ``tag`` and ``collapsed_tag`` are the edit kind,
  ``secondary_tag`` the factual layout and ``num_main_preds`` its number of objects. ``num_train``
  and ``num_test`` count records, so a split has ``counterfactuals_per_record`` times more rows.

Config attributes passed as keyword arguments (``num_train=...``) are part of the cache
directory name, and the builder's ``hash`` defaults to a hash of the generator's source code, so
a changed generator never reuses a stale cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
from datasets.builder import Key
from datasets.fingerprint import Hasher

from .. import scenes
from ..features import COUNTERFACTUAL_FEATURES
from ..scenes import edits, model, records, render, sampling, styles
from ..scenes.sampling import DEFAULT_HELDOUT_PAIRS, normalize_heldout_pairs
from ..scenes.styles import HELDOUT_STYLE, TRAIN_STYLES, check_styles

_DESCRIPTION = """\
Procedurally generated scenes of one to four flat shapes (circle, square, triangle in six colours
and two sizes) with complete canonical captions and exact counterfactuals of five kinds
(attribute, object, position, count, relation), each rendered from the edited scene. Colour-shape
compositions listed in `heldout_pairs` never occur in train and occur in every test scene. Each
record is drawn in a random rendering style; `test_heldout_style` holds the test scenes drawn in a
style that training never sees."""

HELDOUT_STYLE_SPLIT = "test_heldout_style"

WINOGROUND_FEATURES = datasets.Features(
    {
        "id": datasets.Value("int32"),
        "image_0": datasets.Image(),
        "image_1": datasets.Image(),
        "caption_0": datasets.Value("string"),
        "caption_1": datasets.Value("string"),
        "tag": datasets.Value("string"),
        "secondary_tag": datasets.Value("string"),
        "num_main_preds": datasets.Value("int32"),
        "collapsed_tag": datasets.Value("string"),
    }
)
"""The schema of the Winoground dataset on the Hub (``facebook/winoground``)."""

# Records per original shard: the unit `download_and_prepare(num_proc=...)` distributes.
_RECORDS_PER_SHARD = 250


@dataclass
class ProceduralScenesConfig(datasets.BuilderConfig):
    """Sizes, seed and held-out compositions of the procedural scenes.

    Args:
        num_train: records in the train split (0: no train split).
        num_test: records in the test split (0: no test split; datasets cannot read an empty split).
        seed: dataset seed; record ``i`` of a split depends on ``(seed, split, i)`` only.
        image_size: side of the square images, in pixels.
        counterfactuals_per_record: counterfactuals of each record.
        heldout_pairs: (colour, shape) pairs absent from train and present in every test scene;
            ``()`` holds out nothing (a keyword set to None is ignored by ``datasets`` and keeps
            the default).
        styles: rendering styles of the train and test splits (``("plain",)``: the exact flat style).
        heldout_style: the style of the ``test_heldout_style`` split, never in ``styles``; ``""``
            leaves the split out.
    """

    num_train: int = 2000
    num_test: int = 400
    seed: int = 0
    image_size: int = 64
    counterfactuals_per_record: int = 4
    heldout_pairs: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT_PAIRS
    styles: tuple[str, ...] = TRAIN_STYLES
    heldout_style: str = HELDOUT_STYLE

    def __post_init__(self):
        super().__post_init__()
        self.validate()

    def validate(self) -> None:
        """Raises ValueError on an invalid setting (also run by the builder, since keyword overrides
        of a predefined config are set with ``setattr`` and skip ``__post_init__``)."""
        for name in ("num_train", "num_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_train + self.num_test == 0:
            raise ValueError("num_train and num_test are both 0: nothing to generate")
        if self.counterfactuals_per_record < 1:
            raise ValueError(f"counterfactuals_per_record must be >= 1, got {self.counterfactuals_per_record}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        normalize_heldout_pairs(self.heldout_pairs)
        check_styles(tuple(self.styles))
        if self.heldout_style:
            check_styles((self.heldout_style,))
        if self.heldout_style in self.styles:
            raise ValueError(f"heldout_style {self.heldout_style!r} is also in styles {self.styles!r}: it would not be held out")


def _generator_code_hash() -> str:
    # What a loading script's hash used to give for free: new generator code, new cache directory.
    sources = [inspect.getsource(module) for module in (scenes, model, sampling, edits, render, records, styles)]
    sources.append(inspect.getsource(inspect.getmodule(_generator_code_hash)))
    return Hasher.hash(sources)


class ProceduralScenes(datasets.GeneratorBasedBuilder):
    """Procedural counterfactual scenes: counterfactual records (``default``) or Winoground rows (``winoground``)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ProceduralScenesConfig
    BUILDER_CONFIGS = [
        ProceduralScenesConfig(name="default", version=VERSION, description="Counterfactual records."),
        ProceduralScenesConfig(
            name="winoground", version=VERSION, description="Winoground schema, one row per counterfactual."
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def __init__(self, *args, hash: str | None = None, **kwargs):
        super().__init__(*args, hash=hash or _generator_code_hash(), **kwargs)
        self.config.validate()

    def _info(self) -> datasets.DatasetInfo:
        features = WINOGROUND_FEATURES if self.config.name == "winoground" else COUNTERFACTUAL_FEATURES
        return datasets.DatasetInfo(description=_DESCRIPTION, features=features.copy())

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        config = self.config
        # split name -> (the split whose scenes it draws, the styles it draws them in, records)
        splits = {"train": ("train", config.styles, config.num_train), "test": ("test", config.styles, config.num_test)}
        if config.heldout_style:
            splits[HELDOUT_STYLE_SPLIT] = ("test", (config.heldout_style,), config.num_test)
        return [
            datasets.SplitGenerator(
                name=name,
                # A list of shards: `download_and_prepare(num_proc=n)` hands each process a slice of it.
                gen_kwargs={"split": scene_split, "styles": style_names, "shards": _shards(size)},
            )
            for name, (scene_split, style_names, size) in splits.items()
            if size > 0
        ]

    def _generate_shards(self, split: str, styles: tuple[str, ...], shards: list[tuple[int, int]]) -> Iterator[dict[str, Any]]:
        for start, stop in shards:
            yield {"split": split, "styles": styles, "start": start, "stop": stop}

    def _generate_examples(
        self, split: str, styles: tuple[str, ...], shards: list[tuple[int, int]]
    ) -> Iterator[tuple[Key, dict[str, Any]]]:
        config = self.config
        for shard_id, (start, stop) in enumerate(shards):
            for index in range(start, stop):
                scene_record = records.sample_scene_record(
                    index,
                    split,
                    seed=config.seed,
                    counterfactuals_per_record=config.counterfactuals_per_record,
                    heldout_pairs=config.heldout_pairs,
                    styles=styles,
                )
                if config.name == "winoground":
                    for offset, row in enumerate(winoground_rows(scene_record, index, config.image_size)):
                        yield Key(shard_id, (index - start) * config.counterfactuals_per_record + offset), row
                else:
                    yield Key(shard_id, index - start), records.render_record(scene_record, config.image_size)


def _shards(num_records: int) -> list[tuple[int, int]]:
    starts = range(0, num_records, _RECORDS_PER_SHARD)
    return [(start, min(start + _RECORDS_PER_SHARD, num_records)) for start in starts]


def winoground_rows(scene_record: records.SceneRecord, index: int, image_size: int = 64) -> list[dict[str, Any]]:
    """The Winoground rows of record ``index``: one per counterfactual, ``id = index * k + j``."""
    factual, style = scene_record.scene, scene_record.style
    image_0, caption_0 = render.render_scene(factual, image_size, style), model.describe(factual)
    k = len(scene_record.counterfactuals)
    return [
        {
            "id": index * k + j,
            "image_0": image_0,
            "image_1": render.render_scene(edited, image_size, style),
            "caption_0": caption_0,
            "caption_1": model.describe(edited),
            "tag": kind,
            "secondary_tag": factual.layout,
            "num_main_preds": len(factual.objects),
            "collapsed_tag": kind,
        }
        for j, (kind, edited) in enumerate(scene_record.counterfactuals)
    ]


def load_procedural_scenes(
    name: str = "default", cache_dir: str | None = None, *, num_proc: int | None = None, **config_kwargs
) -> datasets.DatasetDict:
    """Prepares (or reuses from the cache) and returns the procedural scenes as a ``DatasetDict``.

    Args:
        name: ``"default"`` (counterfactual records) or ``"winoground"`` (Winoground rows).
        cache_dir: datasets cache directory (the datasets default when None).
        num_proc: processes to generate with (shards of 250 records).
        **config_kwargs: attributes of :class:`ProceduralScenesConfig`, e.g. ``num_train=200``.
    """
    builder = ProceduralScenes(config_name=name, cache_dir=cache_dir, **config_kwargs)
    builder.download_and_prepare(num_proc=num_proc)
    return builder.as_dataset()
