"""Overhead of prunekit's masked training step vs a bare PyTorch loop doing the same work.

Both loops train ResNet-20 (CIFAR, 32x32) at batch 128 with SGD (momentum, weight decay) and a
90%-sparse global magnitude mask kept at zero after every step (weights and momentum buffers).
The bare loop indexes the batch, sets the LR, runs forward / backward / step and multiplies the
masks in with ``torch._foreach_mul_``; ours runs the same iterations through ``Trainer.fit``
(data order, per-iteration LR, masks enforced by the optimizer step hook, loss bookkeeping).
The two are timed in the same process, interleaved (alternating which goes first), and the
median time per step over the repeats is reported.

    PYTHONPATH=src python benchmarks/bench_training_overhead.py            # ~2 minutes on 2 cores
    PYTHONPATH=src python benchmarks/bench_training_overhead.py --repeats 15 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import prunekit
from prunekit.data import TensorData
from prunekit.models import create_model
from prunekit.training import CosineLR, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=6, help="interleaved blocks per loop")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    n = args.batch_size * 8
    data = TensorData(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    base = create_model("resnet20", num_classes=10)
    masks = prunekit.prune(base, args.sparsity)
    total = (args.repeats + 1) * args.steps
    schedule = CosineLR(0.1, total + 1)

    # ---- ours
    ours_model = copy.deepcopy(base).to(device)
    ours_opt = torch.optim.SGD(ours_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(
        ours_model,
        data,
        optimizer=ours_opt,
        lr_schedule=schedule,
        iterations=0,
        batch_size=args.batch_size,
        masks=masks,
        device=device,
        amp=False,
    )

    def run_ours(steps: int) -> None:
        trainer.total = trainer.iteration + steps
        trainer.fit(resume=False)

    # ---- bare PyTorch, same work
    bare_model = copy.deepcopy(base).to(device)
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    params = dict(bare_model.named_parameters())
    names = list(masks)
    keep = [masks[k].to(device) for k in names]
    weights = [params[k].data for k in names]
    perm = torch.randperm(n)
    state = {"it": 0}

    def run_bare(steps: int) -> None:
        bare_model.train()
        for _ in range(steps):
            it = state["it"]
            b = it % (n // args.batch_size)
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            x, y = data.x[idx].to(device), data.y[idx].to(device)
            for group in bare_opt.param_groups:
                group["lr"] = schedule.lr_at(it)
            bare_opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(bare_model(x), y)
            loss.backward()
            bare_opt.step()
            with torch.no_grad():
                torch._foreach_mul_(weights, keep)
                bufs = [bare_opt.state[params[k]]["momentum_buffer"] for k in names]
                torch._foreach_mul_(bufs, keep)
            state["it"] = it + 1

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps

    run_ours(args.steps)  # warm-up (allocator, first-step shape check)
    run_bare(args.steps)
    ours, bare = [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            ours.append(timed(run_ours))
            bare.append(timed(run_bare))
        else:
            bare.append(timed(run_bare))
            ours.append(timed(run_ours))
    m_ours, m_bare = statistics.median(ours), statistics.median(bare)
    print(
        f"ResNet-20, batch {args.batch_size}, {args.sparsity:.0%} sparse, device {device}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(f"{'loop':<28}{'median ms/step':>16}{'min':>10}{'max':>10}")
    print(
        f"{'bare PyTorch + masks':<28}{m_bare * 1e3:>16.1f}{min(bare) * 1e3:>10.1f}{max(bare) * 1e3:>10.1f}"
    )
    print(
        f"{'prunekit Trainer':<28}{m_ours * 1e3:>16.1f}{min(ours) * 1e3:>10.1f}{max(ours) * 1e3:>10.1f}"
    )
    ratios = [o / b for o, b in zip(ours, bare)]
    print(
        f"ratio ours/bare: {m_ours / m_bare:.3f} (median of per-pair ratios "
        f"{statistics.median(ratios):.3f}; target <= 1.05)"
    )
    params_now = dict(ours_model.named_parameters())
    assert all(int((params_now[k][~masks[k].to(device)] != 0).sum()) == 0 for k in masks)


if __name__ == "__main__":
    main()
