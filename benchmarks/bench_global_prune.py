"""Global magnitude pruning of ~100M parameters: prunekit vs torch.nn.utils.prune.

Each measurement runs in a fresh subprocess, so peak memory is not hidden by memory an earlier run
freed; each subprocess first warms its method up on a tiny model, so one-time start-up costs of a
fresh process are charged to neither method. Reported: wall time, peak extra resident memory over the model itself, and the time of one
read pass over the weights (the floor any exact method must pay).

    python benchmarks/bench_global_prune.py            # six Linear(4096, 4096): ~100M weights
    python benchmarks/bench_global_prune.py --width 2048   # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine, peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402


def build(width: int, layers: int) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        *[nn.Linear(width, width, bias=False, device="meta") for _ in range(layers)]
    )
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def worker(method: str, width: int, layers: int, sparsity: float) -> dict:
    import torch.nn.utils.prune as tprune  # imported before measuring: not part of the cost

    import prunekit

    # Warm up on a tiny model first, so one-time costs of a fresh process (lazy initialisation,
    # thread pools, loading kernels) are not charged to either method.
    tiny = nn.Sequential(nn.Linear(600, 600), nn.Linear(600, 600))
    if method == "prunekit":
        prunekit.prune(tiny, sparsity)
    elif method == "torch_prune":
        tprune.global_unstructured(
            [(m, "weight") for m in tiny], pruning_method=tprune.L1Unstructured, amount=sparsity
        )
    else:
        float(sum(p.detach().sum() for p in tiny.parameters()))
    del tiny

    model = build(width, layers)
    results: list = []
    weights = [p for p in model.parameters()]
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    before = rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    if method == "read_pass":
        total = 0.0
        for p in weights:
            total += float(p.detach().sum())
    elif method == "prunekit":
        masks = prunekit.prune(model, sparsity, method="magnitude", allocation="global")
        results.append(masks)  # the masks are the result: they stay alive through the measurement
    elif method == "torch_prune":
        tprune.global_unstructured(
            [(m, "weight") for m in model], pruning_method=tprune.L1Unstructured, amount=sparsity
        )
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - start
    extra = peak_rss_bytes() - before
    # counted after the measurement, from the weights themselves, the same way for both methods
    pruned = sum(m.weight.numel() - int(torch.count_nonzero(m.weight.detach())) for m in model)
    if results:
        assert results[0].num_pruned == pruned
    return {
        "method": method,
        "seconds": seconds,
        "extra_bytes": extra,
        "weight_bytes": weight_bytes,
        "pruned": pruned,
    }


def run_in_subprocess(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--width",
        str(args.width),
        "--layers",
        str(args.layers),
        "--sparsity",
        str(args.sparsity),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each fast method (median)")
    parser.add_argument(
        "--skip-torch", action="store_true", help="skip the slow torch.nn.utils.prune baseline"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.width, args.layers, args.sparsity)))
        return

    def median_run(method: str, repeats: int) -> dict:
        runs = sorted(
            (run_in_subprocess(method, args) for _ in range(repeats)), key=lambda r: r["seconds"]
        )
        return runs[len(runs) // 2]

    results = {m: median_run(m, args.repeats) for m in ("read_pass", "prunekit")}
    if not args.skip_torch:
        results["torch_prune"] = median_run("torch_prune", 1)
    n = args.width * args.width * args.layers
    print(
        f"global magnitude pruning to {args.sparsity:.0%} of {n / 1e6:.1f}M weights ({machine()})"
    )
    weight_bytes = results["prunekit"]["weight_bytes"]
    header = f"{'method':<28}{'time (s)':>10}{'extra peak (MB)':>17}{'extra / weights':>17}"
    print(header)
    print("-" * len(header))
    labels = {
        "read_pass": "one read pass (floor)",
        "prunekit": "prunekit.prune",
        "torch_prune": "torch global_unstructured",
    }
    for key, r in results.items():
        print(
            f"{labels[key]:<28}{r['seconds']:>10.3f}{r['extra_bytes'] / 2**20:>17.0f}{r['extra_bytes'] / weight_bytes:>17.2f}"
        )
    ours = results["prunekit"]["seconds"]
    print()
    print(
        f"prunekit vs one read pass: {ours / results['read_pass']['seconds']:.1f}x the time (aim: within 10x)"
    )
    if "torch_prune" in results:
        print(
            f"speedup over torch.nn.utils.prune: {results['torch_prune']['seconds'] / ours:.0f}x (target: >= 50x)"
        )
        assert results["torch_prune"]["pruned"] == results["prunekit"]["pruned"], (
            "both prune the same count"
        )
    print(
        f"prunekit peak extra memory: {results['prunekit']['extra_bytes'] / weight_bytes:.2f}x the weights (target: <= 0.35x)"
    )


if __name__ == "__main__":
    main()
