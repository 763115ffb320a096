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

__all__ = ["SCORES", "VLMScorer"]

SCORES = ("vqascore", "yes_logprob", "loglik", "loglik_mean", "choice")
CAPTION_QUESTION = "Write a caption for the image."
VQA_QUESTION = 'Does this figure show "{caption}"? Please answer yes or no.'
VQA_ANSWER = "Yes"
CHOICE_QUESTION = "Which of the following captions best describes the image?\n{options}\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class VLMScorer:
    """Scores images against captions with a generative VLM (``LlavaForConditionalGeneration``).

    ``scorer(images, texts)`` returns ``[len(images), len(texts)]`` scores (higher: a better match),
    which :func:`~hf_counterfactual.benchmarks.evaluate_benchmark` ranks like a dual encoder's.

    Args:
        model: the VLM; its ``model.get_image_features`` gives the image features it splices in.
        processor: its processor (``image_processor``, ``tokenizer``, ``apply_chat_template``).
        score: one of :data:`SCORES`.
        batch_size: sequences per language-model forward.
    """

    def __init__(self, model, processor, score: str = "vqascore", batch_size: int = 16, device=None, show_progress: bool = False):
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        self.model, self.processor, self.method, self.batch_size = model.eval(), processor, score, batch_size
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress
        self.image_token_id = model.config.image_token_index if hasattr(model.config, "image_token_index") else model.config.image_token_id

    # ---------------------------------------------------------------------------------- prompts

    def prompt(self, question: str) -> list[int]:
        """Token ids of the user turn (one image, then ``question``) and the assistant's opening."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text)["input_ids"]

    def answer(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"the answer {text!r} tokenizes to nothing")
        return ids

    # ---------------------------------------------------------------------------------- forward

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """The projected features of each image, ``[num_image_tokens, hidden]`` each (one vision pass)."""
        pixel_values = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        outputs = self.model.model.get_image_features(pixel_values=pixel_values.to(self.device, self.model.dtype), return_dict=True)
        return list(outputs.pooler_output)

    @torch.no_grad()
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
        starts = range(0, len(rows), self.batch_size)
        for start in tqdm(starts, desc="Scoring pairs", disable=not self.show_progress or len(starts) < 2):
            out += self._forward(features, rows[start : start + self.batch_size])
        return out

    def _forward(self, features, rows) -> list[torch.Tensor]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        length = max(len(prompt) + len(answer) for _, prompt, answer in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = self.tokenizer.padding_side == "left"
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        spans = []
        for r, (_, prompt, answer) in enumerate(rows):
            sequence = prompt + answer
            offset = length - len(sequence) if left else 0
            ids[r, offset : offset + len(sequence)] = torch.tensor(sequence)
            mask[r, offset : offset + len(sequence)] = 1
            spans.append((offset + len(prompt) - 1, len(answer) + 1))  # positions predicting answer[0] .. after it
        # Positions count real tokens only: left padding must not shift a row's positions.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        image_outputs = BaseModelOutputWithPooling(pooler_output=[features[image] for image, _, _ in rows])
        logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=position_ids.to(self.device),
            mm_encoder_outputs={"image": image_outputs},
        ).logits
        result = []
        for r, (first, count) in enumerate(spans):
            count = min(count, length - first)  # the position after the last token only exists if padded
            result.append(torch.log_softmax(logits[r, first : first + count].float(), dim=-1).cpu())
        return result

    # ---------------------------------------------------------------------------------- scores

    def __call__(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        return self.score(images, texts)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[len(images), len(texts)]`` (see the module docstring for each definition)."""
        features = self.image_features(images)
        if self.method == "choice":
            return torch.stack([self._choice_row(features, i, texts) for i in range(len(images))])
        pairs = [(i, j) for i in range(len(images)) for j in range(len(texts))]
        if self.method in ("vqascore", "yes_logprob"):
            prompts = {j: self.prompt(VQA_QUESTION.format(caption=text)) for j, text in enumerate(texts)}
            answers = {j: self.answer(VQA_ANSWER) for j in range(len(texts))}
        else:
            question = self.prompt(CAPTION_QUESTION)
            prompts = {j: question for j in range(len(texts))}
            answers = {j: self.answer(text) for j, text in enumerate(texts)}
        logprobs = self.next_token_logprobs(features, [i for i, _ in pairs], [prompts[j] for _, j in pairs], [answers[j] for _, j in pairs])
        scores = []
        for (_, j), rows in zip(pairs, logprobs):
            answer = torch.tensor(answers[j])
            token_logprobs = rows[: len(answer)].gather(1, answer.unsqueeze(1)).squeeze(1)
            scores.append(_reduce(self.method, token_logprobs))
        return torch.stack(scores).view(len(images), len(texts))

    def _choice_row(self, features, image: int, texts: Sequence[str]) -> torch.Tensor:
        n = len(texts)
        if n > len(LETTERS):
            raise ValueError(f"multiple choice takes at most {len(LETTERS)} captions, got {n}")
        letters = [self.answer(letter)[0] for letter in LETTERS[:n]]
        orders = [[(start + k) % n for k in range(n)] for start in range(n)]  # each caption at each letter once
        prompts = []
        for order in orders:
            options = "\n".join(f"{LETTERS[k]}. {texts[j]}" for k, j in enumerate(order))
            prompts.append(self.prompt(CHOICE_QUESTION.format(options=options)))
        logprobs = self.next_token_logprobs(features, [image] * n, prompts, [[]] * n)
        scores = torch.zeros(n)
        for order, rows in zip(orders, logprobs):
            probs = rows[0].exp()
            for k, j in enumerate(order):
                scores[j] += probs[letters[k]] / n
        return scores


def _reduce(method: str, token_logprobs: torch.Tensor) -> torch.Tensor:
    if method == "vqascore":
        return token_logprobs.mean().exp()  # exp(-mean cross-entropy)
    if method == "yes_logprob":
        return token_logprobs[0]
    if method == "loglik":
        return token_logprobs.sum()
    return token_logprobs.mean()  # loglik_mean
