"""``hf-cf evaluate``: compositional benchmarks of a saved model.

``hf-cf evaluate`` scores a saved generative VLM (LLaVA: ``--score vqascore|yes_logprob|loglik|loglik_mean|choice``)
or dual encoder (any ``AutoModel`` with ``get_image_features`` /
``get_text_features``, e.g. CLIP) on compositional benchmarks, prints one table per benchmark,
writes every result to JSON and optionally records them in the model card's ``model-index``::

    hf-cf evaluate --model_name_or_path out/cf-clip --benchmarks procedural,winoground \\
        --winoground facebook/winoground --output_file results.json --add_to_model_card

``--baseline_model_name_or_path`` (e.g. the checkpoint fine-tuning started from) is scored too: the
tables show baseline -> model, and a bar chart of the group score per subset, baseline beside model,
is written next to ``--output_file`` (and into the card with ``--add_to_model_card``).

Benchmarks and the flags naming their data (nothing is downloaded except what ``--winoground``
names on the Hub):

- ``procedural``: the held-out test split of the embedded procedural scenes (generated, offline);
- ``records``: a split of any dataset of counterfactual records (``--records_dataset``: what
  ``hf-cf generate`` wrote, or its Hub id; ``--records_split``, default ``test``);
- ``winoground``: ``--winoground`` (a Hub id such as the gated ``facebook/winoground``, a folder
  saved with ``save_to_disk`` or a Parquet / JSON file in the Winoground schema);
- ``sugarcrepe``: ``--sugarcrepe_dir`` (the SugarCrepe JSON files) and ``--coco_images_dir`` (COCO val2017);
- ``aro-relation`` / ``aro-attribution``: ``--aro_dir`` (``visual_genome_relation.json`` /
  ``visual_genome_attribution.json``) and ``--vg_images_dir`` (Visual Genome images);
- ``coco-order`` / ``flickr30k-order``: ``--coco_captions_file`` / ``--flickr30k_captions_file`` (COCO
  captions or Karpathy test-split files) and ``--coco_images_dir`` / ``--flickr30k_images_dir``;
  needs spaCy and an English pipeline (``--spacy_pipeline``);
- ``whatsup``: ``--whatsup_file`` and ``--whatsup_images_dir``;
- ``valse``: ``--valse_dir`` and ``--valse_images_dir`` (subsets: the seven VALSE pieces);
- ``vl-checklist``: ``--vl_checklist_dir`` and ``--vl_checklist_images_dir``;
- ``crepe``: ``--crepe_dir`` and ``--vg_images_dir`` (Visual Genome, with ``VG_100K/`` and ``VG_100K_2/``);
- ``eqben``: ``--eqben_file`` and ``--eqben_images_dir`` (Winoground-style 2 x 2 pairs).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..benchmarks.core import MatchingBenchmark, evaluate_benchmark, format_results
from .arguments import UsageError, parse_arguments
from .checks import check_pretrained, check_spacy_pipeline, is_generative_checkpoint
from .data import load_split


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(metadata={"help": "A saved model and processor (folder or Hub id)."})
    benchmarks: str = field(default="procedural", metadata={"help": "Comma-separated benchmark names (see the description)."})
    baseline_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Also score this model (e.g. the checkpoint fine-tuning started from): tables and chart show baseline -> model."}
    )
    output_file: str | None = field(default=None, metadata={"help": "Write every result here as JSON (NaN as null); the chart goes beside it."})
    add_to_model_card: bool = field(
        default=False, metadata={"help": "Add / update the model-index of the model's card (local README.md, or the Hub repo's)."}
    )
    score: str | None = field(
        default=None,
        metadata={
            "help": "Generative VLMs (LLaVA): vqascore (default), yes_logprob, loglik, loglik_mean or choice (see "
            "hf_counterfactual.vlm_scoring). Dual encoders always score scale * cosine + bias."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images or texts (sequences, for a VLM) per forward."})
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})
    no_progress: bool = field(default=False, metadata={"help": "Hide the scorer's progress bars."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    seed: int = field(default=0, metadata={"help": "coco-order, flickr30k-order: seed of the caption shuffles."})
    spacy_pipeline: str = field(
        default="auto", metadata={"help": "coco-order, flickr30k-order: an installed spaCy pipeline (POS tags); auto: the first English one."}
    )
    # benchmark data
    num_test_scenes: int = field(default=400, metadata={"help": "procedural: held-out records (hf-cf train's default: 400)."})
    scene_seed: int = field(default=0, metadata={"help": "procedural: dataset seed."})
    records_dataset: str | None = field(default=None, metadata={"help": "records: a dataset of counterfactual records (folder or Hub id)."})
    records_split: str = field(default="test", metadata={"help": "records: the split to evaluate."})
    records_config_name: str | None = field(default=None, metadata={"help": "records: the dataset's configuration name."})
    winoground: str | None = field(default=None, metadata={"help": "winoground: Hub id, save_to_disk folder or Parquet/JSON file."})
    winoground_split: str = field(default="test", metadata={"help": "winoground: split to evaluate."})
    sugarcrepe_dir: str | None = field(default=None, metadata={"help": "sugarcrepe: folder of the SugarCrepe JSON files."})
    coco_images_dir: str | None = field(
        default=None, metadata={"help": "sugarcrepe: COCO val2017/; coco-order: the folder the captions file's image paths are relative to."}
    )
    coco_captions_file: str | None = field(default=None, metadata={"help": "coco-order: captions_val2017.json or a Karpathy test-split file."})
    aro_dir: str | None = field(default=None, metadata={"help": "aro-relation, aro-attribution: folder of the ARO JSON files."})
    vg_images_dir: str | None = field(default=None, metadata={"help": "aro-relation, aro-attribution, crepe: Visual Genome images folder."})
    aro_exclude_symmetric: bool = field(default=False, metadata={"help": "aro-relation: drop symmetric relations (ARO's reported macro accuracy)."})
    flickr30k_captions_file: str | None = field(default=None, metadata={"help": "flickr30k-order: a Karpathy test-split file (flickr30k_test.json)."})
    flickr30k_images_dir: str | None = field(default=None, metadata={"help": "flickr30k-order: the folder its image paths are relative to."})
    whatsup_file: str | None = field(default=None, metadata={"help": "whatsup: one of the authors' JSON files (e.g. controlled_images_dataset.json)."})
    whatsup_images_dir: str | None = field(default=None, metadata={"help": "whatsup: that file's images folder."})
    valse_dir: str | None = field(default=None, metadata={"help": "valse: folder of the VALSE foil JSON files (the repository's data/)."})
    valse_images_dir: str | None = field(
        default=None, metadata={"help": "valse: root holding one folder per source dataset (<root>/<dataset>/<image_file>)."}
    )
    vl_checklist_dir: str | None = field(default=None, metadata={"help": "vl-checklist: the repository's data/ folder (its layout names the categories)."})
    vl_checklist_images_dir: str | None = field(default=None, metadata={"help": "vl-checklist: folder holding vg/, swig/ and hake/."})
    crepe_dir: str | None = field(default=None, metadata={"help": "crepe: folder of the CREPE hard-negative CSV files (images: --vg_images_dir)."})
    eqben_file: str | None = field(default=None, metadata={"help": "eqben: an EqBen annotation JSON (e.g. the 10% subset's)."})
    eqben_images_dir: str | None = field(default=None, metadata={"help": "eqben: the folder its image0/image1 paths are relative to."})


@dataclass(frozen=True)
class BenchmarkSpec:
    title: str  # the dataset name in tables and the model-index
    dataset_type: str  # the model-index dataset type (a Hub id where there is one)
    flags: tuple[str, ...]  # argument names that must be given
    build: Callable[[EvaluationArguments], MatchingBenchmark]


def _procedural(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.counterfactual import counterfactual_records_benchmark
    from ..builders import load_procedural_scenes

    # Test record i depends on (seed, split, i) only: the same records as the examples' held-out split.
    test = load_procedural_scenes(num_train=0, num_test=args.num_test_scenes, seed=args.scene_seed, cache_dir=args.cache_dir)["test"]
    return counterfactual_records_benchmark(test, name="procedural")


def _records(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.counterfactual import counterfactual_records_benchmark

    records = load_split(
        args.records_dataset, args.records_split, "--records_dataset", args.cache_dir, records=True, config_name=args.records_config_name
    )
    return counterfactual_records_benchmark(records, name="records")


def _winoground(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.counterfactual import winoground_benchmark

    return winoground_benchmark(load_split(args.winoground, args.winoground_split, "--winoground", args.cache_dir), name="winoground")


def _sugarcrepe(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.sugarcrepe import sugarcrepe_benchmark

    return sugarcrepe_benchmark(args.sugarcrepe_dir, args.coco_images_dir)


def _aro_relation(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.aro import aro_relation_benchmark

    return aro_relation_benchmark(
        os.path.join(args.aro_dir, "visual_genome_relation.json"), args.vg_images_dir, exclude_symmetric=args.aro_exclude_symmetric
    )


def _aro_attribution(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.aro import aro_attribution_benchmark

    return aro_attribution_benchmark(os.path.join(args.aro_dir, "visual_genome_attribution.json"), args.vg_images_dir)


def _coco_order(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.aro import aro_order_benchmark, coco_captions

    captions = coco_captions(args.coco_captions_file)
    return aro_order_benchmark(captions, args.coco_images_dir, name="coco-order", seed=args.seed, pipeline=check_spacy_pipeline(args.spacy_pipeline))


def _flickr30k_order(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.aro import aro_order_benchmark, coco_captions

    captions = coco_captions(args.flickr30k_captions_file)
    return aro_order_benchmark(captions, args.flickr30k_images_dir, name="flickr30k-order", seed=args.seed, pipeline=check_spacy_pipeline(args.spacy_pipeline))


def _whatsup(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.whatsup import whatsup_benchmark

    return whatsup_benchmark(args.whatsup_file, args.whatsup_images_dir)


def _valse(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.valse import valse_benchmark

    return valse_benchmark(args.valse_dir, args.valse_images_dir, subset_by="piece")


def _vl_checklist(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.vl_checklist import vl_checklist_benchmark

    return vl_checklist_benchmark(args.vl_checklist_dir, args.vl_checklist_images_dir)


def _crepe(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.crepe import crepe_benchmark

    return crepe_benchmark(args.crepe_dir, args.vg_images_dir)


def _eqben(args: EvaluationArguments) -> MatchingBenchmark:
    from ..benchmarks.eqben import eqben_benchmark

    return eqben_benchmark(args.eqben_file, args.eqben_images_dir)


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "procedural": BenchmarkSpec("procedural scenes (held-out test split)", "procedural-scenes", (), _procedural),
    "records": BenchmarkSpec("counterfactual records", "counterfactual-records", ("records_dataset",), _records),
    "winoground": BenchmarkSpec("Winoground", "winoground", ("winoground",), _winoground),
    "sugarcrepe": BenchmarkSpec("SugarCrepe", "sugarcrepe", ("sugarcrepe_dir", "coco_images_dir"), _sugarcrepe),
    "aro-relation": BenchmarkSpec("ARO VG-Relation", "aro", ("aro_dir", "vg_images_dir"), _aro_relation),
    "aro-attribution": BenchmarkSpec("ARO VG-Attribution", "aro", ("aro_dir", "vg_images_dir"), _aro_attribution),
    "coco-order": BenchmarkSpec("ARO COCO-Order", "aro", ("coco_captions_file", "coco_images_dir"), _coco_order),
    "flickr30k-order": BenchmarkSpec("ARO Flickr30k-Order", "aro", ("flickr30k_captions_file", "flickr30k_images_dir"), _flickr30k_order),
    "whatsup": BenchmarkSpec("What'sUp", "whatsup", ("whatsup_file", "whatsup_images_dir"), _whatsup),
    "valse": BenchmarkSpec("VALSE", "valse", ("valse_dir", "valse_images_dir"), _valse),
    "vl-checklist": BenchmarkSpec("VL-CheckList", "vl-checklist", ("vl_checklist_dir", "vl_checklist_images_dir"), _vl_checklist),
    "crepe": BenchmarkSpec("CREPE", "crepe", ("crepe_dir", "vg_images_dir"), _crepe),
    "eqben": BenchmarkSpec("EqBen", "eqben", ("eqben_file", "eqben_images_dir"), _eqben),
}
_HUB_FLAGS = {"winoground", "records_dataset"}  # may name a Hub dataset instead of a local path



def check_arguments(args: EvaluationArguments) -> list[str]:
    """The benchmark names, each one's data flags and the model names checked (before any model loads)."""
    names = [name.strip() for name in args.benchmarks.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise UsageError(f"--benchmarks: unknown benchmark(s) {unknown or names}; choose from: {', '.join(BENCHMARKS)}")
    for name in names:
        for flag in BENCHMARKS[name].flags:
            value = getattr(args, flag)
            if value is None:
                raise UsageError(f"benchmark {name!r} needs --{flag}")
            if flag not in _HUB_FLAGS and not os.path.exists(value):
                raise UsageError(f"benchmark {name!r}: --{flag} {value} does not exist")
    check_pretrained(args.model_name_or_path, "--model_name_or_path", tiny=False)
    check_pretrained(args.baseline_model_name_or_path, "--baseline_model_name_or_path", tiny=False)
    from ..vlm_scoring import SCORES

    if args.score is not None and args.score not in SCORES:
        raise UsageError(f"--score {args.score}: choose from {', '.join(SCORES)}")
    if args.score is not None and not is_generative_checkpoint(args.model_name_or_path):
        name = args.model_name_or_path
        raise UsageError(f"--score {args.score}: {name} is a dual encoder, which scores scale * cosine + bias; --score is for generative VLMs")
    return list(dict.fromkeys(names))


def benchmark_identity(name: str, args: EvaluationArguments | None = None) -> tuple[str, str, str | None]:
    """``(dataset_type, dataset_name, dataset_split)`` of a benchmark in a ``model-index``: the one
    naming ``hf-cf train`` and ``hf-cf evaluate`` share, so that one card never holds the same
    evaluation twice under two names. A local path never becomes a dataset type."""
    spec = BENCHMARKS[name]
    if name == "procedural":
        return spec.dataset_type, spec.title, "test"
    if name == "records":
        source, split = (args.records_dataset, args.records_split) if args else (None, "test")
        hub = source if source and not os.path.exists(source) else None
        return hub or spec.dataset_type, f"{spec.title} ({hub or 'local dataset'})", split
    if name == "winoground" and args is not None and args.winoground and not os.path.exists(args.winoground):
        return args.winoground, spec.title, args.winoground_split
    return spec.dataset_type, spec.title, None


def _json_safe(value):
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def load_scorer(model_name: str, args: EvaluationArguments):
    """The scorer of ``model_name``: :class:`~hf_counterfactual.vlm_scoring.VLMScorer` for a generative
    VLM, :class:`~hf_counterfactual.scoring.DualEncoderScorer` for a dual encoder."""
    import torch
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(model_name)
    if is_generative_checkpoint(model_name):
        from ..vlm_scoring import VLMScorer

        model = AutoModelForImageTextToText.from_pretrained(model_name).to(device)
        return VLMScorer(model, processor, score=args.score or "vqascore", batch_size=args.batch_size, show_progress=not args.no_progress)
    from ..scoring import DualEncoderScorer

    model = AutoModel.from_pretrained(model_name).to(device)
    return DualEncoderScorer(model, processor, batch_size=args.batch_size, device=device, show_progress=not args.no_progress)


def _score(model_name: str, args: EvaluationArguments, benchmarks: Mapping[str, MatchingBenchmark]) -> dict[str, dict]:
    scorer = load_scorer(model_name, args)
    return {name: evaluate_benchmark(scorer, benchmark) for name, benchmark in benchmarks.items()}


def chart_file_name(benchmark: str) -> str:
    return f"group_score_{benchmark}.png"


def group_scores_per_subset(results: Mapping[str, Mapping]) -> dict[str, float]:
    """``{subset: group score in %}`` of :func:`evaluate_benchmark` results (``all`` when there are no subsets)."""
    subsets = [k for k in results if k not in ("all", "macro")] or ["all"]
    return {k: 100 * results[k]["group_score"] for k in subsets}


def write_charts(folder: str, all_results: Mapping[str, Mapping], baseline: Mapping[str, Mapping] | None = None) -> dict[str, str]:
    """One bar chart per benchmark in ``folder``: the group score per subset (edit kind), the baseline
    beside the model when there is one. Returns ``{benchmark: file name}``."""
    from ..figures import group_score_chart, save_figure

    written = {}
    for name, results in all_results.items():
        before = group_scores_per_subset(baseline[name]) if baseline else {}
        title = f"{BENCHMARKS[name].title if name in BENCHMARKS else name}: group score per subset"
        chart = group_score_chart(before, group_scores_per_subset(results), title=title)
        save_figure(chart, os.path.join(folder, chart_file_name(name)))
        written[name] = chart_file_name(name)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """``hf-cf evaluate`` (``argv`` without the ``evaluate`` word): returns ``{benchmark: results}``."""
    (args,) = parse_arguments((EvaluationArguments,), sys.argv[1:] if argv is None else argv, prog="hf-cf evaluate", description=__doc__)
    names = check_arguments(args)
    benchmarks = {name: BENCHMARKS[name].build(args) for name in names}  # every data error before a model loads

    all_results = _score(args.model_name_or_path, args, benchmarks)
    baseline = _score(args.baseline_model_name_or_path, args, benchmarks) if args.baseline_model_name_or_path else None
    for name, results in all_results.items():
        arrow = " (baseline -> model)" if baseline else ""
        table = format_results(results, before=baseline[name] if baseline else None)
        print(f"\n{BENCHMARKS[name].title}: {len(benchmarks[name])} examples, scores in %{arrow}\n{table}\n", flush=True)
    if args.output_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_file)), exist_ok=True)
        with open(args.output_file, "w") as f:
            json.dump(_json_safe(all_results), f, indent=2, allow_nan=False)
        if baseline:
            stem, ext = os.path.splitext(args.output_file)
            with open(f"{stem}.baseline{ext or '.json'}", "w") as f:
                json.dump(_json_safe(baseline), f, indent=2, allow_nan=False)
        write_charts(os.path.dirname(os.path.abspath(args.output_file)), all_results, baseline)
        print(f"Results written to {args.output_file}")
    if args.add_to_model_card:
        identities = {name: benchmark_identity(name, args) for name in names}
        where = add_to_model_card(args.model_name_or_path, all_results, identities, baseline)
        print(f"Model card updated: {where}")
    return all_results


_SECTION = "## Compositional evaluation (hf-cf evaluate)"


def add_to_model_card(
    model: str,
    all_results: Mapping[str, Mapping],
    identities: Mapping[str, tuple[str, str, str | None]] | None = None,
    baseline: Mapping[str, Mapping] | None = None,
) -> str:
    """Adds (or replaces) each benchmark's ``model-index`` entries, table and chart in the model card
    of ``model``: a local folder (``README.md``, created when missing) or a model pushed to the Hub (the
    card is loaded from and pushed back to the repository, the charts uploaded; needs write access).
    The rest of the card is kept. ``identities``: each benchmark's :func:`benchmark_identity`.
    Returns where the card was written."""
    import tempfile

    from huggingface_hub import HfApi, ModelCard, ModelCardData

    if not os.path.isdir(model):  # a Hub repository
        with tempfile.TemporaryDirectory() as folder:
            charts = write_charts(folder, all_results, baseline)
            api = HfApi()
            for chart in charts.values():
                api.upload_file(path_or_fileobj=os.path.join(folder, chart), path_in_repo=chart, repo_id=model)
        card = update_model_card(ModelCard.load(model), all_results, identities, charts)
        card.push_to_hub(model, commit_message="hf-cf evaluate: compositional benchmark results")
        return f"{model} (Hub)"
    readme = os.path.join(model, "README.md")
    model_name = os.path.basename(os.path.normpath(os.path.abspath(model)))
    if os.path.isfile(readme):
        card = ModelCard.load(readme)
    else:
        card = ModelCard(f"---\n{ModelCardData(library_name='transformers').to_yaml()}\n---\n\n# {model_name}\n")
    card.data.model_name = card.data.model_name or model_name
    charts = write_charts(model, all_results, baseline)
    update_model_card(card, all_results, identities, charts).save(readme)
    return readme


def update_model_card(
    card,
    all_results: Mapping[str, Mapping],
    identities: Mapping[str, tuple[str, str, str | None]] | None = None,
    charts: Mapping[str, str] | None = None,
):
    """``card`` (a ``huggingface_hub.ModelCard``) with each benchmark's model-index entries (replacing
    those of the same dataset, split and metric, whoever wrote them), table and chart added or replaced."""
    from ..model_card import merge_eval_results, model_index_results

    new = []
    for name, results in all_results.items():
        dataset_type, title, split = (identities or {}).get(name) or (benchmark_identity(name) if name in BENCHMARKS else (name, name, None))
        new += model_index_results(results, dataset_type, title, dataset_split=split)
    card.data.eval_results = merge_eval_results(card.data.eval_results, new)

    for name, results in all_results.items():  # one marked block per benchmark, replaced on re-runs
        title = BENCHMARKS[name].title if name in BENCHMARKS else name
        start, end = f"<!-- hf-cf evaluate: {name} -->", f"<!-- /hf-cf evaluate: {name} -->"
        chart = f"\n![{title}: group score per subset]({charts[name]})\n" if charts and name in charts else ""
        block = f"{start}\n{title} (scores in %):\n\n```\n{format_results(results)}\n```\n{chart}{end}"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if pattern.search(card.text):
            card.text = pattern.sub(lambda _: block, card.text)
        elif ends := list(re.finditer(r"<!-- /hf-cf evaluate: [^>]* -->", card.text)):  # after the other blocks
            card.text = card.text[: ends[-1].end()] + f"\n\n{block}" + card.text[ends[-1].end() :]
        else:
            card.text = card.text.rstrip("\n") + f"\n\n{_SECTION}\n\n{block}\n"
    return card
