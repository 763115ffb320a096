"""``hf-cf``: the command line of hf-counterfactual.

    hf-cf generate ...   counterfactual records from image-caption data  (hf_counterfactual.commands.generate)
    hf-cf train ...      counterfactual fine-tuning, with before / after scores  (hf_counterfactual.commands.train)
    hf-cf evaluate ...   compositional benchmarks of a saved model  (hf_counterfactual.commands.evaluate)
    hf-cf configs        where the shipped DeepSpeed / accelerate configs are
    hf-cf --version

``hf-cf <command> --help`` lists a command's options; each also reads them from a JSON / YAML file
(``hf-cf train config.yaml``). Under several processes::

    accelerate launch -m hf_counterfactual.cli train --dataset_name org/cf-coco ...

A mistake found before any work starts (a model or dataset that cannot be found, a missing split, an
empty input folder) is printed as one line, by the main process only, and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import import_module
from importlib.resources import files

COMMANDS = {
    "generate": "Counterfactual records from image-caption data (COCO folder or any datasets dataset).",
    "train": "Counterfactual fine-tuning of CLIP; no arguments: the offline embedded default.",
    "evaluate": "Compositional benchmarks (Winoground, SugarCrepe, ARO, ...) of a saved model.",
    "configs": "Print the paths of the DeepSpeed and accelerate configs shipped with the package.",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("hf-counterfactual")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


def shipped_configs() -> list[str]:
    """The config files shipped in ``hf_counterfactual/configs`` (``--deepspeed zero2`` names one)."""
    root = files("hf_counterfactual") / "configs"
    return sorted(str(path) for folder in root.iterdir() if folder.is_dir() for path in folder.iterdir() if path.is_file())


def is_main_process() -> bool:
    # The launcher's environment, read without starting torch.distributed: under `accelerate launch`
    # every process runs this, and only rank 0 should say what is wrong.
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hf-cf`` console script; returns the exit status."""
    from .commands.arguments import UsageError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hf-cf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hf-cf (hf-counterfactual) {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, help in COMMANDS.items():
        commands.add_parser(name, help=help, add_help=False)
    args, _ = parser.parse_known_args(argv[:1] or ["--help"])
    if args.command == "configs":
        print("\n".join(shipped_configs()))
        return 0
    command = import_module(f".commands.{args.command}", __package__)
    try:
        command.main(argv[1:])
    except UsageError as err:
        if is_main_process():
            print(f"hf-cf {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
