"""The dataset card of generated counterfactual records: how each split was made, what was kept and
dropped, and where the inputs came from, written from the settings each split was generated with."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..image_processing import STORAGE_JPEG_QUALITY

__all__ = ["pass_rates", "generation_card", "made_with"]


def pass_rates(counts: Mapping[str, int]) -> dict[str, str]:
    """``{"pixel_change": "7/9 (77.8%)", ...}`` from the ``filter/<name>/passed|failed`` counters."""
    rates = {}
    for name in sorted({key.split("/")[1] for key in counts if key.startswith("filter/")}):
        passed, failed = counts.get(f"filter/{name}/passed", 0), counts.get(f"filter/{name}/failed", 0)
        rates[name] = f"{passed}/{passed + failed} ({100 * passed / (passed + failed):.1f}%)" if passed + failed else "0/0"
    return rates


MODEL_FIELDS = ("inpainting_model", "detector_model", "segmenter_model", "clip_filter_model", "llm_model", "paraphrase_model",
                "plausibility_causal_lm", "plausibility_classifier")


def _model(name: str | None) -> str | None:
    """A model as a card may name it: a Hub id as itself, a local folder never (it means nothing to a
    reader), ``tiny`` as what it is."""
    from ..model_card import hub_id

    if name in (None, "tiny"):
        return name and "a random tiny model"
    return f"`{name}`" if hub_id(name) else "a local checkpoint"


def made_with(a: Mapping[str, Any], annotated: bool) -> tuple[list[str], list[str]]:
    """The stages and the filters of a run, in words, from its arguments (``hf-cf generate``'s
    fields); ``annotated``: the input had instance annotations (else masks came from a detector)."""
    a = {k: (_model(v) if k in MODEL_FIELDS else v) for k, v in a.items()}
    stages = [f"rule-based text edits on a spaCy parse ({a['spacy_pipeline']}; kinds: {a['edits']})"]
    if a.get("llm_model"):
        stages.append(f"LLM concept replacements ({a['llm_model']})")
    if "position" in a["edits"]:
        stages.append("mirrored images with left/right swapped (CounterCurate)")
    if a.get("inpainting_model"):
        if annotated:
            masks = "COCO instance masks (pycocotools)"
        elif a.get("detector_model"):
            masks = f"the boxes detected by {a['detector_model']}" + (f", segmented by {a['segmenter_model']}" if a.get("segmenter_model") else "")
        else:
            masks = "no masks (no instance annotations, no detector)"
        stages.append(
            f"diffusion inpainting with {a['inpainting_model']} ({a['num_inference_steps']} steps, guidance "
            f"{a['guidance_scale']}) over {masks}, for {a['image_edits']} edits; count edits remove one instance "
            "or add one in an empty box"
        )
    if a.get("paraphrase_model"):
        stages.append(f"paraphrases by {a['paraphrase_model']} for images with fewer than {a['min_paraphrases']} other captions")
    if a.get("image_short_side"):
        stages.append(f"images stored pre-resized: short side at most {a['image_short_side']} px, JPEG quality {a.get('image_quality', STORAGE_JPEG_QUALITY)} (after the filters)")
    filters = [f"pixel change inside the mask >= {a['min_pixel_change']}, outside <= {a['max_outside_change']}"] if a.get("inpainting_model") else []
    if a.get("clip_filter_model"):
        margin = f", beating the original caption by {a['clip_margin']}" if a.get("clip_margin") is not None else ""
        filters.append(f"{a['clip_filter_model']} cosine of the edited pair >= {a['clip_threshold']}{margin}")
    return stages, filters


def _rounded(value, digits: int = 3):
    """``value`` with every float rounded, for the card (the stats keep full precision)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    return value


def plausibility_lines(a: Mapping[str, Any], s: Mapping[str, Any]) -> list[str]:
    """The card's lines on the text-plausibility stage of a split (none when it did not run), from
    its arguments ``a`` and its merged stats ``s``: the scorers, the filter and its counts per edit
    kind, the refinement and its counts per edit kind."""
    a = {k: (_model(v) if k in MODEL_FIELDS else v) for k, v in a.items()}
    if not (a.get("plausibility") or a.get("plausibility_causal_lm") or a.get("plausibility_classifier")
            or a.get("plausibility_threshold") or a.get("plausibility_refine")):
        return []
    scorers = []
    if a.get("plausibility_ngram", True):
        folds = a.get("plausibility_folds", 5)
        how = f"cross-fitted over {folds} folds of the images" if folds > 1 else "fitted on every caption (not cross-fitted)"
        scorers.append(f"a Kneser-Ney {a.get('plausibility_ngram_order', 2)}-gram LM fitted on this input's own captions, {how}")
    if a.get("plausibility_causal_lm"):
        scorers.append(f"the mean token log-probability under {a['plausibility_causal_lm']}")
    if a.get("plausibility_classifier"):
        scorers.append(f"the 'acceptable' probability of {a['plausibility_classifier']}")
    lines = [
        "- text plausibility: each counterfactual caption scored by blind (text-only) scorers, "
        + "; ".join(scorers)
        + "; `plausibility_gap` holds score(caption) - score(counterfactual) per scorer (positive: a text-only model prefers the true caption)"
    ]
    counts = s.get("counts", {})
    if a.get("plausibility_threshold"):
        per_kind: dict[str, dict[str, int]] = {}
        for key, n in counts.items():
            parts = key.split("/")
            if len(parts) == 4 and parts[:2] == ["plausibility", "filter"]:
                per_kind.setdefault(parts[2], {"kept": 0, "dropped": 0})[parts[3]] = n
        lines.append(f"- plausibility filter: a negative whose gap (first scorer) exceeds {a['plausibility_threshold']} is dropped; "
                     f"per edit kind: {json.dumps(per_kind, sort_keys=True)}")
    refinement = s.get("plausibility_refinement")
    if refinement:
        st = refinement["settings"]
        lines.append(
            f"- adversarial refinement (SugarCrepe's, per edit kind over the whole split; {st['num_bins']} gap bins, seed {st['seed']}, "
            f"scorers {', '.join(st['scorers'])}; "
            + ("n-gram gaps balanced around the reliability-corrected centre, so that a held-out blind LM is at chance too"
               if st.get("center", "zero") == "reliability" else "gaps balanced around 0")
            + f"): per edit kind {json.dumps(_rounded(refinement['kinds']), sort_keys=True)}; "
            f"records left with too few counterfactuals and dropped: {refinement['records_dropped']} of {refinement['num_records_before']}; "
            "the records before refinement load as the `unrefined` configuration"
        )
    return lines


def generation_card(
    runs: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, Mapping[str, Any]],
    *,
    script: str = "hf-cf generate",
    license: str | None = None,
    previews: Mapping[str, str] | None = None,
) -> str:
    """The README of a generated folder.

    Args:
        runs: per split, what :mod:`hf_counterfactual.commands.generate` records for it:
            ``arguments`` (its fields), ``source`` (the input, in words; never a local path),
            ``licence`` (a sentence) and ``annotated``.
        stats: per split, the writer's merged stats (``finalize`` passes them).
        script: what made it (a command, or a ``dataset_scripts/`` file the card links back to).
        license: the card's ``license:`` (an SPDX id); default ``other``.
        previews: per split, an image file beside the card to embed.
    """
    lines = [
        "---",
        f"license: {license or 'other'}",
        "tags: [counterfactual, compositionality, hf-counterfactual]",
        "---",
        "",
        "# Counterfactual image-caption records",
        "",
        f"Made with hf-counterfactual's {script}: the first caption of each image is the factual caption, "
        "the others are its paraphrases; each counterfactual is a minimal edit that makes the caption false "
        "of the image (with, for image edits, the edited image of which it is true).",
        "",
        "```python",
        "from datasets import load_dataset",
        'records = load_dataset("<this repo or folder>")',
        "```",
    ]
    licences = []
    for split, run in runs.items():
        a, s = run["arguments"], stats[split]
        stages, filters = made_with(a, run.get("annotated", True))
        counts = s.get("counts", {})
        lines += [
            "",
            f"## Split `{split}`",
            "",
            f"From {run['source']} (seed {a['seed']}); counterfactuals by " + "; ".join(stages) + ".",
            "",
            f"- records: {s['num_records']} from {s['num_items']} images; skipped: {s['num_skipped']}",
            f"- counterfactuals per edit kind: {json.dumps(s['edits'], sort_keys=True)}",
            f"- by source: {json.dumps(s['sources'], sort_keys=True)}",
            f"- skip reasons: {json.dumps(s['skip_reasons'], sort_keys=True)}",
        ]
        if filters:
            lines.append(f"- filters: {'; '.join(filters)}. An image edit that fails one keeps only its caption, as a text-only negative.")
            lines.append(f"- filter pass rates: {json.dumps(pass_rates(counts), sort_keys=True)}")
        lines += plausibility_lines(a, s)
        if counts:
            lines.append(f"- stage counters: {json.dumps(counts, sort_keys=True)}")
        if previews and split in previews:
            lines += ["", f"![the first records of {split}: original and edited images with their captions]({previews[split]})"]
        if run.get("licence") and run["licence"] not in licences:
            licences.append(run["licence"])
    lines += ["", "## Licence", "", *licences]
    return "\n".join(lines) + "\n"
