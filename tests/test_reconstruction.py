"""READ-CLIP's reconstruction term, its wrapper, and the read preset."""

import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPModel

from dummy_components import get_dummy_components, records_dataset
from hf_counterfactual import CounterfactualCollator, CounterfactualObjective, CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.losses import token_cross_entropy
from hf_counterfactual.objectives import OBJECTIVE_PRESETS
from hf_counterfactual.reconstruction import HEAD_FILE, ReconstructionWrapper
from hf_counterfactual.scenes import SCENE_VOCABULARY
from hf_counterfactual.scoring import DualEncoderScores
from hf_counterfactual.tiny_models import build_tiny_t5


def save_tiny_decoder(path) -> str:
    decoder, tokenizer = build_tiny_t5(SCENE_VOCABULARY, seed=3)
    decoder.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True, objective="read",
        reconstruction_decoder=save_tiny_decoder(tmp_path / "decoder"),
    )  # fmt: skip
    return CounterfactualTrainingArguments(**{**defaults, **kwargs})


def test_token_cross_entropy_is_the_mean_over_target_tokens():
    """By a loop over every (sequence, position): -log softmax at the label, averaged over the batch's
    non-padding tokens (a 3-token target weighs 3 times a 1-token one)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 4, 2], [3, -100, -100]])
    picked = [-F.log_softmax(logits[b, t], dim=-1)[labels[b, t]] for b in range(2) for t in range(3) if labels[b, t] != -100]
    assert token_cross_entropy(logits, labels).item() == pytest.approx(sum(picked).item() / 4)
    torch.autograd.gradcheck(lambda x: token_cross_entropy(x, labels), (logits,))
    # NaN at an ignored position reaches neither value nor gradient.
    poisoned = logits.detach().clone()
    poisoned[1, 2] = float("nan")
    poisoned.requires_grad_(True)
    token_cross_entropy(poisoned, labels).backward()
    assert torch.isfinite(poisoned.grad).all()
    with pytest.raises(ValueError, match="no target token"):
        token_cross_entropy(logits, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="labels must be an int64 tensor of shape"):
        token_cross_entropy(logits, labels[:, :2])


def test_the_reconstruction_term_is_the_frozen_decoders_loss_on_each_records_target(tmp_path):
    """Against the decoder run one record at a time on ``projection(pooled text state of the caption)``
    as a one-token encoder output, with T5's own ``labels=`` loss: the same number."""
    model, processor, records = get_dummy_components(num_records=4)
    decoder, tokenizer = build_tiny_t5(SCENE_VOCABULARY, seed=3)
    wrapper = ReconstructionWrapper(model, decoder)
    batch = CounterfactualCollator(processor, num_counterfactuals=0, reconstruction_tokenizer=tokenizer)(records)
    labels = batch["reconstruction_labels"]
    # Each target is a true caption of its record: the caption or a paraphrase.
    for record, row in zip(records, labels):
        target = tokenizer.decode(row[row >= 0], skip_special_tokens=True)
        assert target in [record["caption"].lower(), *(p.lower() for p in record["paraphrases"])]
    outputs = wrapper(
        pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        reconstruction_rows=batch["text_index"], reconstruction_labels=labels,
    )  # fmt: skip
    terms = CounterfactualObjective(weights={"reconstruction": 1.0})(DualEncoderScores.from_outputs(outputs), batch)

    pooled = model.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooler_output
    nll, tokens = 0.0, 0
    for b in range(len(records)):
        states = wrapper.projection(pooled[batch["text_index"][b]])[None, None]
        row = labels[b : b + 1, : int((labels[b] >= 0).sum())]
        nll += decoder(encoder_outputs=(states,), labels=row).loss.item() * row.shape[1]
        tokens += row.shape[1]
    assert terms["reconstruction"].item() == pytest.approx(nll / tokens, rel=1e-5)


def test_read_preset_is_read_clips_weights():
    assert OBJECTIVE_PRESETS["read"] == [("negclip", 1.0), ("reconstruction", 0.1), ("paraphrase", 0.5)]
    objective = CounterfactualObjective.from_preset("read", "reconstruction=0")
    assert objective.weights == {"negclip": 1.0, "paraphrase": 0.5} and not objective.uses_reconstruction


def test_a_read_step_trains_the_text_tower_and_projection_not_the_decoder_and_saves_a_plain_clip(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    args = make_args(tmp_path)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    wrapper = trainer.model
    assert isinstance(wrapper, ReconstructionWrapper) and trainer.dual_encoder is model
    decoder_before = {k: v.clone() for k, v in wrapper.decoder.state_dict().items()}
    projection_before = wrapper.projection.weight.detach().clone()
    text_before = model.text_model.embeddings.token_embedding.weight.detach().clone()
    trainer.train()

    logged = trainer.state.log_history[0]
    assert {"loss/negclip", "loss/reconstruction", "loss/paraphrase"} <= set(logged)
    assert logged["loss"] == pytest.approx(logged["loss/negclip"] + 0.1 * logged["loss/reconstruction"] + 0.5 * logged["loss/paraphrase"], rel=1e-3)
    for key, value in wrapper.decoder.state_dict().items():
        assert torch.equal(value, decoder_before[key]), key
    assert not torch.equal(wrapper.projection.weight, projection_before)
    assert not torch.equal(model.text_model.embeddings.token_embedding.weight, text_before)

    trainer.save_model()
    out = args.output_dir
    assert not os.path.exists(os.path.join(out, HEAD_FILE))  # not asked for
    loaded, info = CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_the_decoder_stays_in_eval_mode_while_training(tmp_path):
    model, _, _ = get_dummy_components(num_records=2)
    wrapper = ReconstructionWrapper(model, build_tiny_t5(SCENE_VOCABULARY)[0]).train()
    assert wrapper.model.training and wrapper.projection.training and not wrapper.decoder.training
    assert not any(p.requires_grad for p in wrapper.decoder.parameters())


def test_checkpoints_keep_the_projection_and_a_resumed_run_reads_it(tmp_path):
    model, processor, records = get_dummy_components(num_records=8)
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, save_reconstruction_head=True)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-1")
    assert os.path.isfile(os.path.join(checkpoint, HEAD_FILE))
    assert CLIPModel.from_pretrained(checkpoint) is not None
    trainer.save_model()
    head = load_file(os.path.join(args.output_dir, HEAD_FILE))["weight"]
    torch.testing.assert_close(head, trainer.model.projection.weight.detach())

    # Loading checkpoint-1 (Trainer's resume hook) gives its dual encoder and its projection.
    fresh, _, _ = get_dummy_components(num_records=8, seed=5)
    resumed = CounterfactualTrainer(model=fresh, args=args, train_dataset=records_dataset(records), processing_class=processor)
    resumed._load_from_checkpoint(checkpoint)
    torch.testing.assert_close(resumed.model.projection.weight.detach(), load_file(os.path.join(checkpoint, HEAD_FILE))["weight"])
    assert not torch.equal(resumed.model.projection.weight, trainer.model.projection.weight)  # step 2 moved it
    for (name, p), q in zip(resumed.dual_encoder.state_dict().items(), CLIPModel.from_pretrained(checkpoint).state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    # A resumed run takes step 2 from there: its NegCLIP term (no random draw in it) is the first run's.
    # (Not the paraphrase and reconstruction terms: the dataloader draws the next batch's targets before a checkpoint is written.)
    fresh, _, _ = get_dummy_components(num_records=8, seed=5)
    resumed = CounterfactualTrainer(model=fresh, args=args, train_dataset=records_dataset(records), processing_class=processor)
    resumed.train(resume_from_checkpoint=checkpoint)
    step2 = [[log for log in t.state.log_history if log.get("step") == 2 and "loss/negclip" in log][0] for t in (trainer, resumed)]
    assert step2[1]["loss/negclip"] == pytest.approx(step2[0]["loss/negclip"], rel=1e-5)


def test_a_reconstruction_term_without_a_decoder_is_an_error_at_start_up(tmp_path):
    model, processor, records = get_dummy_components(num_records=4)
    args = make_args(tmp_path, reconstruction_decoder=None)
    with pytest.raises(ValueError, match="set reconstruction_decoder"):
        CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    with pytest.raises(ValueError, match="needs the decoder's logits"):
        batch = CounterfactualCollator(processor, num_counterfactuals=0)(records)
        out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        CounterfactualObjective(weights={"reconstruction": 1.0})(DualEncoderScores.from_outputs(out), batch)
