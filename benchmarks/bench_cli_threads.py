"""Wall time of ``prunekit prune-llm --method wanda`` at several ``--threads`` values.

Builds a byte-level prunekit GPT (4 blocks, width 256, context 512) and 32 calibration windows of
512 tokens, then runs the command line in fresh processes, the thread counts interleaved, and
prints the median wall time of each with its ratio to one thread. ``default`` is what the
command picks without ``--threads`` (min(physical cores, idle cores, 4)).

    PYTHONPATH=src python benchmarks/bench_cli_threads.py --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunekit.commands._common import default_threads
from prunekit.core.serialization import save_safetensors
from prunekit.llm.io import save_pruned
from prunekit.models.gpt import GPT, GPTConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", default="1,2,default", help="comma-separated settings")
    args = parser.parse_args()
    settings = args.threads.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        save_pruned(GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=512)), root / "gpt")
        save_safetensors(
            {"input_ids": torch.randint(0, 256, (32, 512))}, root / "ids.safetensors", {}
        )
        times: dict[str, list[float]] = {s: [] for s in settings}
        loads = []
        for _ in range(args.repeats):
            for setting in settings:
                cmd = [sys.executable, "-m", "prunekit.cli", "prune-llm", str(root / "gpt"),
                       "--method", "wanda", "--calib", str(root / "ids.safetensors"),
                       "--nsamples", "32", "--seqlen", "512", "--out", str(root / "out"),
                       "--no-progress"]  # fmt: skip
                if setting != "default":
                    cmd += ["--threads", setting]
                loads.append(os.getloadavg()[0])
                start = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times[setting].append(time.perf_counter() - start)
    base = statistics.median(times[settings[0]])
    print(f"prune-llm wanda, GPT 4x256, 32 x 512 tokens; {os.cpu_count()} CPUs; "
          f"load average during the runs {min(loads):.1f}-{max(loads):.1f}; "
          f"default now = {default_threads()} thread(s)")  # fmt: skip
    print("| threads | median wall (s) | runs (s) | vs " + settings[0] + " |")
    print("| --- | --- | --- | --- |")
    for setting, values in times.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {setting} | {med:.1f} | {runs} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
