"""Coverage table: structured pruning at 50% (L1) on 32 Hugging Face architectures, prunekit and,
where installed, Torch-Pruning.

For every architecture of ``tests/_hf_zoo.py`` (small configs, random weights, CPU) it reports
whether pruning runs and the model still runs, whether the pruned model equals the original with
the removed slices zeroed (groups outside normalised streams), whether ``save_pretrained`` +
``from_pretrained`` reproduces the outputs exactly, whether ``load_pruned`` does (prunekit), and
the theoretical MACs ratio (before / after, one counter for both libraries).

Torch-Pruning runs in a subprocess per architecture with a timeout, since it can hang (rotary
embeddings).

    python benchmarks/structured_coverage.py                  # a few minutes on 2 cores
    python benchmarks/structured_coverage.py --archs llama swin --tp-timeout 60
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _conformance import output, run  # noqa: E402
from _hf_zoo import ZOO, build  # noqa: E402
from prunekit.core.metrics import count_macs  # noqa: E402

RATIO = 0.5


def prunekit_row(name: str) -> dict:
    model, inputs, kind = build(name)
    try:
        res = run(model, inputs, kind, RATIO)
    except Exception as err:  # reported in the table
        return {"prunes": False, "error": f"{type(err).__name__}: {err}"[:200]}
    return {
        "prunes": bool(res.prunes and res.trains),
        "equivalent": res.equivalent,
        "hf_reload": res.hf_reload,
        "load_pruned": res.load_pruned,
        "macs": res.macs_ratio,
    }


def _tp_heads(model: nn.Module) -> dict[nn.Module, int]:
    """q/k/v projections -> head count, for Torch-Pruning's ``num_heads``."""
    found = {}
    for m in model.modules():
        heads = next(
            (
                getattr(m, a)
                for a in ("num_heads", "num_attention_heads", "n_heads", "n_head")
                if isinstance(getattr(m, a, None), int)
            ),
            None,
        )
        kv = next(
            (
                getattr(m, a)
                for a in ("num_key_value_heads", "num_kv_heads")
                if isinstance(getattr(m, a, None), int)
            ),
            heads,
        )
        if not heads:
            continue
        for attr, n in (("q_proj", heads), ("query", heads), ("q", heads), ("q_lin", heads)):
            if isinstance(getattr(m, attr, None), nn.Linear):
                found[getattr(m, attr)] = n
        for attr in ("k_proj", "v_proj", "key", "value", "k", "v", "k_lin", "v_lin"):
            if isinstance(getattr(m, attr, None), nn.Linear):
                found[getattr(m, attr)] = kv
    return found


def tp_worker(name: str) -> dict:
    """Torch-Pruning on one architecture (runs inside the subprocess)."""
    import torch_pruning as tp

    torch.set_num_threads(1)
    model, inputs, kind = build(name)
    macs0 = count_macs(model, inputs)
    print("ready", flush=True)  # the timeout covers pruning, not imports on a busy machine
    heads = getattr(model.config, "num_labels", None)
    vocab = getattr(model.config, "vocab_size", None)
    ignored = [
        m
        for m in model.modules()
        if isinstance(m, nn.Linear) and m.out_features in {heads, vocab} - {None}
    ]
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs=inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=1),
        pruning_ratio=RATIO,
        ignored_layers=ignored,
        num_heads=_tp_heads(model),
        forward_fn=lambda m, x: output(m, x),
    )
    pruner.step()
    row = {"prunes": False, "macs": count_macs(model, inputs) and macs0 / count_macs(model, inputs)}
    with torch.no_grad():
        want = output(model, inputs)
    row["prunes"] = bool(torch.isfinite(want).all())
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model.save_pretrained(tmp)
            again = type(model).from_pretrained(tmp).eval()
            with torch.no_grad():
                row["hf_reload"] = bool(torch.equal(output(again, inputs), want))
        except Exception:  # a config that no longer describes the model
            row["hf_reload"] = False
    return row


def tp_row(name: str, timeout: float, startup: float = 300.0) -> dict:
    """Run :func:`tp_worker` in a subprocess; ``timeout`` counts from the model being built."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, __file__, "--tp-worker", name]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
        deadline, ready, result = time.monotonic() + startup, False, None
        while proc.poll() is None or not lines.empty():
            try:
                line = lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    proc.kill()
                    proc.wait()
                    return {"prunes": False, "error": f"timeout ({timeout:.0f} s)"}
                continue
            if line.startswith("ready") and not ready:
                ready, deadline = True, time.monotonic() + timeout
            elif line.startswith("{"):
                result = json.loads(line)
        if proc.returncode != 0 or result is None:
            err.seek(0)
            last = (err.read().strip().splitlines() or ["?"])[-1]
            return {"prunes": False, "error": last[:120]}
        return result


def _mark(value) -> str:
    return {True: "yes", False: "no", None: "n/a"}[value]


def _cell(row: dict, key: str) -> str:
    if not row.get("prunes") and "error" in row:
        return "fails" if key == "prunes" else "-"
    if key == "macs":
        return f"{row['macs']:.2f}x"
    return _mark(row.get(key))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="*", default=list(ZOO))
    parser.add_argument("--tp-timeout", type=float, default=30.0)
    parser.add_argument("--tp-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.tp_worker:
        print(json.dumps(tp_worker(args.tp_worker)))
        return
    torch.set_num_threads(1)
    try:
        import torch_pruning as tp

        tp_version = tp.__version__
    except ImportError:
        tp_version = None
    header = "| architecture | prunes | equivalence | HF reload | load_pruned | MACs ratio |"
    if tp_version:
        header += " TP prunes | TP HF reload | TP MACs ratio |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name in args.archs:
        pk = prunekit_row(name)
        cells = [name] + [_cell(pk, k) for k in ("prunes", "equivalent", "hf_reload")]
        cells += [_cell(pk, "load_pruned"), _cell(pk, "macs")]
        if tp_version:
            t = tp_row(name, args.tp_timeout)
            tp_prunes = _cell(t, "prunes") if "error" not in t else f"fails ({t['error']})"
            cells += [tp_prunes, _cell(t, "hf_reload"), _cell(t, "macs")]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(
        f"\nratio {RATIO}, L1; MACs ratios are theoretical (one counter for both); "
        f"torch {torch.__version__}"
        + (f", Torch-Pruning {tp_version}" if tp_version else ", Torch-Pruning not installed")
    )


if __name__ == "__main__":
    main()
