import copy

import pytest
import torch
from transformers import AutoProcessor, CLIPModel

from dummy_components import get_dummy_components, records_dataset
from hf_counterfactual import CounterfactualCollator, CounterfactualObjective, CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.scoring import DualEncoderScores


def make_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
    )
    return CounterfactualTrainingArguments(**{**defaults, **kwargs})


def test_gradient_accumulation_averages_microbatch_losses(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    reference = copy.deepcopy(model)
    args = make_args(
        tmp_path,
        max_steps=1,
        gradient_accumulation_steps=2,
        optim="sgd",
        learning_rate=0.5,
        weight_decay=0.0,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
    )
    CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor).train()

    # By hand: mean of the two microbatch losses, one SGD step.
    objective = args.build_objective()
    collator = CounterfactualCollator(processor)
    losses = []
    for part in (records[:4], records[4:]):
        batch = collator(part)
        out = reference(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        losses.append(objective.total(objective(DualEncoderScores.from_outputs(out), batch)))
    (sum(losses) / 2).backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        expected = p_ref.detach() - 0.5 * (p_ref.grad if p_ref.grad is not None else 0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=name)


def test_every_term_is_logged(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    args = make_args(tmp_path, objective="cf-vlm")
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in ("loss", "loss/align", "loss/csd", "loss/fcd", "logit_scale"):
        assert key in logged, key
    # the logged total is the weighted sum of the logged terms (both averaged over the same step)
    assert logged["loss"] == pytest.approx(logged["loss/align"] + 0.45 * logged["loss/csd"] + 0.55 * logged["loss/fcd"], rel=1e-3)


def test_evaluation_reports_terms(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    trainer = CounterfactualTrainer(
        model=model, args=make_args(tmp_path, objective="negclip"), eval_dataset=records_dataset(records), processing_class=processor
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_loss/negclip" in metrics
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_loss/negclip"], rel=1e-4)


def test_one_image_pass_and_one_text_pass_per_step(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    calls = {"vision": 0, "text": 0}
    model.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    model.text_model.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    args = make_args(tmp_path, max_steps=3, objective="cf-vlm", loss_weights={"grouping": 1.0})  # four terms, still one pass each
    CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor).train()
    assert calls == {"vision": 3, "text": 3}


def test_save_and_from_pretrained_round_trip(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    trainer = CounterfactualTrainer(model=model, args=make_args(tmp_path), train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    trainer.save_model()
    loaded = CLIPModel.from_pretrained(trainer.args.output_dir)
    loaded_processor = AutoProcessor.from_pretrained(trainer.args.output_dir)
    assert len(loaded_processor.tokenizer) == len(processor.tokenizer)  # not an empty offline tokenizer
    batch = loaded_processor(images=[r["image"] for r in records[:3]], text=[r["caption"] for r in records[:3]], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits_per_image, model(**batch).logits_per_image)


def test_nan_scores_stop_training_with_a_clear_error(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    with torch.no_grad():
        model.visual_projection.weight[0, 0] = float("nan")
    args = make_args(tmp_path, objective="cf-vlm")
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    with pytest.raises(FloatingPointError, match=r"non-finite loss term\(s\) \['align', 'csd', 'fcd'\] at step 0"):
        trainer.train()


def test_lora_trains_and_merges_into_a_plain_clip(tmp_path):
    peft = pytest.importorskip("peft")
    model, processor, records = get_dummy_components(num_records=8)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = CounterfactualTrainer(model=model, args=make_args(tmp_path), train_dataset=records_dataset(records), processing_class=processor)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    assert type(CLIPModel.from_pretrained(tmp_path / "merged")) is CLIPModel


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(objective="triplet"), "unknown objective 'triplet'"),
        (dict(loss_weights="csd=-1"), "loss_weights must be >= 0"),
        (dict(num_counterfactuals=0), "uses counterfactuals but num_counterfactuals=0"),
        (dict(counterfactual_fraction=1.5), r"counterfactual_fraction must be in \[0, 1\]"),
    ],
)
def test_bad_arguments_are_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_args(tmp_path, **kwargs)


def test_clip_objective_needs_no_counterfactuals(tmp_path):
    args = make_args(tmp_path, objective="clip", num_counterfactuals=0)
    assert args.build_objective() == CounterfactualObjective.from_preset("clip")


def test_siglip_trains_on_the_same_seam_with_its_scale_and_bias(tmp_path):
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.tiny_models import build_tiny_siglip

    model, processor = build_tiny_siglip(SCENE_VOCABULARY)
    _, _, records = get_dummy_components(num_records=8)
    bias_before = model.logit_bias.item()
    args = make_args(tmp_path, objective="cf-vlm", loss_weights="local=1")
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss/local" in entry]
    assert len(logged) == 2 and all(set(entry) >= {"loss/align", "loss/csd", "loss/fcd", "loss/local"} for entry in logged)
    assert logged[0]["logit_scale"] == pytest.approx(10.0, rel=1e-3)  # SigLIP's 10, not the through-origin 38.5
    assert model.logit_bias.item() != bias_before  # the bias is trained through the scores


def test_a_model_without_dual_encoder_features_is_refused(tmp_path):
    with pytest.raises(TypeError, match="trains dual encoders .* Linear has no get_image_features"):
        CounterfactualTrainer(model=torch.nn.Linear(2, 2), args=make_args(tmp_path), processing_class=object())
