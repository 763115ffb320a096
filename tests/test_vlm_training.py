"""A generative VLM (tiny LLaVA) in CounterfactualTrainer on the scoring seam: record-local terms
against per-record references from the evaluation scorer, dense terms refused at start-up, LoRA."""

import math

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from dummy_components import records_dataset
from hf_counterfactual import CounterfactualCollator, CounterfactualObjective, CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
from hf_counterfactual.tiny_models import build_tiny_llava
from hf_counterfactual.vlm_scoring import VLMScorer, VLMScores

MARGIN = 0.2


@pytest.fixture
def llava():
    return build_tiny_llava(SCENE_VOCABULARY)


@pytest.fixture(scope="module")
def records():
    return [generate_record(i, "train", seed=0) for i in range(3)]


def args(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, max_steps=2, learning_rate=1e-3, report_to="none",
                    save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, objective="cf-vlm",
                    loss_weights={"align": 0.0, "local": 1.0}, num_counterfactuals=2, csd_margin=MARGIN, fcd_margin=MARGIN)  # fmt: skip
    return CounterfactualTrainingArguments(**{**defaults, **kwargs})


def test_step_scores_are_the_evaluation_scorers_with_gradient(llava, records):
    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records)
    scorer = VLMScorer(model, processor, score="loglik_mean")
    scores = VLMScores(scorer, batch["pixel_values"], batch["texts"])
    asked = scores.pairs(torch.tensor([[0], [1]]), torch.tensor([0, 2, 3]))
    assert asked.shape == (2, 3) and asked.requires_grad
    expected = scorer.score([records[0]["image"]], [batch["texts"][j] for j in (0, 2, 3)])  # image row 0: record 0's
    torch.testing.assert_close(asked[0].detach(), expected[0], rtol=1e-4, atol=1e-5)
    asked.sum().backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0  # through the image features too


def test_record_local_terms_match_per_record_references(llava, records):
    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records)
    scorer = VLMScorer(model, processor, score="loglik_mean")
    objective = CounterfactualObjective(weights={"csd": 1.0, "fcd": 1.0, "local": 1.0}, csd_margin=MARGIN, fcd_margin=MARGIN)
    with torch.no_grad():
        terms = objective(VLMScores(scorer, batch["pixel_values"], batch["texts"]), batch)
    csd, fcd, local_text, local_image = [], [], [], []
    for b, record in enumerate(records):
        k = [int(j) for j in batch["cf_text_index"][b] if j >= 0]
        cfs = [cf for cf in record["counterfactuals"] if cf["caption"].strip() in [batch["texts"][j] for j in k]]
        images = [record["image"]] + [cf["image"] for cf in cfs]
        grid = scorer.score(images, [record["caption"]] + [cf["caption"] for cf in cfs])  # the naive per-record scores
        factual = grid[0, 0].item()
        csd += [max(0.0, MARGIN - factual + grid[1 + c, 1 + c].item()) for c in range(len(cfs))]
        fcd.append(max(0.0, MARGIN - factual + max(grid[1 + c, 0].item() for c in range(len(cfs)))))
        nll = lambda row: -row[0] + math.log(sum(math.exp(x) for x in row))  # noqa: E731
        local_text.append(nll([factual] + [grid[0, 1 + c].item() for c in range(len(cfs))]))
        local_image.append(nll([factual] + [grid[1 + c, 0].item() for c in range(len(cfs))]))
    assert terms["csd"].item() == pytest.approx(sum(csd) / len(csd), abs=1e-4)
    assert terms["fcd"].item() == pytest.approx(sum(fcd) / len(fcd), abs=1e-4)
    assert terms["local"].item() == pytest.approx((sum(local_text) / 3 + sum(local_image) / 3) / 2, abs=1e-4)


def test_trainer_trains_llava_on_record_local_terms_and_saves_a_plain_llava(llava, records, tmp_path):
    model, processor = llava
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = CounterfactualTrainer(model=model, args=args(tmp_path), train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss/local" in e]
    assert len(logged) == 2 and all({"loss/csd", "loss/fcd", "loss/local"} <= set(e) and math.isfinite(e["loss"]) for e in logged)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    trainer.save_model()
    loaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out")
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[name])


def test_a_dense_objective_on_llava_is_refused_at_start_up(llava, records, tmp_path):
    model, processor = llava
    with pytest.raises(ValueError, match=r"\['grouping'\] need a dual encoder's embeddings \(all-pairs scores\), which LlavaForConditionalGeneration"):
        CounterfactualTrainer(model=model, args=args(tmp_path, objective="grouping", loss_weights=None),
                              train_dataset=records_dataset(records), processing_class=processor)  # fmt: skip


def test_lora_on_llava_changes_only_the_adapters(llava, records, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = llava
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CounterfactualTrainer(model=model, args=args(tmp_path, max_steps=1), train_dataset=records_dataset(records), processing_class=processor).train()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)


def test_lm_term_is_the_factual_captions_mean_token_nll(llava, records, tmp_path):
    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records)
    scorer = VLMScorer(model, processor, score="vqascore")  # lm reads the caption likelihood whatever the pair score
    with torch.no_grad():
        terms = CounterfactualObjective(weights={"lm": 1.0})(VLMScores(scorer, batch["pixel_values"], batch["texts"]), batch)
    reference = VLMScorer(model, processor, score="loglik_mean")
    nlls = [-reference.score([r["image"]], [r["caption"]])[0, 0].item() for r in records]
    assert terms["lm"].item() == pytest.approx(sum(nlls) / len(nlls), abs=1e-4)

    trainer = CounterfactualTrainer(model=model, args=args(tmp_path, objective="cf-vlm-lm", loss_weights=None, max_steps=1),
                                    train_dataset=records_dataset(records), processing_class=processor)  # fmt: skip
    trainer.train()
    assert {"loss/lm", "loss/csd", "loss/fcd"} <= set(trainer.state.log_history[0])


def test_lm_on_a_dual_encoder_is_refused_at_start_up(tmp_path):
    from dummy_components import get_dummy_components

    model, processor, records = get_dummy_components(num_records=2)
    with pytest.raises(ValueError, match=r"\['lm'\] need a generative model's caption likelihood; CLIPModel is a dual encoder"):
        CounterfactualTrainer(model=model, args=args(tmp_path, objective="clip", loss_weights={"lm": 1.0}),
                              train_dataset=records_dataset(records), processing_class=processor)  # fmt: skip


def test_gradient_checkpointing_gives_the_same_step(llava, records, tmp_path):
    import copy

    model, processor = llava
    results = {}
    for checkpointing in (False, True):
        trained = copy.deepcopy(model)
        run = args(tmp_path / str(checkpointing), max_steps=1, gradient_checkpointing=checkpointing, optim="sgd", learning_rate=0.1,
                   lr_scheduler_type="constant", train_sampling_strategy="sequential", max_grad_norm=0.0)  # fmt: skip
        CounterfactualTrainer(model=trained, args=run, train_dataset=records_dataset(records), processing_class=processor).train()
        assert trained.is_gradient_checkpointing == checkpointing  # recomputing activations, not skipped
        results[checkpointing] = trained.state_dict()
    for name, value in results[True].items():
        torch.testing.assert_close(value, results[False][name], rtol=1e-4, atol=1e-5)


def test_choice_term_is_the_right_letters_nll_by_a_direct_forward(llava, records):
    from hf_counterfactual.vlm_scoring import CHOICE_QUESTION

    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=1)(records)
    scores = VLMScores(VLMScorer(model, processor, score="loglik_mean"), batch["pixel_values"], batch["texts"])
    torch.manual_seed(0)
    with torch.no_grad():
        value = CounterfactualObjective(weights={"choice": 1.0})(scores, batch)["choice"].item()
    torch.manual_seed(0)
    first = (torch.rand(2 * len(records)) < 0.5).tolist()  # the orders the term drew: factual images, then edited ones
    questions = []
    for b, record in enumerate(records):
        caption, cf = batch["texts"][int(batch["text_index"][b])], batch["texts"][int(batch["cf_text_index"][b, 0])]
        questions.append((record["image"], caption, cf))  # the factual image: the caption is right
    for record, (_, caption, cf) in zip(records, list(questions)):  # the edited image: its own caption is right
        questions.append((next(c["image"] for c in record["counterfactuals"] if c["caption"].strip() == cf), cf, caption))
    nlls = []
    for (image, right, wrong), right_first in zip(questions, first):
        options = (right, wrong) if right_first else (wrong, right)
        text = CHOICE_QUESTION.format(options="\n".join(f"{letter}. {o}" for letter, o in zip("AB", options)))
        prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                                               add_generation_prompt=True, tokenize=False)  # fmt: skip
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        letter = processor.tokenizer("A" if right_first else "B", add_special_tokens=False)["input_ids"][0]
        nlls.append(-torch.log_softmax(logits, -1)[letter].item())
    assert value == pytest.approx(sum(nlls) / len(nlls), abs=1e-4)


def direct_answer_nll(model, processor, image, question: str, answer: str) -> float:
    """Mean NLL of ``answer``'s tokens after ``question`` about ``image``, by one plain forward through the processor."""
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                                           add_generation_prompt=True, tokenize=False)  # fmt: skip
    answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(**inputs).logits[0], -1)
    start = inputs["input_ids"].shape[1] - len(answer_ids) - 1  # the position predicting the first answer token
    return -sum(logprobs[start + t, a].item() for t, a in enumerate(answer_ids)) / len(answer_ids)


def test_yesno_term_is_the_balanced_yes_and_no_nll_by_a_direct_forward(llava, records):
    from hf_counterfactual.vlm_scoring import VQA_QUESTION

    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records)
    scores = VLMScores(VLMScorer(model, processor, score="loglik_mean"), batch["pixel_values"], batch["texts"])
    with torch.no_grad():
        value = CounterfactualObjective(weights={"yesno": 1.0})(scores, batch)["yesno"].item()
    yes, no = [], []
    for b, record in enumerate(records):
        image = record["image"]
        yes.append(direct_answer_nll(model, processor, image, VQA_QUESTION.format(caption=record["caption"]), "Yes"))
        for j in batch["cf_text_index"][b].tolist():
            if j >= 0:
                no.append(direct_answer_nll(model, processor, image, VQA_QUESTION.format(caption=batch["texts"][j]), "No"))
    assert len(no) == 2 * len(records)  # K=2 counterfactual captions each
    assert value == pytest.approx((sum(yes) / len(yes) + sum(no) / len(no)) / 2, abs=1e-4)
    assert abs(sum(yes) / len(yes) - sum(no) / len(no)) > 1e-3  # the two halves differ, so a swapped answer would fail


def test_yesno_preset_trains_and_is_refused_on_a_dual_encoder(llava, records, tmp_path):
    from dummy_components import get_dummy_components

    model, processor = llava
    run = args(tmp_path, objective="cf-vlm-yesno", loss_weights=None, max_steps=1)
    trainer = CounterfactualTrainer(model=model, args=run, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    assert {"loss/yesno", "loss/csd", "loss/fcd"} <= set(trainer.state.log_history[0])
    clip, clip_processor, clip_records = get_dummy_components(num_records=2)
    with pytest.raises(ValueError, match=r"\['yesno'\] need a generative model"):
        CounterfactualTrainer(model=clip, args=args(tmp_path, objective="cf-vlm-yesno", loss_weights=None),
                              train_dataset=records_dataset(clip_records), processing_class=clip_processor)  # fmt: skip


def test_countercurate_preset_trains(llava, records, tmp_path):
    model, processor = llava
    run = args(tmp_path, objective="countercurate", loss_weights=None, max_steps=1)
    trainer = CounterfactualTrainer(model=model, args=run, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss/choice"])


def test_recorded_pairs_are_scored_in_one_forward_with_the_same_terms(llava, records):
    model, processor = llava
    batch = CounterfactualCollator(processor, num_counterfactuals=2)(records)
    objective = CounterfactualObjective(weights={"lm": 1.0, "csd": 0.5, "fcd": 0.5, "local": 1.0, "yesno": 1.0, "choice": 1.0})
    torch.manual_seed(1)
    lazy = objective(VLMScores(VLMScorer(model, processor, batch_size=4, score="loglik_mean"), batch["pixel_values"], batch["texts"]), batch)
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(1))
    try:
        scorer = VLMScorer(model, processor, batch_size=None, score="loglik_mean")
        scores = VLMScores(scorer, batch["pixel_values"], batch["texts"])
        recorder = VLMScores(scorer, None, batch["texts"])
        torch.manual_seed(1)
        with torch.random.fork_rng(devices=[]):
            objective(recorder, batch)
        scores.prefetch(recorder.asked)
        once = objective(scores, batch)
    finally:
        handle.remove()
    assert calls == [1]  # every pair of the step, all terms, in one language-model forward
    assert once.keys() == lazy.keys() and all(once[k].item() == pytest.approx(lazy[k].item(), abs=1e-5) for k in once)
