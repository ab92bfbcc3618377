"""The ``prunekit`` command line.

Each command lives in its own module exposing ``register(subparsers)``, which adds a sub-parser
whose ``func`` default takes the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# Modules that add sub-commands; a module that fails to import (missing optional dependency)
# is skipped so that the other commands keep working.
COMMAND_MODULES = [
    "prunekit.commands.list_cmd",
    "prunekit.commands.demo",
    "prunekit.commands.run",
    "prunekit.commands.sweep",
    "prunekit.commands.report",
    "prunekit.commands.prune_llm",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch networks: train, prune, retrain, evaluate, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'prunekit COMMAND --help' for a command's options and an example.",
    )
    from prunekit import __version__

    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    for command in sub.choices.values():
        _ensure_threads_option(command)
    return parser


def _ensure_threads_option(command: argparse.ArgumentParser) -> None:
    """Give a command that sets no threads itself ``--threads`` (applied before it runs)."""
    from prunekit.commands._common import add_threads_argument, apply_threads

    if any("--threads" in action.option_strings for action in command._actions):
        return
    add_threads_argument(command)
    func = command.get_default("func")

    def with_threads(args: argparse.Namespace, _func: Callable[..., int] = func) -> int:
        apply_threads(args)
        return _func(args)

    command.set_defaults(func=with_threads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"prunekit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
