"""PERP: retrain a tiny parameter subset after one-shot pruning, vs full retraining, vs block-wise
reconstruction, on prunekit's small GPT trained on CPython's documentation text.

Reuses the model, corpus and cache of ``bench_llm_e2e.py`` (the first 90% of the text trains,
calibrates and retrains; the last 10% is the test set). For each sparsity setting and pruning
method: perplexity after pruning; after PERP retraining of biases, norms, the LM head, MaskLoRA,
ScaleLoRA and biases+norms+MaskLoRA; after full retraining (every parameter, masks enforced) for
the same number of steps; and after block-wise reconstruction (biases+norms+MaskLoRA per block).

    PYTHONPATH=src python benchmarks/bench_perp.py                       # default, a few minutes
    PYTHONPATH=src python benchmarks/bench_perp.py --retrain-steps 500 --eval-windows 0   # more
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm_e2e import corpus, train  # noqa: E402

from prunekit.llm import prune_llm  # noqa: E402
from prunekit.llm.evaluation import perplexity  # noqa: E402
from prunekit.llm.io import load_model, save_pruned  # noqa: E402
from prunekit.llm.perp import perp_retrain, reconstruct  # noqa: E402
from prunekit.models.gpt import GPTConfig  # noqa: E402

SETTINGS = {"50%": (0.5, None), "70%": (0.7, None), "2:4": (0.5, "2:4")}
SUBSETS = [
    "biases",
    "norms",
    "head",
    "masklora",
    "scalelora",
    "biases,norms,masklora",
]


def state_mb(trainable: int) -> float:
    """Gradient + two AdamW moments of the trainable parameters (fp32), in MB."""
    return trainable * 3 * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400, help="dense training steps")
    parser.add_argument("--cache", default="benchmarks/.cache/llm_e2e")
    parser.add_argument("--settings", default="50%,70%,2:4")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--subsets", default=";".join(SUBSETS), help="';'-separated")
    parser.add_argument("--nsamples", type=int, default=64, help="calibration windows")
    parser.add_argument("--retrain-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3, help="PERP subsets' peak LR")
    parser.add_argument("--full-lr", type=float, default=3e-4, help="full retraining peak LR")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--rec-steps", type=int, default=40, help="reconstruction steps/block")
    parser.add_argument("--rec-lr", type=float, default=2e-3)
    parser.add_argument("--no-reconstruct", action="store_true")
    parser.add_argument("--no-full", action="store_true")
    parser.add_argument("--eval-windows", type=int, default=48, help="0: the whole test set")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_ids, test_ids = corpus()
    config = GPTConfig(
        n_layer=args.layers, n_head=args.heads, n_embd=args.embd, block_size=args.context
    )
    cache = Path(args.cache) / f"gpt-l{args.layers}-e{args.embd}-c{args.context}-s{args.steps}"
    if (cache / "model.safetensors").exists():
        dense, _ = load_model(cache)
        print(f"loaded cached model from {cache}")
    else:
        dense = train(config, train_ids, args.steps, 16, 3e-3)
        save_pruned(dense, cache)
    dense = dense.to(args.device).eval()
    total = sum(p.numel() for p in dense.parameters())
    ppl_kw = {
        "seqlen": args.context,
        "batch_size": 16,
        "max_windows": args.eval_windows or None,
    }
    dense_ppl = perplexity(dense, test_ids, **ppl_kw)
    print(f"dense: {total / 1e6:.2f}M parameters, test perplexity {dense_ppl:.3f}", flush=True)
    retrain_kw = {
        "steps": args.retrain_steps,
        "batch_size": args.batch,
        "seqlen": args.context,
        "rank": args.rank,
        "progress": False,
        "device": args.device,
    }

    rows = []
    for label in args.settings.split(","):
        sparsity, pattern = SETTINGS[label]
        for method in args.methods.split(","):
            pruned = copy.deepcopy(dense)
            start = time.perf_counter()
            masks, _ = prune_llm(
                pruned,
                method,
                sparsity,
                pattern,
                calibration=train_ids,
                nsamples=args.nsamples,
                seqlen=args.context,
                batch_size=16,
                progress=False,
            )
            prune_s = time.perf_counter() - start
            ppl_pruned = perplexity(pruned, test_ids, **ppl_kw)
            results = [("pruned (no retraining)", 0, ppl_pruned, prune_s, 0.0)]
            variants = [(s, args.lr) for s in args.subsets.split(";") if s]
            if not args.no_full:
                variants.append(("full", args.full_lr))
            for params, lr in variants:
                model = copy.deepcopy(pruned)
                report = perp_retrain(model, masks, train_ids, params, lr=lr, **retrain_kw)
                named = dict(model.named_parameters())
                assert all(torch.equal(named[n] != 0, k) for n, k in masks.items())
                mem = report["peak_memory_bytes"]
                mem_mb = mem / 2**20 if mem is not None else state_mb(report["trainable"])
                results.append(
                    (
                        f"PERP {params}" if params != "full" else "full retraining",
                        report["trainable"],
                        perplexity(model, test_ids, **ppl_kw),
                        report["seconds"],
                        mem_mb,
                    )
                )
                print(label, method, results[-1], flush=True)
            if not args.no_reconstruct:
                model = copy.deepcopy(dense)
                rec_masks, rec = reconstruct(
                    model,
                    method,
                    sparsity,
                    pattern,
                    train_ids,
                    "biases,norms,masklora",
                    nsamples=args.nsamples,
                    seqlen=args.context,
                    steps=args.rec_steps,
                    lr=args.rec_lr,
                    batch_size=args.batch,
                    rank=args.rank,
                    device=args.device,
                    progress=False,
                )
                mem = rec["peak_memory_bytes"]
                trainable = rec["trainable_per_block_max"]
                results.append(
                    (
                        "reconstruction (biases,norms,masklora)",
                        trainable,
                        perplexity(model, test_ids, **ppl_kw),
                        rec["seconds"],
                        mem / 2**20 if mem is not None else state_mb(trainable),
                    )
                )
                print(label, method, results[-1], flush=True)
            full = next((r[2] for r in results if r[0] == "full retraining"), None)
            for name, trainable, ppl, seconds, mb in results:
                gain = ""
                if full is not None and ppl_pruned != full:
                    gain = f"{100 * (ppl_pruned - ppl) / (ppl_pruned - full):.0f}%"
                rows.append(
                    [
                        label,
                        method,
                        name,
                        f"{trainable:,}",
                        f"{100 * trainable / total:.3f}%",
                        f"{ppl:.3f}",
                        f"{ppl / ppl_pruned:.3f}",
                        gain,
                        f"{seconds:.1f}",
                        f"{mb:.2f}",
                    ]
                )

    mem_note = "CUDA peak MB" if args.device.startswith("cuda") else "grad+AdamW state MB"
    header = [
        "setting",
        "method",
        "variant",
        "trainable",
        "share",
        "test ppl",
        "ppl / pruned",
        "gain vs full",
        "seconds",
        mem_note,
    ]
    print()
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(
        f"model: GPT {args.layers} layers, d={args.embd}, context {args.context}, "
        f"{total / 1e6:.2f}M params; dense test ppl {dense_ppl:.3f}; retraining "
        f"{args.retrain_steps} steps x {args.batch} windows (PERP lr {args.lr}, full lr "
        f"{args.full_lr}, rank {args.rank}); reconstruction {args.rec_steps} steps/block"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
