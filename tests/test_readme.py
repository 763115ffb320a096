"""The README is the front door: CI installs and tests as it says, every command it shows parses with
the command's own parser, and its offline journey runs as written."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RUN_MARKER = "<!-- tests/test_readme.py runs this block -->"


def ci_commands() -> dict[str, str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = {}
    for i, line in enumerate(lines):
        if line.startswith("# README "):
            commands[line.removeprefix("# README ")] = lines[i + 1]
    return commands


def bash_blocks() -> list[tuple[bool, list[str]]]:
    """Each ```bash block of the README: (marked to be run, its commands with continuations joined)."""
    blocks = []
    for match in re.finditer(r"(<!--[^>]*-->\n)?```bash\n(.*?)```", README, re.S):
        commands = [c.strip() for c in match.group(2).replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
        blocks.append((match.group(1) is not None and RUN_MARKER in match.group(1), commands))
    return blocks


def hf_cf_argv(command: str) -> tuple[str, list[str]] | None:
    """(command name, its argv) of an hf-cf invocation in any of the README's spellings."""
    words = shlex.split(command)
    if words[:2] == ["accelerate", "launch"]:
        words = words[2:]
    if words[:2] == ["-m", "hf_counterfactual.cli"] or words[:1] == ["hf-cf"]:
        words = words[2:] if words[0] == "-m" else words[1:]
        return words[0], words[1:]
    for script, name in (("examples/run_cf_clip.py", "train"), ("examples/run_cf_llava.py", "train"), ("examples/evaluate_compositionality.py", "evaluate"),
                         ("dataset_scripts/cf_coco.py", "cf_coco"), ("dataset_scripts/procedural_scenes.py", "procedural_scenes")):  # fmt: skip
        if script in words:
            return name, words[words.index(script) + 1 :]
    return None


def parse(name: str, argv: list[str]):
    from hf_counterfactual.commands import evaluate, generate, parse_arguments, train

    if name == "train":
        return train.parse_args(argv)
    if name == "evaluate":
        return parse_arguments((evaluate.EvaluationArguments,), argv)
    if name == "generate":
        return parse_arguments((generate.GenerationArguments,), argv)
    import runpy

    module = runpy.run_path(str(ROOT / "dataset_scripts" / f"{name}.py"))
    types = tuple(t for t in (module["ScriptArguments"], module.get("GenerationArguments")) if t is not None)
    return parse_arguments(types, argv)


def test_ci_installs_tests_and_runs_the_main_job_as_the_readme_says():
    commands = ci_commands()
    assert set(commands) == {"install", "tests", "main job"}
    for name, command in commands.items():
        assert f"\n{command}\n" in README, f"the {name} command of .ci/run is not in README.md: {command}"


def test_every_readme_command_parses():
    seen = set()
    for _, commands in bash_blocks():
        for command in commands:
            found = hf_cf_argv(command)
            if found is None or found[0] in ("configs", "--version"):
                continue
            name, argv = found
            if "--bf16" in argv and not torch.cuda.is_available():
                argv = [*argv, "--use_cpu", "True"]  # a GPU command: TrainingArguments refuses bf16 without one
            parse(name, argv)  # an unknown flag or a bad value raises (argparse exits)
            seen.add(found[0])
    assert {"generate", "train", "evaluate", "cf_coco", "procedural_scenes"} <= seen


@pytest.mark.slow
def test_the_offline_journey_runs_as_written(tmp_path):
    from generation_fixtures import write_coco_photos

    if shutil.which("hf-cf") is None:
        pytest.skip("hf-cf is not installed (pip install -e .)")
    (marked,) = [commands for run, commands in bash_blocks() if run]
    write_coco_photos(tmp_path / "coco")
    (tmp_path / "dataset_scripts").symlink_to(ROOT / "dataset_scripts")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for command in marked:
        command = command.replace("python ", f"{sys.executable} ", 1) if command.startswith("python ") else command
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    card = (tmp_path / "cf-clip-small" / "README.md").read_text()
    assert "<!-- hf-cf evaluate: records -->" in card and (tmp_path / "cf-clip-small" / "eval.json").exists()
    assert (tmp_path / "cf-coco" / "preview_val.png").exists() and "Wrote " in done.stdout
