"""Cost of zeroing pruned gradients: NaN-safe selection against the multiply it replaced.

Variants, measured interleaved in the same run (median over repeats), on the gradients of an
MLP 784-2048-2048-10 at 90% sparsity:
  multiply       torch._foreach_mul_(grads, float masks): fastest, but NaN * 0 = NaN
  bitwise AND    MaskEnforcer(fast=True): AND of the float bits with an int keep-mask of all
                 ones / zeros, one per tensor (NaN-safe: pruned entries become +0.0)
  masked_fill_   one in-place masked_fill_ per tensor (NaN-safe)
  where(out=)    MaskEnforcer(fast=False): torch.where(keep, grad, 0, out=grad) (NaN-safe)

    python benchmarks/bench_mask_gradients.py
    python benchmarks/bench_mask_gradients.py --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import machine  # noqa: E402

SHAPES = [(2048, 784), (2048, 2048), (10, 2048)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()
    torch.manual_seed(0)
    grads = [torch.randn(s) for s in SHAPES]
    keep = [torch.rand(s) >= args.sparsity for s in SHAPES]
    pruned = [~k for k in keep]
    factors = [k.float() for k in keep]
    bits = [k.to(torch.int32).neg_() for k in keep]
    grad_bits = [g.view(torch.int32) for g in grads]
    zero = torch.zeros(())

    def multiply() -> None:
        torch._foreach_mul_(grads, factors)

    def bitwise_and() -> None:
        for g, b in zip(grad_bits, bits):
            g.bitwise_and_(b)

    def masked_fill() -> None:
        for g, p in zip(grads, pruned):
            g.masked_fill_(p, 0)

    def where() -> None:
        for g, k in zip(grads, keep):
            torch.where(k, g, zero, out=g)

    variants = {
        "multiply": multiply,
        "bitwise AND": bitwise_and,
        "masked_fill_": masked_fill,
        "where(out=)": where,
    }
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    numel = sum(g.numel() for g in grads)
    print(f"zeroing pruned gradients of {numel / 1e6:.1f}M weights, {args.sparsity:.0%} sparse "
          f"({machine()})")  # fmt: skip
    base = statistics.median(times["multiply"])
    print(f"{'variant':<14}{'ms':>9}{'vs multiply':>13}{'NaN-safe':>10}")
    print("-" * 46)
    for name, values in times.items():
        ms = statistics.median(values)
        safe = "no" if name == "multiply" else "yes"
        print(f"{name:<14}{ms * 1e3:>9.2f}{ms / base:>13.3f}{safe:>10}")


if __name__ == "__main__":
    main()
