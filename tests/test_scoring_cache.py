"""DualEncoderScorer's pixel cache (hf_counterfactual.scoring.PixelCache), its one-batch-ahead
tokenisation, and the counterfactual benchmark's block reads of a Dataset."""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from dummy_components import get_dummy_components
from hf_counterfactual import DualEncoderScorer, evaluate_benchmark
from hf_counterfactual.benchmarks import LazyImages, counterfactual_records_benchmark
from hf_counterfactual.features import COUNTERFACTUAL_FEATURES
from hf_counterfactual.image_processing import FastImageTransform
from hf_counterfactual.scoring import PixelCache


def png(seed: int, width: int = 48, height: int = 40) -> dict:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def counting(monkeypatch) -> list:
    """Every image the fast path pre-processes (in this process: the scorers here use no workers)."""
    calls = []
    original = FastImageTransform.load
    monkeypatch.setattr(FastImageTransform, "load", lambda self, value: calls.append(value) or original(self, value))
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


def test_texts_tokenised_a_batch_ahead_give_the_same_embeddings():
    model, processor, _ = get_dummy_components()
    texts = [f"a {colour} cube left of a sphere" for colour in ("red", "blue", "green", "yellow", "purple", "red big", "blue small")]
    got = DualEncoderScorer(model, processor, batch_size=3, show_progress=False).encode_texts(texts)
    with torch.no_grad():
        encoded = processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        expected = torch.nn.functional.normalize(model.get_text_features(**encoded).pooler_output, dim=-1)
    assert got.shape == (7, expected.shape[1])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)  # padding to each batch's longest leaves CLIP's pooled output unchanged


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
