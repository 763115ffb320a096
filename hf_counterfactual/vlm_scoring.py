"""Scores of a generative vision-language model (LLaVA and its kin) for image-caption pairs.

A generative VLM has no embeddings to compare: it scores a pair by how likely it finds an answer
after a prompt built with the processor's chat template. Three definitions, each from its source:

- ``loglik`` / ``loglik_mean``: the caption's log-likelihood given the image (sum / mean over the
  caption's tokens) after :data:`CAPTION_QUESTION`.
- ``vqascore``: VQAScore as t2v_metrics defines it for LLaVA-1.5 (Lin et al. 2024): the question
  :data:`VQA_QUESTION`, the answer ``Yes``; score = ``exp(-mean cross-entropy)`` over the answer
  tokens. ``yes_logprob``: the plain ``log P(first answer token)``.
- ``choice``: multiple choice as CounterCurate formats it (:data:`CHOICE_QUESTION`); a caption's
  score is the probability of its letter. Unlike CounterCurate, every caption is put at every
  letter (the cyclic orders of the options: both orders for two) and the probabilities averaged, so
  the model's letter bias cancels.

Each distinct image goes through the vision tower once per call (the language model receives the
projected features through ``mm_encoder_outputs``), and rows are padded on the tokenizer's side with
``position_ids`` from the attention mask, so a padded batch scores as each pair alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .image_processing import resolve_image_transform

__all__ = ["PAIR_SCORES", "SCORES", "VLMScorer", "VLMScores"]

SCORES = ("vqascore", "yes_logprob", "loglik", "loglik_mean", "choice")
PAIR_SCORES = SCORES[:-1]  # a score of one (image, caption) pair: what training terms can ask for
CAPTION_QUESTION = "Write a caption for the image."
VQA_QUESTION = 'Does this figure show "{caption}"? Please answer yes or no.'
VQA_ANSWER = "Yes"
VQA_NO = "No"  # the answer the generative-classification term ``yesno`` trains on for a false caption
CHOICE_QUESTION = "Which of the following captions best describes the image?\n{options}\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class VLMScorer:
    """Scores images against captions with a generative VLM (``LlavaForConditionalGeneration``).

    ``scorer(images, texts)`` returns ``[len(images), len(texts)]`` scores (higher: a better match),
    which :func:`~hf_counterfactual.benchmarks.evaluate_benchmark` ranks like a dual encoder's. In
    training, :class:`VLMScores` asks it for a step's pairs, with gradient.

    Args:
        model: the VLM; its ``model.get_image_features`` gives the image features it splices in.
        processor: its processor (``image_processor``, ``tokenizer``, ``apply_chat_template``).
        score: one of :data:`SCORES`.
        batch_size: sequences per language-model forward (``None``: all of a call in one forward).
        forward_model: what runs the language-model forward (a DDP-wrapped ``model`` in training).
        image_path: ``"fast"`` (default): :class:`~hf_counterfactual.image_processing.FastImageTransform`
            where the image processor allows it (LLaVA-1.5's ``CLIPImageProcessor`` does; processors
            with their own pipeline, such as LLaVA-NeXT's any-resolution tiling or a pad-to-square
            ``LlavaImageProcessor``, fall back to the processor with a logged reason); ``"exact"``:
            the processor. In training the trainer's collator has already pre-processed the images.
    """

    def __init__(
        self, model, processor, score: str = "vqascore", batch_size: int | None = 16, device=None, show_progress: bool = False, forward_model=None,
        image_path: str = "fast",
    ):  # fmt: skip
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.model, self.processor, self.method, self.batch_size = model, processor, score, batch_size
        # What runs the language-model forward: the model itself, or its DDP / DeepSpeed wrapper in training.
        self.forward_model = forward_model if forward_model is not None else model
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress
        self.image_transform = resolve_image_transform(processor.image_processor, image_path)
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        self.image_token_id = model.config.image_token_index if hasattr(model.config, "image_token_index") else model.config.image_token_id

    # ---------------------------------------------------------------------------------- prompts

    def prompt(self, question: str) -> list[int]:
        """Token ids of the user turn (one image, then ``question``) and the assistant's opening."""
        if question not in self._prompts:  # rendering the chat template costs more than a tiny forward
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            self._prompts[question] = self.tokenizer(text)["input_ids"]
        return self._prompts[question]

    def answer(self, text: str) -> list[int]:
        if text not in self._answers:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"the answer {text!r} tokenizes to nothing")
            self._answers[text] = ids
        return self._answers[text]

    # ---------------------------------------------------------------------------------- forward

    def image_features(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """The projected features of each image, ``[num_image_tokens, hidden]`` each (one vision pass)."""
        if self.image_transform is not None:
            pixel_values = self.image_transform.normalize(self.image_transform(list(images)).to(self.device))
        else:
            pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        return self.features_of(pixel_values)

    def features_of(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`image_features` of pre-processed images (with gradient, when enabled)."""
        outputs = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.model.dtype), return_dict=True)
        return list(outputs.pooler_output)

    def next_token_logprobs(
        self, features: Sequence[torch.Tensor], image_index: Sequence[int], prompts: Sequence[list[int]], answers: Sequence[list[int]]
    ) -> list[torch.Tensor]:
        """For each row: the log-probabilities ``[len(answer) + 1, vocab]`` the model gives at the
        positions that predict each answer token and the one after (row ``image_index[r]``'s image
        spliced in where its prompt holds the image token)."""
        rows = []
        for image, prompt, answer in zip(image_index, prompts, answers):
            expanded = []
            for token in prompt:  # the processor's expansion: one placeholder per image feature
                expanded += [token] * len(features[image]) if token == self.image_token_id else [token]
            rows.append((image, expanded, list(answer)))
        out: list[torch.Tensor] = []
        size = self.batch_size or max(len(rows), 1)
        starts = range(0, len(rows), size)
        for start in tqdm(starts, desc="Scoring pairs", disable=not self.show_progress or len(starts) < 2):
            out += self._forward(features, rows[start : start + size])
        return out

    def _forward(self, features, rows) -> list[torch.Tensor]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        length = max(len(prompt) + len(answer) for _, prompt, answer in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = self.tokenizer.padding_side == "left"
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        keep = torch.zeros((len(rows), length), dtype=torch.bool)  # the positions whose logits are used
        counts = []
        for r, (_, prompt, answer) in enumerate(rows):
            sequence = prompt + answer
            offset = length - len(sequence) if left else 0
            ids[r, offset : offset + len(sequence)] = torch.tensor(sequence)
            mask[r, offset : offset + len(sequence)] = 1
            first = offset + len(prompt) - 1  # positions predicting answer[0] .. after it
            count = min(len(answer) + 1, length - first)  # the position after the last token only exists if padded
            keep[r, first : first + count] = True
            counts.append(count)
        # Positions count real tokens only: left padding must not shift a row's positions.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        image_outputs = BaseModelOutputWithPooling(pooler_output=[features[image] for image, _, _ in rows])
        logits = self.forward_model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            mm_encoder_outputs={"image": image_outputs},
            # The LM head only where scored ([sum(counts), vocab], rows in order): LLaVA-1.5's rows hold
            # 576 image tokens, whose logits over a 32k vocabulary would be most of the forward's memory.
            logits_to_keep=keep.to(self.device),
        ).logits
        return list(torch.log_softmax(logits.float(), dim=-1).split(counts))  # one call, not one per row

    # ---------------------------------------------------------------------------------- scores

    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        return self.score(images, texts)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[len(images), len(texts)]`` (see the module docstring for each definition)."""
        return self.score_groups([(images, texts)])[0]

    @torch.no_grad()
    def score_groups(self, groups: Sequence[tuple[Sequence[Image.Image], Sequence[str]]]) -> list[torch.Tensor]:
        """The score grid of each ``(images, texts)`` group, all groups' sequences batched together
        (what :func:`~hf_counterfactual.benchmarks.score_benchmark` calls with many small examples).
        The model is put in eval mode for the call (dropout off) and back as it was after."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self._score_groups(groups)
        finally:
            self.model.train(was_training)

    def _score_groups(self, groups) -> list[torch.Tensor]:
        features = self.image_features([image for images, _ in groups for image in images])
        requests = []  # (group, row, column or order, image feature index, prompt, answer)
        offset = 0
        for g, (images, texts) in enumerate(groups):
            for i in range(len(images)):
                for column, prompt, answer in self._requests(texts):
                    requests.append((g, i, column, offset + i, prompt, answer))
            offset += len(images)
        logprobs = self.next_token_logprobs(features, [r[3] for r in requests], [r[4] for r in requests], [r[5] for r in requests])
        grids = [torch.zeros(len(images), len(texts)) for images, texts in groups]
        for (g, i, column, _, _, answer), rows in zip(requests, logprobs):
            texts = groups[g][1]
            if self.method == "choice":  # column: the order; add each caption's letter probability
                letters, order = self._letters(len(texts)), _cyclic_orders(len(texts))[column]
                grids[g][i, order] += rows[0].exp()[letters] / len(texts)  # one indexed add, not one per letter
            else:
                answer = torch.tensor(answer)
                grids[g][i, column] = _reduce(self.method, rows[: len(answer)].gather(1, answer.unsqueeze(1)).squeeze(1))
        return grids

    def _requests(self, texts: Sequence[str]) -> list[tuple[int, list[int], list[int]]]:
        """``(column, prompt ids, answer ids)`` to ask of each image for ``texts``."""
        if self.method == "choice":
            if len(texts) > len(LETTERS):
                raise ValueError(f"multiple choice takes at most {len(LETTERS)} captions, got {len(texts)}")
            out = []
            for o, order in enumerate(_cyclic_orders(len(texts))):
                options = "\n".join(f"{LETTERS[k]}. {texts[j]}" for k, j in enumerate(order))
                out.append((o, self.prompt(CHOICE_QUESTION.format(options=options)), []))
            return out
        return [(j, *_pair_request(self, self.method, text)) for j, text in enumerate(texts)]

    def _letters(self, n: int) -> list[int]:
        return [self.answer(letter)[0] for letter in LETTERS[:n]]


class VLMScores:
    """One training step's scores of a generative VLM over the batch's distinct images and texts,
    for the pairs a record-local term asks for (:meth:`pairs`), with gradient. Each image's features
    are computed once per step and each pair is scored once (repeated asks are served from memory).
    ``dense`` is False: all-pairs terms cannot use it (see :attr:`~hf_counterfactual.objectives.Term.needs`).

    Args:
        scorer: a :class:`VLMScorer` whose ``score`` is one of :data:`PAIR_SCORES`.
        pixel_values: the step's distinct images, pre-processed (the collator's ``pixel_values``).
        texts: the step's distinct texts (the collator's ``texts``).
    """

    dense = False

    def __init__(self, scorer: VLMScorer, pixel_values: torch.Tensor | None, texts: Sequence[str]):
        if scorer.method not in PAIR_SCORES:
            raise ValueError(f"training scores one pair at a time: score must be one of {PAIR_SCORES}, got {scorer.method!r}")
        self.scorer, self.texts = scorer, list(texts)
        # Without pixel_values the scores only record what is asked (zeros): see prefetch.
        self.features = scorer.features_of(pixel_values) if pixel_values is not None else None
        self._scores: dict[tuple, torch.Tensor] = {}
        self.asked: dict[tuple, tuple] = {}  # key -> (request, method), what a recording pass was asked for

    def prefetch(self, asked: dict[tuple, tuple]) -> None:
        """Scores every key a recording pass (``VLMScores(scorer, None, texts)``) was asked for, in
        one call of the model (``scorer.batch_size=None``): DDP allows one forward per backward."""
        self._compute([(key, request, method) for key, (request, method) in asked.items() if key not in self._scores])

    def pairs(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """``S(image_index[..], text_index[..])`` (indices broadcast against each other)."""
        method = self.scorer.method
        return self._grid(method, method, image_index, text_index, lambda text: _pair_request(self.scorer, method, text))

    def log_likelihood(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """Mean log-probability per token of each text as the image's caption (``loglik_mean``,
        whatever the training score is): what the language-model term ``lm`` maximises."""
        return self._grid("loglik_mean", "loglik_mean", image_index, text_index, lambda text: _pair_request(self.scorer, "loglik_mean", text))

    def answer_nll(self, image_index: torch.Tensor, text_index: torch.Tensor, answer: str) -> torch.Tensor:
        """Mean NLL per token of ``answer`` to :data:`VQA_QUESTION` about each text and image (the
        generative classification of the term ``yesno``: ``Yes`` for a true caption, ``No`` for a false one)."""

        def request(text):
            return self.scorer.prompt(VQA_QUESTION.format(caption=text)), self.scorer.answer(answer)

        return -self._grid(("answer", answer), "loglik_mean", image_index, text_index, request)

    def choice_nll(self, image_index: torch.Tensor, correct: torch.Tensor, other: torch.Tensor, correct_first: torch.Tensor) -> torch.Tensor:
        """CounterCurate's multiple-choice loss: for each question, the image ``image_index``, the
        options ``correct`` and ``other`` (text rows; ``correct`` listed first where ``correct_first``)
        in :data:`CHOICE_QUESTION`, the negative log-probability of the correct option's letter."""
        keys = [("choice", i, c, o, bool(f)) for i, c, o, f in zip(image_index.tolist(), correct.tolist(), other.tolist(), correct_first.tolist())]

        def request(key):
            _, _, c, o, first = key
            options = (c, o) if first else (o, c)
            listed = "\n".join(f"{LETTERS[n]}. {self.texts[t]}" for n, t in enumerate(options))
            return self.scorer.prompt(CHOICE_QUESTION.format(options=listed)), self.scorer.answer(LETTERS[0 if first else 1])

        return -self._score(keys, request, "loglik").view(image_index.shape)

    def _grid(self, tag, method: str, image_index: torch.Tensor, text_index: torch.Tensor, request_for_text) -> torch.Tensor:
        """The scores of every (image, text) of the broadcast indices, keyed ``(tag, image, text)``:
        ``request_for_text(text)`` gives the (prompt ids, answer ids), ``method`` how the answer is scored."""
        image_index, text_index = torch.broadcast_tensors(image_index, text_index)
        keys = [(tag, i, j) for i, j in zip(image_index.flatten().tolist(), text_index.flatten().tolist())]
        return self._score(keys, lambda key: request_for_text(self.texts[key[2]]), method).view(image_index.shape)

    def _compute(self, items: list[tuple[tuple, object, str]]) -> None:
        """Scores ``(key, request, method)`` items in one :meth:`VLMScorer.next_token_logprobs` call."""
        if not items:
            return
        asked = [request(key) for key, request, _ in items]
        logprobs = self.scorer.next_token_logprobs(self.features, [key[1] for key, _, _ in items], [a[0] for a in asked], [a[1] for a in asked])
        for (key, _, method), (_, answer), rows in zip(items, asked, logprobs):
            answer = torch.tensor(answer, device=rows.device)
            self._scores[key] = _reduce(method, rows[: len(answer)].gather(1, answer.unsqueeze(1)).squeeze(1))

    def _score(self, keys: list[tuple], request, method: str) -> torch.Tensor:
        """The scores of ``keys`` (``key[1]``: the image row), each asked of the model once per step:
        ``request(key)`` gives its (prompt ids, answer ids), ``method`` how its answer is scored."""
        if self.features is None:  # recording: remember, answer zeros
            self.asked.update({key: (request, method) for key in keys})
            return torch.zeros(len(keys))
        missing = list(dict.fromkeys(key for key in keys if key not in self._scores))
        self._compute([(key, request, method) for key in missing])
        if not keys:
            return torch.zeros(0, device=self.features[0].device) + 0 * sum(f.sum() for f in self.features)
        return torch.stack([self._scores[key] for key in keys])


def _pair_request(scorer: VLMScorer, method: str, text: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) that score ``text`` by ``method`` (one of :data:`PAIR_SCORES`)."""
    if method in ("vqascore", "yes_logprob"):
        return scorer.prompt(VQA_QUESTION.format(caption=text)), scorer.answer(VQA_ANSWER)
    return scorer.prompt(CAPTION_QUESTION), scorer.answer(text)


def _cyclic_orders(n: int) -> list[list[int]]:
    """The ``n`` cyclic orders of ``n`` options: each option at each position once."""
    return [[(start + k) % n for k in range(n)] for start in range(n)]


def _reduce(method: str, token_logprobs: torch.Tensor) -> torch.Tensor:
    if method == "vqascore":
        return token_logprobs.mean().exp()  # exp(-mean cross-entropy)
    if method == "yes_logprob":
        return token_logprobs[0]
    if method == "loglik":
        return token_logprobs.sum()
    return token_logprobs.mean()  # loglik_mean
