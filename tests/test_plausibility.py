"""Blind (text-only) plausibility scorers and adversarial refinement: the Kneser-Ney n-gram LM
against probabilities computed by hand, unknown words, the transformers scorers on tiny models
built from configs, the gap filter, and SugarCrepe-style refinement on hand-made gaps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hf_counterfactual.generation.plausibility import (
    BOS,
    EOS,
    UNK,
    CausalLMScorer,
    KneserNeyLM,
    PlausibilityScorer,
    SequenceClassifierScorer,
    adversarial_refine,
    cross_fit_gaps,
    filter_by_gap,
    preference_rate,
    reliability_center,
    score_gaps,
    tokenize,
)

# Three captions. Padded for a bigram model:
#   <s> a dog runs </s>  |  <s> a cat runs </s>  |  <s> the dog sleeps </s>
# V (what can be predicted) = {a, dog, runs, cat, the, sleeps, </s>, <unk>}: |V| = 8.
CORPUS = ["A dog runs.", "a cat runs", "The dog, sleeps"]

# Continuation counts N1+(. w) (distinct words before w): a {<s>} 1, dog {a, the} 2,
# runs {dog, cat} 2, cat {a} 1, the {<s>} 1, sleeps {dog} 1, </s> {runs, sleeps} 2;
# total N1+(. .) = 10 over T = 7 word types. With D = 0.5:
#   P1(w) = (max(N1+(. w) - 0.5, 0) + 0.5 * 7 * 1/8) / 10 = (N1+(. w) - 0.5 + 0.4375) / 10
P1 = {"a": 0.09375, "dog": 0.19375, "runs": 0.19375, "cat": 0.09375, "the": 0.09375, "sleeps": 0.09375,
      EOS: 0.19375, UNK: 0.04375}


def _fit(order=2, discount=0.5, corpus=CORPUS):
    return KneserNeyLM(order=order, discount=discount).fit(corpus)


def test_tokenize():
    assert tokenize("A Dog, runs.") == ["a", "dog", "runs"]
    assert tokenize("a man's t-shirt") == ["a", "man's", "t", "shirt"]
    assert tokenize("") == [] and tokenize(None) == []


def test_unigram_level_by_hand():
    lm = _fit()
    assert lm.vocab_size == 8
    for word, p in P1.items():
        # the unigram level is what an unseen history falls back to (<unk> as history)
        assert lm.prob(word, [UNK]) == pytest.approx(p, abs=1e-12)
    assert sum(P1.values()) == pytest.approx(1.0)


def test_bigram_probabilities_by_hand():
    lm = _fit()
    # history "a": c(a .) = 2 (dog, cat), N1+(a .) = 2:
    #   P(dog | a) = (1 - 0.5) / 2 + 0.5 * 2 / 2 * P1(dog) = 0.25 + 0.5 * 0.19375 = 0.346875
    assert lm.prob("dog", ["a"]) == pytest.approx(0.346875, abs=1e-12)
    assert lm.prob("cat", ["a"]) == pytest.approx(0.25 + 0.5 * 0.09375, abs=1e-12)
    # an unseen bigram gets only the back-off mass: 0.5 * P1(runs)
    assert lm.prob("runs", ["a"]) == pytest.approx(0.096875, abs=1e-12)
    # history <s>: c(<s> .) = 3 (a twice, the once), N1+(<s> .) = 2:
    #   P(a | <s>) = (2 - 0.5) / 3 + 0.5 * 2 / 3 * 0.09375 = 0.5 + 0.03125
    assert lm.prob("a", [BOS]) == pytest.approx(0.53125, abs=1e-12)
    assert lm.prob("a") == pytest.approx(0.53125, abs=1e-12)  # a short history is padded with <s>
    # history "runs": c = 2 (</s> twice), N1+ = 1: (2 - 0.5) / 2 + 0.5 * 1 / 2 * 0.19375
    assert lm.prob(EOS, ["runs"]) == pytest.approx(0.7984375, abs=1e-12)
    # every history's distribution sums to one over V
    for history in ([BOS], ["a"], ["dog"], ["runs"], ["zebra"]):
        assert sum(lm.prob(w, history) for w in P1) == pytest.approx(1.0, abs=1e-12)


def test_caption_log_prob_by_hand():
    lm = _fit()
    # "a dog runs": P(a|<s>) P(dog|a) P(runs|dog) P(</s>|runs); P(runs | dog) = 0.25 + 0.5 * 0.19375
    expected = math.log(0.53125) + math.log(0.346875) + math.log(0.346875) + math.log(0.7984375)
    assert lm.log_prob("a dog runs") == pytest.approx(expected, abs=1e-12)
    assert lm.mean_log_prob("A dog runs!") == pytest.approx(expected / 4, abs=1e-12)  # 3 words + </s>
    np.testing.assert_allclose(lm.token_log_probs(["a dog runs"])[0],
                               np.log([0.53125, 0.346875, 0.346875, 0.7984375]), atol=1e-12)
    # batched scoring equals one at a time, in any batch
    captions = ["a dog runs", "the cat sleeps", "", "runs a dog", "a zebra runs"]
    batched = lm.score(captions)
    assert batched.shape == (5,)
    np.testing.assert_allclose(batched, [lm.score([c])[0] for c in captions], atol=1e-12)
    np.testing.assert_allclose(lm.score(captions[::-1]), batched[::-1], atol=1e-12)
    # the true word order beats a shuffle
    assert batched[0] > batched[3]


def test_unknown_words():
    lm = _fit()
    # "a zebra runs": zebra is <unk>: P(<unk> | a) = 0.5 * 2 / 2 * P1(<unk>) = 0.021875; the history
    # <unk> was never seen, so P(runs | <unk>) = P1(runs) = 0.19375
    expected = [math.log(0.53125), math.log(0.021875), math.log(0.19375), math.log(0.7984375)]
    np.testing.assert_allclose(lm.token_log_probs(["a zebra runs"])[0], expected, atol=1e-12)
    assert lm.prob("zebra", ["a"]) == lm.prob(UNK, ["a"])
    # an empty caption scores only </s> after <s>: P(</s> | <s>) = 0.5 * 2 / 3 * P1(</s>)
    assert lm.log_prob("") == pytest.approx(math.log(0.5 * 2 / 3 * 0.19375), abs=1e-12)
    # min_count: words seen fewer times are <unk> in fitting too
    rare = KneserNeyLM(min_count=2, discount=0.5).fit(CORPUS)
    assert "cat" not in rare.vocab and "dog" in rare.vocab


def test_trigram_by_hand():
    lm = _fit(order=3)
    # history (<s>, a): trigram counts (<s> a dog) 1, (<s> a cat) 1 -> den 2, 2 types;
    # the bigram level below uses continuation counts: N1+(. a dog) = N1+(. a cat) = 1 (only <s>),
    # so P2(dog | a) = 0.5 / 2 + 0.5 * 2 / 2 * P1(dog) = 0.346875 (P1 as for the bigram model);
    # P3(dog | <s> a) = 0.5 / 2 + 0.5 * 2 / 2 * 0.346875
    assert lm.prob("dog", [BOS, "a"]) == pytest.approx(0.4234375, abs=1e-12)
    assert lm.prob("dog", ["zebra", "a"]) == pytest.approx(0.346875, abs=1e-12)  # unseen history: bigram level
    for history in ([BOS, BOS], [BOS, "a"], ["a", "dog"], ["dog", "zebra"]):
        assert sum(lm.prob(w, history) for w in P1) == pytest.approx(1.0, abs=1e-12)


def test_estimated_discounts_by_hand():
    lm = KneserNeyLM(order=2).fit(CORPUS)
    # bigram raw counts: (<s> a) 2, (runs </s>) 2, eight others 1: D2 = 8 / (8 + 2 * 2)
    # unigram continuation counts 1, 2, 2, 1, 1, 1, 2: D1 = 4 / (4 + 2 * 3)
    assert lm.discounts == pytest.approx([0.4, 2 / 3])


def test_deterministic_and_validated():
    a, b = _fit(discount=None), _fit(discount=None)
    captions = ["a dog runs", "a cat sleeps", "the the the"]
    np.testing.assert_array_equal(a.score(captions), b.score(captions))
    # fitting order of the captions does not matter
    np.testing.assert_allclose(_fit(corpus=CORPUS[::-1]).score(captions), _fit().score(captions), atol=1e-12)
    assert isinstance(a, PlausibilityScorer)
    with pytest.raises(RuntimeError, match="not fitted"):
        KneserNeyLM().score(["a dog"])
    with pytest.raises(ValueError, match="at least one caption"):
        KneserNeyLM().fit([])
    for bad in (dict(order=0), dict(discount=1.0), dict(min_count=0)):
        with pytest.raises(ValueError):
            KneserNeyLM(**bad)


def test_score_gaps_and_filter():
    lm = _fit()
    gaps = score_gaps(lm, ["a dog runs", "a dog runs"], ["runs a dog", "a dog runs"])
    assert gaps[0] > 0 and gaps[1] == 0
    with pytest.raises(ValueError):
        score_gaps(lm, ["a"], [])
    g = np.array([0.1, 2.0, -1.0, 0.5])
    np.testing.assert_array_equal(filter_by_gap(g, 0.5), [0, 2, 3])
    np.testing.assert_array_equal(filter_by_gap([g, -g], [0.5, 0.0]), [0, 3])
    assert preference_rate(g) == {None: 0.75}
    assert preference_rate(np.array([1.0, 0.0, -1.0, 2.0]), ["a", "a", "b", "b"]) == {"a": 0.75, "b": 0.5}


def test_cross_fit_gaps_never_score_with_a_model_that_saw_the_caption():
    # each image's caption has a word of its own: a model fitted on it would know the word
    true = ["a red dog runs", "a blue cat sleeps", "a green dog sleeps", "a pink cat runs", "a red dog runs"]
    negatives = ["a dog red runs", "a cat blue sleeps", "a dog green sleeps", "a cat pink runs", "a red cat runs"]
    images = ["i1", "i2", "i3", "i4", "i1"]
    extra = {"i2": ["the blue cat is asleep"], "zz": ["never used: no pair has this image"]}
    gaps = cross_fit_gaps(true, negatives, images, num_folds=2, seed=0, discount=0.5, extra_captions=extra)
    fold_of = dict(zip(["i1", "i2", "i3", "i4"], np.random.default_rng(0).permutation(4) % 2))
    for i, image in enumerate(images):
        others = [c for c, im in zip(true, images) if fold_of[im] != fold_of[image]]
        others += [c for im, cs in extra.items() if im in fold_of and fold_of[im] != fold_of[image] for c in cs]
        lm = KneserNeyLM(discount=0.5).fit(others)
        assert true[i] not in others
        assert gaps[i] == pytest.approx(score_gaps(lm, [true[i]], [negatives[i]])[0], abs=1e-12)
    np.testing.assert_array_equal(gaps, cross_fit_gaps(true, negatives, images, num_folds=2, seed=0, discount=0.5,
                                                       extra_captions=extra))
    with pytest.raises(ValueError):
        cross_fit_gaps(true, negatives, images[:2])
    with pytest.raises(ValueError):
        cross_fit_gaps(true, negatives, images, num_folds=1)


# ---------------------------------------------------------------------------------------------
# Adversarial refinement


def test_refinement_balances_a_hand_made_case():
    # bin_width 1: cells sign * (floor(|gap|) + 1)
    gaps = np.array([0.5, 0.6, 0.7, -0.55, 1.5, -1.2, -1.7, 2.5, 0.0])
    #      cells    +1   +1   +1    -1    +2    -2    -2   +3   0
    assert preference_rate(gaps)[None] == pytest.approx(5.5 / 9)  # unbalanced before
    kept = adversarial_refine(gaps, bin_width=1.0, seed=0)
    # +1/-1: the one -1 and one of the three +1; +2/-2: the +2 and one of the two -2; +3 has no
    # mirror (dropped); the tie is its own mirror (kept)
    assert len(kept) == 5
    assert {3, 4, 8} <= set(kept.tolist())
    assert len(set(kept.tolist()) & {0, 1, 2}) == 1 and len(set(kept.tolist()) & {5, 6}) == 1
    assert 7 not in kept
    assert preference_rate(gaps[kept])[None] == 0.5
    assert np.all(np.diff(kept) > 0)


def test_refinement_per_kind():
    gaps = np.array([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    kinds = ["a", "a", "a", "b", "b", "b", "b", "b"]
    # "a": two +, one - -> 1 + 1; "b": three +, two - -> 2 + 2 (pooled there would be 5 + vs 3 -)
    kept = adversarial_refine(gaps, kinds, num_bins=1, seed=3)
    assert len(kept) == 6
    rates = preference_rate(gaps[kept], np.asarray(kinds)[kept])
    assert rates == {"a": 0.5, "b": 0.5}
    # a kind all on one side keeps nothing
    assert len(adversarial_refine(np.array([1.0, 2.0, 3.0]), num_bins=2)) == 0


def test_refinement_two_scorers():
    rng = np.random.default_rng(0)
    n = 4000
    kinds = rng.choice(["attribute", "object", "count"], size=n)
    shift = np.select([kinds == "attribute", kinds == "object"], [0.3, 0.8], 1.5)
    first = rng.normal(shift, 1.0)
    second = 0.6 * first + rng.normal(0.2, 0.5, size=n)
    second[:50] = 0.0  # ties on one scorer are balanced on the other
    before = [preference_rate(g, kinds) for g in (first, second)]
    assert all(rate > 0.6 for b in before for rate in b.values())
    kept = adversarial_refine([first, second], kinds, num_bins=4, seed=1)
    assert 0 < len(kept) < n
    for gap in (first, second):
        for kind in ("attribute", "object", "count"):
            g = gap[kept][kinds[kept] == kind]
            assert np.sum(g > 0) == np.sum(g < 0)
    # one scorer at a time keeps more than both jointly
    assert len(adversarial_refine(first, kinds, num_bins=4, seed=1)) > len(kept)


def test_refinement_deterministic_per_seed():
    rng = np.random.default_rng(5)
    gaps = rng.normal(0.5, 1.0, size=500)
    kinds = rng.choice(["x", "y"], size=500).tolist()
    a = adversarial_refine(gaps, kinds, num_bins=5, seed=11)
    np.testing.assert_array_equal(a, adversarial_refine(gaps.copy(), list(kinds), num_bins=5, seed=11))
    b = adversarial_refine(gaps, kinds, num_bins=5, seed=12)
    assert len(a) == len(b) and not np.array_equal(a, b)  # same sizes, other random subsets
    with pytest.raises(ValueError):
        adversarial_refine(gaps, kinds[:3])
    with pytest.raises(ValueError):
        adversarial_refine([gaps, gaps[:3]])
    with pytest.raises(ValueError):
        adversarial_refine(gaps, num_bins=0)


def test_reliability_center_by_hand():
    # halves (1, 2, 3, 4) and (1, 3, 2, 4): r = 0.8; Spearman-Brown rho = 1.6 / 1.8 = 8/9;
    # gaps of mean 0.5: centre = 0.5 * (1 - 9/8) = -0.0625
    center, rho = reliability_center([0.2, 0.4, 0.6, 0.8], [1, 2, 3, 4], [1, 3, 2, 4], min_pairs=4)
    assert rho == pytest.approx(8 / 9) and center == pytest.approx(-0.0625)
    assert reliability_center([0.2, 0.4, 0.6, 0.8], [1, 2, 3, 4], [1, 3, 2, 4], min_pairs=5) == (0.0, None)  # too few
    assert reliability_center([0.2, 0.4, 0.6, 0.8], [1, 2, 3, 4], [4, 3, 2, 1], min_pairs=4) == (0.0, None)  # halves disagree
    center, rho = reliability_center([0.2, np.nan, 0.6, 0.8, 1.0], [1, 2, 3, 4, 5], [1, 3, 2, 4, 5], min_pairs=4)
    assert rho is not None and np.isfinite(center)  # the unscored pair is left out
    with pytest.raises(ValueError):
        reliability_center([0.1, 0.2], [1, 2, 3], [1, 2, 3])


def test_refinement_center_shifts_the_balance():
    rng = np.random.default_rng(2)
    gaps = rng.normal(0.3, 1.0, size=400)
    kinds = rng.choice(["x", "y"], size=400).tolist()
    np.testing.assert_array_equal(adversarial_refine(gaps, kinds, num_bins=4, seed=1, center=-0.2),
                                  adversarial_refine(gaps + 0.2, kinds, num_bins=4, seed=1))
    per_kind = adversarial_refine(gaps, kinds, num_bins=4, seed=1, center={"x": -0.2})
    shifted = np.where(np.asarray(kinds) == "x", gaps + 0.2, gaps)
    np.testing.assert_array_equal(per_kind, adversarial_refine(shifted, kinds, num_bins=4, seed=1))
    kept = per_kind[np.asarray(kinds)[per_kind] == "x"]
    assert np.sum(gaps[kept] > -0.2) == np.sum(gaps[kept] < -0.2)  # balanced around its centre
    with pytest.raises(ValueError):
        adversarial_refine(gaps, kinds, center=float("nan"))
    with pytest.raises(ValueError):
        adversarial_refine([gaps, gaps], kinds, center=[0.0, 0.0, 0.0])


def test_reliability_center_leaves_a_held_out_judge_at_chance():
    """The method on a known model: true gaps G ~ N(0.3, 0.3); a scorer sees G plus noise, as do two
    half-data scorers (twice the noise variance) and an independent judge. Balancing the scorer
    around 0 leaves the judge preferring the true caption; around the reliability centre, not."""
    rng = np.random.default_rng(0)
    n, noise = 40_000, 0.25
    G = rng.normal(0.3, 0.3, size=n)
    half_noise = rng.normal(0.0, noise * np.sqrt(2), size=(2, n))
    scorer = G + half_noise.mean(axis=0)  # the full-data scorer: the mean of its two halves
    half_a, half_b = G + half_noise[0], G + half_noise[1]
    judge = G + rng.normal(0.0, noise, size=n)
    center, rho = reliability_center(scorer, half_a, half_b)
    assert rho == pytest.approx(0.09 / (0.09 + noise**2), abs=0.02) and center < 0
    plain = adversarial_refine(scorer, num_bins=10, seed=0)
    centred = adversarial_refine(scorer, num_bins=10, seed=0, center=center)
    assert preference_rate(judge[plain])[None] > 0.60  # balanced on the scorer, not for the judge
    assert abs(preference_rate(judge[centred])[None] - 0.5) < 0.02
    assert abs(preference_rate(scorer[plain])[None] - 0.5) < 0.01  # what the plain refinement does balance


# ---------------------------------------------------------------------------------------------
# transformers scorers on tiny models built from configs

WORDS = "a the dog cat runs sleeps on mat big small".split()


@pytest.fixture(scope="module")
def tiny_lm():
    pytest.importorskip("torch")
    from hf_counterfactual.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(WORDS, seed=0)


def _naive_mean_logprob(model, ids):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(np.mean([logp[j - 1, ids[j]].item() for j in range(1, len(ids))]))


def test_causal_lm_scorer_matches_a_naive_loop(tiny_lm):
    model, tokenizer = tiny_lm
    captions = ["a dog runs", "the big cat sleeps on the mat", "a cat", "dog"]
    scorer = CausalLMScorer(model, tokenizer, batch_size=3)
    scores = scorer.score(captions)
    assert isinstance(scorer, PlausibilityScorer)
    # the word-level tokenizer adds <bos> ... <eos>: no extra start token; every token after <bos> scored
    expected = [_naive_mean_logprob(model, tokenizer(c)["input_ids"]) for c in captions]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # padding does not change a score
    np.testing.assert_allclose(CausalLMScorer(model, tokenizer, batch_size=1).score(captions), scores, atol=1e-5)
    # forced extra start token: one more scored token
    forced = CausalLMScorer(model, tokenizer, add_bos=True).score(["a dog"])[0]
    ids = [tokenizer.bos_token_id, *tokenizer("a dog")["input_ids"]]
    assert forced == pytest.approx(_naive_mean_logprob(model, ids), abs=1e-5)
    # a prefix conditions the caption and is not scored
    import torch

    prefixed = CausalLMScorer(model, tokenizer, prefix="the").score(["a dog runs"])[0]
    ids = tokenizer("the a dog runs")["input_ids"]  # <bos> the | a dog runs <eos>
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
    assert prefixed == pytest.approx(np.mean([logp[j - 1, ids[j]].item() for j in range(2, len(ids))]), abs=1e-5)


def test_causal_lm_scorer_from_pretrained(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = CausalLMScorer.from_pretrained(str(tmp_path), batch_size=2)
    captions = ["a dog runs", "a cat"]
    np.testing.assert_allclose(loaded.score(captions), CausalLMScorer(model, tokenizer).score(captions), atol=1e-5)


def _tiny_classifier(id2label):
    torch = pytest.importorskip("torch")
    from transformers import BertConfig, BertForSequenceClassification

    from hf_counterfactual.tiny_models import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(WORDS)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, pad_token_id=tokenizer.pad_token_id,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval(), tokenizer


def test_sequence_classifier_scorer():
    import torch

    model, tokenizer = _tiny_classifier({0: "unacceptable", 1: "acceptable"})
    scorer = SequenceClassifierScorer(model, tokenizer, batch_size=2)
    assert scorer.label_id == 1  # "acceptable", not "unacceptable"
    captions = ["a dog runs", "dog dog the on", "a cat sleeps on the big mat"]
    scores = scorer.score(captions)
    assert scores.shape == (3,) and np.all((scores > 0) & (scores < 1))
    with torch.no_grad():
        expected = [torch.softmax(model(**tokenizer(c, return_tensors="pt")).logits[0], -1)[1].item() for c in captions]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert SequenceClassifierScorer(model, tokenizer, label="Unacceptable").label_id == 0
    assert SequenceClassifierScorer(model, tokenizer, label=0).label_id == 0


def test_sequence_classifier_label_lookup_errors():
    model, tokenizer = _tiny_classifier({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match=r"cannot find the label 'acceptable'.*0: 'LABEL_0', 1: 'LABEL_1'.*label="):
        SequenceClassifierScorer(model, tokenizer)
    assert SequenceClassifierScorer(model, tokenizer, label="label_1").label_id == 1
    with pytest.raises(ValueError, match="label id 5"):
        SequenceClassifierScorer(model, tokenizer, label=5)
    with pytest.raises(ValueError, match="'grammatical'"):
        SequenceClassifierScorer(model, tokenizer, label="grammatical")
