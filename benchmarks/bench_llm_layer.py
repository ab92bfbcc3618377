"""One linear layer with outlier-heavy inputs: output error and time of magnitude, Wanda, SparseGPT.

For each layer shape and pattern (50%, 2:4, 4:8) it reports the relative output error
||WX - W'X||^2 / ||WX||^2 on the calibration inputs and on fresh inputs from the same
distribution, and the pruning time given the input statistics. Two baselines run in the same
process: the published Wanda selection (per-row stable sort of |W| * ||X_j||, scatter) whose masks
must equal ours, and a reference SparseGPT written from the paper's pseudo-code (explicit
Cholesky inverse, threshold per column block, column loop with lazy block updates) whose error
ours must match.

    PYTHONPATH=src python benchmarks/bench_llm_layer.py            # 768x768, 3072x768, 4096x4096
    PYTHONPATH=src python benchmarks/bench_llm_layer.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from prunekit.llm.methods import magnitude_mask, wanda_mask
from prunekit.llm.sparsegpt import sparsegpt_prune


def outlier_inputs(tokens: int, features: int, seed: int) -> torch.Tensor:
    """Correlated activations with a few large-magnitude feature dimensions (as in LLMs)."""
    g = torch.Generator().manual_seed(seed)
    rank = max(8, features // 8)
    mix = torch.randn(rank, features, generator=g) / math.sqrt(rank)
    x = torch.randn(tokens, rank, generator=g) @ mix + 0.3 * torch.randn(
        tokens, features, generator=g
    )
    outliers = torch.randperm(features, generator=torch.Generator().manual_seed(1234))[
        : max(4, features // 100)
    ]
    x[:, outliers] *= 30.0
    return x


def rel_error(w: torch.Tensor, w2: torch.Tensor, x: torch.Tensor) -> float:
    return float(((w - w2) @ x.t()).square().sum() / (w @ x.t()).square().sum())


# ------------------------------------------------------------------------------- baselines


def wanda_reference(w: torch.Tensor, scaler_row: torch.Tensor, sparsity: float, nm=None):
    """The published Wanda selection: W_metric = |W| * sqrt(scaler_row); sort each row."""
    metric = w.abs() * torch.sqrt(scaler_row.reshape(1, -1))
    pruned = torch.zeros_like(metric, dtype=torch.bool)
    if nm is None:
        idx = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
        pruned.scatter_(1, idx, True)
    else:
        n, m = nm
        for ii in range(0, metric.shape[1], m):
            tmp = metric[:, ii : ii + m].float()
            pruned.scatter_(1, ii + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
    return ~pruned


def wanda_scaler_published(x: torch.Tensor, batch: int) -> torch.Tensor:
    """scaler_row as the Wanda code accumulates it: running mean of squared column norms."""
    scaler = torch.zeros(x.shape[1], device=x.device)
    nsamples = 0
    for chunk in x.split(batch):
        tmp = 1
        scaler *= nsamples / (nsamples + tmp)
        nsamples += tmp
        scaler += torch.norm(chunk, p=2, dim=0) ** 2 / nsamples
    return scaler


def sparsegpt_reference(w, h, sparsity, nm=None, blocksize=128, percdamp=0.01):
    """SparseGPT from the paper's Algorithm 1, written plainly (no tricks)."""
    w = w.clone().float()
    h = h.clone().float()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(cols, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        e1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        if nm is None:
            tmp = w1**2 / torch.diag(hinv1).reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):
            col = w1[:, i]
            d = hinv1[i, i]
            if nm is not None and i % nm[1] == 0:
                tmp = (
                    w1[:, i : i + nm[1]] ** 2 / torch.diag(hinv1)[i : i + nm[1]].reshape(1, -1) ** 2
                )
                mask1.scatter_(1, i + torch.topk(tmp, nm[1] - nm[0], dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            e1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= e1.matmul(hinv[i1:i2, i2:])
    return w


def best_time(repeats: int, fn, *args):
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def run(shapes, patterns, tokens: int, repeats: int) -> list[list[str]]:
    rows = []
    for out_f, in_f in shapes:
        w = torch.randn(
            out_f, in_f, generator=torch.Generator().manual_seed(out_f + in_f)
        ) / math.sqrt(in_f)
        x_cal = outlier_inputs(tokens, in_f, seed=1)
        x_new = outlier_inputs(tokens, in_f, seed=2)
        h = x_cal.t() @ x_cal / tokens
        col_sq = x_cal.double().square().sum(0)
        big = out_f * in_f >= 4096 * 4096
        for label, nm in patterns:
            if big and nm is not None:
                continue
            s = 0.5
            reps = 1 if big else repeats
            t_mag, mag = best_time(reps, magnitude_mask, w, s, nm)
            t_wan, wmask = best_time(reps, wanda_mask, w, col_sq, s, nm)
            ref_mask_same = wanda_reference(w, (col_sq / tokens).float(), s, nm)
            published = wanda_reference(w, wanda_scaler_published(x_cal, 128), s, nm)
            t_sg, (w_sg, _, _) = best_time(reps, sparsegpt_prune, w, h, s, nm)
            t_ref, w_ref = best_time(reps, sparsegpt_reference, w, h, s, nm)
            shape = f"{out_f}x{in_f}"
            for method, w2, t, extra in [
                ("magnitude", w * mag, t_mag, ""),
                (
                    "wanda",
                    w * wmask,
                    t_wan,
                    f"masks = published: {bool(torch.equal(wmask, ref_mask_same))}; "
                    f"vs published scaler: {int((wmask != published).sum())} entries differ",
                ),
                ("sparsegpt (ours)", w_sg, t_sg, f"time ratio ref/ours {t_ref / t_sg:.2f}x"),
                ("sparsegpt (reference)", w_ref, t_ref, ""),
            ]:
                rows.append(
                    [
                        shape,
                        label,
                        method,
                        f"{rel_error(w, w2, x_cal):.4f}",
                        f"{rel_error(w, w2, x_new):.4f}",
                        f"{t:.3f}",
                        extra,
                    ]
                )
            print(*rows[-4:], sep="\n", flush=True)
    return rows


def table(rows) -> str:
    header = ["layer", "pattern", "method", "err calib", "err fresh", "time s", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--tokens", type=int, default=16384, help="calibration tokens")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    parser.add_argument("--no-big", action="store_true", help="skip the 4096x4096 layer")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 on a shared, busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    patterns = [("50%", None), ("2:4", (2, 4)), ("4:8", (4, 8))]
    if args.quick:
        shapes = [(128, 128), (256, 128)]
    else:
        shapes = [(768, 768), (3072, 768)] + ([] if args.no_big else [(4096, 4096)])
    torch.manual_seed(0)
    rows = run(shapes, patterns, args.tokens, args.repeats)
    print()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
