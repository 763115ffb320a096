"""Generation stage: factual pairs -> counterfactual records.

Text edits (rules on a real parser, or any causal LM), image edits (flip, diffusion inpainting over
masks from annotations or boxes), and filters (image-text matching score, pixel change).
"""

from .filters import FilterResult, ImageTextMatchFilter, PixelChangeFilter, pixel_change
from .grounding import Detection, GroundedSegmenter
from .image_edits import (
    CountEdit,
    InpaintingEditor,
    box_mask,
    coco_instance_mask,
    count_edit_masks,
    flip_caption,
    flip_counterfactual,
)
from .llm import CachedGenerator
from .paraphrase import LLMParaphraser, paraphrase_problem
from .text_edits import DEFAULT_EXAMPLES, LLMConceptEditor, RuleBasedEditor, TextEdit
from .pipeline import CounterfactualGenerator, FactualItem, Instance
from .plausibility_stage import CachedScores, CrossFitNgram, PlausibilityStage
from .writer import GeneratedRecord, ShardedRecordWriter, SkipRecord, WriterStats, finalize

__all__ = [
    "DEFAULT_EXAMPLES",
    "LLMConceptEditor",
    "RuleBasedEditor",
    "TextEdit",
    "CachedGenerator",
    "LLMParaphraser",
    "paraphrase_problem",
    "CachedScores",
    "CrossFitNgram",
    "PlausibilityStage",
    "CounterfactualGenerator",
    "FactualItem",
    "GeneratedRecord",
    "Instance",
    "ShardedRecordWriter",
    "SkipRecord",
    "WriterStats",
    "finalize",
    "CountEdit",
    "Detection",
    "FilterResult",
    "GroundedSegmenter",
    "ImageTextMatchFilter",
    "InpaintingEditor",
    "PixelChangeFilter",
    "box_mask",
    "coco_instance_mask",
    "count_edit_masks",
    "flip_caption",
    "flip_counterfactual",
    "pixel_change",
]
