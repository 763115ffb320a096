"""Counterfactual objectives: from one step's scores and the collator's index tensors to named loss terms.

Terms are registered (:func:`register_term`, :data:`TERMS`): each is a function of one :class:`Step`
that returns its value, a pure loss of :mod:`hf_counterfactual.losses` fed the scores it asks the
step's scorer for (:mod:`hf_counterfactual.scoring`), and declares what it needs. Adding a term is
one registered function (and its test); presets and ``--loss_weights`` name it. The terms:

- ``align``: symmetric InfoNCE on factual pairs (CLIP; CF-VLM's ``L_align``).
- ``negclip``: InfoNCE whose image->text softmax also holds every counterfactual caption of the
  global batch as hard negatives (NegCLIP).
- ``grouping``: symmetric InfoNCE over factual AND complete counterfactual pairs: each counterfactual
  pair is a positive of its own and a negative of the original (CounterCurate grouping, TripletCLIP).
  Text-only counterfactuals join as hard-negative captions.
- ``sigmoid``, ``sigmoid_negclip``, ``sigmoid_grouping``: SigLIP's pairwise sigmoid loss (each score
  ``S = scale * cosine + bias`` a binary logit) over the same columns as ``align``, ``negclip`` and
  ``grouping`` (image rows; the loss has no second direction).
- ``paraphrase``: READ-CLIP's sentence-level alignment, InfoNCE from each record's paraphrase to the
  captions of the global batch (``scale * cosine``, one direction).
- ``paraphrase_hard``: the same with every counterfactual caption of the global batch as extra
  negative columns (READ-CLIP's ``use_negative_in_text_contrastive`` option).
- ``reconstruction``: READ-CLIP's token-level reconstruction, a frozen decoder's cross-entropy on a
  random true caption of the image (the caption or a paraphrase) given the projected pooled text
  embedding of the caption (:mod:`hf_counterfactual.reconstruction`; the trainer adds the decoder).
- ``csd``: CF-VLM ``L_csd``, hinge ``S(Ia, Ta) >= S(Icf_k, Tcf_k) + m1`` over the K complete pairs.
- ``fcd``: CF-VLM ``L_fcd``, hinge ``S(Ia, Ta) >= max_j S(Icf_j, Ta) + m2`` (hardest edited image,
  original text).
- ``local``: record-local InfoNCE, ``S(Ia, Ta)`` against ``S(Ia, Tcf_k)`` and against ``S(Icf_j, Ta)``.
- ``lm``: a generative VLM's language-model loss on the factual caption (mean token NLL given the
  image): CF-VLM's ``L_align`` for a model that has no contrastive alignment.
- ``yesno``: CF-VLM's ``L_align`` as a generative classification: :data:`~hf_counterfactual.vlm_scoring.VQA_QUESTION`
  about the factual image, answered ``Yes`` for its caption and ``No`` for each counterfactual
  caption; the mean answer NLL of the ``Yes`` and of the ``No`` questions, averaged (balanced, so K
  false captions per true one do not teach a prior for ``No``).
- ``choice``: CounterCurate's multiple-choice training format for a generative VLM: for each
  complete counterfactual pair, the factual image and the edited image are each asked which of
  the two captions (in a random order) describes it; the loss is the NLL of the right letter.

What a term needs (:attr:`Term.needs`): ``dense`` terms (``align``, ``negclip``, ``grouping``, the sigmoid terms, the paraphrase terms,
``reconstruction``) read a dual encoder's embeddings: they score
every image against every text of the (global) batch, which only a dual encoder gives cheaply;
``pairs`` terms (``csd``, ``fcd``, ``local``) ask only for pairs of a record with its own
counterfactuals, which any scorer gives (a generative VLM too). :meth:`CounterfactualObjective.check`
says at start-up which terms a model cannot serve.

Every term reads the model's scores ``S`` (for a dual encoder ``scale * cosine + bias``: what
evaluation ranks by).
Contrastive terms score local rows against columns gathered from every process; the hinge terms
compare a record with its own counterfactuals, so they stay local, and their margins are in score
units (a margin of 1.0 is 1/logit_scale in cosine: 0.01 for a CLIP at logit_scale 100).

False negatives. Each column of a contrastive term is a pair (image, text) that asserts its text
is true of its image. For the row whose target is pair ``t``, a column ``j != t`` whose pair shares
its text or its image with pair ``t`` is a known positive, not a negative, and is left out of that
row's softmax in both directions (two records with the same caption, a counterfactual caption equal
to another record's caption, the same photo twice). A hard-negative caption (NegCLIP's, grouping's
text-only counterfactuals) is left out of a row when it is the text of a valid column pair with the
row's image (the row's own text included). Identity is by content: the collator's ``text_key`` and
``image_key`` are gathered with the columns. A hand-built batch without these keys gets no
false-negative masking (every other column is a negative, as in CLIP).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .distributed import all_gather_no_grad, all_gather_with_grad, rank_and_world_size
from .losses import clip_loss, counterfactual_separation_loss, fine_grained_discrimination_loss, info_nce, negclip_loss
from .losses import record_local_contrastive_loss, sigmoid_loss, token_cross_entropy
from .vlm_scoring import VQA_ANSWER, VQA_NO

NEEDS = ("dense", "pairs", "generative")


@dataclass(frozen=True)
class Term:
    """A registered loss term.

    Attributes:
        name: what presets, ``--loss_weights`` and the logs (``loss/<name>``) call it.
        needs: ``dense`` (all-pairs scores of a dual encoder), ``pairs`` (a record's own pairs, any
            scorer) or ``generative`` (a generative VLM's answers or caption likelihood).
        counterfactual_texts, counterfactual_images, paraphrases: whether it reads the records'
            counterfactual captions / edited images / paraphrases (the collator encodes them only
            when some term does).
        reconstruction: whether it reads a decoder's logits of target captions (the trainer then
            wraps the model with the decoder, the collator tokenizes the targets).
        compute: ``compute(step) -> scalar`` for a :class:`Step`.
    """

    name: str
    needs: str
    counterfactual_texts: bool
    counterfactual_images: bool
    paraphrases: bool
    reconstruction: bool
    compute: Callable[["Step"], torch.Tensor]

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.compute) or "").split("\n")[0]


#: Every registered term, in the order a step computes them.
TERMS: dict[str, Term] = {}


def register_term(
    name: str, needs: str, counterfactual_texts: bool = False, counterfactual_images: bool = False, paraphrases: bool = False,
    reconstruction: bool = False,
):  # fmt: skip
    """Registers the decorated ``compute(step)`` as the loss term ``name`` (see :class:`Term`)."""
    if needs not in NEEDS:
        raise ValueError(f"needs must be one of {NEEDS}, got {needs!r}")

    def decorator(compute: Callable[["Step"], torch.Tensor]):
        if name in TERMS:
            raise ValueError(f"a loss term {name!r} is registered already")
        TERMS[name] = Term(name, needs, counterfactual_texts, counterfactual_images, paraphrases, reconstruction, compute)
        return compute

    return decorator


#: The (term, weight) pairs of each named objective. CF-VLM's weights are the paper's (alpha, beta, gamma),
#: READ-CLIP's its public code's.
OBJECTIVE_PRESETS: dict[str, list[tuple[str, float]]] = {
    "clip": [("align", 1.0)],
    "negclip": [("negclip", 1.0)],
    "grouping": [("grouping", 1.0)],
    # SigLIP's own loss, and it with counterfactual captions as negatives / counterfactual pairs as positives.
    "sigmoid": [("sigmoid", 1.0)],
    "sigmoid-negclip": [("sigmoid_negclip", 1.0)],
    "sigmoid-grouping": [("sigmoid_grouping", 1.0)],
    "cf-vlm": [("align", 1.0), ("csd", 0.45), ("fcd", 0.55)],
    # READ-CLIP: NegCLIP (3 rule-based hard-negative captions per caption in the paper) + reconstruction + paraphrase alignment.
    "read": [("negclip", 1.0), ("reconstruction", 0.1), ("paraphrase", 0.5)],
    # CF-VLM on a generative VLM (LLaVA): its L_align becomes the language-model loss on the factual caption.
    "cf-vlm-lm": [("lm", 1.0), ("csd", 0.45), ("fcd", 0.55)],
    # The same with L_align as generative classification: Yes for the factual caption, No for each counterfactual one.
    "cf-vlm-yesno": [("yesno", 1.0), ("csd", 0.45), ("fcd", 0.55)],
    "lm": [("lm", 1.0)],  # a generative VLM's captioning loss alone (the tiny LLaVA's pre-training)
    "countercurate": [("choice", 1.0)],  # CounterCurate's LLaVA fine-tuning: multiple choice, LM loss on the letter
}


def parse_loss_weights(value: Mapping[str, float] | str | None) -> dict[str, float]:
    """``--loss_weights``: a mapping, ``"csd=0,local=1"`` or a JSON object, as ``{term: weight}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            value = json.loads(text)
        else:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"loss_weights: expected term=weight[,term=weight...], got {value!r}")
            try:
                value = {term.strip(): float(weight) for term, weight in pairs}
            except ValueError:
                raise ValueError(f"loss_weights: a weight is not a number in {value!r}") from None
    weights = {str(term): float(weight) for term, weight in dict(value).items()}
    negative = {term: w for term, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"loss_weights must be >= 0, got {negative}")
    return weights


@dataclass
class CounterfactualObjective:
    """A weighted sum of registered terms. Terms with weight 0 are neither computed nor encoded for.

    Args:
        weights: ``{term: weight}`` over :data:`TERMS`.
        csd_margin, fcd_margin: the CF-VLM hinge margins ``m1``, ``m2``, in score units.
        gather: score local rows against the features of every process (global in-batch negatives).
    """

    weights: Mapping[str, float] = field(default_factory=lambda: dict(OBJECTIVE_PRESETS["grouping"]))
    csd_margin: float = 1.0
    fcd_margin: float = 1.0
    gather: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(TERMS)
        if unknown:
            raise ValueError(f"unknown loss term(s) {sorted(unknown)}; known terms: {list(TERMS)}")
        self.weights = {name: float(w) for name, w in self.weights.items() if w}
        if not self.weights:
            raise ValueError("every loss term has weight 0: nothing to train")

    @classmethod
    def from_preset(cls, name: str, loss_weights: Mapping[str, float] | str | None = None, **kwargs) -> "CounterfactualObjective":
        """The preset ``name`` (:data:`OBJECTIVE_PRESETS`) with the weights of ``loss_weights``
        (see :func:`parse_loss_weights`) replacing or joining the preset's."""
        if name not in OBJECTIVE_PRESETS:
            raise ValueError(f"unknown objective {name!r}; choose one of {list(OBJECTIVE_PRESETS)}")
        return cls(weights={**dict(OBJECTIVE_PRESETS[name]), **parse_loss_weights(loss_weights)}, **kwargs)

    def check(self, dense: bool, model_name: str) -> None:
        """Raises at start-up when a term needs what the model's scorer cannot give: all-pairs
        scores (``dense`` terms) from a generative model, which scores one pair per forward, or a
        caption likelihood (``lm``) from a dual encoder."""
        needs = {term: TERMS[term].needs for term in self.weights}
        missing = [term for term, need in needs.items() if need == "dense" and not dense]
        if missing:
            usable = [term for term, t in TERMS.items() if t.needs != "dense"]
            raise ValueError(
                f"loss term(s) {missing} need a dual encoder's embeddings (all-pairs scores), which {model_name} does not give "
                f"(it scores one pair per forward); use {usable}"
            )
        generative = [term for term, need in needs.items() if need == "generative" and dense]
        if generative:
            raise ValueError(f"loss term(s) {generative} need a generative model's caption likelihood; {model_name} is a dual encoder")

    @property
    def uses_counterfactual_texts(self) -> bool:
        return any(TERMS[term].counterfactual_texts for term in self.weights)

    @property
    def uses_counterfactual_images(self) -> bool:
        return any(TERMS[term].counterfactual_images for term in self.weights)

    @property
    def uses_paraphrases(self) -> bool:
        return any(TERMS[term].paraphrases for term in self.weights)

    @property
    def uses_reconstruction(self) -> bool:
        return any(TERMS[term].reconstruction for term in self.weights)

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the terms returned by :meth:`__call__`."""
        return sum(self.weights[name] * value for name, value in terms.items())

    def __call__(self, scores, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted loss terms ``{name: scalar}`` for the terms with non-zero weight, in registry order.

        Args:
            scores: the step's scores (:class:`~hf_counterfactual.scoring.DualEncoderScores`, or any
                object with ``pairs(image_index, text_index)`` when only record-local terms are on):
                over the batch's distinct images and texts (``pixel_values`` / ``input_ids`` order).
            batch: the index tensors of :class:`~hf_counterfactual.collator.CounterfactualCollator` and its
                content keys ``text_key`` / ``image_key``, which the contrastive terms gather to leave false
                negatives out (see the module docstring); a batch without both keys is not masked.
        """
        step = Step(self, scores, batch)
        return {name: term.compute(step) for name, term in TERMS.items() if name in self.weights}


class Step:
    """What the terms of one step read: the objective's settings, the scores, the batch's index
    tensors, and the intermediate results several terms share (computed once, on first use)."""

    def __init__(self, objective: CounterfactualObjective, scores, batch: Mapping[str, torch.Tensor]):
        self.objective, self.scores, self.batch = objective, scores, batch
        self.image_index, self.text_index = batch["image_index"], batch["text_index"]
        self.cf_text_valid, self.cf_image_valid = batch["cf_text_index"] >= 0, batch["cf_image_index"] >= 0
        # Masked where the index is < 0.
        self.cf_texts, self.cf_images = batch["cf_text_index"].clamp(min=0), batch["cf_image_index"].clamp(min=0)

    def gather(self, tensor: torch.Tensor, grad: bool = True) -> torch.Tensor:
        """``tensor`` from every process (local when the objective does not gather)."""
        if not self.objective.gather:
            return tensor
        return all_gather_with_grad(tensor) if grad else all_gather_no_grad(tensor)

    def targets(self, rows: int, device) -> torch.Tensor:
        """The gathered column of each of ``rows`` local pairs (this process's block of the columns)."""
        rank = rank_and_world_size()[0] if self.objective.gather else 0
        return rank * rows + torch.arange(rows, device=device)

    def local_vs_global(self, image: torch.Tensor, text: torch.Tensor, text_side: bool = True):
        """Scores of local rows against gathered columns (per image; per text when ``text_side``,
        else None) and each row's positive column."""
        logits_per_image = self.scores.matrix(image, self.gather(text))
        logits_per_text = self.scores.matrix(self.gather(image), text).T if text_side else None  # S(image column, text row)
        return logits_per_image, logits_per_text, self.targets(image.shape[0], image.device)

    # ------------------------------------------------------------------ shared by the dense terms

    @cached_property
    def keys(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return _pair_keys(self.batch)

    @cached_property
    def embeds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Factual image and text ``[B, D]``, counterfactual image and text ``[B, K, D]`` embeddings."""
        image_embeds, text_embeds = self.scores.image_embeds, self.scores.text_embeds
        return image_embeds[self.image_index], text_embeds[self.text_index], image_embeds[self.cf_images], text_embeds[self.cf_texts]

    @cached_property
    def factual_targets(self) -> torch.Tensor:
        """Each local factual pair's gathered column."""
        return self.targets(len(self.image_index), self.image_index.device)

    @cached_property
    def factual_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Local factual images against the gathered factual texts ``[B, M]``, and each row's positive column."""
        image, text, _, _ = self.embeds
        return self.scores.matrix(image, self.gather(text)), self.factual_targets

    @cached_property
    def factual_logits_per_text(self) -> torch.Tensor:
        """Local factual texts against the gathered factual images ``[B, M]`` (the InfoNCE terms' text side)."""
        image, text, _, _ = self.embeds
        return self.scores.matrix(self.gather(image), text).T

    @cached_property
    def factual_negatives(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Local images against every counterfactual caption of the global batch ``[B, X]``, and the
        mask of those that are negatives of each row (present, and not a true caption of its image)."""
        image, _, _, cf_text = self.embeds
        return self.scores.matrix(image, self.gather(cf_text.flatten(0, 1))), self.negative_caption_mask

    @cached_property
    def negative_caption_mask(self) -> torch.Tensor:
        """``[X]`` or ``[B, X]``: which counterfactual captions of the global batch are negatives of
        each local factual pair (present, and not a true caption of its image)."""
        mask = self.gather(self.cf_text_valid.flatten(), grad=False)
        if self.keys is not None:
            negative_text = self.gather(self.keys[1][..., 0].flatten(), grad=False)
            mask = mask & _not_true_captions(self.factual_columns[0], self.factual_targets, negative_text)
        return mask

    @cached_property
    def grouping_pairs(self) -> dict[str, torch.Tensor | None]:
        """The grouping terms' pairs, B factual then B*K complete counterfactual ones: their image and
        text embeddings, which are real (``valid``), each local pair's gathered column (``targets``),
        and the masks over the gathered columns: real pairs other than known positives
        (``column_mask``), captions of text-only counterfactuals that are negatives (``negative_mask``)."""
        image, text, cf_image, cf_text = self.embeds
        cf_image_valid, cf_text_valid, keys = self.cf_image_valid, self.cf_text_valid, self.keys
        valid = torch.cat([torch.ones_like(cf_image_valid[:, 0]), (cf_image_valid & cf_text_valid).flatten()])
        targets = self.targets(len(valid), valid.device)
        # Text-only counterfactuals (no edited image) are not pairs, but their captions are hard
        # negatives: the gathered pair columns already hold their scores, so they join as extra
        # columns of the same logits (no second gather or matmul).
        text_only = torch.cat([torch.zeros_like(valid[: len(image)]), (cf_text_valid & ~cf_image_valid).flatten()])
        column_mask, negative_mask = self.gather(torch.stack([valid, text_only], dim=1), grad=False).unbind(dim=1)
        if keys is not None:
            # Invalid pairs carry placeholder keys: they are masked columns already, and are kept
            # out of the pairs that make a caption true of an image.
            columns = self.gather(torch.cat([keys[0], keys[1].flatten(0, 1)]), grad=False)
            negative_mask = negative_mask & _not_true_captions(columns, targets, columns[:, 0], column_valid=column_mask)
            column_mask = column_mask & _not_target_twins(columns, targets)
        return {
            "image": torch.cat([image, cf_image.flatten(0, 1)]),
            "text": torch.cat([text, cf_text.flatten(0, 1)]),
            "valid": valid,
            "targets": targets,
            "column_mask": column_mask,
            "negative_mask": negative_mask,
        }

    @cached_property
    def factual_columns(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The gathered factual pairs' keys ``[M, 2]`` and the mask of each row's false negatives (None: unmasked)."""
        if self.keys is None:
            return None, None
        columns = self.gather(self.keys[0], grad=False)
        return columns, _not_target_twins(columns, self.factual_targets)

    # ------------------------------------------------------------------ shared by the record-local terms

    @cached_property
    def factual(self) -> torch.Tensor:
        """S(Ia, Ta), ``[B]``."""
        return self.scores.pairs(self.image_index, self.text_index)

    @cached_property
    def edited_images(self) -> torch.Tensor:
        """S(Icf_j, Ta), ``[B, K]``: each edited image with the original text."""
        return self.scores.pairs(self.cf_images, self.text_index.unsqueeze(1))


@register_term("align", "dense")
def align(step: Step) -> torch.Tensor:
    """Symmetric InfoNCE on factual pairs (CLIP; CF-VLM's L_align)."""
    logits_per_image, targets = step.factual_logits
    return clip_loss(logits_per_image, step.factual_logits_per_text, targets, column_mask=step.factual_columns[1])


@register_term("negclip", "dense", counterfactual_texts=True)
def negclip(step: Step) -> torch.Tensor:
    """InfoNCE whose image->text softmax also holds every counterfactual caption of the global batch (NegCLIP)."""
    logits_per_image, targets = step.factual_logits
    negative_logits, negative_mask = step.factual_negatives
    return negclip_loss(
        logits_per_image, negative_logits, step.factual_logits_per_text, targets, column_mask=step.factual_columns[1], negative_mask=negative_mask
    )


@register_term("grouping", "dense", counterfactual_texts=True, counterfactual_images=True)
def grouping(step: Step) -> torch.Tensor:
    """InfoNCE over factual and complete counterfactual pairs, each a positive of its own and a negative of the original."""
    pairs = step.grouping_pairs
    logits_per_image, logits_per_text, targets = step.local_vs_global(pairs["image"], pairs["text"])
    return negclip_loss(
        logits_per_image, logits_per_image, logits_per_text, targets,
        row_mask=pairs["valid"], column_mask=pairs["column_mask"], negative_mask=pairs["negative_mask"],
    )  # fmt: skip


@register_term("sigmoid", "dense")
def sigmoid(step: Step) -> torch.Tensor:
    """SigLIP's sigmoid loss on factual pairs: each image-text score a binary logit, positive for the pair."""
    logits_per_image, targets = step.factual_logits
    return sigmoid_loss(logits_per_image, targets, column_mask=step.factual_columns[1])


@register_term("sigmoid_negclip", "dense", counterfactual_texts=True)
def sigmoid_negclip(step: Step) -> torch.Tensor:
    """The sigmoid loss with every counterfactual caption of the global batch as extra negative columns (NegCLIP in sigmoid form)."""
    logits_per_image, targets = step.factual_logits
    negative_logits, negative_mask = step.factual_negatives
    return sigmoid_loss(logits_per_image, targets, negative_logits, column_mask=step.factual_columns[1], negative_mask=negative_mask)


@register_term("sigmoid_grouping", "dense", counterfactual_texts=True, counterfactual_images=True)
def sigmoid_grouping(step: Step) -> torch.Tensor:
    """The sigmoid loss over factual and complete counterfactual pairs, each a positive of its own and a negative of the original."""
    pairs = step.grouping_pairs
    logits, _, targets = step.local_vs_global(pairs["image"], pairs["text"], text_side=False)
    return sigmoid_loss(
        logits, targets, logits, row_mask=pairs["valid"], column_mask=pairs["column_mask"], negative_mask=pairs["negative_mask"]
    )


@register_term("paraphrase", "dense", paraphrases=True)
def paraphrase(step: Step) -> torch.Tensor:
    """READ-CLIP's paraphrase alignment: InfoNCE from each record's paraphrase to the captions of the global batch (scale * cosine, one direction)."""
    _, logits, mask = _paraphrase_logits(step)
    return info_nce(logits, step.factual_targets, row_mask=step.batch["paraphrase_index"] >= 0, column_mask=mask)


@register_term("paraphrase_hard", "dense", counterfactual_texts=True, paraphrases=True)
def paraphrase_hard(step: Step) -> torch.Tensor:
    """Paraphrase alignment whose columns also hold every counterfactual caption of the global batch (READ-CLIP's use_negative_in_text_contrastive)."""
    rows, logits, mask = _paraphrase_logits(step)
    _, _, _, cf_text = step.embeds
    negative_logits = step.scores.scale * rows @ step.gather(cf_text.flatten(0, 1)).T
    negative_mask = step.negative_caption_mask  # a row's target is its record's factual pair, as in NegCLIP
    columns = torch.ones_like(logits, dtype=torch.bool) if mask is None else mask
    return info_nce(
        torch.cat([logits, negative_logits], dim=1), step.factual_targets, row_mask=step.batch["paraphrase_index"] >= 0,
        column_mask=torch.cat([columns.expand_as(logits), negative_mask.expand_as(negative_logits)], dim=1),
    )  # fmt: skip


def _paraphrase_logits(step: Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each record's paraphrase embedding ``[B, D]`` (a placeholder where it has none), its scores
    against the gathered captions ``[B, M]`` (scale * cosine: text-text, no image-text bias), and
    the mask of the columns that are negatives (None: all)."""
    index = step.batch["paraphrase_index"]
    _, caption, _, _ = step.embeds
    rows = step.scores.text_embeds[index.clamp(min=0)]
    # A caption of the same image or with the same text as a row's own is not a negative.
    return rows, step.scores.scale * rows @ step.gather(caption).T, step.factual_columns[1]


@register_term("reconstruction", "dense", reconstruction=True)
def reconstruction(step: Step) -> torch.Tensor:
    """READ-CLIP's reconstruction: a frozen decoder's token cross-entropy on a true caption of the image, from the caption's projected text embedding."""
    logits = getattr(step.scores, "reconstruction_logits", None)
    if logits is None:
        raise ValueError(
            "the reconstruction term needs the decoder's logits: train through CounterfactualTrainer with reconstruction_decoder set "
            "(it wraps the model in a ReconstructionWrapper)"
        )
    return token_cross_entropy(logits, step.batch["reconstruction_labels"])


@register_term("csd", "pairs", counterfactual_texts=True, counterfactual_images=True)
def csd(step: Step) -> torch.Tensor:
    """CF-VLM L_csd: hinge S(Ia, Ta) >= S(Icf_k, Tcf_k) + m1 over the K complete counterfactual pairs."""
    pair_scores = step.scores.pairs(step.cf_images, step.cf_texts)  # S(Icf_k, Tcf_k), [B, K]
    mask = step.cf_image_valid & step.cf_text_valid
    return counterfactual_separation_loss(step.factual, pair_scores, step.objective.csd_margin, mask=mask)


@register_term("fcd", "pairs", counterfactual_images=True)
def fcd(step: Step) -> torch.Tensor:
    """CF-VLM L_fcd: hinge S(Ia, Ta) >= max_j S(Icf_j, Ta) + m2 (the hardest edited image, the original text)."""
    return fine_grained_discrimination_loss(step.factual, step.edited_images, step.objective.fcd_margin, mask=step.cf_image_valid)


@register_term("local", "pairs", counterfactual_texts=True, counterfactual_images=True)
def local(step: Step) -> torch.Tensor:
    """Record-local InfoNCE: S(Ia, Ta) against S(Ia, Tcf_k) and against S(Icf_j, Ta)."""
    edited_texts = step.scores.pairs(step.image_index.unsqueeze(1), step.cf_texts)  # S(Ia, Tcf_k), [B, K]
    return record_local_contrastive_loss(
        step.factual, edited_texts, step.edited_images, text_mask=step.cf_text_valid, image_mask=step.cf_image_valid
    )


@register_term("lm", "generative")
def lm(step: Step) -> torch.Tensor:
    """A generative VLM's language-model loss on the factual caption (mean token NLL given the image)."""
    return -step.scores.log_likelihood(step.image_index, step.text_index).mean()


@register_term("yesno", "generative", counterfactual_texts=True)
def yesno(step: Step) -> torch.Tensor:
    """L_align as generative classification: Yes for the factual caption, No for each counterfactual one (balanced)."""
    yes = step.scores.answer_nll(step.image_index, step.text_index, VQA_ANSWER)
    b, k = step.cf_text_valid.nonzero(as_tuple=True)
    no = step.scores.answer_nll(step.image_index[b], step.cf_texts[b, k], VQA_NO)
    return (yes.mean() + no.mean()) / 2 if len(no) else yes.mean()


@register_term("choice", "generative", counterfactual_texts=True, counterfactual_images=True)
def choice(step: Step) -> torch.Tensor:
    """CounterCurate's multiple choice: the right letter's NLL, factual and edited image each asked, options in a random order."""
    b, k = (step.cf_image_valid & step.cf_text_valid).nonzero(as_tuple=True)
    images = torch.cat([step.image_index[b], step.cf_images[b, k]])  # each pair's factual and edited image
    correct = torch.cat([step.text_index[b], step.cf_texts[b, k]])
    other = torch.cat([step.cf_texts[b, k], step.text_index[b]])
    correct_first = torch.rand(len(images)) < 0.5  # the order, drawn from the trainer's seeded generator
    nll = step.scores.choice_nll(images, correct, other, correct_first)
    return nll.sum() / max(len(nll), 1)


def _pair_keys(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(text key, image key) of each factual pair ``[B, 2]`` and counterfactual pair ``[B, K, 2]``
    (placeholders where an index is -1), or None for a batch without the collator's content keys."""
    present = [name for name in ("text_key", "image_key") if name in batch]
    if not present:
        return None
    if len(present) == 1:
        raise KeyError(f"the batch has {present[0]!r} but not the other content key: pass text_key and image_key, or neither")
    text_key, image_key = batch["text_key"], batch["image_key"]
    factual = torch.stack([text_key[batch["text_index"]], image_key[batch["image_index"]]], dim=-1)
    counterfactual = torch.stack(
        [text_key[batch["cf_text_index"].clamp(min=0)], image_key[batch["cf_image_index"].clamp(min=0)]], dim=-1
    )
    return factual, counterfactual


def _not_target_twins(columns: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` bool over pair columns ``[M, 2]`` (text key, image key): False where column ``j`` is not
    row ``i``'s target yet shares its text or its image with it (a known positive, not a negative)."""
    twins = (columns.unsqueeze(0) == columns[targets].unsqueeze(1)).any(dim=-1)
    is_target = torch.zeros_like(twins).scatter_(1, targets.unsqueeze(1), True)
    return ~twins | is_target


def _not_true_captions(
    columns: torch.Tensor, targets: torch.Tensor, captions: torch.Tensor, column_valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``[N, X]`` bool: False where caption ``x`` (text keys ``[X]``) is the text of a valid column pair
    (``columns`` ``[M, 2]``) whose image is the image of row ``i``'s target: a true caption of the row's image.

    Keys are renumbered densely (``torch.unique``, one host sync) so that an (image, text) pair is one
    exact integer, matched with ``isin`` in O((N*X + M) log M) instead of an ``[N, M, X]`` comparison.
    """
    text_ids, dense_text = torch.unique(torch.cat([columns[:, 0], captions]), return_inverse=True)
    dense_image = torch.unique(columns[:, 1], return_inverse=True)[1]
    num_texts, num_columns = len(text_ids), len(columns)
    known = dense_image * num_texts + dense_text[:num_columns]
    if column_valid is not None:
        known = known[column_valid]
    asked = dense_image[targets].unsqueeze(1) * num_texts + dense_text[num_columns:].unsqueeze(0)
    return ~torch.isin(asked, known)
