"""Counterfactual objectives: from one step's scores and the collator's index tensors to named loss terms.

Terms (each a pure loss in :mod:`hf_counterfactual.losses`, fed the scores it asks the step's
scorer for, :mod:`hf_counterfactual.scoring`):

- ``align``: symmetric InfoNCE on factual pairs (CLIP; CF-VLM's ``L_align``).
- ``negclip``: InfoNCE whose image->text softmax also holds every counterfactual caption of the
  global batch as hard negatives (NegCLIP).
- ``grouping``: symmetric InfoNCE over factual AND complete counterfactual pairs: each counterfactual
  pair is a positive of its own and a negative of the original (CounterCurate grouping, TripletCLIP).
  Text-only counterfactuals join as hard-negative captions.
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

What a term needs (:data:`TERM_NEEDS`): ``dense`` terms (``align``, ``negclip``, ``grouping``) score
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

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from .distributed import all_gather_no_grad, all_gather_with_grad, rank_and_world_size
from .losses import clip_loss, counterfactual_separation_loss, fine_grained_discrimination_loss, negclip_loss
from .losses import record_local_contrastive_loss
from .vlm_scoring import VQA_ANSWER, VQA_NO

TERMS = ("align", "negclip", "grouping", "csd", "fcd", "local", "lm", "yesno", "choice")
#: What each term asks the scorer for: all-pairs scores ("dense"), a record's own pairs ("pairs"),
#: or a generative model's caption likelihood ("generative").
TERM_NEEDS = {
    "align": "dense", "negclip": "dense", "grouping": "dense", "csd": "pairs", "fcd": "pairs", "local": "pairs", "lm": "generative",
    "yesno": "generative", "choice": "generative",
}  # fmt: skip

#: Term weights of each named objective. CF-VLM's weights are the paper's (alpha, beta, gamma).
OBJECTIVE_PRESETS: dict[str, dict[str, float]] = {
    "clip": {"align": 1.0},
    "negclip": {"negclip": 1.0},
    "grouping": {"grouping": 1.0},
    "cf-vlm": {"align": 1.0, "csd": 0.45, "fcd": 0.55},
    # CF-VLM on a generative VLM (LLaVA): its L_align becomes the language-model loss on the factual caption.
    "cf-vlm-lm": {"lm": 1.0, "csd": 0.45, "fcd": 0.55},
    # The same with L_align as generative classification: Yes for the factual caption, No for each counterfactual one.
    "cf-vlm-yesno": {"yesno": 1.0, "csd": 0.45, "fcd": 0.55},
    "lm": {"lm": 1.0},  # a generative VLM's captioning loss alone (the tiny LLaVA's pre-training)
    "countercurate": {"choice": 1.0},  # CounterCurate's LLaVA fine-tuning: multiple choice, LM loss on the letter
}


@dataclass
class CounterfactualObjective:
    """A weighted sum of named terms. Terms with weight 0 are neither computed nor encoded for.

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
    def from_preset(cls, name: str, weight_overrides: Mapping[str, float | None] | None = None, **kwargs) -> "CounterfactualObjective":
        """The preset ``name`` (:data:`OBJECTIVE_PRESETS`) with the non-``None`` weights of ``weight_overrides``."""
        if name not in OBJECTIVE_PRESETS:
            raise ValueError(f"unknown objective {name!r}; choose one of {list(OBJECTIVE_PRESETS)}")
        weights = dict(OBJECTIVE_PRESETS[name])
        weights.update({term: w for term, w in (weight_overrides or {}).items() if w is not None})
        return cls(weights=weights, **kwargs)

    def check(self, dense: bool, model_name: str) -> None:
        """Raises at start-up when a term needs what the model's scorer cannot give: all-pairs
        scores (``dense`` terms) from a generative model, which scores one pair per forward, or a
        caption likelihood (``lm``) from a dual encoder."""
        missing = [term for term in self.weights if TERM_NEEDS[term] == "dense" and not dense]
        if missing:
            usable = [term for term, need in TERM_NEEDS.items() if need != "dense"]
            raise ValueError(
                f"loss term(s) {missing} need all-pairs scores of a dual encoder, which {model_name} does not give "
                f"(it scores one pair per forward); use {usable}"
            )
        generative = [term for term in self.weights if TERM_NEEDS[term] == "generative" and dense]
        if generative:
            raise ValueError(f"loss term(s) {generative} need a generative model's caption likelihood; {model_name} is a dual encoder")

    @property
    def uses_counterfactual_texts(self) -> bool:
        return any(term in self.weights for term in ("negclip", "grouping", "csd", "local", "yesno", "choice"))

    @property
    def uses_counterfactual_images(self) -> bool:
        return any(term in self.weights for term in ("grouping", "csd", "fcd", "local", "choice"))

    def total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the terms returned by :meth:`__call__`."""
        return sum(self.weights[name] * value for name, value in terms.items())

    def __call__(self, scores, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted loss terms ``{name: scalar}`` for the terms with non-zero weight.

        Args:
            scores: the step's scores (:class:`~hf_counterfactual.scoring.DualEncoderScores`, or any
                object with ``pairs(image_index, text_index)`` when only record-local terms are on):
                over the batch's distinct images and texts (``pixel_values`` / ``input_ids`` order).
            batch: the index tensors of :class:`~hf_counterfactual.collator.CounterfactualCollator` and its
                content keys ``text_key`` / ``image_key``, which the contrastive terms gather to leave false
                negatives out (see the module docstring); a batch without both keys is not masked.
        """
        image_index, text_index = batch["image_index"], batch["text_index"]
        cf_text_index, cf_image_index = batch["cf_text_index"], batch["cf_image_index"]
        cf_text_valid, cf_image_valid = cf_text_index >= 0, cf_image_index >= 0
        cf_texts, cf_images = cf_text_index.clamp(min=0), cf_image_index.clamp(min=0)  # masked where index < 0
        needs = self.weights

        terms: dict[str, torch.Tensor] = {}
        if any(TERM_NEEDS[term] == "dense" for term in needs):
            terms.update(self._dense_terms(scores, batch, cf_texts, cf_images, cf_text_valid, cf_image_valid))
        if "lm" in needs:
            terms["lm"] = -scores.log_likelihood(image_index, text_index).mean()
        if "yesno" in needs:
            yes = scores.answer_nll(image_index, text_index, VQA_ANSWER)
            b, k = cf_text_valid.nonzero(as_tuple=True)
            no = scores.answer_nll(image_index[b], cf_texts[b, k], VQA_NO)
            terms["yesno"] = (yes.mean() + no.mean()) / 2 if len(no) else yes.mean()
        if "choice" in needs:
            b, k = (cf_image_valid & cf_text_valid).nonzero(as_tuple=True)
            images = torch.cat([image_index[b], cf_images[b, k]])  # each pair's factual and edited image
            correct = torch.cat([text_index[b], cf_texts[b, k]])
            other = torch.cat([cf_texts[b, k], text_index[b]])
            correct_first = torch.rand(len(images)) < 0.5  # the order, drawn from the trainer's seeded generator
            nll = scores.choice_nll(images, correct, other, correct_first)
            terms["choice"] = nll.sum() / max(len(nll), 1)
        if "csd" in needs or "fcd" in needs or "local" in needs:
            factual = scores.pairs(image_index, text_index)  # S(Ia, Ta), [B]
            if "csd" in needs:
                pair_scores = scores.pairs(cf_images, cf_texts)  # S(Icf_k, Tcf_k), [B, K]
                terms["csd"] = counterfactual_separation_loss(
                    factual, pair_scores, self.csd_margin, mask=cf_image_valid & cf_text_valid
                )
            if "fcd" in needs or "local" in needs:
                edited_scores = scores.pairs(cf_images, text_index.unsqueeze(1))  # S(Icf_j, Ta), [B, K]
            if "fcd" in needs:
                terms["fcd"] = fine_grained_discrimination_loss(factual, edited_scores, self.fcd_margin, mask=cf_image_valid)
            if "local" in needs:
                edited_texts = scores.pairs(image_index.unsqueeze(1), cf_texts)  # S(Ia, Tcf_k), [B, K]
                terms["local"] = record_local_contrastive_loss(
                    factual, edited_texts, edited_scores, text_mask=cf_text_valid, image_mask=cf_image_valid
                )
        return terms

    def _dense_terms(self, scores, batch, cf_texts, cf_images, cf_text_valid, cf_image_valid) -> dict[str, torch.Tensor]:
        image = scores.image_embeds[batch["image_index"]]
        text = scores.text_embeds[batch["text_index"]]
        cf_text, cf_image = scores.text_embeds[cf_texts], scores.image_embeds[cf_images]  # [B, K, D]
        keys = _pair_keys(batch)  # (factual [B, 2], counterfactual [B, K, 2]) or None: no masking
        needs, terms = self.weights, {}
        if "align" in needs or "negclip" in needs:
            logits_per_image, logits_per_text, targets = self._local_vs_global(image, text, scores)
            columns = self._gather(keys[0], grad=False) if keys is not None else None  # [M, 2]
            column_mask = _not_target_twins(columns, targets) if keys is not None else None
        if "align" in needs:
            terms["align"] = clip_loss(logits_per_image, logits_per_text, targets, column_mask=column_mask)
        if "negclip" in needs:
            negatives, negative_mask = self._gather(cf_text.flatten(0, 1)), self._gather(cf_text_valid.flatten(), grad=False)
            if keys is not None:
                negative_text = self._gather(keys[1][..., 0].flatten(), grad=False)
                negative_mask = negative_mask & _not_true_captions(columns, targets, negative_text)
            terms["negclip"] = negclip_loss(
                logits_per_image,
                scores.matrix(image, negatives),
                logits_per_text,
                targets,
                column_mask=column_mask,
                negative_mask=negative_mask,
            )
        if "grouping" in needs:
            terms["grouping"] = self._grouping(image, text, cf_image, cf_text, cf_image_valid, cf_text_valid, keys, scores)
        return terms

    def _gather(self, tensor: torch.Tensor, grad: bool = True) -> torch.Tensor:
        if not self.gather:
            return tensor
        return all_gather_with_grad(tensor) if grad else all_gather_no_grad(tensor)

    def _local_vs_global(self, image: torch.Tensor, text: torch.Tensor, scores):
        """Local rows against gathered columns, and the column of each row's positive."""
        logits_per_image = scores.matrix(image, self._gather(text))
        logits_per_text = scores.matrix(self._gather(image), text).T  # S(image column, text row)
        rank = rank_and_world_size()[0] if self.gather else 0
        targets = rank * image.shape[0] + torch.arange(image.shape[0], device=image.device)
        return logits_per_image, logits_per_text, targets

    def _grouping(self, image, text, cf_image, cf_text, cf_image_valid, cf_text_valid, keys, scores) -> torch.Tensor:
        # Positives: B factual pairs followed by the B*K complete counterfactual pairs.
        pair_valid = torch.cat([torch.ones_like(cf_image_valid[:, 0]), (cf_image_valid & cf_text_valid).flatten()])
        pair_image = torch.cat([image, cf_image.flatten(0, 1)])
        pair_text = torch.cat([text, cf_text.flatten(0, 1)])
        logits_per_image, logits_per_text, targets = self._local_vs_global(pair_image, pair_text, scores)
        # Text-only counterfactuals (no edited image) are not pairs, but their captions are hard
        # negatives: the gathered pair columns already hold their scores, so they join the
        # image->text softmax as extra columns of the same logits (no second gather or matmul).
        text_only = torch.cat([torch.zeros_like(pair_valid[: len(image)]), (cf_text_valid & ~cf_image_valid).flatten()])
        column_mask, negative_mask = self._gather(torch.stack([pair_valid, text_only], dim=1), grad=False).unbind(dim=1)
        if keys is not None:
            # Invalid pairs carry placeholder keys: they are masked columns already, and are kept
            # out of the pairs that make a caption true of an image.
            columns = self._gather(torch.cat([keys[0], keys[1].flatten(0, 1)]), grad=False)
            negative_mask = negative_mask & _not_true_captions(columns, targets, columns[:, 0], column_valid=column_mask)
            column_mask = column_mask & _not_target_twins(columns, targets)
        return negclip_loss(
            logits_per_image,
            logits_per_image,
            logits_per_text,
            targets,
            row_mask=pair_valid,
            column_mask=column_mask,
            negative_mask=negative_mask,
        )


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
