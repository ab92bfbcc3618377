"""Sparse inference: measured latency of dense vs converted models, next to the bytes ceiling.

1. CPU, unstructured sparsity: a 4096-wide MLP and a GPT block (``prunekit.models.gpt.Block``)
   with 90% / 95% random masks go through ``prunekit.export.to_sparse`` (per-layer micro-benchmark,
   end-to-end check) and are timed against the masked dense model, interleaved, medians. The CSR
   bytes ceiling (dense bytes / CSR values + int32 column indices) is printed beside each ratio.
2. ONNX Runtime on CPU: a ResNet-56 and a small ViT, dense vs 50%-channel structurally pruned,
   exported with ``prunekit.export.to_onnx``; the MACs ratio is printed as theoretical.
3. CUDA (only when a GPU is visible): 2:4 ``to_sparse_semi_structured`` vs dense ``F.linear`` over
   shapes x token counts x dtypes, each available backend.

    python benchmarks/bench_sparse_inference.py --threads 2            # sections 1-2, minutes
    python benchmarks/bench_sparse_inference.py --threads 2 --skip-onnx --gpt-width 2048
    python benchmarks/bench_sparse_inference.py --gpu-only             # section 3 on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core.masks import MaskSet
from prunekit.core.metrics import count_macs
from prunekit.export import csr_bytes_ceiling, to_onnx, to_sparse
from prunekit.models import create_model
from prunekit.models.gpt import Block, GPTConfig


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 3) -> dict:
    """Median seconds of each function, calls interleaved so machine load hits all alike."""
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(reps):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def random_masks(model: nn.Module, sparsity: float, seed: int = 0) -> MaskSet:
    g = torch.Generator().manual_seed(seed)
    return MaskSet(
        {
            n: torch.rand(p.shape, generator=g) >= sparsity
            for n, p in model.named_parameters()
            if n.endswith("weight") and p.dim() == 2
        }
    )


def mlp(width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def cpu_section(args: argparse.Namespace) -> None:
    print("\n## 1. CPU, unstructured sparsity, CSR (int32 indices) vs dense (measured)")
    print(
        f"batch {args.batch} x 1 token, {torch.get_num_threads()} threads, fp32, reps {args.reps}"
    )
    print(
        f"{'model':<22} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9} {'speedup':>8} "
        f"{'ceiling':>8} {'converted':>10} {'max |diff|':>10}"
    )
    models = {
        f"MLP {args.mlp_width}x{args.mlp_depth}": (
            lambda: mlp(args.mlp_width, args.mlp_depth),
            (args.batch, args.mlp_width),
        ),
        f"GPT block d={args.gpt_width}": (
            lambda: Block(GPTConfig(n_embd=args.gpt_width, n_head=max(1, args.gpt_width // 64))),
            (args.batch, 1, args.gpt_width),
        ),
    }
    for label, (build, shape) in models.items():
        torch.manual_seed(0)
        dense = build().eval()
        for sparsity in args.sparsities:
            masks = random_masks(dense, sparsity)
            masked = copy.deepcopy(dense)
            masks.apply(masked)
            x = torch.randn(shape)
            sparse, report = to_sparse(masked, masks, batch_size=args.batch, example_inputs=x)
            times = interleaved(
                {"dense": lambda m=masked, x=x: m(x), "sparse": lambda m=sparse, x=x: m(x)},
                args.reps,
            )
            with torch.no_grad():
                diff = (sparse(x) - masked(x)).abs().max().item()
            # ceiling over the weight bytes of the masked layers only
            density = 1.0 - sparsity
            print(
                f"{label:<22} {sparsity:>8.0%} {times['dense'] * 1e3:>9.3f} "
                f"{times['sparse'] * 1e3:>9.3f} {times['dense'] / times['sparse']:>7.2f}x "
                f"{csr_bytes_ceiling(density):>7.1f}x "
                f"{len(report.converted):>4}/{len(report.layers):<5} {diff:>10.2e}"
            )
            if args.verbose:
                print(report)
            del sparse, masked


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_section(args: argparse.Namespace) -> None:
    import prunekit.structured as st

    print("\n## 2. ONNX Runtime on CPU: dense vs 50%-channel structured pruning (measured)")
    print(f"batch {args.onnx_batch}, {args.threads} intra-op threads, fp32, reps {args.reps}")
    print(
        f"{'model':<12} {'MACs ratio':>10} {'ort dense ms':>12} {'ort pruned ms':>13} "
        f"{'ort speedup':>11} {'torch speedup':>13} {'rel. |ort-torch|':>16}"
    )
    cases = {
        "resnet56": (lambda: create_model("resnet56"), (args.onnx_batch, 3, 32, 32)),
        "vit_tiny": (lambda: create_model("vit_tiny"), (args.onnx_batch, 3, 32, 32)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, shape) in cases.items():
            torch.manual_seed(0)
            dense = build().eval()
            x = torch.randn(shape)
            small, _ = st.prune(copy.deepcopy(dense), x[:1], ratio=0.5)
            small.eval()
            macs = count_macs(dense, x[:1]) / count_macs(small, x[:1])
            sessions, diff = {}, 0.0
            for tag, model in (("dense", dense), ("pruned", small)):
                path = to_onnx(model, x, Path(tmp) / f"{name}_{tag}.onnx")
                sessions[tag] = _ort_session(path, args.threads)
                feed = {sessions[tag].get_inputs()[0].name: x.numpy()}
                with torch.no_grad():
                    want = model(x).numpy()
                err = abs(sessions[tag].run(None, feed)[0] - want).max() / abs(want).max()
                diff = max(diff, float(err))
            feed_name = sessions["dense"].get_inputs()[0].name
            xs = x.numpy()
            times = interleaved(
                {
                    "ort dense": lambda s=sessions["dense"], f={feed_name: xs}: s.run(None, f),
                    "ort pruned": lambda s=sessions["pruned"], f={feed_name: xs}: s.run(None, f),
                    "torch dense": lambda m=dense, x=x: m(x),
                    "torch pruned": lambda m=small, x=x: m(x),
                },
                args.reps,
            )
            print(
                f"{name:<12} {macs:>9.2f}x {times['ort dense'] * 1e3:>12.3f} "
                f"{times['ort pruned'] * 1e3:>13.3f} "
                f"{times['ort dense'] / times['ort pruned']:>10.2f}x "
                f"{times['torch dense'] / times['torch pruned']:>12.2f}x {diff:>16.2e}"
            )
    print("MACs ratio is theoretical; speedups are measured medians.")


def _dense_matmul(x: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float16, torch.bfloat16):
        return F.linear(x, w)
    if dtype == torch.int8:
        return torch._int_mm(x, w.t())
    one = torch.ones((), device=x.device)  # fp8: unit scales
    return torch._scaled_mm(x, w.t(), one, one, out_dtype=torch.bfloat16)


def _sparse_matmul(x: torch.Tensor, ws: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float16, torch.bfloat16):
        return F.linear(x, ws)
    return torch.mm(ws, x.t())  # int8 / fp8 semi-structured: sparse operand first


def gpu_section(args: argparse.Namespace) -> None:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    print("\n## 3. CUDA: 2:4 semi-structured vs dense F.linear (measured, per shape)")
    print(f"device {torch.cuda.get_device_name()}, capability {torch.cuda.get_device_capability()}")
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}
    if hasattr(torch, "float8_e4m3fn"):
        dtypes["fp8"] = torch.float8_e4m3fn
    print(
        f"{'dtype':<5} {'out x in':>12} {'tokens':>7} {'dense ms':>9} {'backend':>10} {'2:4 ms':>8} {'speedup':>8}"
    )
    keep = torch.tensor([True, True, False, False], device="cuda")

    def cuda_time(fn: Callable[[], object]) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        times = []
        for _ in range(args.reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    for dname, dtype in dtypes.items():
        for out_f, in_f in args.gpu_shapes:
            w = torch.randn(out_f, in_f, device="cuda").mul_(keep.repeat(out_f, in_f // 4))
            w = w.to(dtype) if dtype.is_floating_point else w.clamp(-127, 127).to(dtype)
            for tokens in args.gpu_tokens:
                x = torch.randn(tokens, in_f, device="cuda")
                x = x.to(dtype) if dtype.is_floating_point else x.clamp(-127, 127).to(dtype)
                dense_fn = functools.partial(_dense_matmul, x, w, dtype)
                try:
                    dense_ms = cuda_time(dense_fn)
                except (RuntimeError, NotImplementedError) as err:
                    print(
                        f"{dname:<5} {out_f:>5}x{in_f:<6} {tokens:>7} dense failed: {str(err)[:60]}"
                    )
                    continue
                for backend in ("cusparselt", "cutlass"):
                    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
                    try:
                        ws = to_sparse_semi_structured(w)
                        ms = cuda_time(functools.partial(_sparse_matmul, x, ws, dtype))
                        cell = f"{ms:>8.3f} {dense_ms / ms:>7.2f}x"
                    except (RuntimeError, NotImplementedError, ValueError) as err:
                        cell = f"unsupported: {str(err).splitlines()[0][:50]}"
                    print(
                        f"{dname:<5} {out_f:>5}x{in_f:<6} {tokens:>7} {dense_ms:>9.3f} {backend:>10} {cell}"
                    )
                del x
            del w
            torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--mlp-width", type=int, default=4096)
    parser.add_argument("--mlp-depth", type=int, default=3)
    parser.add_argument("--gpt-width", type=int, default=4096)
    parser.add_argument("--onnx-batch", type=int, default=1)
    parser.add_argument("--skip-onnx", action="store_true")
    parser.add_argument("--skip-cpu", action="store_true", help="skip section 1")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument(
        "--gpu-shapes",
        type=lambda s: tuple(map(int, s.split("x"))),
        nargs="+",
        default=[(768, 768), (4096, 4096), (11008, 4096), (16384, 16384)],
    )
    parser.add_argument("--gpu-tokens", type=int, nargs="+", default=[1, 16, 256, 4096, 16384])
    parser.add_argument("--verbose", action="store_true", help="print to_sparse's per-layer table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.gpu_only:
        if not args.skip_cpu:
            cpu_section(args)
        if not args.skip_onnx:
            onnx_section(args)
    if torch.cuda.is_available():
        gpu_section(args)
    else:
        print("\n## 3. CUDA 2:4: skipped (no CUDA device visible)")


if __name__ == "__main__":
    main()
