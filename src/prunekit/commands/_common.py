"""Options every command shares: ``--threads`` and ``--progress``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.experiments.config import ExperimentConfig


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads counted once where Linux says)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            physical = core = ""
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                    cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def idle_cores() -> int:
    """Cores not busy with other work right now: usable cores minus the 1-minute load average
    (at least 1; all usable cores where the load average is unknown)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return usable
    return max(1, int(usable - load + 0.5))


def default_threads() -> int:
    """min(physical cores, idle cores, 4).

    More threads than free cores (hyper-threads, or a machine busy with other work) make
    PyTorch's OpenMP workers spin-wait for each other, which can make a run several times slower
    than with one thread (docs/benchmarks.md, "--threads"). The small matrices of most pruning work stop
    scaling after about four threads. The thread count is not part of a run's config hash.
    """
    return max(1, min(physical_cores(), idle_cores(), 4))


def add_threads_argument(parser: argparse.ArgumentParser, default_help: str = "") -> None:
    """``--threads N`` (a positive int); the default is :func:`default_threads`."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="PyTorch threads per process (default: "
        + (default_help or f"min(physical cores, idle cores, 4), now {default_threads()}")
        + ")",
    )


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress / --no-progress``; on by default when stderr is a terminal."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on when the output is a terminal)",
    )


def progress_enabled(args: argparse.Namespace) -> bool:
    value = getattr(args, "progress", None)
    return sys.stderr.isatty() if value is None else bool(value)


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's thread count from ``--threads`` (or the default); the count used."""
    import torch

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    return threads


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_out_argument(parser: argparse.ArgumentParser, help_text: str, old: str, **kw: Any) -> None:
    """``--out`` plus the older flag name ``old`` as a hidden alias of it."""
    parser.add_argument("--out", dest="out", help=help_text, **kw)
    parser.add_argument(old, dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def apply_common(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    """``--threads`` and ``--progress`` into a run's config (neither changes its hash).

    Threads: ``--threads``, else the config's ``train.threads``, else :func:`default_threads`.
    Progress: ``--progress`` / ``--no-progress``, else on when stderr is a terminal or the config
    asks for it.
    """
    if args.threads:
        cfg.train.threads = args.threads
    elif cfg.train.threads is None:
        cfg.train.threads = default_threads()
    if args.progress is not None:
        cfg.train.progress = args.progress
    else:
        cfg.train.progress = bool(cfg.train.progress) or sys.stderr.isatty()
