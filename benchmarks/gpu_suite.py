"""The GPU suite: one script, one table, five sections (sized for under 6 minutes on one H100/H200).

1. the test suite's ``gpu``-marked tests (run in a subprocess: passed / failed / skipped);
2. ``prune_llm`` on a ~1.1B LLaMA-architecture model built from a config (random weights, bf16,
   128 x 2048 calibration tokens): time and peak GPU memory for magnitude, Wanda, SparseGPT and
   SparseGPT 2:4;
3. one layer (4096x4096 and 11008x4096): our SparseGPT and Wanda against the official
   implementations' algorithm as written in ``bench_llm_layer.py`` (from the papers), time ratio
   at equal output error;
4. a masked training step (90% masks attached) over the dense step, batch 256, bf16 autocast, for
   ResNet-20 and a GPT block (target <= 1.02x);
5. structured pruning (50% channels) of zoo models on the GPU: prune time, and forward latency of
   the dense and pruned models at batch 64 in bf16 (CUDA events, median of 20).

    PYTHONPATH=src python benchmarks/gpu_suite.py                 # needs CUDA
    PYTHONPATH=src python benchmarks/gpu_suite.py --dry-run       # CPU, tiny sizes: the script runs

``--dry-run`` shrinks every size so the whole script runs on a CPU in about a minute: its
figures check the script, they measure nothing. Without ``--dry-run`` the script refuses to run
without CUDA (one line, exit 2).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm_layer import (  # noqa: E402
    outlier_inputs,
    rel_error,
    sparsegpt_reference,
    wanda_reference,
)

import prunekit  # noqa: E402
import prunekit.structured as st  # noqa: E402
from prunekit.llm.methods import wanda_mask  # noqa: E402
from prunekit.llm.sparsegpt import sparsegpt_prune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """Every size the suite uses; ``tiny()`` for ``--dry-run``."""

    llm: dict
    nsamples: int
    seqlen: int
    layers: list[tuple[int, int]]
    layer_tokens: int
    batch: int
    steps: int
    gpt_embd: int
    gpt_seq: int
    zoo: list[str]
    latency_batch: int
    latency_reps: int
    width: int = 16  # ResNet-20 width (16 is the paper's)
    image: int = 32
    rounds: int = 3

    @staticmethod
    def full() -> Sizes:
        llm = dict(  # TinyLlama-1.1B's shape
            hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
            max_position_embeddings=2048,
        )  # fmt: skip
        return Sizes(
            llm, 128, 2048, [(4096, 4096), (11008, 4096)], 16384, 256, 20, 768, 256,
            ["resnet56", "vgg16", "vit_tiny"], 64, 20,
        )  # fmt: skip

    @staticmethod
    def tiny() -> Sizes:
        llm = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
        )  # fmt: skip
        return Sizes(
            llm, 4, 32, [(64, 64), (96, 64)], 256, 4, 2, 32, 16, ["resnet20"], 2, 2,
            width=4, image=16, rounds=1,
        )  # fmt: skip


Row = list[str]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call (CUDA events on a GPU, perf_counter on the CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed(device: torch.device, fn: Callable, *args: object) -> tuple[float, object]:
    """(seconds, result) of ``fn(*args)``."""
    out: list[object] = []
    seconds = _seconds(lambda: out.append(fn(*args)), device)
    return seconds, out[0]


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


# ---------------------------------------------------------------------- 1. gpu-marked tests
def gpu_tests() -> list[Row]:
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-o", "addopts=", "-q", "-rf"]
    cmd += ["-p", "no:cacheprovider"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    counts = [
        ln
        for ln in lines
        if " in " in ln and any(w in ln for w in ("passed", "skipped", "failed", "error"))
    ]
    summary = (
        counts[-1] if counts else (lines[-1] if lines else proc.stderr.strip()[-200:])
    ).strip("= ")
    failed = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("FAILED ")]
    rows = [["1 gpu tests", "pytest -m gpu", "summary", summary, "", "", f"{seconds:.0f} s"]]
    rows += [["1 gpu tests", name[:60], "FAILED", "", "", "", ""] for name in failed]
    return rows


# ---------------------------------------------------------------------- 2. prune_llm on ~1B
def llm_end_to_end(sizes: Sizes, device: torch.device, dtype: torch.dtype) -> list[Row]:
    import transformers as T

    from prunekit.llm import prune_llm

    config = T.LlamaConfig(**sizes.llm)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        0, config.vocab_size, (sizes.nsamples * sizes.seqlen + 1,), generator=g, device="cpu"
    )
    rows = []
    for label, method, pattern in [
        ("magnitude 50%", "magnitude", None),
        ("wanda 50%", "wanda", None),
        ("sparsegpt 50%", "sparsegpt", None),
        ("sparsegpt 2:4", "sparsegpt", "2:4"),
    ]:
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs: fast on a GPU
            model = T.LlamaForCausalLM(config).to(dtype).eval()
        params = sum(p.numel() for p in model.parameters())
        _peak_reset(device)
        _sync(device)
        t0 = time.perf_counter()
        masks, _report = prune_llm(
            model, method, 0.5, pattern=pattern, calibration=tokens, nsamples=sizes.nsamples,
            seqlen=sizes.seqlen, batch_size=8, progress=False,
        )  # fmt: skip
        _sync(device)
        seconds = time.perf_counter() - t0
        on_device = all(m.device == device for m in masks.values())
        rows.append(
            [
                "2 prune_llm",
                f"LLaMA {params / 1e9:.2f}B {str(dtype)[6:]}, {sizes.nsamples}x{sizes.seqlen}",
                label,
                f"{seconds:.1f} s",
                "",
                "",
                f"peak {_peak_gib(device)}; sparsity {masks.sparsity:.3f}; masks on model device: "
                f"{on_device}",
            ]
        )
        print(rows[-1], flush=True)
        del model, masks
    return rows


# ---------------------------------------------------------------------- 3. one layer vs reference
def layer_solvers(sizes: Sizes, device: torch.device) -> list[Row]:
    rows = []
    for out_f, in_f in sizes.layers:
        g = torch.Generator().manual_seed(out_f + in_f)
        w = (torch.randn(out_f, in_f, generator=g, device="cpu") / math.sqrt(in_f)).to(device)
        x = outlier_inputs(sizes.layer_tokens, in_f, seed=1).to(device)
        h = x.t() @ x / sizes.layer_tokens
        col_sq = x.double().square().sum(0)
        shape = f"{out_f}x{in_f}"

        sparsegpt_prune(w, h, 0.5), sparsegpt_reference(w, h, 0.5)  # warm-up (kernels, handles)
        t_ours, (w_ours, _mask, _info) = _timed(device, sparsegpt_prune, w, h, 0.5)
        t_ref, w_ref = _timed(device, sparsegpt_reference, w, h, 0.5)
        e_ours, e_ref = rel_error(w, w_ours, x), rel_error(w, w_ref, x)
        rows.append(
            [
                "3 layer",
                shape,
                "sparsegpt 50%",
                f"{t_ours:.3f} s",
                f"{t_ref:.3f} s",
                f"{t_ours / t_ref:.2f}x",
                f"error ours {e_ours:.5f} / reference {e_ref:.5f}",
            ]
        )
        scaler = (col_sq / sizes.layer_tokens).float()
        wanda_mask(w, col_sq, 0.5), wanda_reference(w, scaler, 0.5)  # warm-up
        t_wo, m_ours = _timed(device, wanda_mask, w, col_sq, 0.5)
        t_wr, m_ref = _timed(device, wanda_reference, w, scaler, 0.5)
        rows.append(
            [
                "3 layer",
                shape,
                "wanda 50%",
                f"{t_wo * 1e3:.2f} ms",
                f"{t_wr * 1e3:.2f} ms",
                f"{t_wo / t_wr:.2f}x",
                f"masks equal: {bool(torch.equal(m_ours, m_ref))}",
            ]
        )
        print(*rows[-2:], sep="\n", flush=True)
    return rows


# ---------------------------------------------------------------------- 4. masked training step
def _resnet20(width: int, image: int):
    model = prunekit.create_model("resnet20", width=width)
    return model, lambda b: (torch.randn(b, 3, image, image), torch.randint(0, 10, (b,)))


def _gpt_block(embd: int, seq: int):
    from prunekit.models.gpt import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=1, n_head=max(1, embd // 64), n_embd=embd, block_size=seq))
    vocab = model.config.vocab_size
    return model, lambda b: (torch.randint(0, vocab, (b, seq)), torch.randint(0, vocab, (b, seq)))


def _step_time(model, batch, device, amp, steps, masks=None) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    handle = masks.attach(optimizer, model) if masks is not None else None
    x, y = (t.to(device) for t in batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = nn.functional.cross_entropy(
                out.float().reshape(-1, out.shape[-1]), y.reshape(-1)
            )
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = [_seconds(step, device) for _ in range(steps)]
    if handle is not None:
        handle.remove()
    return statistics.median(times)


def masked_step(sizes: Sizes, device: torch.device) -> list[Row]:
    amp = device.type == "cuda"
    rows = []
    for name, build in [
        (f"resnet20 w={sizes.width}", lambda: _resnet20(sizes.width, sizes.image)),
        (f"gpt block d={sizes.gpt_embd}", lambda: _gpt_block(sizes.gpt_embd, sizes.gpt_seq)),
    ]:
        torch.manual_seed(0)
        base, data = build()
        batch = data(sizes.batch)
        dense = copy.deepcopy(base).to(device)
        sparse = copy.deepcopy(base).to(device)
        masks = prunekit.compute_masks(sparse, 0.9, method="magnitude")
        # interleave the two so that clock and load drift hit both alike
        t_dense, t_sparse = [], []
        for _ in range(sizes.rounds):
            t_dense.append(_step_time(dense, batch, device, amp, sizes.steps))
            t_sparse.append(_step_time(sparse, batch, device, amp, sizes.steps, masks))
        d, s = statistics.median(t_dense), statistics.median(t_sparse)
        kept_zero = all(not p[~masks[n]].any() for n, p in sparse.named_parameters() if n in masks)
        rows.append(
            [
                "4 masked step",
                f"{name}, batch {sizes.batch}, {'bf16 AMP' if amp else 'fp32'}",
                "90% masks / dense",
                f"{s * 1e3:.2f} ms",
                f"{d * 1e3:.2f} ms",
                f"{s / d:.3f}x",
                f"target <= 1.02x; pruned weights still zero: {kept_zero}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


# ---------------------------------------------------------------------- 5. structured on device
def structured(sizes: Sizes, device: torch.device) -> list[Row]:
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name in sizes.zoo:
        torch.manual_seed(0)
        kw = {"width": sizes.width} if name.startswith("resnet") else {}
        dense = prunekit.create_model(name, **kw).to(device).eval()
        example = torch.randn(1, 3, sizes.image, sizes.image, device=device)
        _sync(device)
        t0 = time.perf_counter()
        small, plan = st.prune(copy.deepcopy(dense), example, ratio=0.5)
        _sync(device)
        prune_s = time.perf_counter() - t0
        on_device = all(p.device == device for p in small.parameters())
        x = torch.randn(
            sizes.latency_batch, 3, sizes.image, sizes.image, device=device, dtype=dtype
        )
        lat = {}
        for label, m in (("dense", dense), ("pruned", small)):
            m = m.to(dtype)
            with torch.inference_mode():
                for _ in range(3):
                    m(x)
                lat[label] = statistics.median(
                    _timed(device, m, x)[0] for _ in range(sizes.latency_reps)
                )
        rows.append(
            [
                "5 structured",
                f"{name} 50% channels, batch {sizes.latency_batch} {str(dtype)[6:]}",
                "latency pruned / dense",
                f"{lat['pruned'] * 1e3:.3f} ms",
                f"{lat['dense'] * 1e3:.3f} ms",
                f"{lat['pruned'] / lat['dense']:.2f}x",
                f"prune {prune_s:.2f} s; params on device: {on_device}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def table(rows: list[Row]) -> str:
    header = ["section", "case", "measure", "ours", "baseline", "ratio", "note"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--device", default=None, help="cuda (default) or cpu with --dry-run")
    parser.add_argument(
        "--sections", default="1,2,3,4,5", help="comma-separated section numbers to run"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device here; run it on a GPU machine (or add --dry-run)")
        return 2
    if device.type != "cuda" and not args.dry_run:
        print(f"gpu_suite: full sizes need a CUDA device, got --device {device}; add --dry-run")
        return 2
    sizes = Sizes.tiny() if args.dry_run else Sizes.full()
    if args.dry_run:
        torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine
    sections = {s.strip() for s in args.sections.split(",")}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# gpu_suite on {name} ({device}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads{' [DRY RUN: tiny sizes]' if args.dry_run else ''}",
        flush=True,
    )
    torch.backends.cuda.matmul.allow_tf32 = False  # equal-error comparisons need full fp32
    start = time.perf_counter()
    rows: list[Row] = []
    if "1" in sections:
        rows += gpu_tests()
    if "2" in sections:
        rows += llm_end_to_end(
            sizes, device, torch.bfloat16 if device.type == "cuda" else torch.float32
        )
    if "3" in sections:
        rows += layer_solvers(sizes, device)
    if "4" in sections:
        rows += masked_step(sizes, device)
    if "5" in sections:
        rows += structured(sizes, device)
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
