"""Compositional benchmarks in one common form (images x captions + which pairs match), evaluated
with any scorer. See :mod:`hf_counterfactual.benchmarks.core`."""

from .aro import (
    ARO_SYMMETRIC_RELATIONS,
    aro_attribution_benchmark,
    aro_order_benchmark,
    aro_relation_benchmark,
    coco_captions,
    normalize_caption,
    shuffle_all_but_nouns_and_adjectives,
    shuffle_nouns_and_adjectives,
    shuffle_trigrams,
    shuffle_within_trigrams,
)
from .core import LazyImages, MatchingBenchmark, MatchingExample, dataset_image_key, evaluate_benchmark, format_results, score_benchmark
from .counterfactual import counterfactual_records_benchmark, winoground_benchmark
from .crepe import CREPE_NEGATIVE_TYPES, crepe_benchmark
from .eqben import EQBEN_GROUPS, EQBEN_SOURCES, eqben_benchmark
from .files import ImageFolder
from .sugarcrepe import SUGARCREPE_SUBSETS, sugarcrepe_benchmark
from .valse import VALSE_PIECES, valse_benchmark
from .vl_checklist import VL_CHECKLIST_PAIRS, vl_checklist_benchmark, vl_checklist_category
from .whatsup import WHATSUP_DATASETS, whatsup_benchmark

__all__ = [
    "ARO_SYMMETRIC_RELATIONS",
    "CREPE_NEGATIVE_TYPES",
    "EQBEN_GROUPS",
    "EQBEN_SOURCES",
    "ImageFolder",
    "LazyImages",
    "MatchingBenchmark",
    "MatchingExample",
    "SUGARCREPE_SUBSETS",
    "VALSE_PIECES",
    "VL_CHECKLIST_PAIRS",
    "WHATSUP_DATASETS",
    "aro_attribution_benchmark",
    "aro_order_benchmark",
    "aro_relation_benchmark",
    "coco_captions",
    "counterfactual_records_benchmark",
    "crepe_benchmark",
    "eqben_benchmark",
    "evaluate_benchmark",
    "format_results",
    "normalize_caption",
    "score_benchmark",
    "shuffle_all_but_nouns_and_adjectives",
    "shuffle_nouns_and_adjectives",
    "shuffle_trigrams",
    "shuffle_within_trigrams",
    "sugarcrepe_benchmark",
    "valse_benchmark",
    "vl_checklist_benchmark",
    "vl_checklist_category",
    "whatsup_benchmark",
    "winoground_benchmark",
]
