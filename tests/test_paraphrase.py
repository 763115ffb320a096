"""Paraphrases (READ-CLIP alignment): the rejection rules on scripted replies, prompt variants,
the cache shared with the concept editor (:class:`CachedGenerator`), batching, and one end-to-end
call with a tiny random causal LM whose garbage must be rejected and counted."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hf_counterfactual.generation import CachedGenerator, LLMParaphraser, paraphrase_problem
from hf_counterfactual.generation.paraphrase import DEFAULT_PARAPHRASE_EXAMPLES, first_line


class _StubParaphraser(LLMParaphraser):
    """Scripted replies: ``replies[caption]`` is a string (every variant) or a list (one per variant)."""

    def __init__(self, replies, **kwargs):
        super().__init__(model=None, tokenizer=None, model_name="stub", **kwargs)
        self.replies = replies
        self.batches: list[int] = []

    def _generate(self, prompts):
        self.batches.append(len(prompts))
        firsts = [e["caption"] for e in self.few_shot]
        out = []
        for p in prompts:
            caption = p.rsplit("Caption: ", 1)[1].split("\n")[0]
            variant = firsts.index(p.split("Caption: ", 2)[1].split("\n")[0])
            reply = self.replies[caption]
            out.append(reply[variant] if isinstance(reply, list) else reply)
        return out

    @property
    def calls(self):
        return sum(self.batches)


# caption -> (scripted reply, accepted paraphrase or the rejection reason)
SCRIPT = {
    "A black dog sitting on a couch.": (" A dog with black fur sits on a sofa.\nCaption: a cat\nParaphrase: x", "A dog with black fur sits on a sofa."),
    "a woman eating a sandwich": (' "A woman is eating a sandwich."', "A woman is eating a sandwich."),
    "a man with a grey dog": (" a man walking his gray dog", "a man walking his gray dog"),
    "3 birds on a wire": (" three birds perched on a wire", "three birds perched on a wire"),
    "one sheep grazing": (" a single sheep eats grass", "a single sheep eats grass"),
    "a man riding a horse": ("", "empty"),
    "a bird on a wire": ("\nA bird sits on a wire.", "empty"),  # only the first line counts
    "a man holding an umbrella": (" A man, holding an UMBRELLA!", "unchanged"),
    "a cat on a bed": (" a cat that is lying on a soft bed in a quiet bedroom next to a lamp and a window", "too_long"),
    "a large group of people standing on a beach near the ocean": (" people", "too_short"),
    "a bus on the street": (" a bus bus on the road", "repetition"),
    "two dogs playing in the snow": (" three dogs play in the snow", "number"),
    "a dog playing in the snow": (" two dogs play in the snow", "number"),
    "a cat to the left of a dog": (" a cat to the right of a dog", "position"),
    "a lamp above a table": (" a lamp hanging below a table", "position"),
    "a clock on a wall": (" a clock on the left wall", "position"),
    "a red car parked on a street": (" a blue car parked on a road", "colour"),
    "a man with a hat": (" a man without a hat", "negation"),
    "a kite flying in the sky": (" an old photograph of something", "unrelated"),
}
REJECTION_REASONS = {"empty", "unchanged", "too_long", "too_short", "repetition", "number", "position", "colour", "negation", "unrelated"}


@pytest.mark.parametrize("caption", list(SCRIPT))
def test_paraphrase_problem_rules(caption):
    reply, expected = SCRIPT[caption]
    reason = paraphrase_problem(caption, first_line(reply))
    assert reason == (expected if expected in REJECTION_REASONS else None)


def test_rules_cover_every_reason_and_examples_pass():
    assert {e for _, e in SCRIPT.values() if e in REJECTION_REASONS} == REJECTION_REASONS
    for example in DEFAULT_PARAPHRASE_EXAMPLES:  # the prompt's own examples are paraphrases
        assert paraphrase_problem(example["caption"], example["paraphrase"]) is None
    # the length rule: more than 2n + 2 or fewer than n / 2 words (n = the caption's words)
    caption = "a dog on a bed"  # n = 5: 3 to 12 words pass
    filler = "in a small quiet room at night".split()
    assert paraphrase_problem(caption, "a dog lying on a bed " + " ".join(filler[:6])) is None  # 12 words
    assert paraphrase_problem(caption, "a dog lying on a bed " + " ".join(filler[:7])) == "too_long"
    assert paraphrase_problem(caption, "dog on bed") is None
    assert paraphrase_problem(caption, "dog bed") == "too_short"
    assert paraphrase_problem(caption, "dog bed", min_length_ratio=0.4) is None


def test_scripted_replies_accept_and_reject_with_counts():
    stub = _StubParaphraser({c: r for c, (r, _) in SCRIPT.items()})
    out = stub.paraphrase_batch(list(SCRIPT))
    expected = [[e] if e not in REJECTION_REASONS else [] for _, e in SCRIPT.values()]
    assert out == expected
    reasons = Counter(f"rejected_{e}" for _, e in SCRIPT.values() if e in REJECTION_REASONS)
    n_rejected = sum(reasons.values())
    assert dict(stub.stats) == {
        "cached": 0, "generated": len(SCRIPT), "accepted": len(SCRIPT) - n_rejected, "rejected": n_rejected,
        "skipped_empty_caption": 0, **reasons,
    }
    assert stub.paraphrase("a woman eating a sandwich") == ["A woman is eating a sandwich."]


def test_prompt_shape_and_variants():
    stub = _StubParaphraser({})
    prompt = stub.prompt("  a dog on a bed ")
    assert prompt.endswith("\nCaption: a dog on a bed\nParaphrase:")
    assert prompt.count("Caption:") == len(DEFAULT_PARAPHRASE_EXAMPLES) + 1 and "same image" in prompt
    for example in DEFAULT_PARAPHRASE_EXAMPLES:
        assert f"Caption: {example['caption']}\nParaphrase: {example['paraphrase']}\n" in prompt
    # variant k rotates the examples: another last example, another prompt
    variants = [stub.prompt("a dog on a bed", k) for k in range(3)]
    assert len(set(variants)) == 3
    assert variants[1].split("Caption: ")[1].startswith(DEFAULT_PARAPHRASE_EXAMPLES[1]["caption"])


def test_num_paraphrases_variants_and_duplicates():
    replies = {
        "a dog on a bed": [" a dog lies on a bed", " A dog lies on a bed.", " on a bed there is a dog"],
        "two cats on a sofa": [" three cats on a sofa", " a pair of cats on a sofa", " two cats sit on a couch"],
    }
    stub = _StubParaphraser(replies)
    out = stub.paraphrase_batch(list(replies), num_paraphrases=3)
    assert out == [["a dog lies on a bed", "on a bed there is a dog"], ["two cats sit on a couch"]]
    assert stub.stats["rejected_duplicate"] == 1 and stub.stats["rejected_number"] == 2
    assert stub.stats["accepted"] == 3 and stub.calls == 6
    # one paraphrase: only the first variant is asked
    assert _StubParaphraser(replies).paraphrase_batch(list(replies)) == [["a dog lies on a bed"], []]
    for bad in (0, len(DEFAULT_PARAPHRASE_EXAMPLES) + 1):
        with pytest.raises(ValueError, match="num_paraphrases"):
            stub.paraphrase_batch(["a dog"], num_paraphrases=bad)


def test_empty_captions_are_not_sent():
    stub = _StubParaphraser({"a dog on a bed": " a dog lies on a bed"})
    assert stub.paraphrase_batch(["", "a dog on a bed", "  ", None]) == [[], ["a dog lies on a bed"], [], []]
    assert stub.calls == 1 and stub.stats["skipped_empty_caption"] == 3


def test_cache_rerun_makes_no_model_calls(tmp_path):
    replies = {c: r for c, (r, _) in SCRIPT.items()}
    captions = list(SCRIPT)
    first = _StubParaphraser(replies, cache_dir=tmp_path, batch_size=4)
    out = first.paraphrase_batch(captions + captions[:3])  # duplicates run once
    assert first.calls == len(captions)
    lines = (tmp_path / "llm_paraphrases.jsonl").read_text().splitlines()
    assert len(lines) == len(captions)
    assert set(json.loads(lines[0])) == {"model", "prompt_hash", "generation"}

    again = _StubParaphraser({}, cache_dir=tmp_path)  # no replies: any model call would fail
    assert again.paraphrase_batch(captions + captions[:3]) == out
    assert again.calls == 0 and again.stats["cached"] == len(captions) + 3
    assert again.stats["rejected"] == first.stats["rejected"]  # cached raw text is filtered again
    # another model name is another key; the concept editor's cache file is another file
    other = _StubParaphraser(replies, cache_dir=tmp_path)
    other.model_name = "other"
    other.paraphrase_batch(captions[:2])
    assert other.calls == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm_paraphrases.jsonl"]


def test_batching_does_not_change_results(tmp_path):
    replies = {c: r for c, (r, _) in SCRIPT.items()}
    captions = list(SCRIPT)
    one = _StubParaphraser(replies, batch_size=1)
    three = _StubParaphraser(replies, batch_size=3)
    assert one.paraphrase_batch(captions) == three.paraphrase_batch(captions)
    assert one.batches == [1] * len(captions)
    assert three.batches == [3] * (len(captions) // 3) + ([len(captions) % 3] if len(captions) % 3 else [])
    assert one.stats == three.stats


def test_cached_generator_torn_line_and_unique_prompts(tmp_path):
    calls = []

    def fake(prompts):
        calls.append(list(prompts))
        return [p.upper() for p in prompts]

    gen = CachedGenerator(None, None, cache_dir=tmp_path, cache_file="gen.jsonl", batch_size=2, model_name="m", generate_fn=fake)
    assert gen.generate(["a", "b", "a", "c"]) == ["A", "B", "A", "C"]
    assert sorted(p for batch in calls for p in batch) == ["a", "b", "c"] and max(map(len, calls)) <= 2
    assert gen.stats == Counter({"generated": 3, "cached": 0})
    path = tmp_path / "gen.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"model": "m", "prompt_hash": "12')  # an interrupted write
    calls.clear()
    again = CachedGenerator(None, None, cache_dir=tmp_path, cache_file="gen.jsonl", model_name="m", generate_fn=fake)
    assert again.generate(["c", "d", "a"]) == ["C", "D", "A"]
    assert calls == [["d"]] and again.stats == Counter({"cached": 2, "generated": 1})
    assert again.cached("d") == "D" and again.cached("zzz") is None
    with pytest.raises(RuntimeError, match="continuations"):
        CachedGenerator(None, None, model_name="m", generate_fn=lambda prompts: []).generate(["x"])


def test_end_to_end_tiny_random_model(tmp_path):
    pytest.importorskip("torch")
    from hf_counterfactual.tiny_models import build_tiny_causal_lm

    words = "a the dog cat man horse on in of two three left right caption paraphrase : . , with white black grass".split()
    model, tokenizer = build_tiny_causal_lm(words, seed=4)
    captions = ["a dog on the grass", "a man riding a horse", "two cats on the left", "a white horse"]
    para = LLMParaphraser(model, tokenizer, cache_dir=tmp_path, max_new_tokens=8, batch_size=3)
    out = para.paraphrase_batch(captions, num_paraphrases=2)
    assert out == [[], [], [], []]  # garbage is rejected, not crashed on
    assert para.stats["generated"] == 8 and para.stats["rejected"] == 8 and para.stats["accepted"] == 0
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    assert para.model_name.startswith("GPT2LMHeadModel:")  # a config hash for a model without a name

    # batch size does not change the raw generations (left padding + attention mask)
    prompts = [para.prompt(c, k) for c in captions for k in range(2)]
    single = LLMParaphraser(model, tokenizer, max_new_tokens=8, batch_size=1)
    assert single.generator.generate(prompts) == para.generator.generate(prompts)

    # a rerun over the cache does not run the model; a new caption does
    calls = []
    real_generate = model.generate

    def recording_generate(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return real_generate(*args, **kwargs)

    rerun = LLMParaphraser(model, tokenizer, cache_dir=tmp_path, max_new_tokens=8, batch_size=3)
    rerun.model.generate = recording_generate
    assert rerun.paraphrase_batch(captions, num_paraphrases=2) == out and calls == []
    assert rerun.stats["cached"] == 8 and rerun.stats["rejected"] == 8
    rerun.paraphrase_batch(["a black cat"])
    assert calls == [1]
