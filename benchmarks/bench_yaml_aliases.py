"""Reading a config with nested YAML aliases: prunekit's loader vs ``yaml.safe_load`` + hashing.

A config ``a_k: &a_k [*a_(k-1), ...]`` with 9 aliases per level stands for 9**(depth+1) nodes.
The baseline is what reading a config cost before: ``yaml.safe_load`` (cheap: aliases share one
Python object) followed by the first full walk of the data, here ``json.dumps`` as in the config
hash (exponential). prunekit's ``load_yaml`` counts the expanded size on the composed graph and
rejects a document standing for more than 100 000 nodes. Both sides do the same walk when the
document is read. Depths 3-5 keep the baseline to a few seconds; the 9-deep bomb of the test
suite is only run through prunekit (the baseline's time for it is extrapolated, and labelled so).

    PYTHONPATH=src python benchmarks/bench_yaml_aliases.py            # ~15 s on 2 cores
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import yaml

from prunekit.experiments.yamlio import YAMLError, load_yaml


def bomb(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _median(fn: Callable[[str], str], text: str, repeats: int = 5) -> tuple[float, str]:
    fn(text)  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = fn(text)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), outcome


def _baseline_once(text: str) -> str:
    size = len(json.dumps(yaml.safe_load(text)))
    return f"read ({size / 1e6:.1f} MB of JSON)"


def _ours_once(text: str) -> str:
    try:
        data = load_yaml(text, "bomb.yaml")
    except YAMLError:
        return "rejected"
    return f"read ({len(json.dumps(data)) / 1e6:.1f} MB of JSON)"  # the same walk


def baseline(text: str) -> tuple[float, str]:
    return _median(_baseline_once, text)


def ours(text: str) -> tuple[float, str]:
    return _median(_ours_once, text)


def main() -> None:
    rows = []
    for depth in (3, 4, 5, 9):
        text = bomb(depth)
        t_ours, o_ours = ours(text)
        if depth <= 5:
            t_base, o_base = baseline(text)
            ratio = f"{t_base / t_ours:.2f}x"
        else:
            # estimate from depth 5: 9x the nodes per level
            est = rows[-1][2] * 9 ** (depth - 5)
            t_base, o_base, ratio = float("nan"), f"not run (estimate {est / 60:.0f} min)", "-"
        rows.append((depth, 9 ** (depth + 1), t_base, o_base, t_ours, o_ours, ratio))
    print("median of 5 after a warm-up; ratio = baseline time / prunekit time")
    print("| depth | expanded nodes | baseline s | baseline | prunekit s | prunekit | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for depth, nodes, tb, ob, to, oo, ratio in rows:
        base = "-" if tb != tb else f"{tb:.3f}"
        print(f"| {depth} | {nodes:,} | {base} | {ob} | {to:.4f} | {oo} | {ratio} |")


if __name__ == "__main__":
    main()
