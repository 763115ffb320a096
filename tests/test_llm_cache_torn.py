"""CachedGenerator's JSON-lines cache after a torn last line: the next append must start on a line
of its own, so the entries it adds are served from the cache on the next load."""

import json
import logging
from collections import Counter

from hf_counterfactual.generation import CachedGenerator


def _fake(prompts):
    return [p.upper() for p in prompts]


def _gen(tmp_path, **kw):
    return CachedGenerator(None, None, cache_dir=tmp_path, cache_file="gen.jsonl", model_name="m", generate_fn=_fake, **kw)


def test_append_after_torn_line_is_not_lost(tmp_path, caplog):
    first = _gen(tmp_path)
    assert first.generate(["a"]) == ["A"] and first.generate(["b"]) == ["B"]  # b is the last line
    path = tmp_path / "gen.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # a run killed mid-write: the last line is cut, no newline

    with caplog.at_level(logging.WARNING, logger="hf_counterfactual.generation.llm"):
        second = _gen(tmp_path)
    assert second.generate(["c", "d", "a"]) == ["C", "D", "A"]
    assert second.stats == Counter({"cached": 1, "generated": 2})

    third = _gen(tmp_path)
    assert third.generate(["a", "c", "d"]) == ["A", "C", "D"]
    assert third.stats == Counter({"cached": 3})  # c and d were appended on lines of their own
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line)["model"] == "m" for line in lines)  # the torn tail was cut off
    assert path.read_bytes().endswith(b"\n")
    assert "dropped 1 torn line" in caplog.text  # the second load said what it dropped


def test_whole_last_entry_without_newline_is_kept(tmp_path):
    _gen(tmp_path).generate(["a"])
    path = tmp_path / "gen.jsonl"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))  # a whole entry that only lacks its newline
    second = _gen(tmp_path)
    second.generate(["b"])
    third = _gen(tmp_path)
    assert third.generate(["a", "b"]) == ["A", "B"] and third.stats == Counter({"cached": 2})


def test_torn_multibyte_tail_loads(tmp_path):
    _gen(tmp_path).generate(["é"])
    path = tmp_path / "gen.jsonl"
    path.write_bytes(path.read_bytes() + '{"model": "m", "generation": "\u00e9'.encode()[:-1])
    second = _gen(tmp_path)
    assert second.generate(["é", "x"]) == ["É", "X"]
    assert _gen(tmp_path).generate(["x"]) and _gen(tmp_path).cached("x") == "X"
