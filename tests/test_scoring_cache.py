"""DualEncoderScorer's pixel and token caches (hf_counterfactual.scoring.PixelCache, TokenCache), its
length-sorted, one-batch-ahead tokenisation, and the counterfactual benchmark's block reads of a Dataset."""

import copy
import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dummy_components import get_dummy_components
from hf_counterfactual import DualEncoderScorer, evaluate_benchmark, scoring
from hf_counterfactual.benchmarks import LazyImages, counterfactual_records_benchmark
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES
from hf_counterfactual.image_processing import FastImageTransform
from hf_counterfactual.scoring import PixelCache, TokenCache


def png(seed: int, width: int = 48, height: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def counting(monkeypatch) -> list:
    """Every image the fast path pre-processes (in this process: the scorers here use no workers)."""
    calls = []
    original = FastImageTransform.decode
    monkeypatch.setattr(FastImageTransform, "decode", lambda self, value: calls.append(value) or original(self, value))
    return calls


def scorer(model, processor, cache, **kwargs) -> DualEncoderScorer:
    return DualEncoderScorer(model, processor, batch_size=4, num_workers=0, show_progress=False, pixel_cache=cache, **kwargs)


def test_a_repeated_call_preprocesses_nothing_and_gives_the_same_batches(monkeypatch):
    model, processor, _ = get_dummy_components()
    images = [png(i) for i in range(10)]
    uncached = list(scorer(model, processor, None).pixel_batches(images))
    cache = PixelCache()
    calls = counting(monkeypatch)
    first = list(scorer(model, processor, cache).pixel_batches(images))
    assert len(calls) == 10 and len(cache) == 10 and (cache.hits, cache.misses) == (0, 10)
    second = list(scorer(model, processor, cache).pixel_batches(images))  # another scorer, the same cache
    assert len(calls) == 10 and cache.hits == 10
    for batches in (first, second):
        assert [b.shape[0] for b in batches] == [4, 4, 2]
        for got, expected in zip(batches, uncached):
            assert torch.equal(got, expected)


def test_hits_and_misses_mixed_keep_the_images_order(monkeypatch):
    model, processor, _ = get_dummy_components()
    images = [png(i) for i in range(11)]
    expected = torch.cat(list(scorer(model, processor, None).pixel_batches(images)))
    cache = PixelCache()
    list(scorer(model, processor, cache).pixel_batches(images[1::3]))  # images 1, 4, 7, 10 cached
    calls = counting(monkeypatch)
    got = torch.cat(list(scorer(model, processor, cache).pixel_batches(images)))
    assert len(calls) == 7 and cache.hits == 4
    assert torch.equal(got, expected)
    embeddings = scorer(model, processor, cache).encode_images(images)
    torch.testing.assert_close(embeddings, scorer(model, processor, None).encode_images(images), rtol=0, atol=0)


def test_another_transform_or_other_bytes_are_misses_not_stale_hits():
    model, processor, _ = get_dummy_components(image_size=32)
    other_model, other_processor, _ = get_dummy_components(image_size=48)
    cache = PixelCache()
    image = png(0)
    small = next(scorer(model, processor, cache).pixel_batches([image]))
    large = next(scorer(other_model, other_processor, cache).pixel_batches([image]))
    assert small.shape[-1] == 32 and large.shape[-1] == 48 and cache.hits == 0 and len(cache) == 2
    changed = png(1)
    assert not torch.equal(next(scorer(model, processor, cache).pixel_batches([changed])), small)
    assert cache.hits == 0


def test_a_file_rewritten_in_place_is_a_miss(tmp_path):
    model, processor, _ = get_dummy_components()
    path = tmp_path / "image.png"
    path.write_bytes(png(0, 48, 40)["bytes"])
    cache = PixelCache()
    first = next(scorer(model, processor, cache).pixel_batches([{"bytes": None, "path": str(path)}]))
    path.write_bytes(png(1, 64, 40)["bytes"])  # another size: another file size whatever the clock's resolution
    second = next(scorer(model, processor, cache).pixel_batches([{"bytes": None, "path": str(path)}]))
    assert cache.hits == 0 and not torch.equal(first, second)
    again = next(scorer(model, processor, cache).pixel_batches([str(path)]))
    assert cache.hits == 1 and torch.equal(again, second)


def test_keys_of_any_mapping_and_of_a_path_and_what_is_not_cached(tmp_path):
    """A plain dict takes a shortcut past the ABC checks; any other mapping of the same image has the same key."""
    import pathlib
    from types import MappingProxyType

    token, image = PixelCache.token("transform"), png(0)
    assert PixelCache.key(token, MappingProxyType(image)) == PixelCache.key(token, image) == PixelCache.key(token, dict(image))
    assert PixelCache.key(token, image) != PixelCache.key(token, png(1))
    path = tmp_path / "image.png"
    path.write_bytes(image["bytes"])
    by_path = PixelCache.key(token, {"bytes": None, "path": str(path)})
    assert by_path is not None and PixelCache.key(token, str(path)) == PixelCache.key(token, pathlib.Path(path)) == by_path
    assert PixelCache.key(token, Image.new("RGB", (4, 4))) is None and PixelCache.key(token, {"bytes": None, "path": "hf://x.png"}) is None


def test_decoded_images_the_exact_path_and_no_cache_leave_the_cache_alone():
    model, processor, _ = get_dummy_components()
    cache = PixelCache()
    decoded = [Image.open(io.BytesIO(png(i)["bytes"])) for i in range(3)]
    list(scorer(model, processor, cache).pixel_batches(decoded))
    list(scorer(model, processor, cache, image_path="exact").pixel_batches(decoded))
    assert len(cache) == 0 and cache.hits == cache.misses == 0
    assert scorer(model, processor, cache, image_path="exact")._cache_keys([png(0)]) is None  # the processor's floats: not cached
    assert DualEncoderScorer(model, processor).pixel_cache is not None  # the process-wide one by default


def test_the_cache_is_bounded_least_recently_used_first_out():
    cache = PixelCache(max_bytes=300)
    tensors = {name: torch.full((100,), i, dtype=torch.uint8) for i, name in enumerate("abcd")}
    cache.put("a", tensors["a"]), cache.put("b", tensors["b"]), cache.put("c", tensors["c"])
    assert len(cache) == 3 and cache.nbytes == 300
    assert cache.get("a") is tensors["a"]  # now the most recently used
    cache.put("d", tensors["d"])
    assert cache.get("b") is None and cache.get("a") is tensors["a"] and cache.get("d") is tensors["d"] and cache.nbytes == 300
    cache.put("too big", torch.zeros(301, dtype=torch.uint8))
    assert cache.get("too big") is None and len(cache) == 3
    cache.put("a", torch.zeros(50, dtype=torch.uint8))  # replaced: its old size no longer counted
    assert cache.nbytes == 250
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == cache.hits == cache.misses == 0


TEXTS = ["a big red cube left of a small blue sphere", "a red cube", "a blue cube left of a sphere", "a cube",
         "a green sphere above a red cube", "a yellow cube left of a sphere", "two spheres"]  # fmt: skip


def one_by_one(model, processor, texts) -> torch.Tensor:
    """Each text encoded alone, unpadded: the reference."""
    with torch.no_grad():
        rows = [model.get_text_features(**processor.tokenizer([text], truncation=True, return_tensors="pt")).pooler_output for text in texts]
    return torch.nn.functional.normalize(torch.cat(rows), dim=-1)


def test_texts_batched_by_length_and_tokenised_a_batch_ahead_come_back_in_their_order():
    model, processor, _ = get_dummy_components()
    scorer = DualEncoderScorer(model, processor, batch_size=3, show_progress=False, token_cache=None)
    assert [len(TEXTS[i]) for i in sorted(range(7), key=lambda i: len(TEXTS[i]))] != [len(t) for t in TEXTS]  # the sort reorders
    got = scorer.encode_texts(TEXTS)
    assert got.shape[0] == 7
    torch.testing.assert_close(got, one_by_one(model, processor, TEXTS), rtol=0, atol=1e-5)  # padding leaves CLIP's pooled output unchanged
    torch.testing.assert_close(scorer.encode_texts(TEXTS[::-1]), got.flip(0), rtol=0, atol=1e-5)


def counting_tokenizer(monkeypatch, tokenizer) -> list:
    calls = []
    original = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, texts, **kw: calls.append(list(texts)) or original(self, texts, **kw))
    return calls


def test_a_repeated_call_tokenises_nothing_and_gives_the_same_embeddings(monkeypatch):
    model, processor, _ = get_dummy_components()
    cache = TokenCache()
    calls = counting_tokenizer(monkeypatch, processor.tokenizer)
    submitted = []  # batches handed to the tokenising thread
    original_submit = scoring.ThreadPoolExecutor.submit
    monkeypatch.setattr(scoring.ThreadPoolExecutor, "submit", lambda self, fn, *a: submitted.append(a) or original_submit(self, fn, *a))
    first = scorer(model, processor, None, token_cache=cache).encode_texts(TEXTS)
    assert len(calls) == 2 and len(cache) == 2 and (cache.hits, cache.misses) == (0, 2)  # batches of 4: 4 + 3
    assert len(submitted) == 2  # each tokenised in the thread, a batch ahead
    second = scorer(model, processor, None, token_cache=cache).encode_texts(TEXTS)  # another scorer, the same cache
    assert len(calls) == 2 and cache.hits == 2 and len(submitted) == 2  # hits read in this thread
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    scorer(model, processor, None, token_cache=None).encode_texts(TEXTS)
    assert len(calls) == 4 and cache.hits == 2  # no cache: tokenised again, the cache untouched
    assert DualEncoderScorer(model, processor).token_cache is not None  # the process-wide one by default


@pytest.mark.parametrize("change", ["add_tokens", "pad_token", "padding_side", "model_max_length", "another_object"])
def test_a_changed_or_another_tokenizer_is_a_miss_not_a_stale_hit(change):
    model, processor, _ = get_dummy_components()
    tokenizer, cache = processor.tokenizer, TokenCache()
    scorer(model, processor, None, token_cache=cache).encode_texts(TEXTS)
    before = TokenCache.signature(tokenizer)
    assert before is not None and TokenCache.signature(tokenizer) == before
    if change == "add_tokens":
        tokenizer.add_tokens(["zzz"])
    elif change == "pad_token":
        tokenizer.pad_token = tokenizer.eos_token
    elif change == "padding_side":
        tokenizer.padding_side = "left"
    elif change == "model_max_length":
        tokenizer.model_max_length = 4
    else:
        tokenizer = copy.deepcopy(tokenizer)
    assert TokenCache.signature(tokenizer) != before
    if change == "model_max_length":  # and the scorer's output follows, from the same cache: texts truncated to 4 tokens
        got = scorer(model, processor, None, token_cache=cache).encode_texts(TEXTS)
        assert (cache.hits, cache.misses) == (0, 4)
        torch.testing.assert_close(got, one_by_one(model, processor, TEXTS), rtol=0, atol=1e-5)
        assert processor.tokenizer(TEXTS[0], truncation=True, return_tensors="pt")["input_ids"].shape[1] == 4


def test_the_token_cache_is_bounded_least_recently_used_first_out():
    cache = TokenCache(max_bytes=2 * 80)
    batch = {name: {"input_ids": torch.zeros(5, dtype=torch.long), "attention_mask": torch.ones(5, dtype=torch.long)} for name in "abc"}
    cache.put("a", batch["a"]), cache.put("b", batch["b"])
    assert cache.nbytes == 160 and cache.get("a") is batch["a"]  # now the most recently used
    cache.put("c", batch["c"])
    assert cache.get("b") is None and cache.get("a") is batch["a"] and cache.get("c") is batch["c"] and len(cache) == 2
    cache.put("too big", {"input_ids": torch.zeros(21, dtype=torch.long)})
    assert cache.get("too big") is None and cache.nbytes == 160
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == cache.hits == cache.misses == 0


def test_a_benchmark_reads_a_dataset_in_blocks_and_gives_every_row(tmp_path):
    _, _, records = get_dummy_components(num_records=70)
    dataset = datasets.Dataset.from_list(records, features=COUNTERFACTUAL_FEATURES)
    from_list = counterfactual_records_benchmark(records)
    from_dataset = counterfactual_records_benchmark(dataset)
    assert [e.texts for e in from_dataset.examples] == [e.texts for e in from_list.examples]
    refs = from_dataset.distinct_images()
    assert len({ref[0] for ref in refs}) == 70
    for ref in [refs[-1], refs[0], *refs[::7]]:  # out of order, across block boundaries
        stored = from_dataset.load_stored(ref)
        row, j = ref
        expected = records[row]["image"] if j is None else records[row]["counterfactuals"][j]["image"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored["bytes"])).convert("RGB")), np.asarray(expected.convert("RGB")))
    model, processor, _ = get_dummy_components()
    cache = PixelCache()
    first = evaluate_benchmark(scorer(model, processor, cache), from_dataset)
    second = evaluate_benchmark(scorer(model, processor, cache), from_dataset)
    assert cache.hits == len(refs) and first == second
    assert first == evaluate_benchmark(scorer(model, processor, None), from_list)
    lazy = LazyImages(refs, from_dataset.load_image)  # no stored form: nothing to key by, not cached
    assert scorer(model, processor, cache)._cache_keys(lazy) is None


@pytest.mark.parametrize("bad", [{"bytes": b"not an image", "path": None}])
def test_an_unreadable_image_is_still_an_error(bad):
    model, processor, _ = get_dummy_components()
    with pytest.raises(Exception):
        list(scorer(model, processor, PixelCache()).pixel_batches([png(0), bad]))


def test_the_cache_stays_consistent_when_one_thread_reads_while_another_adds_and_evicts():
    """encode_texts reads the token cache while its tokenising thread adds to it (evicting past max_bytes)."""
    import sys
    import threading

    cache = TokenCache(max_bytes=8 * 64)  # room for 8 of the values below: every put past the 8th evicts
    value = {"input_ids": torch.zeros(8, dtype=torch.int64)}  # 64 bytes
    errors, rounds = [], 20_000
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can

    def writer():
        try:
            for i in range(rounds):
                cache.put(i % 64, value)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    try:
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for i in range(rounds):
                cache.get(i % 64)
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:1]
    assert cache.hits + cache.misses == rounds
    assert cache.nbytes == 64 * len(cache) <= cache.max_bytes


def test_a_datasets_images_are_keyed_by_its_fingerprint_and_row_and_read_only_when_missing():
    from hf_counterfactual.benchmarks import dataset_image_key

    model, processor, records = get_dummy_components(num_records=12)
    dataset = datasets.Dataset.from_list(records, features=COUNTERFACTUAL_FEATURES)
    benchmark = counterfactual_records_benchmark(dataset)
    reads = []
    read = benchmark.load_stored
    benchmark.load_stored = lambda ref: reads.append(ref) or read(ref)
    cache = PixelCache()
    first = evaluate_benchmark(scorer(model, processor, cache), benchmark)
    refs = benchmark.distinct_images()
    assert len(reads) == len(refs) and len(cache) == len(refs)  # each image read once, to pre-process it
    reads.clear()
    assert evaluate_benchmark(scorer(model, processor, cache), benchmark) == first
    assert reads == [] and cache.hits == len(refs)  # found by identity: no stored image read again

    # Another Dataset (another fingerprint) whose first image differs: its own pixels, not row 0's of the first.
    changed = copy.deepcopy(records)
    changed[0]["image"] = Image.fromarray(255 - np.asarray(records[0]["image"].convert("RGB")))
    other = counterfactual_records_benchmark(datasets.Dataset.from_list(changed, features=COUNTERFACTUAL_FEATURES))

    def embeddings(bench, pixel_cache):
        lazy = LazyImages(bench.distinct_images(), bench.load_image, bench.load_stored, bench.image_key)
        return scorer(model, processor, pixel_cache).encode_images(lazy)

    expected = embeddings(other, None)
    assert not torch.allclose(expected[0], embeddings(benchmark, None)[0])
    torch.testing.assert_close(embeddings(other, cache), expected, rtol=0, atol=0)

    # Where a fingerprint and row do not name the content, images are keyed by their bytes.
    assert dataset_image_key(records) is None
    assert dataset_image_key(dataset.with_transform(lambda batch: batch)) is None
    assert dataset_image_key(dataset.with_format("numpy")) is None
    assert counterfactual_records_benchmark(records).image_key is None
