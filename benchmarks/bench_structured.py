"""Structured pruning: prunekit vs Torch-Pruning on ResNet-56, VGG-16 and a small ViT (CIFAR shapes).

Both libraries prune 50% of the channels of every prunable group with the group L1 criterion.
For each pruned model the script reports MACs and parameters (counted by one counter for both),
graph-build and prune time, CPU latency at batch 1 and 128 (interleaved repetitions, medians),
and the realised speedup divided by the MACs ratio.

    python benchmarks/bench_structured.py                 # a few minutes on a 2-core CPU
    python benchmarks/bench_structured.py --reps 15 --threads 2   # closer to a quiet machine

Needs the benchmark extra: ``pip install -e .[bench]`` (torch-pruning).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import prunekit.structured as st
from prunekit.core.metrics import count_macs, count_params
from prunekit.models import create_model


def _tp_prune(model: nn.Module, x: torch.Tensor, ratio: float, round_to: int | None):
    """Torch-Pruning's MetaPruner with group L1 (its default magnitude importance, p=1)."""
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    num_heads = {}
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "num_heads"):
            for proj in (m.q_proj, m.k_proj, m.v_proj):
                num_heads[proj] = m.num_heads
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        num_heads=num_heads,
        round_to=round_to,
        unwrapped_parameters=[(p, 2) for n, p in model.named_parameters() if n in _VIT_FREE],
    )
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    fixed = 0
    for m in model.modules():  # Torch-Pruning leaves attention attributes stale: fix by hand
        if hasattr(m, "q_proj") and hasattr(m, "head_dim"):
            m.head_dim = m.q_proj.out_features // m.num_heads
            fixed += 1
    return model, t1 - t0, t2 - t1, fixed


_VIT_FREE = {"cls_token", "pos_embed"}


def _ours(model: nn.Module, x: torch.Tensor, ratio: float, round_to: int | None):
    """The steps of ``prunekit.structured.prune`` timed one by one (no MACs counting, no check)."""
    t0 = time.perf_counter()
    graph = st.build_graph(model, x)
    groups = st.find_groups(graph)
    t1 = time.perf_counter()
    scores = {i: st.group_importance(model, g, "l1") for i, g in enumerate(groups) if g.prunable}
    pruned = st.allocate(groups, scores, ratio, round_to=round_to)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    sizes = {k: tensors[k[0]].shape[k[1]] for k in graph.dims}
    st.shrink(model, st.keep_indices(groups, pruned, sizes))
    t2 = time.perf_counter()
    return model, t1 - t0, t2 - t1, 0


def _latency(
    models: dict[str, nn.Module], batch: int, reps: int, inner: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median and minimum seconds per forward; the models are measured interleaved, rep by rep."""
    x = torch.randn(batch, 3, 32, 32)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(x)
        for _ in range(reps):
            for name, m in models.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    m(x)
                times[name].append((time.perf_counter() - t0) / inner)
    med = {k: statistics.median(v) for k, v in times.items()}
    return med, {k: min(v) for k, v in times.items()}


def _builders() -> dict[str, Callable[[], nn.Module]]:
    return {
        "resnet56": lambda: create_model("resnet56", option="B"),
        "vgg16": lambda: create_model("vgg16"),
        "vit_tiny": lambda: create_model("vit_tiny"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet56,vgg16,vit_tiny")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=7, help="interleaved repetitions (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--big-batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x1 = torch.randn(1, 3, 32, 32)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = _builders()[name]().eval()
        variants: dict[str, nn.Module] = {"dense": base}
        info: dict[str, tuple[float, float, int]] = {}
        methods = (
            ("prunekit", _ours, None),
            ("prunekit r16", _ours, 16),
            ("torch-pruning", _tp_prune, None),
        )
        for _, fn, rt in methods:  # warm-up: first calls pay one-off import and dispatch costs
            fn(copy.deepcopy(base), x1, args.ratio, rt)
        for label, fn, rt in methods:
            m, t_graph, t_prune, fixed = fn(copy.deepcopy(base), x1, args.ratio, rt)
            m.eval()
            variants[label] = m
            info[label] = (t_graph, t_prune, fixed)
        with torch.no_grad():
            ref = {k: m(x1).shape for k, m in variants.items()}
        assert len(set(ref.values())) == 1, ref
        lat1, _ = _latency(variants, 1, args.reps, 10)
        latb, latb_min = _latency(variants, args.big_batch, args.reps, 1)
        macs = {k: count_macs(m, x1) for k, m in variants.items()}
        params = {k: count_params(m) for k, m in variants.items()}
        for label in variants:
            mr = macs["dense"] / macs[label]
            s1 = lat1["dense"] / lat1[label]
            sb = latb["dense"] / latb[label]
            sb_min = latb_min["dense"] / latb_min[label]
            g, p, fixed = info.get(label, (0.0, 0.0, 0))
            rows.append(
                (
                    name,
                    label,
                    macs[label] / 1e6,
                    params[label] / 1e6,
                    mr,
                    g,
                    p,
                    lat1[label] * 1e3,
                    latb[label] * 1e3,
                    s1,
                    sb,
                    sb / mr,
                    sb_min / mr,
                    fixed,
                )
            )
    header = (
        "| model | method | MMACs | Mparams | MACs ratio | graph s | prune s | "
        f"ms b1 | ms b{args.big_batch} | speedup b1 | speedup b{args.big_batch} | "
        f"b{args.big_batch} speedup / MACs ratio | same, from minima | attrs fixed by hand |"
    )
    print(header)
    print("|" + "---|" * 14)
    for r in rows:
        print(
            f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} "
            f"| {r[7]:.2f} | {r[8]:.0f} | {r[9]:.2f} | {r[10]:.2f} | {r[11]:.2f} | {r[12]:.2f} "
            f"| {r[13]} |"
        )
    print(f"\ntorch {torch.__version__}, threads={args.threads}, reps={args.reps}")


if __name__ == "__main__":
    main()
