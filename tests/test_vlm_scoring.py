"""Generative VLM scores (tiny LLaVA): against a direct forward, batched = one pair at a time on both
padding sides, the multiple-choice score free of letter position, one vision pass per image."""


import pytest
import torch
from PIL import Image

from hf_counterfactual.scenes import SCENE_VOCABULARY
from hf_counterfactual.tiny_models import build_tiny_llava
from hf_counterfactual.vlm_scoring import CAPTION_QUESTION, SCORES, VLMScorer

TEXTS = ["a red circle", "a large blue square to the left of a small red circle", "a green triangle"]


@pytest.fixture(scope="module")
def llava():
    return build_tiny_llava(SCENE_VOCABULARY)


@pytest.fixture(scope="module")
def images():
    return [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]


def test_caption_loglik_is_the_direct_forwards(llava, images):
    """The naive reference: the processor's own prompt + caption, one forward, log-probs summed by hand."""
    model, processor = llava
    scores = VLMScorer(model, processor, score="loglik")(images, TEXTS)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    for i, image in enumerate(images):
        for j, text in enumerate(TEXTS):
            prompt_ids = processor(images=image, text=prompt, return_tensors="pt")
            caption = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            full = torch.cat([prompt_ids["input_ids"][0], torch.tensor(caption)])
            with torch.no_grad():
                logits = model(input_ids=full[None], pixel_values=prompt_ids["pixel_values"]).logits[0]
            start = len(prompt_ids["input_ids"][0])
            expected = sum(torch.log_softmax(logits[start - 1 + k], -1)[token].item() for k, token in enumerate(caption))
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-4), (i, j)


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_a_padded_batch_scores_as_one_pair_at_a_time(llava, images, score, side):
    model, processor = llava
    processor.tokenizer.padding_side = side
    try:
        alone = VLMScorer(model, processor, score=score, batch_size=1)(images, TEXTS)
        batched = VLMScorer(model, processor, score=score, batch_size=16)(images, TEXTS)
    finally:
        processor.tokenizer.padding_side = "right"
    assert alone.shape == (len(images), len(TEXTS)) and torch.isfinite(alone).all()
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_vqascore_is_p_yes_for_a_one_token_answer(llava, images):
    model, processor = llava
    vqa = VLMScorer(model, processor, score="vqascore")(images, TEXTS)
    yes = VLMScorer(model, processor, score="yes_logprob")(images, TEXTS)
    torch.testing.assert_close(vqa, yes.exp(), rtol=1e-5, atol=1e-6)
    assert ((vqa > 0) & (vqa < 1)).all()


def test_choice_scores_do_not_depend_on_where_a_caption_is_listed(llava, images):
    model, processor = llava
    scorer = VLMScorer(model, processor, score="choice")
    two = scorer(images, TEXTS[:2])
    torch.testing.assert_close(scorer(images, TEXTS[1::-1]), two.flip(1), rtol=1e-5, atol=1e-6)  # both orders: symmetric
    three = scorer(images, TEXTS)
    rotated = scorer(images, [TEXTS[1], TEXTS[2], TEXTS[0]])
    torch.testing.assert_close(rotated, three[:, [1, 2, 0]], rtol=1e-5, atol=1e-6)
    assert (three.sum(1) <= 1 + 1e-6).all() and (three > 0).all()  # mean letter probabilities


def test_each_image_goes_through_the_vision_tower_once(llava, images):
    model, processor = llava
    calls = []
    handle = model.model.vision_tower.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        VLMScorer(model, processor, score="loglik", batch_size=2)(images, TEXTS)  # 6 pairs in 3 batches
    finally:
        handle.remove()
    assert calls == [len(images)]


def test_unknown_score_is_an_error(llava):
    with pytest.raises(ValueError, match="score must be one of"):
        VLMScorer(*llava, score="bleu")


@pytest.mark.parametrize("score", ["loglik", "choice"])
def test_groups_batched_together_score_as_each_alone(llava, images, score):
    from hf_counterfactual.benchmarks import counterfactual_records_benchmark, evaluate_benchmark
    from hf_counterfactual.builders import load_procedural_scenes

    model, processor = llava
    scorer = VLMScorer(model, processor, score=score, batch_size=16)
    groups = [(images, TEXTS[:2]), (images[:1], TEXTS), (images[::-1], TEXTS[1:])]
    for together, (group_images, group_texts) in zip(scorer.score_groups(groups), groups):
        torch.testing.assert_close(together, scorer(group_images, group_texts), rtol=1e-4, atol=1e-5)
    # Through evaluation: the same results as scoring one example at a time with a plain callable.
    test = load_procedural_scenes(num_train=0, num_test=3, seed=0)["test"]
    benchmark = counterfactual_records_benchmark(test, name="t")
    one_at_a_time = evaluate_benchmark(lambda images, texts: scorer(images, texts).numpy(), benchmark)
    assert evaluate_benchmark(scorer, benchmark) == one_at_a_time


@pytest.mark.parametrize("score", ["loglik_mean", "vqascore"])
def test_a_bfloat16_llava_scores_like_float32(images, score):
    """What a GPU user loads: bfloat16 weights score as float32 does, up to bfloat16 rounding."""
    import copy

    model, processor = build_tiny_llava(SCENE_VOCABULARY)
    full = VLMScorer(model, processor, score=score)(images, TEXTS)
    half = VLMScorer(copy.deepcopy(model).to(torch.bfloat16), processor, score=score)(images, TEXTS)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    torch.testing.assert_close(half, full, rtol=0.05, atol=0.05 * full.abs().max().item())


def test_a_bf16_training_step_of_llava(tmp_path):
    """--bf16 (autocast) on the tiny LLaVA: finite per-term losses and trained weights."""
    from dummy_components import records_dataset

    from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments
    from hf_counterfactual.scenes import generate_record

    model, processor = build_tiny_llava(SCENE_VOCABULARY)
    before = model.model.multi_modal_projector.linear_1.weight.clone()
    args = CounterfactualTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, report_to="none", save_strategy="no",
                                           use_cpu=True, bf16=True, objective="cf-vlm-lm", num_counterfactuals=2, disable_tqdm=True)  # fmt: skip
    records = [generate_record(i, "train", seed=0) for i in range(2)]
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert all(torch.isfinite(torch.tensor(logged[f"loss/{term}"])) for term in ("lm", "csd", "fcd"))
    assert not torch.equal(before, model.model.multi_modal_projector.linear_1.weight)
