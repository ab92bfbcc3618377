"""The ``prunekit`` command line.

Each command lives in its own module exposing ``register(subparsers)``, which adds a sub-parser
whose ``func`` default takes the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable, Sequence

from safetensors import SafetensorError

from prunekit.core.errors import PrunekitError

# Modules that add sub-commands; a module that fails to import (missing optional dependency)
# is skipped so that the other commands keep working.
COMMAND_MODULES = [
    "prunekit.commands.list_cmd",
    "prunekit.commands.demo",
    "prunekit.commands.run",
    "prunekit.commands.sweep",
    "prunekit.commands.report",
    "prunekit.commands.export",
    "prunekit.commands.prune_llm",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description="Prune PyTorch networks: train, prune, retrain, evaluate, export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'prunekit COMMAND --help' for a command's options and an example.\n"
        "Errors print one line and exit with code 2; --debug (or PRUNEKIT_DEBUG=1) shows the "
        "traceback instead. Ctrl-C exits with code 130.",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (same as PRUNEKIT_DEBUG=1)",
    )
    from prunekit import __version__

    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    for command in sub.choices.values():
        _ensure_threads_option(command)
        command.add_argument(  # --debug is also accepted after the command's name
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
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


# Errors a user can cause and fix (bad arguments, configs or files, a missing device, a full
# disk): one line and exit code 2. Anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    PrunekitError,
    ValueError,
    TypeError,
    OSError,
    sqlite3.DatabaseError,
    SafetensorError,
)
INTERRUPTED = "interrupted; run the same command again to resume"


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("PRUNEKIT_DEBUG", "") not in (
        "",
        "0",
    )


def error_line(err: BaseException) -> str:
    """The message of ``err`` (OS errors: what failed and the file), without a traceback."""
    if isinstance(err, OSError) and not isinstance(err, PrunekitError):
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            where = err.filename or "a file"
            return f"{where}: no space left on device; free some space and run again"
        if err.filename is not None and err.strerror:
            return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = _debug(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"prunekit {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
