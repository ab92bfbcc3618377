"""Peak memory of block-by-block pruning on a model much larger than one block.

Each measurement runs in a fresh subprocess: build a prunekit GPT, note the resident set size,
reset the kernel's peak counter (VmHWM), prune, read the peak. The bound checked is
peak <= 1.5 x (model + one block + calibration activations), where the activations are the two
buffers the engine keeps (block inputs and outputs: 2 x nsamples x seqlen x hidden x 4 bytes).
The baseline is a naive one-pass pruner that runs the whole model on all calibration samples at
once and keeps every linear's inputs to build its statistics.

    PYTHONPATH=src python benchmarks/bench_llm_memory.py
    PYTHONPATH=src python benchmarks/bench_llm_memory.py --layers 48 --embd 768   # larger
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import torch

MiB = 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(args: argparse.Namespace) -> None:
    import gc

    from prunekit.llm import prune_llm
    from prunekit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    torch.set_num_threads(2)
    # Warm up: load lazily imported modules and kernels, so the runtime is not counted as pruning.
    tiny = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16))
    prune_llm(tiny, args.method, 0.5, calibration=torch.randint(0, 256, (2, 16)), progress=False)
    del tiny
    gc.collect()
    runtime = _rss()
    model = GPT(GPTConfig(n_layer=args.layers, n_head=8, n_embd=args.embd, block_size=args.seqlen))
    ids = torch.randint(0, 256, (args.nsamples, args.seqlen))
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters())
    act_bytes = 2 * args.nsamples * args.seqlen * args.embd * 4
    gc.collect()
    base = _rss()
    _reset_peak()
    if args.mode == "naive":
        # Whole model on all samples at once; every linear's input kept, then X^T X per linear.
        inputs: dict[str, torch.Tensor] = {}
        hooks = [
            m.register_forward_hook(lambda mod, i, o, n=n: inputs.__setitem__(n, i[0].detach()))
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("blocks")
        ]
        with torch.no_grad():
            model(ids)
        for h in hooks:
            h.remove()
        stats = {
            n: x.reshape(-1, x.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
            for n, x in inputs.items()
        }
        del stats, inputs
    else:
        prune_llm(
            model,
            args.method,
            0.5,
            calibration=ids,
            nsamples=args.nsamples,
            seqlen=args.seqlen,
            batch_size=args.batch_size,
            offload=None if args.mode == "memory" else args.mode,
            progress=False,
        )
    peak = _peak()
    print(
        json.dumps(
            {
                "runtime": runtime,
                "base": base,
                "peak": peak,
                "model": model_bytes,
                "block": block_bytes,
                "act": act_bytes,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--embd", type=int, default=512)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        child(args)
        return
    rows = []
    for mode in ("naive", "memory", "disk"):
        cmd = [sys.executable, __file__, "--mode", mode] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "mode"
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        bound = 1.5 * (r["model"] + r["block"] + r["act"])
        label = {
            "naive": "naive one-pass (baseline)",
            "memory": f"prune_llm {args.method}",
            "disk": f"prune_llm {args.method}, offload=disk",
        }[mode]
        rows.append(
            [
                label,
                f"{r['model'] / MiB:.0f}",
                f"{r['block'] / MiB:.1f}",
                f"{r['act'] / MiB:.1f}",
                f"{r['runtime'] / MiB:.0f}",
                f"{(r['peak'] - r['runtime']) / MiB:.0f}",
                f"{(r['peak'] - r['base']) / MiB:.0f}",
                f"{(r['peak'] - r['runtime']) / bound:.2f}",
                "yes" if r["peak"] - r["runtime"] <= bound else "NO",
            ]
        )
        print(rows[-1], flush=True)
    header = [
        "run",
        "model MiB",
        "block MiB",
        "activations MiB",
        "runtime MiB",
        "peak - runtime MiB",
        "peak - start MiB",
        "(peak - runtime) / bound",
        "within bound",
    ]
    print()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}; GPT "
        f"{args.layers} layers, d={args.embd}, {args.nsamples} x {args.seqlen} calibration tokens"
    )
    print(
        "bound = 1.5 x (model + one block + activations); runtime = RSS of Python, torch and "
        "prunekit after a warm-up, before the model is built; start = after it is built"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
