"""Cached, batched, greedy generation with any ``transformers`` causal LM.

The model-agnostic machinery shared by the LLM stages (:class:`~.text_edits.LLMConceptEditor`,
:class:`~.paraphrase.LLMParaphraser`): prompts in, raw continuations out, each continuation cached
in a JSON-lines file keyed by (model name, prompt sha256) so that a rerun runs the model only on
prompts it has never seen. What a generation *means* (parsing, rejection) is the caller's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CachedGenerator", "LLMStage", "model_name_of", "prompt_hash"]

logger = logging.getLogger(__name__)


def prompt_hash(prompt: str) -> str:
    """The cache key of a prompt: the hex sha256 of its UTF-8 bytes."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def model_name_of(model) -> str:
    """A name for ``model`` in cache keys: its ``name_or_path`` (or ``config._name_or_path``); for a
    model built from a config, whose name is empty, its class name and a hash of its config, so two
    differently configured random models never share cache entries."""
    name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    if name:
        return name
    config = getattr(model, "config", None)
    digest = hashlib.sha256(config.to_json_string().encode()).hexdigest()[:16] if config is not None else "unknown"
    return f"{type(model).__name__}:{digest}"


def load_json_lines(path: str, parse: Callable[[str], tuple[Any, Any] | None], what: str) -> dict:
    """``{key: value}`` of the JSON-lines cache at ``path`` (``parse``: a line -> ``(key, value)``, or
    ``None`` when it is not a whole entry). A torn line (a run killed while writing) is skipped,
    with a warning counting the lines dropped."""
    entries, dropped = {}, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            parsed = parse(line)
            if parsed is None:
                dropped += 1  # a torn line from an interrupted run
                continue
            entries[parsed[0]] = parsed[1]
    if dropped:
        logger.warning("%s %s: dropped %d torn line(s) that are not whole entries", what, path, dropped)
    return entries


def append_json_lines(path: str, entries: Sequence[dict], parse: Callable[[str], tuple[Any, Any] | None], what: str) -> None:
    """Appends ``entries`` to the JSON-lines cache at ``path`` (created with its folder), each on a
    line of its own: a torn tail is repaired first (:func:`_repair_tail`), so that new entries are
    never glued to a torn line and lost on the next load."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        _repair_tail(path, parse, what)
    with open(path, "a", encoding="utf-8") as f:
        for entry in entries:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def _repair_tail(path: str, parse: Callable[[str], tuple[Any, Any] | None], what: str) -> None:
    """Make ``path`` end with a newline before an append: an unterminated last line (a write cut
    short) is cut off, or, when it is a whole entry, given its newline. Reads only the tail (back to
    the last newline)."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        # Find the last newline, reading backwards in blocks.
        pos, block, cut = end, 1 << 16, 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        f.seek(cut)
        tail = f.read(end - cut)
        if parse(tail.decode("utf-8", errors="replace").strip()) is not None:
            f.seek(end)
            f.write(b"\n")  # a whole entry that only lacks its newline: keep it
        else:
            f.truncate(cut)
            logger.warning("%s %s: cut off a torn last line (%d bytes) before appending", what, path, end - cut)


class CachedGenerator:
    """Greedy continuations of prompts by a causal LM, cached on disk.

    :meth:`generate` returns one continuation per prompt (the prompt cut off). Only prompts whose
    key (``model_name``, :func:`prompt_hash`) is not cached reach the model, each unique prompt
    once, in batches of ``batch_size`` with left padding; each batch is appended to
    ``cache_dir/cache_file`` as JSON lines ``{"model", "prompt_hash", "generation"}`` as soon as it
    is done, so an interrupted run keeps what it paid for. A torn line (a run killed while
    writing) is skipped on load, with a warning counting the lines dropped; before the next append
    a torn tail (the file does not end with a newline) is cut back to the last newline (or, when
    the unterminated last line is a whole entry, given its newline), so that the new entries start
    on a line of their own instead of being glued to the torn one and lost on the next load.
    Without ``cache_dir`` the cache lives in memory only.

    :attr:`stats` counts prompts served from the cache (``"cached"``) and unique prompts run
    through the model (``"generated"``).

    Args:
        model: a causal LM with ``generate`` (``None`` is allowed when ``generate_fn`` is given).
        tokenizer: its tokenizer; its ``padding_side`` is restored after each batch, and its
            ``pad_token`` set to ``eos_token`` when it has none.
        cache_dir: folder of the cache file (created on first write); ``None``: memory only.
        cache_file: name of the cache file in ``cache_dir``; one per stage, so stages never mix.
        max_new_tokens: the generation length.
        batch_size: prompts per ``model.generate`` call.
        model_name: the model's name in cache keys (default :func:`model_name_of`); it may be
            reassigned later, and later calls use the new name.
        generate_fn: what runs uncached prompts (a list of prompts -> a list of continuations);
            default :meth:`run`. Stages pass a hook here so that tests can script replies.
    """

    def __init__(
        self,
        model,
        tokenizer,
        cache_dir: str | os.PathLike | None = None,
        cache_file: str = "llm_generations.jsonl",
        max_new_tokens: int = 32,
        batch_size: int = 8,
        model_name: str | None = None,
        generate_fn: Callable[[list[str]], list[str]] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.model_name = model_name or model_name_of(model)
        self.generate_fn = generate_fn
        self.stats: Counter = Counter()
        self.cache_path = os.path.join(os.fspath(cache_dir), cache_file) if cache_dir is not None else None
        self._cache: dict[tuple[str, str], str] = {}
        if self.cache_path and os.path.exists(self.cache_path):
            self._load(self.cache_path)

    @staticmethod
    def _parse(line: str) -> tuple[tuple[str, str], str] | None:
        """The (key, generation) of one cache line, or ``None`` when it is not a whole entry."""
        try:
            entry = json.loads(line)
            return (entry["model"], entry["prompt_hash"]), entry["generation"]
        except (ValueError, KeyError, TypeError):
            return None

    def _load(self, path: str) -> None:
        self._cache.update(load_json_lines(path, self._parse, "LLM cache"))

    def key(self, prompt: str) -> tuple[str, str]:
        """The cache key of ``prompt`` under the current :attr:`model_name`."""
        return (self.model_name, prompt_hash(prompt))

    def cached(self, prompt: str) -> str | None:
        """The cached continuation of ``prompt``, or ``None``; runs nothing."""
        return self._cache.get(self.key(prompt))

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """One continuation per prompt, from the cache or the model (uncached unique prompts only)."""
        prompts = list(prompts)
        keys = [self.key(p) for p in prompts]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        # Each unique prompt runs once, in key order: the batches (and so the generations, which
        # padding can perturb) do not depend on the order or the duplicates of the input.
        unique: dict[tuple[str, str], int] = {}
        for i in sorted(missing, key=lambda i: keys[i]):
            unique.setdefault(keys[i], i)
        todo = list(unique.values())
        self.stats["cached"] += len(prompts) - len(missing)
        run = self.generate_fn if self.generate_fn is not None else self.run
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            generations = list(run([prompts[i] for i in chunk]))
            if len(generations) != len(chunk):
                raise RuntimeError(f"the generator returned {len(generations)} continuations for {len(chunk)} prompts")
            self.stats["generated"] += len(chunk)
            new_entries = []
            for i, generation in zip(chunk, generations):
                self._cache[keys[i]] = generation
                new_entries.append({"model": keys[i][0], "prompt_hash": keys[i][1], "generation": generation})
            if self.cache_path:
                append_json_lines(self.cache_path, new_entries, self._parse, "LLM cache")
        return [self._cache[k] for k in keys]

    def run(self, prompts: list[str]) -> list[str]:
        """Greedy continuations of ``prompts`` in one batch (left padding), the prompt cut off; no
        cache. The tokenizer's padding side is restored even if tokenisation fails."""
        import torch

        tokenizer = self.tokenizer
        padding_side = tokenizer.padding_side
        tokenizer.padding_side = "left"  # decoder-only models continue from the last position
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        try:
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            enc = tokenizer(prompts, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = padding_side
        enc.pop("token_type_ids", None)  # some tokenizers return it; causal LMs reject it
        device = getattr(self.model, "device", None)
        if device is not None:
            enc = enc.to(device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def delegate(name: str, doc: str = "") -> property:
    """A property reading and writing ``self.generator.<name>``: the stages keep their historical
    attributes (``model``, ``batch_size``, ``model_name``, ``stats`` ...) as views of their
    :class:`CachedGenerator`, so setting one after construction still takes effect."""

    def get(self):
        return getattr(self.generator, name)

    def set(self, value):
        setattr(self.generator, name, value)

    return property(get, set, doc=doc or f"The generator's ``{name}``.")


class LLMStage:
    """Base of the stages that ask a causal LM (:class:`~.text_edits.LLMConceptEditor`,
    :class:`~.paraphrase.LLMParaphraser`): it owns a :class:`CachedGenerator` (:attr:`generator`,
    caching in ``cache_dir/CACHE_FILE``) and exposes its ``model``, ``tokenizer``,
    ``max_new_tokens``, ``batch_size``, ``model_name``, ``cache_path`` and ``stats`` as settable
    attributes. :meth:`_generate` is the hook that runs the model on uncached prompts: override it
    (a subclass, a test) to script replies.
    """

    CACHE_FILE = "llm_generations.jsonl"

    model = delegate("model")
    tokenizer = delegate("tokenizer")
    max_new_tokens = delegate("max_new_tokens")
    batch_size = delegate("batch_size")
    model_name = delegate("model_name", "The model's name in cache keys; reassigning it changes the keys.")
    cache_path = delegate("cache_path")
    stats = delegate("stats", "Counts: cached, generated, and the stage's accepted / rejected_<reason>.")

    def __init__(self, model, tokenizer, cache_dir=None, max_new_tokens: int = 32, batch_size: int = 8, model_name: str | None = None):
        # Late-bound, so that an overridden ``_generate`` is what the generator calls.
        self.generator = CachedGenerator(
            model,
            tokenizer,
            cache_dir=cache_dir,
            cache_file=self.CACHE_FILE,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            model_name=model_name,
            generate_fn=lambda prompts: self._generate(prompts),
        )

    def _generate(self, prompts: list[str]) -> list[str]:
        """Greedy continuations of ``prompts`` (batched, left padding), the prompt cut off, no
        cache: :meth:`CachedGenerator.run`."""
        return self.generator.run(prompts)
