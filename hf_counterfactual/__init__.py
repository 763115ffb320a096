"""hf-counterfactual: counterfactual data, objectives and evaluation for compositional vision-language models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0.dev0"

# Public name -> submodule. Imported on first use so that `import hf_counterfactual.losses` does not
# pay for transformers' Trainer.
_EXPORTS = {
    "COUNTERFACTUAL_FEATURES": "features",
    "EDIT_KINDS": "features",
    "InvalidRecordError": "features",
    "normalize_caption": "features",
    "validate_record": "features",
    "CounterfactualCollator": "collator",
    "DualEncoderScorer": "scoring",
    "DualEncoderScores": "scoring",
    "similarity": "scoring",
    "OBJECTIVE_PRESETS": "objectives",
    "CounterfactualObjective": "objectives",
    "CounterfactualTrainer": "trainer",
    "CounterfactualTrainingArguments": "training_args",
    "MatchingBenchmark": "benchmarks",
    "MatchingExample": "benchmarks",
    "evaluate_benchmark": "benchmarks",
    "format_results": "benchmarks",
    "winoground_metrics": "metrics",
    "winoground_scores": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:
    from .collator import CounterfactualCollator
    from .benchmarks import MatchingBenchmark, MatchingExample, evaluate_benchmark, format_results
    from .features import COUNTERFACTUAL_FEATURES, EDIT_KINDS, InvalidRecordError, normalize_caption, validate_record
    from .metrics import winoground_metrics, winoground_scores
    from .objectives import OBJECTIVE_PRESETS, CounterfactualObjective
    from .scoring import DualEncoderScorer, DualEncoderScores, similarity
    from .trainer import CounterfactualTrainer
    from .training_args import CounterfactualTrainingArguments
