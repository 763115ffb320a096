"""The objective's index plumbing against naive per-record loops over the papers' equations."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dummy_components import get_dummy_components
from hf_counterfactual import CounterfactualCollator, CounterfactualObjective, OBJECTIVE_PRESETS
from hf_counterfactual.scoring import DualEncoderScores, scale_and_bias_from_outputs

MARGIN_CSD, MARGIN_FCD = 0.3, 0.1


def embed_records(model, processor, records):
    """Per-record embeddings, computed independently of the collator's deduplication and indices."""
    with torch.no_grad():

        def embed_images(images):
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1).tolist()

        def embed_texts(texts):
            enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
            return F.normalize(model.get_text_features(**enc).pooler_output, dim=-1).tolist()

        return {
            "image": embed_images([r["image"] for r in records]),
            "text": embed_texts([r["caption"] for r in records]),
            "cf_image": [embed_images([cf["image"] for cf in r["counterfactuals"]]) for r in records],
            "cf_text": [embed_texts([cf["caption"] for cf in r["counterfactuals"]]) for r in records],
        }


def encode_batch(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


@pytest.fixture(scope="module")
def setup():
    model, processor, records = get_dummy_components(num_records=5)
    batch = CounterfactualCollator(processor, num_counterfactuals=4)(records)
    return encode_batch(model, batch), batch, embed_records(model, processor, records), model.logit_scale.exp().item()


def cos(u, v):
    return sum(a * b for a, b in zip(u, v))


def nll(row, target):
    return math.log(sum(math.exp(x) for x in row)) - row[target]


def symmetric_infonce(images, texts, scale, extra_negatives=(), image_ids=None, text_ids=None, negative_ids=None):
    """Naive masked symmetric InfoNCE over the pairs ``(images[i], texts[i])``.

    Row ``i``'s columns (both directions) are pair ``i`` and every pair that shares neither its image
    id nor its text id; its extra image->text negatives are those whose id is not the text of a pair
    with row ``i``'s image. Ids default to all distinct (plain CLIP / NegCLIP).
    """
    n = len(images)
    image_ids = image_ids or [("image", i) for i in range(n)]
    text_ids = text_ids or [("text", i) for i in range(n)]
    negative_ids = negative_ids or [("negative", k) for k in range(len(extra_negatives))]
    true_pairs = set(zip(image_ids, text_ids))
    i2t, t2i = [], []
    for i in range(n):
        columns = [j for j in range(n) if j == i or (image_ids[j] != image_ids[i] and text_ids[j] != text_ids[i])]
        negatives = [t for t, t_id in zip(extra_negatives, negative_ids) if (image_ids[i], t_id) not in true_pairs]
        i2t.append(nll([scale * cos(images[i], texts[j]) for j in columns] + [scale * cos(images[i], t) for t in negatives], columns.index(i)))
        t2i.append(nll([scale * cos(texts[i], images[j]) for j in columns], columns.index(i)))
    return (sum(i2t) / n + sum(t2i) / n) / 2


def reference_terms(ref, scale):
    images, texts = ref["image"], ref["text"]
    cf_images = [im for row in ref["cf_image"] for im in row]
    cf_texts = [t for row in ref["cf_text"] for t in row]
    # CF-VLM hinges on the model's scores S = logit_scale * cosine
    csd = [
        max(0.0, MARGIN_CSD - scale * cos(images[b], texts[b]) + scale * cos(ref["cf_image"][b][k], ref["cf_text"][b][k]))
        for b in range(len(images))
        for k in range(4)
    ]
    fcd = [
        max(0.0, MARGIN_FCD - scale * cos(images[b], texts[b]) + max(scale * cos(im, texts[b]) for im in ref["cf_image"][b]))
        for b in range(len(images))
    ]
    # Record-local InfoNCE: the factual pair against its own counterfactual captions / images
    local_text = [nll([scale * cos(images[b], texts[b])] + [scale * cos(images[b], t) for t in ref["cf_text"][b]], 0) for b in range(len(images))]
    local_image = [nll([scale * cos(images[b], texts[b])] + [scale * cos(im, texts[b]) for im in ref["cf_image"][b]], 0) for b in range(len(images))]
    return {
        "local": (sum(local_text) / len(local_text) + sum(local_image) / len(local_image)) / 2,
        "align": symmetric_infonce(images, texts, scale),
        "negclip": symmetric_infonce(images, texts, scale, extra_negatives=cf_texts),
        "grouping": symmetric_infonce(images + cf_images, texts + cf_texts, scale),
        "csd": sum(csd) / len(csd),
        "fcd": sum(fcd) / len(fcd),
    }


def test_every_term_matches_the_naive_reference(setup):
    out, batch, ref, scale = setup
    objective = CounterfactualObjective(
        weights={name: 1.0 for name in ("align", "negclip", "grouping", "csd", "fcd", "local")},
        csd_margin=MARGIN_CSD,
        fcd_margin=MARGIN_FCD,
    )
    terms = objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), batch)
    expected = reference_terms(ref, scale)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert objective.total(terms).item() == pytest.approx(sum(expected.values()), rel=1e-4)


def test_cf_vlm_preset_weights_are_the_papers():
    objective = CounterfactualObjective.from_preset("cf-vlm")
    assert objective.weights == {"align": 1.0, "csd": 0.45, "fcd": 0.55}
    assert OBJECTIVE_PRESETS["clip"] == [("align", 1.0)]  # presets are lists of (term, weight)


def test_weight_zero_switches_a_term_off(setup):
    out, batch, ref, scale = setup
    objective = CounterfactualObjective.from_preset("cf-vlm", "fcd=0")
    assert objective.weights == {"align": 1.0, "csd": 0.45}
    assert CounterfactualObjective.from_preset("cf-vlm", {"fcd": 0.0, "local": 2}).weights == {"align": 1.0, "csd": 0.45, "local": 2.0}
    assert objective.uses_counterfactual_images  # csd needs the edited images
    terms = objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), batch)
    assert set(terms) == {"align", "csd"}


def test_what_each_objective_needs_encoded():
    need = {name: CounterfactualObjective.from_preset(name) for name in OBJECTIVE_PRESETS}
    assert not need["clip"].uses_counterfactual_texts and not need["clip"].uses_counterfactual_images
    assert need["negclip"].uses_counterfactual_texts and not need["negclip"].uses_counterfactual_images
    assert need["grouping"].uses_counterfactual_texts and need["grouping"].uses_counterfactual_images
    assert need["cf-vlm"].uses_counterfactual_texts and need["cf-vlm"].uses_counterfactual_images
    assert need["read"].uses_reconstruction and need["read"].uses_paraphrases and not need["read"].uses_counterfactual_images
    assert not any(need[name].uses_reconstruction for name in OBJECTIVE_PRESETS if name != "read")


def test_unknown_preset_and_term_are_errors():
    with pytest.raises(ValueError, match="unknown objective 'triplet'"):
        CounterfactualObjective.from_preset("triplet")
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['hinge'\]"):
        CounterfactualObjective(weights={"hinge": 1.0})
    with pytest.raises(ValueError, match="nothing to train"):
        CounterfactualObjective(weights={"align": 0.0})


def test_masked_counterfactuals_do_not_count(setup):
    out, batch, ref, scale = setup
    objective = CounterfactualObjective(weights={"csd": 1.0, "fcd": 1.0}, csd_margin=MARGIN_CSD, fcd_margin=MARGIN_FCD)
    masked = dict(batch, cf_image_index=batch["cf_image_index"].clone(), cf_text_index=batch["cf_text_index"].clone())
    masked["cf_image_index"][1:] = -1  # only record 0 keeps its edited images
    terms = objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), masked)
    only_first = {key: value[:1] for key, value in ref.items()}
    expected = reference_terms(only_first, scale)
    assert terms["csd"].item() == pytest.approx(expected["csd"], rel=1e-4, abs=1e-6)
    assert terms["fcd"].item() == pytest.approx(expected["fcd"], rel=1e-4, abs=1e-6)


def test_scale_read_off_a_clip_forward_is_the_models_and_keeps_its_gradient():
    model, processor, records = get_dummy_components(num_records=3)
    batch = CounterfactualCollator(processor)(records)
    out = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    recovered, bias = scale_and_bias_from_outputs(out)
    assert bias is None and recovered.item() == pytest.approx(model.logit_scale.exp().item(), rel=1e-5)
    (grad,) = torch.autograd.grad(recovered, model.logit_scale)
    assert grad.item() == pytest.approx(model.logit_scale.exp().item(), rel=1e-4)  # d exp(s)/ds = exp(s)


def test_siglip_scale_and_bias_are_read_right_and_scores_are_siglips_own_logits():
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.scoring import has_logit_bias
    from hf_counterfactual.tiny_models import build_tiny_siglip

    model, processor = build_tiny_siglip(SCENE_VOCABULARY)
    texts = processor.tokenizer(["a red circle", "a blue square", "a small green triangle"], padding="max_length", return_tensors="pt")
    out = model(pixel_values=torch.randn(2, 3, 32, 32), input_ids=texts["input_ids"], attention_mask=texts["attention_mask"])
    assert has_logit_bias(model) and not has_logit_bias(get_dummy_components(num_records=1)[0])
    cos = out.text_embeds @ out.image_embeds.T
    through_origin = ((out.logits_per_text * cos).sum() / cos.square().sum()).item()
    assert abs(through_origin - 10) > 5  # the old reading (38.5 measured on another draw): wrong
    scale, bias = scale_and_bias_from_outputs(out, with_bias=True)
    assert (scale.item(), bias.item()) == (pytest.approx(10.0, rel=1e-4), pytest.approx(-10.0, rel=1e-4))
    grad_scale, grad_bias = torch.autograd.grad(scale + bias, (model.logit_scale, model.logit_bias))
    assert grad_scale.item() == pytest.approx(10.0, rel=1e-3) and grad_bias.item() == pytest.approx(1.0, rel=1e-3)
    scores = DualEncoderScores.from_outputs(out, with_bias=True)
    torch.testing.assert_close(scores.matrix(out.image_embeds, out.text_embeds), out.logits_per_image, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores.pairs(torch.tensor([0, 1]), torch.tensor([2, 0])), out.logits_per_image[[0, 1], [2, 0]], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="cannot separate the scale from the bias"):
        one = model(pixel_values=torch.randn(1, 3, 32, 32), input_ids=texts["input_ids"][:1], attention_mask=texts["attention_mask"][:1])
        scale_and_bias_from_outputs(one, with_bias=True)


def test_evaluation_scorer_gives_siglips_logits():
    from PIL import Image

    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.scoring import DualEncoderScorer
    from hf_counterfactual.tiny_models import build_tiny_siglip

    model, processor = build_tiny_siglip(SCENE_VOCABULARY)
    images = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    captions = ["a red circle", "a blue square", "a small green triangle"]
    scores = DualEncoderScorer(model, processor, show_progress=False).score(images, captions)
    with torch.no_grad():
        expected = model(**processor(text=captions, images=images, padding="max_length", return_tensors="pt")).logits_per_image
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


def test_a_dense_term_on_a_pairs_only_model_is_a_start_up_error():
    objective = CounterfactualObjective(weights={"grouping": 1.0, "csd": 0.5})
    with pytest.raises(ValueError, match=r"loss term\(s\) \['grouping'\] need a dual encoder's embeddings.*LlavaForConditionalGeneration.*\['csd', 'fcd', 'local', 'lm', 'yesno', 'choice'\]"):
        objective.check(dense=False, model_name="LlavaForConditionalGeneration")
    CounterfactualObjective(weights={"csd": 1.0, "local": 1.0}).check(dense=False, model_name="LlavaForConditionalGeneration")


def test_record_local_terms_need_only_pairs():
    """A pairs-only scorer (what a generative VLM gives) serves csd, fcd and local, with the same values."""
    model, processor, records = get_dummy_components(num_records=4)
    batch = CounterfactualCollator(processor, num_counterfactuals=4)(records)
    out = encode_batch(model, batch)
    dense = DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(5.0))

    class PairsOnly:
        dense = False
        asked = 0

        def pairs(self, image_index, text_index):
            self.asked += image_index.numel()
            return dense.pairs(image_index, text_index)

    objective = CounterfactualObjective(weights={"csd": 1.0, "fcd": 1.0, "local": 1.0})
    scorer = PairsOnly()
    assert objective(scorer, batch) == objective(dense, batch)
    assert 0 < scorer.asked <= 4 * (1 + 3 * 4)  # per record: its pair and three kinds of counterfactual pairs


def test_grouping_with_a_text_only_counterfactual_matches_the_naive_reference(setup):
    out, batch, ref, scale = setup
    masked = dict(batch, cf_image_index=batch["cf_image_index"].clone())
    masked["cf_image_index"][0, 1] = -1  # record 0's second counterfactual: caption only
    terms = CounterfactualObjective(weights={"grouping": 1.0})(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), masked)
    pairs = [(b, k) for b in range(len(ref["image"])) for k in range(4) if (b, k) != (0, 1)]
    images = ref["image"] + [ref["cf_image"][b][k] for b, k in pairs]
    texts = ref["text"] + [ref["cf_text"][b][k] for b, k in pairs]
    expected = symmetric_infonce(images, texts, scale, extra_negatives=[ref["cf_text"][0][1]])
    assert terms["grouping"].item() == pytest.approx(expected, rel=1e-4)


@pytest.fixture
def registered_term():
    """A term added the way a contributor adds one: one registered function."""
    from hf_counterfactual.objectives import TERMS, register_term

    @register_term("factual_margin", "pairs")
    def factual_margin(step):
        """Mean of -S(Ia, Ta): a toy term for the test."""
        return -step.factual.mean()

    yield factual_margin
    del TERMS["factual_margin"]


def test_a_registered_term_is_usable_everywhere_from_its_one_registration(setup, registered_term, tmp_path):
    from hf_counterfactual import CounterfactualTrainingArguments

    out, batch, ref, scale = setup
    scores = DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale))
    objective = CounterfactualObjective.from_preset("clip", "factual_margin=0.5")
    terms = objective(scores, batch)
    expected = -(scale * F.cosine_similarity(out.image_embeds[batch["image_index"]], out.text_embeds[batch["text_index"]])).mean()
    assert set(terms) == {"align", "factual_margin"}
    torch.testing.assert_close(terms["factual_margin"], expected)
    assert objective.total(terms).item() == pytest.approx(terms["align"].item() + 0.5 * expected.item(), rel=1e-5)
    assert not objective.uses_counterfactual_texts and not objective.uses_counterfactual_images  # as registered
    args = CounterfactualTrainingArguments(output_dir=str(tmp_path), report_to="none", objective="clip", loss_weights="factual_margin=2")
    assert args.build_objective().weights == {"align": 1.0, "factual_margin": 2.0}


def test_registering_a_name_twice_or_an_unknown_need_is_an_error(registered_term):
    from hf_counterfactual.objectives import register_term

    with pytest.raises(ValueError, match="'factual_margin' is registered already"):
        register_term("factual_margin", "pairs")(lambda step: 0)
    with pytest.raises(ValueError, match="needs must be one of"):
        register_term("other", "sparse")


@pytest.mark.parametrize(
    "value, expected",
    [("csd=0,local=1", {"csd": 0.0, "local": 1.0}), (' {"csd": 0.5} ', {"csd": 0.5}), ({"fcd": 1}, {"fcd": 1.0}), (None, {}), ("", {})],
)
def test_loss_weights_forms(value, expected):
    from hf_counterfactual.objectives import parse_loss_weights

    assert parse_loss_weights(value) == expected


@pytest.mark.parametrize("value, message", [("csd", "expected term=weight"), ("csd=x", "not a number"), ("csd=-1", ">= 0")])
def test_bad_loss_weights_are_errors(value, message):
    from hf_counterfactual.objectives import parse_loss_weights

    with pytest.raises(ValueError, match=message):
        parse_loss_weights(value)
    with pytest.raises(ValueError, match=r"unknown loss term\(s\) \['triplet'\]"):
        CounterfactualObjective.from_preset("clip", "triplet=1")


def sigmoid_reference(images, texts, scale, bias, extra_negatives=(), image_ids=None, text_ids=None, negative_ids=None):
    """Naive SigLIP loss over the pairs ``(images[i], texts[i])``: for row (image) ``i``, the sum of
    ``-log sigmoid(label * (scale * cos + bias))`` over its columns, label +1 for pair ``i`` and -1
    for every pair sharing neither its image nor its text id, and -1 for each extra negative whose
    id is not the text of a pair with image ``i``; averaged over rows."""
    n = len(images)
    image_ids = image_ids or [("image", i) for i in range(n)]
    text_ids = text_ids or [("text", i) for i in range(n)]
    negative_ids = negative_ids or [("negative", k) for k in range(len(extra_negatives))]
    true_pairs = set(zip(image_ids, text_ids))
    logsigmoid = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    total = 0.0
    for i in range(n):
        for j in range(n):
            if j == i or (image_ids[j] != image_ids[i] and text_ids[j] != text_ids[i]):
                total -= logsigmoid((1 if j == i else -1) * (scale * cos(images[i], texts[j]) + bias))
        for t, t_id in zip(extra_negatives, negative_ids):
            if (image_ids[i], t_id) not in true_pairs:
                total -= logsigmoid(-(scale * cos(images[i], t) + bias))
    return total / n


def test_sigmoid_terms_match_the_naive_reference(setup):
    out, batch, ref, scale = setup
    bias = -3.0
    objective = CounterfactualObjective(weights={"sigmoid": 1.0, "sigmoid_negclip": 1.0, "sigmoid_grouping": 1.0})
    terms = objective(DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale), torch.tensor(bias)), batch)
    images, texts = ref["image"], ref["text"]
    cf_images = [im for row in ref["cf_image"] for im in row]
    cf_texts = [t for row in ref["cf_text"] for t in row]
    expected = {
        "sigmoid": sigmoid_reference(images, texts, scale, bias),
        "sigmoid_negclip": sigmoid_reference(images, texts, scale, bias, extra_negatives=cf_texts),
        "sigmoid_grouping": sigmoid_reference(images + cf_images, texts + cf_texts, scale, bias),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-4), name
    assert expected["sigmoid_negclip"] > expected["sigmoid"] + 1e-3  # the negatives count


def test_sigmoid_term_is_siglips_own_loss_on_a_square_batch():
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.tiny_models import build_tiny_siglip

    model, processor = build_tiny_siglip(SCENE_VOCABULARY)
    texts = processor.tokenizer(["a red circle", "a blue square", "a small green triangle"], padding="max_length", return_tensors="pt")
    torch.manual_seed(0)
    out = model(pixel_values=torch.randn(3, 3, 32, 32), input_ids=texts["input_ids"], attention_mask=texts["attention_mask"], return_loss=True)
    batch = {"image_index": torch.arange(3), "text_index": torch.arange(3),
             "cf_text_index": torch.full((3, 1), -1), "cf_image_index": torch.full((3, 1), -1)}  # fmt: skip
    term = CounterfactualObjective(weights={"sigmoid": 1.0})(DualEncoderScores.from_outputs(out, with_bias=True), batch)["sigmoid"]
    torch.testing.assert_close(term, out.loss, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(term, (model.logit_scale, model.logit_bias), retain_graph=True)
    own = torch.autograd.grad(out.loss, (model.logit_scale, model.logit_bias))
    for ours, theirs in zip(grads, own):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_siglip_trains_on_the_text_embeddings_it_is_evaluated_on(tmp_path):
    """SigLIP pools its last position, so padding changes its text embeddings: the trainer's
    collator pads as the evaluation scorer does (max_length), and the step's scores are the scorer's."""
    from dummy_components import records_dataset

    from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments, DualEncoderScorer
    from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
    from hf_counterfactual.tiny_models import build_tiny_siglip

    model, processor = build_tiny_siglip(SCENE_VOCABULARY)
    records = [generate_record(i, "train", seed=0) for i in range(3)]
    args = CounterfactualTrainingArguments(output_dir=str(tmp_path), report_to="none", objective="sigmoid-grouping", use_cpu=True)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
    batch = trainer.data_collator(records)
    assert batch["input_ids"].shape[1] == processor.tokenizer.model_max_length
    with torch.no_grad():
        train_side = F.normalize(model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).pooler_output, dim=-1)
        longest = processor.tokenizer(batch["texts"], padding=True, return_tensors="pt")
        unpadded = F.normalize(model.get_text_features(**longest).pooler_output, dim=-1)
    evaluation_side = DualEncoderScorer(model, processor, show_progress=False).encode_texts(batch["texts"])
    torch.testing.assert_close(train_side, evaluation_side, rtol=1e-4, atol=1e-5)
    assert (unpadded - evaluation_side).abs().max() > 1e-3  # padding to the longest text would train on other embeddings


def test_paraphrase_term_is_read_clips_one_way_infonce_from_paraphrase_to_captions():
    """READ-CLIP's L_para by a naive loop: row = a record's paraphrase, columns = every caption of the
    batch (scale * cosine, no bias), positive = its own caption; a record without a paraphrase has no row."""
    model, processor, records = get_dummy_components(num_records=5)
    records[2] = {**records[2], "paraphrases": []}
    torch.manual_seed(0)
    batch = CounterfactualCollator(processor, num_counterfactuals=0, use_paraphrases=True)(records)
    index = batch["paraphrase_index"]
    assert index[2] == -1 and (index[[0, 1, 3, 4]] >= 0).all()
    assert all(batch["texts"][int(index[b])] in [p.strip() for p in records[b]["paraphrases"]] for b in (0, 1, 3, 4))
    out = encode_batch(model, batch)
    scale, bias = model.logit_scale.exp().item(), 5.0  # a bias must not enter a text-text score
    terms = CounterfactualObjective(weights={"paraphrase": 1.0})(
        DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale), torch.tensor(bias)), batch
    )
    texts = out.text_embeds.tolist()
    captions = [texts[int(t)] for t in batch["text_index"]]
    losses = [nll([scale * cos(texts[int(index[b])], c) for c in captions], b) for b in (0, 1, 3, 4)]
    assert terms["paraphrase"].item() == pytest.approx(sum(losses) / len(losses), rel=1e-4)


def test_paraphrase_hard_adds_every_counterfactual_caption_as_a_negative_column():
    """READ-CLIP's paraphrase alignment with use_negative_in_text_contrastive, by a naive loop: the
    columns are every caption of the batch and every counterfactual caption of the batch, except a
    counterfactual caption that is the row's own caption's text (here: made equal to record 1's caption)."""
    model, processor, records = get_dummy_components(num_records=4)
    records[0] = {**records[0], "counterfactuals": [{**records[0]["counterfactuals"][0], "caption": records[1]["caption"]}, *records[0]["counterfactuals"][1:]]}
    torch.manual_seed(0)
    batch = CounterfactualCollator(processor, num_counterfactuals=2, use_paraphrases=True)(records)
    out = encode_batch(model, batch)
    scale = model.logit_scale.exp().item()
    terms = CounterfactualObjective(weights={"paraphrase_hard": 1.0, "paraphrase": 1.0})(
        DualEncoderScores(out.image_embeds, out.text_embeds, torch.tensor(scale)), batch
    )
    texts = out.text_embeds.tolist()
    captions = [int(t) for t in batch["text_index"]]
    negatives = [int(t) for t in batch["cf_text_index"].flatten() if t >= 0]
    losses, plain = [], []
    for b in range(4):
        row = texts[int(batch["paraphrase_index"][b])]
        kept = [t for t in negatives if t != captions[b]]  # record 0's first counterfactual is record 1's caption: not record 1's negative
        assert len(kept) == len(negatives) - (b == 1)
        losses.append(nll([scale * cos(row, texts[t]) for t in captions + kept], b))
        plain.append(nll([scale * cos(row, texts[t]) for t in captions], b))
    assert terms["paraphrase_hard"].item() == pytest.approx(sum(losses) / 4, rel=1e-4)
    assert terms["paraphrase"].item() == pytest.approx(sum(plain) / 4, rel=1e-4)
    assert terms["paraphrase_hard"].item() > terms["paraphrase"].item()


def test_the_trainer_collates_paraphrases_only_for_a_term_that_reads_them(tmp_path):
    from dummy_components import records_dataset

    from hf_counterfactual import CounterfactualTrainer, CounterfactualTrainingArguments

    model, processor, records = get_dummy_components(num_records=4)
    for weights, expected in (("paraphrase=0.5", True), (None, False)):
        args = CounterfactualTrainingArguments(output_dir=str(tmp_path), report_to="none", objective="negclip", loss_weights=weights, use_cpu=True,
                                               max_steps=1, per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True)  # fmt: skip
        trainer = CounterfactualTrainer(model=model, args=args, train_dataset=records_dataset(records), processing_class=processor)
        assert ("paraphrase_index" in trainer.data_collator(records)) == expected
    trainer = CounterfactualTrainer(model=model, args=dataclasses.replace(args, loss_weights="paraphrase=0.5"),
                                    train_dataset=records_dataset(records), processing_class=processor)  # fmt: skip
    trainer.train()
    assert {"loss/negclip", "loss/paraphrase"} <= set(trainer.state.log_history[0])
