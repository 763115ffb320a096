"""The ``hf-cf`` commands: ``generate``, ``train`` and ``evaluate``, each a module with its argument
dataclasses and a ``main(argv)`` (the scripts in ``examples/`` call the same functions)."""

from .arguments import UsageError, parse_arguments

__all__ = ["UsageError", "parse_arguments"]
