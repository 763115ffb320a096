"""One argument system for every command: ``HfArgumentParser`` dataclasses, optionally read from a
JSON / YAML config file that command-line flags override (as TRL's scripts take ``--config``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformers import HfArgumentParser

CONFIG_EXTENSIONS = (".json", ".yaml", ".yml")
CONFIG_HELP = (
    "Arguments may also come from a config file: `hf-cf <command> config.yaml` or `--config config.yaml` "
    "(JSON or YAML, keys = the option names); flags on the command line override it."
)


class UsageError(ValueError):
    """A mistake in a command's arguments or inputs, found before any model loads. ``hf-cf`` prints
    it as one line (once, under ``accelerate launch``) instead of a traceback."""


def _split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    argv = list(argv)
    config = None
    if argv and argv[0].endswith(CONFIG_EXTENSIONS) and not argv[0].startswith("-"):
        config = argv.pop(0)
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a file")
            config = argv[i + 1]
            del argv[i : i + 2]
            break
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
            del argv[i]
            break
    return config, argv


def read_config_file(path: str) -> dict[str, Any]:
    """The mapping in a JSON or YAML config file."""
    if not os.path.isfile(path):
        raise UsageError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            values = json.load(f)
        else:
            import yaml

            values = yaml.safe_load(f)
    if not isinstance(values, Mapping):
        raise UsageError(f"config file {path}: expected a mapping of option names to values, got {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}


def parse_arguments(
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    *,
    prog: str | None = None,
    description: str | None = None,
    defaults: Callable[[tuple], Mapping[str, Any]] | None = None,
    aliases: Mapping[str, Callable[[str], str]] | None = None,
) -> tuple:
    """The dataclasses of ``dataclass_types`` from ``argv`` (dash and underscore spellings both work).

    A config file (first argument, or ``--config FILE``) sets defaults that the flags in ``argv``
    override; unknown keys in it are an error naming them. ``defaults(first_parse)`` may return
    defaults that depend on parsed values (e.g. the embedded defaults of ``hf-cf train``, applied
    when no model is named); the config file and the flags win over them. ``aliases`` maps an option
    to a function rewriting its value before parsing (e.g. ``--deepspeed zero2`` to a shipped file).
    """
    config, argv = _split_config(argv)
    for dest, rewrite in (aliases or {}).items():
        flags = {f"--{dest}", f"--{dest.replace('_', '-')}"}
        for i, arg in enumerate(argv):
            if arg in flags and i + 1 < len(argv):
                argv[i + 1] = rewrite(argv[i + 1])
            elif "=" in arg and arg.split("=", 1)[0] in flags:
                argv[i] = f"{arg.split('=', 1)[0]}={rewrite(arg.split('=', 1)[1])}"
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description, epilog=CONFIG_HELP)
    file_values = read_config_file(config) if config else {}
    if file_values:
        known = {action.dest: action for action in parser._actions}
        unknown = sorted(set(file_values) - set(known))
        if unknown:
            raise UsageError(f"config file {config}: unknown option(s) {unknown}")
        for dest, value in file_values.items():
            action = known[dest]
            action.required = False  # given by the file
            if isinstance(value, list) and action.nargs is None:
                file_values[dest] = value = ",".join(map(str, value))  # comma-separated options
            if dest in (aliases or {}) and isinstance(value, str):
                file_values[dest] = aliases[dest](value)
        parser.set_defaults(**file_values)
    parsed = parser.parse_args_into_dataclasses(args=list(argv))
    if defaults is not None:
        extra = {k: v for k, v in defaults(parsed).items() if k not in file_values}
        if extra:
            parser.set_defaults(**extra)
            parsed = parser.parse_args_into_dataclasses(args=list(argv))
    return parsed
