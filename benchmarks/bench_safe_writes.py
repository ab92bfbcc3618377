"""Cost of writing through the no-follow helpers, against plain writes that follow symlinks.

Variants, measured interleaved in the same run (median over rounds, microseconds per write):
  json       prunekit.core.serialization.write_json (O_EXCL|O_NOFOLLOW temp file, checks, chmod,
             rename) vs mkstemp + write_text + os.replace (the unchecked atomic write)
  log line   open_append (O_NOFOLLOW, symlink checks) vs open(path, "a")
  ckpt 4 MB  save_safetensors vs safetensors save_file to a mkstemp file + os.replace

    python benchmarks/bench_safe_writes.py
    python benchmarks/bench_safe_writes.py --rounds 9 --writes 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine  # noqa: E402

from prunekit.core.serialization import open_append, save_safetensors, write_json  # noqa: E402

PAYLOAD = {"final": {"test_top1": 0.9123, "test_loss": 0.31}, "phases": list(range(50))}


def _plain_json(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    Path(tmp).write_text(json.dumps(PAYLOAD, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _plain_log(path: Path) -> None:
    with open(path, "a") as fh:
        fh.write("[12:00:00] a log line\n")


def _safe_log(path: Path) -> None:
    with open_append(path) as fh:
        fh.write("[12:00:00] a log line\n")


def _plain_ckpt(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    save_file(tensors, tmp, metadata={"prunekit": "{}"})
    os.replace(tmp, path)


def _per_write_us(fn: Callable[[], None], writes: int) -> float:
    start = time.perf_counter()
    for _ in range(writes):
        fn()
    return (time.perf_counter() - start) / writes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--writes", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tensors = {"w": torch.randn(1024, 1024)}  # 4 MB of float32
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        cases = {
            "json": (
                lambda: _plain_json(root / "a.json"),
                lambda: write_json(PAYLOAD, root / "b.json"),
                args.writes,
            ),
            "log line": (
                lambda: _plain_log(root / "a.log"),
                lambda: _safe_log(root / "b.log"),
                args.writes,
            ),
            "ckpt 4 MB": (
                lambda: _plain_ckpt(root / "a.safetensors", tensors),
                lambda: save_safetensors(tensors, root / "b.safetensors", {}),
                max(1, args.writes // 10),
            ),
        }
        rows = []
        for name, (plain, safe, writes) in cases.items():
            plain_t, safe_t = [], []
            for _ in range(args.rounds):  # interleaved: both see the same machine load
                plain_t.append(_per_write_us(plain, writes))
                safe_t.append(_per_write_us(safe, writes))
            rows.append((name, statistics.median(plain_t), statistics.median(safe_t)))
    print(f"machine: {machine()}; rounds {args.rounds}, {args.writes} writes a round")
    print(f"{'write':<12}{'plain us':>12}{'no-follow us':>14}{'ratio':>8}")
    for name, plain, safe in rows:
        print(f"{name:<12}{plain:>12.1f}{safe:>14.1f}{safe / plain:>8.2f}")


if __name__ == "__main__":
    main()
