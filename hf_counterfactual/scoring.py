"""The scoring seam: scores ``S(image, text)`` for the pairs an objective or a benchmark asks for.

Training and evaluation read the same scores. A dual encoder (CLIP, SigLIP) gives
``S = scale * cosine + bias`` (``bias`` 0 for CLIP) for any pair, all pairs included ("dense"), from
one pass of each encoder; a generative VLM gives a score per pair it is asked about (each costs a
forward), so only record-local terms can use it. :class:`DualEncoderScores` is one training step's
scores of a dual encoder; :class:`DualEncoderScorer` scores images against texts for evaluation.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Hashable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
import xxhash
from PIL import Image
from tqdm.auto import tqdm

from .image_processing import is_local_path, resolve_image_transform


def similarity(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``logit_scale * image_embeds @ text_embeds.T`` for L2-normalised embeddings: ``[..., num_images, num_texts]``
    (leading batch dimensions are kept)."""
    return logit_scale * image_embeds @ text_embeds.transpose(-1, -2)


def has_logit_bias(model) -> bool:
    """Whether a dual encoder adds a learned bias to its scores (SigLIP) or not (CLIP). Reads the
    attribute, not its value, so it also holds for a parameter ZeRO-3 has partitioned."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed engine
    return hasattr(model, "logit_bias")


def scale_and_bias_from_outputs(outputs, with_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``scale`` (``logit_scale.exp()``) and ``bias`` that a dual encoder's forward applied, read
    off its outputs: ``logits_per_text = scale * cos + bias``.

    Equal to the model's parameters and differentiable with respect to them, but also right where
    they are not readable outside the forward (DeepSpeed ZeRO-3 partitions them): least squares of
    the logits on the cosines recovers them exactly, through the origin for CLIP, with an intercept
    for SigLIP (``with_bias``; through the origin its scale would be wrong: 38.5 for a SigLIP at
    scale 10, bias -10). With a bias, the batch needs two different cosines to tell them apart.
    """
    cos = outputs.text_embeds @ outputs.image_embeds.T
    logits = outputs.logits_per_text
    if not with_bias:
        return (logits * cos).sum() / cos.square().sum(), None
    centred_cos, centred_logits = cos - cos.mean(), logits - logits.mean()
    spread = centred_cos.square().sum()
    if not spread > 0:
        raise ValueError("a batch with one image-text cosine cannot separate the scale from the bias: use at least 2 images or texts")
    scale = (centred_logits * centred_cos).sum() / spread
    return scale, logits.mean() - scale * cos.mean()


class DualEncoderScores:
    """One step's scores of a dual encoder over its distinct images and texts: ``S = scale * cosine
    + bias`` for any pair. Objectives ask for them by pair (:meth:`pairs`, what any scorer can
    give) or, being dense, as matrices over (possibly gathered) embeddings (:meth:`matrix`).

    Args:
        image_embeds ``[I, D]``, text_embeds ``[T, D]``: L2-normalised embeddings.
        scale: the temperature; bias: SigLIP's learned bias (``None``: no bias, as CLIP).
        reconstruction_logits: a reconstruction decoder's logits of the step's target captions
            (:class:`~hf_counterfactual.reconstruction.ReconstructionWrapper`), or ``None``.
    """

    dense = True

    def __init__(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: torch.Tensor | float, bias: torch.Tensor | float | None = None,
        reconstruction_logits: torch.Tensor | None = None,
    ):  # fmt: skip
        self.image_embeds, self.text_embeds, self.scale, self.bias = image_embeds, text_embeds, scale, bias
        self.reconstruction_logits = reconstruction_logits

    @classmethod
    def from_outputs(cls, outputs, with_bias: bool = False) -> "DualEncoderScores":
        """From a ``CLIPModel`` / ``SiglipModel`` forward (see :func:`scale_and_bias_from_outputs`),
        with a :class:`~hf_counterfactual.reconstruction.ReconstructionWrapper`'s ``reconstruction_logits``."""
        scale, bias = scale_and_bias_from_outputs(outputs, with_bias)
        return cls(outputs.image_embeds, outputs.text_embeds, scale, bias, outputs.get("reconstruction_logits"))

    def _biased(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.bias is None else scores + self.bias

    def matrix(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of every image against every text ``[..., N, M]`` (embeddings of this step or gathered)."""
        return self._biased(similarity(image_embeds, text_embeds, self.scale))

    def pairwise(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of aligned pairs (broadcast over leading dimensions)."""
        return self._biased(self.scale * (image_embeds * text_embeds).sum(-1))

    def pairs(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """``S(image_index[..], text_index[..])`` over this step's distinct images and texts (indices
        broadcast against each other)."""
        image_index, text_index = torch.broadcast_tensors(image_index, text_index)
        return self.pairwise(self.image_embeds[image_index], self.text_embeds[text_index])


def text_padding(model) -> str | bool:
    """How ``model``'s text tower wants a batch of texts padded: SigLIP's was trained on texts padded
    to its full length and pools its last position (its docs: ``padding="max_length"``), so the
    padding changes its embeddings; every other model pads to the longest text."""
    return "max_length" if getattr(model.config, "model_type", "").startswith("siglip") else True


class DualEncoderScorer:
    """Scores images against texts with a dual encoder (``CLIPModel``, ``SiglipModel``, or any model
    with ``get_image_features``, ``get_text_features``, ``logit_scale`` and optionally ``logit_bias``),
    encoding in batches without gradient: ``S = scale * cosine + bias``, as in training.

    Example::

        scorer = DualEncoderScorer(model, processor)
        scores = scorer.score(images, texts)   # [len(images), len(texts)]

    Images are pre-processed in ``torch.utils.data.DataLoader`` workers, ``prefetch_factor`` batches
    ahead of the forward, on the fast image path by default
    (:class:`~hf_counterfactual.image_processing.FastImageTransform`: ``uint8`` to the device,
    normalised there). On the fast path, the pre-processed pixels of stored images are kept in a
    :class:`PixelCache` (by default :data:`PIXEL_CACHE`, shared by every scorer of the process), so
    that evaluating the same benchmark again (each evaluation of a training run, each checkpoint of
    an ablation) decodes and resizes each image once; tokenised text batches are kept the same way
    (:class:`TokenCache`, :data:`TOKEN_CACHE`).

    Args:
        image_path: ``"fast"`` (default, where the processor allows it; else the processor with a
            logged reason) or ``"exact"`` (the processor's own float tensors).
        num_workers: image pre-processing workers; ``None``: sized from the cores
            (:func:`~hf_counterfactual.training_args.default_num_workers`), never more than the
            number of batches less one; 0: in this process. Workers are forked where the platform
            can (the images' loader need not be picklable).
        prefetch_factor: batches each worker prepares ahead.
        pixel_cache: where pre-processed ``uint8`` pixels are kept between calls (:class:`PixelCache`;
            default the process-wide :data:`PIXEL_CACHE`); ``None``: pre-process every image every call.
        token_cache: where tokenised text batches are kept between calls (:class:`TokenCache`;
            default the process-wide :data:`TOKEN_CACHE`); ``None``: tokenise every call.
    """

    def __init__(
        self, model, processor, batch_size: int = 64, device: str | torch.device | None = None, show_progress: bool = True,
        image_path: str = "fast", num_workers: int | None = None, prefetch_factor: int = 2,
        pixel_cache: PixelCache | None | str = "default", token_cache: TokenCache | None | str = "default",
    ):  # fmt: skip
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.show_progress = show_progress
        self.text_padding = text_padding(model)
        self.image_transform = resolve_image_transform(processor.image_processor, image_path)
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.pixel_cache = PIXEL_CACHE if isinstance(pixel_cache, str) and pixel_cache == "default" else pixel_cache
        self.token_cache = TOKEN_CACHE if isinstance(token_cache, str) and token_cache == "default" else token_cache

    def _batches(self, items: Sequence, desc: str):
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc=desc, disable=not self.show_progress or len(starts) < 2):
            yield items[start : start + self.batch_size]

    def pixel_batches(self, images: Sequence) -> Iterator[torch.Tensor]:
        """Pre-processed batches of ``images`` (``uint8`` on the fast path, the processor's float32
        otherwise), from DataLoader workers when there is more than one batch to compute; on the fast
        path, images found in :attr:`pixel_cache` are not pre-processed again, and those computed
        are added to it."""
        batches = -(-len(images) // self.batch_size)
        keys = self._cache_keys(images)
        if keys is None:
            loader = self._loader(images)
        else:
            loader = self._cached_batches(images, keys)
        yield from tqdm(loader, total=batches, desc="Encoding images", disable=not self.show_progress or batches < 2)

    def _loader(self, images: Sequence) -> torch.utils.data.DataLoader:
        return image_loader(images, self.image_transform, self.processor.image_processor, self.batch_size,
                            self._workers(len(images)), self.prefetch_factor, pin_memory=self.device.type == "cuda")  # fmt: skip

    def _cache_keys(self, images: Sequence) -> list[Hashable | None] | None:
        """The :class:`PixelCache` key of each image (``None``: not cacheable), or ``None`` where the
        cache does not apply (no cache, the exact path, images whose stored form is not at hand)."""
        if self.pixel_cache is None or self.image_transform is None:
            return None
        identify = None
        if isinstance(images, (list, tuple)):
            values, read = images, None
        elif getattr(images, "load_stored", None) is not None:  # LazyImages: the undecoded images
            values, read, identify = images.refs, images.load_stored, getattr(images, "image_key", None)
        else:  # reading a lazy sequence here would decode each image twice
            return None
        token, key, keys = self.pixel_cache.token(self.image_transform), self.pixel_cache.key, []
        for value in values:
            try:
                # The benchmark's identity of the stored image where it has one (a Dataset's
                # fingerprint and the row: no read of the image), else a digest of what is stored.
                identity = None if identify is None else identify(value)
                keys.append((token, identity) if identity is not None else key(token, value if read is None else read(value)))
            except Exception:  # the loader reads it again and raises the error that names it
                keys.append(None)
        return keys

    def _cached_batches(self, images: Sequence, keys: list[Hashable | None]) -> Iterator[torch.Tensor]:
        get, put = self.pixel_cache.get, self.pixel_cache.put
        cached = [None if key is None else get(key) for key in keys]
        missing = [i for i, pixels in enumerate(cached) if pixels is None]
        computed = (pixels for batch in (self._loader(_Selection(images, missing)) if missing else ()) for pixels in batch)
        pin = self.device.type == "cuda"
        for start in range(0, len(images), self.batch_size):
            rows = cached[start : start + self.batch_size]
            for k, pixels in enumerate(rows):
                if pixels is None:
                    rows[k] = pixels = next(computed)
                    if keys[start + k] is not None:
                        put(keys[start + k], pixels.clone())
            batch = torch.stack(rows)
            yield batch.pin_memory() if pin else batch

    def _workers(self, num_images: int) -> int:
        from .training_args import default_num_workers

        wanted = default_num_workers() if self.num_workers is None else self.num_workers
        return min(wanted, max(-(-num_images // self.batch_size) - 1, 0))  # never more than the batches less one

    def model_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """A pre-processed batch on the device, in the model's dtype (CLIP casts inside, not every vision
        tower does); ``uint8`` ones normalised there."""
        pixel_values = pixel_values.to(self.device, non_blocking=True)
        if pixel_values.dtype == torch.uint8:
            return self.image_transform.normalize(pixel_values, self.model.dtype)
        return pixel_values.to(dtype=self.model.dtype)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings ``[len(images), D]``."""
        chunks = []
        for pixel_values in self.pixel_batches(images):
            features = self.model.get_image_features(pixel_values=self.model_pixel_values(pixel_values)).pooler_output
            chunks.append(F.normalize(features.float(), dim=-1))
        return torch.cat(chunks)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[len(texts), D]``, in the order of ``texts``.

        Texts are encoded in batches of similar length (sorted by characters, as sentence-transformers
        does), so that a batch padded to its longest text holds little padding: 13% fewer token
        positions on the procedural captions, and as much less text-tower work. The padding does not
        change a text's embedding (CLIP masks it; SigLIP pads every text to its full length anyway).
        A batch found in :attr:`token_cache` is not tokenised again (and read here: handing a
        look-up to the thread and back cost ~0.35 ms a batch); the next one missing is tokenised in a
        thread while the model encodes this one."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks, signature = [], None if self.token_cache is None else TokenCache.signature(self.processor.tokenizer)
        with ThreadPoolExecutor(max_workers=1) as pool:  # its thread starts at the first miss

            def ahead(batch: Sequence[str] | None) -> Future:
                key = None if batch is None or signature is None else (signature, self.text_padding, tuple(batch))
                encoded = None if key is None else self.token_cache.get(key)
                if batch is None or encoded is not None:
                    done = Future()
                    done.set_result(encoded)
                    return done
                return pool.submit(self._tokenize, batch, key)

            batches = self._batches([texts[i] for i in order], "Encoding texts")
            upcoming = ahead(next(batches, None))
            while (encoded := upcoming.result()) is not None:
                upcoming = ahead(next(batches, None))  # one batch ahead of the forward
                # A new dict: BatchEncoding.to would move the cached batch itself.
                features = self.model.get_text_features(**{k: v.to(self.device) for k, v in encoded.items()}).pooler_output
                chunks.append(F.normalize(features.float(), dim=-1))
        sorted_embeds = torch.cat(chunks)
        embeds = torch.empty_like(sorted_embeds)
        embeds[torch.tensor(order, device=sorted_embeds.device)] = sorted_embeds
        return embeds

    def _tokenize(self, texts: Sequence[str], key: Hashable | None):
        """One batch tokenised, and kept in :attr:`token_cache` under ``key`` (``None``: not kept)."""
        encoded = self.processor.tokenizer(list(texts), padding=self.text_padding, truncation=True, return_tensors="pt")
        if key is not None:
            self.token_cache.put(key, encoded)
        return encoded

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.detach().float().exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.detach().float()

    def score_embeddings(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Scores of already encoded images against already encoded texts."""
        return DualEncoderScores(image_embeds, text_embeds, self.logit_scale, self.logit_bias).matrix(image_embeds, text_embeds)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
        """Scores ``[len(images), len(texts)]`` of every image against every text."""
        return self.score_embeddings(self.encode_images(images), self.encode_texts(texts))


class _BoundedCache:
    """Values under keys, at most ``max_bytes`` of them (the least recently used go first): what
    :class:`PixelCache` and :class:`TokenCache` share. :attr:`hits` and :attr:`misses` count lookups;
    :attr:`nbytes` is the memory held. Thread-safe: :meth:`DualEncoderScorer.encode_texts` reads the
    token cache while its tokenising thread adds to it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()  # key -> (value, its bytes)
        self.nbytes = self.hits = self.misses = 0
        self._lock = threading.Lock()

    @staticmethod
    def size_of(value) -> int:
        """The bytes ``value`` holds."""
        raise NotImplementedError

    def get(self, key: Hashable):
        """The value stored under ``key``, or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value) -> None:
        """Keeps ``value`` (not copied: pass what nothing else writes to) under ``key``, evicting the
        least recently used past :attr:`max_bytes`; one larger than that is not kept."""
        size = self.size_of(value)
        if size > self.max_bytes:
            return
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self.nbytes -= previous[1]
            self._items[key] = (value, size)
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.nbytes -= evicted

    def clear(self) -> None:
        """Empties the cache and resets its counters."""
        with self._lock:
            self._items.clear()
            self.nbytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)


class PixelCache(_BoundedCache):
    """Pre-processed ``uint8`` pixels of stored images, at most ``max_bytes`` of them (the least
    recently used go first), for :class:`DualEncoderScorer`.

    An image is keyed by the image transform's settings (a
    :class:`~hf_counterfactual.image_processing.FastImageTransform`, frozen: another processor or
    size is another key) and by the benchmark's identity of the stored image where it has one
    (:attr:`~hf_counterfactual.benchmarks.MatchingBenchmark.image_key`: a Dataset's fingerprint with
    the row and field, so that a repeated evaluation reads no stored image), else by its stored
    form: a 128-bit XXH3 digest of an undecoded image's bytes
    (``xxhash``, which ``datasets`` fingerprints with: 5 us for a 150 KB JPEG, against SHA-1's 160 us,
    a tenth of the pre-processing a warm evaluation skips), or a local file's path, size and
    modification time. A changed image or transform is therefore a miss, not a stale hit. Decoded
    (PIL) images are not cached: nothing cheap identifies their pixels. :attr:`hits` and
    :attr:`misses` count lookups; :attr:`nbytes` is the memory held.
    """

    def __init__(self, max_bytes: int = 512 * 2**20):
        super().__init__(max_bytes)

    @staticmethod
    def size_of(pixels: torch.Tensor) -> int:
        return pixels.numel() * pixels.element_size()

    @staticmethod
    def token(transform) -> str:
        """``transform``'s settings as the string keys start with (computed once per call: a string
        keeps its hash, a dataclass recomputes it)."""
        return repr(transform)

    @staticmethod
    def key(transform, stored) -> Hashable | None:
        """The key of ``stored`` (an undecoded ``{"bytes", "path"}`` image or a local path) under
        ``transform`` (or its :meth:`token`), or ``None`` for what is not cached (decoded images,
        remote paths)."""
        if not isinstance(transform, str):
            transform = PixelCache.token(transform)
        if type(stored) is dict or isinstance(stored, Mapping):  # `type` first: an ABC check costs what the digest does
            data, path = stored.get("bytes"), stored.get("path")
        elif isinstance(stored, (str, os.PathLike)):
            data, path = None, os.fspath(stored)
        else:
            return None
        if data is not None:
            return transform, xxhash.xxh3_128_digest(data)
        if is_local_path(path):
            try:
                status = os.stat(path)
            except OSError:
                return None
            return transform, os.path.abspath(path), status.st_size, status.st_mtime_ns
        return None


#: The process-wide :class:`PixelCache` every :class:`DualEncoderScorer` uses unless told otherwise (512 MiB).
PIXEL_CACHE = PixelCache()


class TokenCache(_BoundedCache):
    """Tokenised text batches (``BatchEncoding`` of CPU tensors), at most ``max_bytes`` of them (the
    least recently used go first), for :class:`DualEncoderScorer`: a repeated evaluation tokenises
    nothing, as :class:`PixelCache` spares it the images.

    A batch is keyed by its texts, the padding and the tokenizer's :meth:`signature`: the tokenizer
    object, its class, name, length (added tokens), special tokens and pad token, padding and
    truncation sides, maximum length, and its Rust backend's vocabulary size, normaliser,
    pre-tokeniser and post-processor. A tokenizer changed in any of these ways (``add_tokens``, a new
    pad token, ...) is a miss, not a stale hit. What the signature does not read, the backend's
    vocabulary model, is fixed once a tokenizer is loaded unless it is replaced by hand; call
    :meth:`clear` after doing that. A tokenizer without a Rust backend is not cached. :attr:`hits`
    and :attr:`misses` count lookups; :attr:`nbytes` is the memory held.
    """

    def __init__(self, max_bytes: int = 64 * 2**20):
        super().__init__(max_bytes)

    @staticmethod
    def size_of(encoded: Mapping[str, torch.Tensor]) -> int:
        return sum(value.numel() * value.element_size() for value in encoded.values() if isinstance(value, torch.Tensor))

    @staticmethod
    def signature(tokenizer) -> Hashable | None:
        """What identifies ``tokenizer``'s output, cheaply (~15 us), or ``None`` for a tokenizer
        without a Rust backend (not cached)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        # Each component's own JSON (small: the vocabulary lives in the model, which is not read).
        parts = tuple(None if part is None else part.__getstate__() for part in (backend.normalizer, backend.pre_tokenizer, backend.post_processor))
        # The object itself (weakly: a freed tokenizer's entries never match a new one at its address),
        # since another tokenizer of identical settings may hold another vocabulary.
        return (weakref.ref(tokenizer), id(backend), type(tokenizer).__qualname__, tokenizer.name_or_path, len(tokenizer),
                tokenizer.pad_token_id, tuple(tokenizer.all_special_ids), tokenizer.padding_side, tokenizer.truncation_side,
                tokenizer.model_max_length, backend.get_vocab_size(with_added_tokens=True), parts)  # fmt: skip


#: The process-wide :class:`TokenCache` every :class:`DualEncoderScorer` uses unless told otherwise (64 MiB).
TOKEN_CACHE = TokenCache()


class _Selection(Sequence):
    """``images[indices[k]]`` as a sequence (slices included), with the images' ``stored`` form where they have one."""

    def __init__(self, images: Sequence, indices: Sequence[int]):
        self.images, self.indices = images, list(indices)
        if getattr(images, "stored", None) is not None:
            self.stored = lambda k: images.stored(self.indices[k])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.images[i] for i in self.indices[index]]
        return self.images[self.indices[index]]


class _ImageBatches(torch.utils.data.Dataset):
    """Batch ``i`` of ``images``, pre-processed: what a DataLoader worker computes."""

    def __init__(self, images: Sequence, transform, image_processor, batch_size: int):
        self.images, self.transform, self.image_processor, self.batch_size = images, transform, image_processor, batch_size

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.images))
        if self.transform is None:
            return self.image_processor(list(self.images[start:stop]), return_tensors="pt")["pixel_values"]
        stored = getattr(self.images, "stored", None)  # LazyImages: the images as stored (undecoded JPEGs: a draft decode)
        if stored is None:
            return self.transform(list(self.images[start:stop]))
        decoded = []
        for i in range(start, stop):
            try:
                decoded.append(self.transform.decode(stored(i)))
            except Exception:  # the benchmark's own loader decodes it, or raises an error naming the image
                decoded.append(self.transform.decode(self.images[i]))
        return self.transform.stack(decoded)


def image_loader(
    images: Sequence, transform, image_processor, batch_size: int, num_workers: int = 0, prefetch_factor: int = 2, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader of pre-processed batches of ``images`` (``transform``: a
    :class:`~hf_counterfactual.image_processing.FastImageTransform`, giving ``uint8``; ``None``: the
    image processor's float32), in order. Workers are forked where the platform can, so that the
    images' loader (a closure over a dataset) need not be picklable."""
    extra = {}
    if num_workers > 0:
        extra["prefetch_factor"] = prefetch_factor
        if "fork" in multiprocessing.get_all_start_methods():
            extra["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(
        _ImageBatches(images, transform, image_processor, batch_size), batch_size=None, shuffle=False,
        num_workers=num_workers, pin_memory=pin_memory, **extra,
    )  # fmt: skip
