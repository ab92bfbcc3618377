"""End to end: train prunekit's small byte-level GPT on CPython's documentation text, then prune it
one-shot with magnitude, Wanda and SparseGPT (each with and without OWL) and report perplexity.

The corpus is the text of ``pydoc_data.topics`` (ships with CPython, about 0.46 MB): the first 90%
trains and calibrates, the last 10% is the test set (perplexity over non-overlapping windows).
The trained model is cached as safetensors and reused.

    PYTHONPATH=src python benchmarks/bench_llm_e2e.py                 # default size, a few minutes
    PYTHONPATH=src python benchmarks/bench_llm_e2e.py --layers 6 --embd 256 --steps 4000  # larger
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prunekit.llm import byte_tokenizer, prune_llm
from prunekit.llm.evaluation import perplexity
from prunekit.llm.io import load_model, save_pruned
from prunekit.models.gpt import GPT, GPTConfig

SETTINGS = [
    ("50%", 0.5, None),
    ("60%", 0.6, None),
    ("70%", 0.7, None),
    ("4:8", 0.5, "4:8"),
    ("2:4", 0.5, "2:4"),
]


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    import pydoc_data.topics as topics

    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    ids = torch.tensor(byte_tokenizer(text), dtype=torch.long)
    cut = int(0.9 * ids.numel())
    return ids[:cut], ids[cut:]


def train(config: GPTConfig, data: torch.Tensor, steps: int, batch: int, lr: float) -> GPT:
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    t = config.block_size
    start = time.perf_counter()
    for step in range(steps):
        lr_now = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr_now
        idx = torch.randint(0, data.numel() - t - 1, (batch,), generator=g)
        x = torch.stack([data[i : i + t] for i in idx.tolist()])
        y = torch.stack([data[i + 1 : i + t + 1] for i in idx.tolist()])
        loss = F.cross_entropy(model(x).reshape(-1, config.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(
                f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f}s",
                flush=True,
            )
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--eval-windows", type=int, default=None, help="cap on test windows")
    parser.add_argument("--cache", default="benchmarks/.cache/llm_e2e", help="trained-model dir")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 on a shared, busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    train_ids, test_ids = corpus()
    config = GPTConfig(
        n_layer=args.layers, n_head=args.heads, n_embd=args.embd, block_size=args.context
    )
    cache = Path(args.cache) / f"gpt-l{args.layers}-e{args.embd}-c{args.context}-s{args.steps}"
    if (cache / "model.safetensors").exists():
        dense, _ = load_model(cache)
        print(f"loaded cached model from {cache}")
    else:
        dense = train(config, train_ids, args.steps, args.batch, args.lr)
        save_pruned(dense, cache)
    params = sum(p.numel() for p in dense.parameters())
    ppl_kw = {"seqlen": args.context, "batch_size": 16, "max_windows": args.eval_windows}
    dense_ppl = perplexity(dense, test_ids, **ppl_kw)
    print(f"dense: {params / 1e6:.2f}M parameters, test perplexity {dense_ppl:.3f}")

    rows = []
    for method in args.methods.split(","):
        for label, sparsity, pattern in SETTINGS:
            for owl in (False, True):
                if owl and (method == "magnitude" or pattern is not None):
                    continue
                model = copy.deepcopy(dense)
                start = time.perf_counter()
                masks, report = prune_llm(
                    model,
                    method,
                    sparsity,
                    pattern,
                    calibration=train_ids,
                    nsamples=args.nsamples,
                    seqlen=args.context,
                    batch_size=16,
                    owl=owl,
                    progress=False,
                )
                seconds = time.perf_counter() - start
                ppl = perplexity(model, test_ids, **ppl_kw)
                name = method + (" + OWL" if owl else "")
                rows.append(
                    [
                        label,
                        name,
                        f"{masks.sparsity:.3f}",
                        f"{ppl:.3f}",
                        f"{ppl / dense_ppl:.3f}",
                        f"{seconds:.1f}",
                    ]
                )
                print(rows[-1], flush=True)

    header = ["sparsity", "method", "pruned share", "test ppl", "ppl / dense", "prune s"]
    print()
    print(f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(
        f"model: GPT {args.layers} layers, d={args.embd}, context {args.context}, "
        f"{params / 1e6:.2f}M params, {args.steps} steps; dense test ppl {dense_ppl:.3f}"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print(f"| 0% | dense | 0 | {dense_ppl:.3f} | 1.000 | |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
