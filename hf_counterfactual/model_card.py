"""Model cards for counterfactually fine-tuned models: what was trained on what, and how it scores."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .benchmarks.core import format_results

_TEMPLATE = """---
{card_data}
---

# {model_name}

{summary}

## Training

- objective: `{objective}` with term weights {weights}
- counterfactuals per record (K): {k}
- trained with hf-counterfactual's `CounterfactualTrainer`

## Evaluation

{evaluation}

Loads with plain `transformers`:

```python
from transformers import {auto_class}, AutoProcessor
model = {auto_class}.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")
```
"""


def model_index_results(
    results: Mapping[str, Mapping[str, float]], dataset_type: str, dataset_name: str, dataset_split: str | None = None
) -> list[EvalResult]:
    """``model-index`` entries (in %) of :func:`~hf_counterfactual.benchmarks.evaluate_benchmark`
    results: the overall (micro) text / image / group scores, and their ``macro_`` averages over
    subsets where there are subsets; undefined (NaN) scores are left out."""
    entries = []
    for average, prefix in (("all", ""), ("macro", "macro_")):
        for metric in ("text_score", "image_score", "group_score"):
            value = results.get(average, {}).get(metric, math.nan)
            if math.isnan(value):
                continue
            entries.append(
                EvalResult(
                    task_type="zero-shot-image-classification",
                    dataset_type=dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=dataset_split,
                    metric_type=prefix + metric,
                    metric_name=(prefix + metric).replace("_", " "),
                    metric_value=round(100 * value, 2),
                )
            )
    return entries


def _key(result: EvalResult) -> tuple:
    return (result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type)


def merge_eval_results(existing: list[EvalResult] | None, new: list[EvalResult]) -> list[EvalResult]:
    """``existing`` with every entry of the same (dataset type, config, split, metric) as one in
    ``new`` replaced by it, and duplicates among ``existing`` collapsed to their last: re-running an
    evaluation never adds a second, conflicting value."""
    merged: dict[tuple, EvalResult] = {}
    for result in [*(existing or []), *new]:
        merged.pop(_key(result), None)  # the later one wins, at its place in the order
        merged[_key(result)] = result
    return list(merged.values())


def hub_id(name: str | None) -> str | None:
    """``name`` when it can name a Hub repository; ``None`` for local paths, which a card never
    publishes (they mean nothing to a reader and may say more than intended)."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return None
    return name


def build_model_card(
    model_name: str,
    *,
    base_model: str | None,
    dataset_name: str | None,
    objective: str,
    weights: Mapping[str, float],
    num_counterfactuals: int,
    results: Mapping[str, Mapping[str, float]] | None = None,
    results_before: Mapping[str, Mapping[str, float]] | None = None,
    benchmark: tuple[str, str, str | None] = ("counterfactual-records", "counterfactual records", "test"),
    base_model_description: str | None = None,
    chart: str | None = None,
    repo_id: str | None = None,
    model_type: str = "clip",
    generative: bool = False,
) -> ModelCard:
    """A ``huggingface_hub.ModelCard`` whose metadata holds a ``model-index`` of the Winoground-style
    scores (overall ``results["all"]``), and whose body shows the per-subset table.

    Local paths are never published: ``base_model`` and ``dataset_name`` enter the metadata only
    when they are Hub ids (:func:`hub_id`). ``benchmark``: ``(dataset_type, dataset_name,
    dataset_split)`` of the results, as :func:`hf_counterfactual.commands.evaluate.benchmark_identity`
    names them. ``base_model_description``: what the model started from when it is not a Hub id
    (e.g. "a tiny CLIP built from a config"). ``chart``: an image file beside the card to embed.
    ``repo_id`` (default ``model_name``) is what the loading snippet names. ``model_type`` (the
    config's, e.g. ``clip``, ``siglip``, ``llava``) is a tag; ``generative`` models (LLaVA) are tagged
    and loaded as image-text-to-text."""
    base_model, dataset_name = hub_id(base_model), hub_id(dataset_name)
    dataset_type, benchmark_name, split = benchmark
    eval_results = model_index_results(results, dataset_type, benchmark_name, dataset_split=split) if results else []
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base_model,
        datasets=[dataset_name] if dataset_name else None,
        tags=[model_type, "counterfactual", "compositionality", "hf-counterfactual"],
        model_name=model_name,
        eval_results=eval_results or None,
        pipeline_tag="image-text-to-text" if generative else "zero-shot-image-classification",
    )
    where = f"the {benchmark_name}" + (f" ({split} split)" if split else "")
    if results is None:
        evaluation = "Not evaluated."
    elif results_before is not None:
        evaluation = f"Scores in % on {where} (before -> after fine-tuning):\n\n```\n{format_results(results, before=results_before)}\n```"
    else:
        evaluation = f"Scores in % on {where}:\n\n```\n{format_results(results)}\n```"
    if chart:
        evaluation += f"\n\n![group score per edit kind, before and after fine-tuning]({chart})"
    start = f"[`{base_model}`](https://huggingface.co/{base_model})" if base_model else (base_model_description or "A CLIP model from a local checkpoint")
    data = f" from [`{dataset_name}`](https://huggingface.co/datasets/{dataset_name})" if dataset_name else ""
    summary = f"{start[0].upper()}{start[1:]}, fine-tuned on counterfactual data{data}."
    text = _TEMPLATE.format(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        summary=summary,
        objective=objective,
        weights=dict(weights),
        k=num_counterfactuals,
        evaluation=evaluation,
        repo=repo_id or model_name,
        auto_class="AutoModelForImageTextToText" if generative else "AutoModel",
    )
    return ModelCard(text)
