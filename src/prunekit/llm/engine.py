"""The layer-by-layer calibration engine and :func:`prune_llm`.

1. Capture the inputs of the first block (hidden states plus every other positional and keyword
   argument the model passes: attention mask, position ids, rotary embeddings) with a forward
   pre-hook that stops the forward pass.
2. For each block: run it on the captured inputs with forward hooks on its linears that
   accumulate their input statistics (column norms for Wanda, X^T X for SparseGPT), in one pass or
   one sub-layer group after another (``true_sequential``); prune; recompute the block's outputs
   with the pruned weights, and hand them to the next block.

Only one block needs to sit on the compute device; the activations of all calibration samples
(inputs and outputs of the current block) can stay there, in CPU memory or on disk.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.criteria.registry import criterion_names, get_criterion
from prunekit.llm.activations import ActivationStore
from prunekit.llm.adapters import (
    ModelAdapter,
    get_adapter,
    is_transposed,
    linear_layers,
    model_device,
    tree_map,
)
from prunekit.llm.calibration import (
    CalibrationSource,
    cap_seqlen,
    check_token_ids,
    default_seqlen,
    load_calibration,
)
from prunekit.llm.methods import (
    check_pattern,
    check_sparsity,
    outlier_ratio,
    owl_sparsities,
    wanda_scores,
)
from prunekit.llm.options import OptionRecord
from prunekit.llm.rules import LayerInputs, LLMRule, get_rule

__all__ = ["LLMPruneConfig", "METHODS", "available_memory", "calibration_tokens", "prune_llm"]

# The layer-wise methods are the criteria of kind "llm"; this tuple is kept for compatibility.
METHODS = tuple(criterion_names("llm"))


class _StopForward(Exception):
    """Raised by the capture hook once the first block's inputs are stored."""


@dataclass
class LLMPruneConfig(OptionRecord):
    """Options of :func:`prune_llm` (see there); ``prune_llm(model, **config.kwargs())``."""

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str | tuple[int, int] | None = None
    nsamples: int = 128
    seqlen: int | None = None
    batch_size: int = 1
    owl: bool = False
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    include: Sequence[str] = field(default_factory=tuple)
    exclude: Sequence[str] = field(default_factory=tuple)
    true_sequential: bool = False
    magnitude_scope: str = "layer"
    blocksize: int = 128
    percdamp: float = 0.01
    offload: str | None = None
    offload_dir: str | None = None
    max_memory: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for key in ("include", "exclude"):  # a str stays one, for validate() to reject
            value = getattr(self, key)
            if not isinstance(value, str):
                setattr(self, key, tuple(value))

    def validate(self) -> tuple[int, int] | None:
        if not isinstance(self.method, str):
            raise ValueError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        # Unknown names fail here, listing the registered LLM methods; the engine compares names
        # exactly, so 'Wanda' is refused rather than matched case-insensitively.
        if get_criterion(self.method, kind="llm", argument="method").name != self.method:
            raise ValueError(f"method: expected a lower-case name, got {self.method!r}")
        rule = self.rule()  # an entry that is not an LLMRule fails here, before any work
        nm = check_pattern(self.pattern)
        check_sparsity(self.sparsity)
        if self.owl and rule.needs == "weights":
            raise ValueError("owl: the OWL allocation needs activations: use wanda or sparsegpt")
        if self.owl and nm is not None:
            raise ValueError("owl: OWL allocates unstructured sparsity; it cannot be used with N:M")
        if self.magnitude_scope not in ("layer", "row"):
            raise ValueError(
                f"magnitude_scope: expected 'layer' or 'row', got {self.magnitude_scope!r}"
            )
        for key in ("nsamples", "batch_size", "blocksize"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}: expected a positive int, got {value!r}")
        if self.seqlen is not None and (not isinstance(self.seqlen, int) or self.seqlen < 1):
            raise ValueError(f"seqlen: expected a positive int, got {self.seqlen!r}")
        if self.percdamp <= 0:
            raise ValueError(f"percdamp: expected a positive number, got {self.percdamp!r}")
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if isinstance(value, str):
                raise TypeError(f"{key}: expected a list of regular expressions, not a str")
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(
                        f"{key}: invalid regular expression {pattern!r}: {err}"
                    ) from err
        return nm

    def rule(self) -> LLMRule:
        """The registered :class:`~prunekit.llm.rules.LLMRule` of ``method``."""
        return get_rule(self.method)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


# ---------------------------------------------------------------------------- helpers


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or (type(a) is type(b) and not isinstance(a, Tensor) and a == b)


@dataclass
class _BlockInputs:
    """Captured arguments of the first block, batch by batch (identical ones shared)."""

    hidden: ActivationStore
    args: list[tuple] = field(default_factory=list)
    kwargs: list[dict] = field(default_factory=list)
    hidden_key: str | None = None  # None: the hidden states are the first positional argument


def _capture(
    model: nn.Module,
    adapter: ModelAdapter,
    block: nn.Module,
    batches: Sequence[Tensor],
    store: ActivationStore,
) -> _BlockInputs:
    captured = _BlockInputs(hidden=store)

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        if args:
            hidden, rest, key = args[0], tuple(args[1:]), None
        elif "hidden_states" in kwargs:
            kwargs = dict(kwargs)
            hidden, rest, key = kwargs.pop("hidden_states"), (), "hidden_states"
        else:
            raise TypeError(
                f"adapter {adapter.name!r}: the first block was called without hidden states"
            )
        captured.hidden_key = key
        store.append(hidden)
        detached = tree_map(lambda t: t.detach(), (rest, kwargs))
        if captured.args and _same(detached, (captured.args[-1], captured.kwargs[-1])):
            captured.args.append(captured.args[-1])  # share, do not copy
            captured.kwargs.append(captured.kwargs[-1])
        else:
            captured.args.append(detached[0])
            captured.kwargs.append(detached[1])
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    device = model_device(model)
    try:
        for batch in batches:
            try:
                adapter.run_model(model, batch.to(device))
            except _StopForward:
                continue
            raise RuntimeError(
                f"adapter {adapter.name!r}: the forward pass never reached the first block"
            )
    finally:
        handle.remove()
    return captured


def _run_block(
    adapter: ModelAdapter,
    block: nn.Module,
    inputs: _BlockInputs,
    index: int,
    hidden: Tensor,
    device: torch.device,
) -> Tensor:
    to_device = lambda t: t.to(device)  # noqa: E731
    args = tree_map(to_device, inputs.args[index])
    kwargs = tree_map(to_device, inputs.kwargs[index])
    if inputs.hidden_key is None:
        out = block(hidden, *args, **kwargs)
    else:
        out = block(*args, **{inputs.hidden_key: hidden}, **kwargs)
    return adapter.output(out)


def _forward_all(
    adapter: ModelAdapter,
    block: nn.Module,
    inputs: _BlockInputs,
    inps: ActivationStore,
    outs: ActivationStore,
    device: torch.device,
) -> None:
    """``outs[b] = block(inps[b])`` for every calibration batch b."""
    for b in range(len(inps)):
        out = _run_block(adapter, block, inputs, b, inps[b], device)
        if b < len(outs):
            outs[b] = out
        else:
            outs.append(out)


def _output_error(
    adapter: ModelAdapter,
    block: nn.Module,
    inputs: _BlockInputs,
    inps: ActivationStore,
    targets: ActivationStore,
    device: torch.device,
    *,
    replace: bool = False,
) -> float:
    """Relative error ||block(X) - Y||^2 / ||Y||^2 over the batches; ``replace``: Y := block(X)."""
    num = den = 0.0
    for b in range(len(inps)):
        out = _run_block(adapter, block, inputs, b, inps[b], device)
        target = targets[b].float()
        num += float((out.float() - target).square().sum())
        den += float(target.square().sum())
        if replace:
            targets[b] = out
    return num / den if den else 0.0


class _Stats:
    """Input statistics of one linear: column sum of squares (Wanda), or X^T X (SparseGPT)."""

    def __init__(self, in_features: int, hessian: bool, device: torch.device) -> None:
        self.tokens = 0
        self.hessian = torch.zeros(in_features, in_features, device=device) if hessian else None
        self.sq = None if hessian else torch.zeros(in_features, dtype=torch.float64, device=device)

    def add(self, x: Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)
        else:
            self.sq += x.square().sum(0, dtype=torch.float64)

    def column_sq_norm(self) -> Tensor:
        if self.hessian is not None:
            return torch.diagonal(self.hessian).double().clone()
        return self.sq


def _hook_stats(modules: dict[str, nn.Module], stats: dict[str, _Stats]) -> list:
    handles = []
    for name, module in modules.items():

        def hook(_m: nn.Module, inp: tuple, _out: Any, name: str = name) -> None:
            stats[name].add(inp[0])

        handles.append(module.register_forward_hook(hook))
    return handles


def _sequential_groups(
    adapter: ModelAdapter,
    block: nn.Module,
    modules: dict[str, nn.Module],
    inputs: _BlockInputs,
    hidden: Tensor,
    device: torch.device,
) -> list[list[str]]:
    """Linears in execution order, grouped when they read the very same input tensor (q/k/v)."""
    calls: list[tuple[str, Tensor]] = []
    handles = []
    for name, module in modules.items():

        def hook(_m: nn.Module, inp: tuple, name: str = name) -> None:
            calls.append((name, inp[0]))  # keeps the tensor alive, so identity is meaningful

        handles.append(module.register_forward_pre_hook(hook))
    try:
        _run_block(adapter, block, inputs, 0, hidden, device)
    finally:
        for h in handles:
            h.remove()
    groups: list[list[str]] = []
    seen: set[str] = set()
    last: Tensor | None = None
    for name, tensor in calls:
        if name in seen:
            continue
        seen.add(name)
        if groups and tensor is last:
            groups[-1].append(name)
        else:
            groups.append([name])
        last = tensor
    groups.extend([n] for n in modules if n not in seen)  # never called: pruned on their own
    return groups


def _weight_matrix(module: nn.Module) -> Tensor:
    w = module.weight.detach()
    return w.t() if is_transposed(module) else w


def _write_weight(module: nn.Module, new: Tensor, mask: Tensor) -> Tensor:
    """Store (out, in) ``new`` into the module; return the mask in the parameter's layout."""
    if is_transposed(module):
        new, mask = new.t(), mask.t()
    module.weight.data.copy_(new.to(module.weight.dtype))
    return mask.contiguous()


def _select(
    block_modules: dict[str, nn.Module], include: Sequence[str], exclude: Sequence[str]
) -> dict[str, nn.Module]:
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    out = {}
    for name, module in block_modules.items():
        param = f"{name}.weight"
        if inc and not any(p.search(param) for p in inc):
            continue
        if any(p.search(param) for p in exc):
            continue
        out[name] = module
    return out


# ---------------------------------------------------------------------------- the engine


class _Engine:
    def __init__(
        self,
        model: nn.Module,
        adapter: ModelAdapter,
        config: LLMPruneConfig,
        nm: tuple[int, int] | None,
        device: torch.device,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.config = config
        self.nm = nm
        self.device = device
        self.rule = config.rule()
        self.path, self.blocks = adapter.blocks(model)
        self.targets = [
            _select(
                linear_layers(block, f"{self.path}.{i}" if self.path else str(i)),
                config.include,
                config.exclude,
            )
            for i, block in enumerate(self.blocks)
        ]
        if not any(self.targets):
            raise ValueError(
                "include/exclude: no linear layer inside the blocks is selected for pruning"
            )

    def _progress(self, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=len(self.blocks), desc=desc, unit="block", disable=not self.config.progress
        )

    def _store(self) -> ActivationStore:
        return ActivationStore(self.device, self.config.offload, self.config.offload_dir)

    def _block_on_device(self, block: nn.Module) -> torch.device | None:
        home = model_device(block)
        if home != self.device:
            block.to(self.device)
            return home
        return None

    # ------------------------------------------------------------------ passes
    def walk(
        self,
        batches: Sequence[Tensor],
        desc: str,
        visit: Callable[[int, nn.Module, _BlockInputs, ActivationStore, ActivationStore], Any],
        masks: MaskSet | None = None,
    ) -> None:
        """The layer-wise loop: capture the first block's inputs X, then for each block call
        ``visit(i, block, inputs, X, outs)`` with the block on the compute device; ``visit``
        leaves the block's outputs (the next block's inputs) in ``outs`` and may return a dict
        shown next to the progress bar. Blocks and their ``masks`` go back home afterwards."""
        inps = self._store()
        outs = self._store()
        bar = self._progress(desc)
        try:
            with torch.no_grad():
                inputs = _capture(self.model, self.adapter, self.blocks[0], batches, inps)
            for i, block in enumerate(self.blocks):
                home = self._block_on_device(block)
                postfix = visit(i, block, inputs, inps, outs)
                if home is not None:
                    block.to(home)
                    for name in self.targets[i]:  # masks follow their weights home
                        key = f"{name}.weight"
                        if masks is not None and key in masks:
                            masks[key] = masks[key].to(home)
                inps, outs = outs, inps
                inputs.hidden = inps
                if postfix:
                    bar.set_postfix(postfix)
                bar.update(1)
        finally:
            bar.close()
            inps.close()
            outs.close()

    def outlier_ratios(self, batches: Sequence[Tensor]) -> list[float]:
        """OWL's first pass: Wanda scores of the dense model, block by block."""
        ratios = []

        def visit(i: int, block: nn.Module, inputs: _BlockInputs, inps: Any, outs: Any) -> None:
            modules = self.targets[i]
            stats = {
                n: _Stats(_weight_matrix(m).shape[1], False, self.device)
                for n, m in modules.items()
            }
            handles = _hook_stats(modules, stats)
            try:
                _forward_all(self.adapter, block, inputs, inps, outs, self.device)
            finally:
                for h in handles:
                    h.remove()
            scores = [
                wanda_scores(_weight_matrix(m), stats[n].column_sq_norm())
                for n, m in modules.items()
            ]
            ratios.append(outlier_ratio(scores, self.config.owl_m) if scores else 0.0)

        self.walk(batches, "OWL outlier ratios", visit)
        return ratios

    def prune_layer(
        self, name: str, module: nn.Module, stats: _Stats | None, sparsity: float
    ) -> tuple[Tensor, dict]:
        weight = _weight_matrix(module)
        needs = self.rule.needs
        # Only what the rule declared: the Hessian's diagonal is not copied for a Hessian rule.
        col_sq_norm = hessian = None
        if needs != "weights":
            assert stats is not None
            col_sq_norm = stats.column_sq_norm() if needs == "activations" else None
            hessian = stats.hessian if needs == "hessian" else None
        layer = LayerInputs(name, weight, sparsity, self.nm, col_sq_norm, hessian, self.config)
        update = self.rule.apply(layer)
        new, mask, info = update.weight, update.mask, update.info
        return _write_weight(module, new, mask), info

    def run(
        self, batches: Sequence[Tensor] | None, block_sparsity: Sequence[float]
    ) -> tuple[MaskSet, list[dict], dict[str, dict]]:
        masks = MaskSet()
        layer_info: dict[str, dict] = {}
        block_rows: list[dict] = []
        if self.rule.needs == "weights":  # data-free: no activations needed
            for i in range(len(self.blocks)):
                start = time.perf_counter()
                for name, module in self.targets[i].items():
                    mask, info = self.prune_layer(name, module, None, block_sparsity[i])
                    masks[f"{name}.weight"] = mask
                    layer_info[name] = info
                block_rows.append(
                    {
                        "block": i,
                        "sparsity": block_sparsity[i],
                        "seconds": time.perf_counter() - start,
                    }
                )
            return masks, block_rows, layer_info

        assert batches is not None
        hessian = self.rule.needs == "hessian"

        def visit(i: int, block: nn.Module, inputs: _BlockInputs, inps: Any, outs: Any) -> dict:
            start = time.perf_counter()
            modules = self.targets[i]
            # Linears reading the very same tensor (q/k/v, gate/up) share one statistic.
            groups = (
                _sequential_groups(self.adapter, block, modules, inputs, inps[0], self.device)
                if modules
                else []
            )
            passes = [[g] for g in groups] if self.config.true_sequential else [groups]
            for p, pass_groups in enumerate(passes):
                stats = {
                    g[0]: _Stats(_weight_matrix(modules[g[0]]).shape[1], hessian, self.device)
                    for g in pass_groups
                }
                handles = _hook_stats({g[0]: modules[g[0]] for g in pass_groups}, stats)
                try:
                    if p == 0:  # dense outputs, kept to measure the block's error
                        _forward_all(self.adapter, block, inputs, inps, outs, self.device)
                    else:
                        for b in range(len(inps)):
                            _run_block(self.adapter, block, inputs, b, inps[b], self.device)
                finally:
                    for h in handles:
                        h.remove()
                for group in pass_groups:
                    shared = stats.pop(group[0])
                    for name in group:
                        mask, info = self.prune_layer(
                            name, modules[name], shared, block_sparsity[i]
                        )
                        masks[f"{name}.weight"] = mask
                        layer_info[name] = info
            if not groups or not modules:  # nothing to prune: still move the activations
                _forward_all(self.adapter, block, inputs, inps, outs, self.device)
            error = _output_error(
                self.adapter, block, inputs, inps, outs, self.device, replace=True
            )
            block_rows.append(
                {
                    "block": i,
                    "sparsity": block_sparsity[i],
                    "output_error": error,
                    "seconds": time.perf_counter() - start,
                }
            )
            return {"block": i, "rel_err": f"{error:.2e}"}

        self.walk(batches, f"{self.config.method}", visit, masks)
        return masks, block_rows, layer_info


# ---------------------------------------------------------------------------- public API


def prune_llm(
    model: nn.Module,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str | tuple[int, int] | None = None,
    calibration: CalibrationSource | None = None,
    *,
    tokenizer: Any = None,
    nsamples: int = 128,
    seqlen: int | None = None,
    batch_size: int = 1,
    owl: bool = False,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    true_sequential: bool = False,
    magnitude_scope: str = "layer",
    blocksize: int = 128,
    percdamp: float = 0.01,
    device: str | torch.device | None = None,
    offload: str | None = None,
    offload_dir: str | None = None,
    max_memory: int | None = None,
    adapter: str | ModelAdapter | None = None,
    seed: int = 0,
    progress: bool = True,
    text_column: str = "text",
) -> tuple[MaskSet, dict]:
    """Prune the linear layers inside a transformer's blocks, in place, one block at a time.

    Args:
        model: a Hugging Face model (GPT-2, OPT, LLaMA / Mistral / Qwen2, BERT-style) or
            prunekit's GPT; other families need an adapter (:func:`register_adapter`).
        method: ``"magnitude"`` (data-free), ``"wanda"`` or ``"sparsegpt"``.
        sparsity: fraction of each selected weight matrix set to zero (ignored with ``pattern``).
        pattern: ``"N:M"`` semi-structured sparsity (keep N of every M consecutive inputs).
        calibration: a text file, a dataset saved with ``save_to_disk``, or token ids
            (1-D stream or ``(n, seqlen)``); required except for magnitude.
        tokenizer: turns text into ids (a transformers tokenizer or any ``str -> list[int]``).
        nsamples, seqlen: calibration windows; seqlen defaults to min(2048, context) and is
            capped, with a warning, so that two activation buffers fit in ``max_memory``.
        batch_size: calibration samples per forward pass.
        owl: allocate per-block sparsity by outlier ratio (OWL; ``owl_m``, ``owl_lambda``).
        include, exclude: regular expressions on parameter names (``re.search``) choosing which
            linears of the blocks are pruned. Embeddings and the LM head are never pruned.
        true_sequential: collect each sub-layer group's statistics after pruning the earlier
            groups of the same block (q/k/v, then out_proj, then the MLP input, then its output).
        magnitude_scope: ``"layer"`` or ``"row"`` for magnitude pruning.
        blocksize, percdamp: SparseGPT's column block size and relative dampening.
        device: where blocks are processed (default: where the model is); blocks move there one
            at a time and back.
        offload: keep activations on ``device`` (None), in CPU memory (``"cpu"``) or on disk
            (``"disk"``, under ``offload_dir``).
        max_memory: byte budget for the activation buffers (default: half the free memory of the
            buffers' device; no cap with ``offload="disk"``).
        adapter: force an adapter by name or object (``"generic"``: structural detection only).

    Returns:
        (mask set over the pruned parameters, report dict with per-layer / per-block sparsity,
        block output errors, timings and the settings used).
    """
    config = LLMPruneConfig.from_values(locals())  # the options, before any other local
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    nm = config.validate()
    if nm is not None:
        sparsity = 1.0 - nm[0] / nm[1]
    chosen = get_adapter(model, adapter)
    device = torch.device(device) if device is not None else model_device(model)
    engine = _Engine(model, chosen, config, nm, device)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "method": method,
        "sparsity": sparsity,
        "pattern": None if nm is None else f"{nm[0]}:{nm[1]}",
        "adapter": chosen.name,
        "blocks_path": engine.path,
        "num_blocks": len(engine.blocks),
    }

    batches: list[Tensor] | None = None
    if engine.rule.needs != "weights":
        if calibration is None:
            raise ValueError(f"calibration: method {method!r} needs calibration data")
        tokens, shape = calibration_tokens(
            model, chosen, config, calibration, tokenizer, device, text_column
        )
        batches = list(tokens.split(batch_size))
        report.update(shape)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            block_sparsity = [sparsity] * len(engine.blocks)
            if owl:
                assert batches is not None
                ratios = engine.outlier_ratios(batches)
                block_sparsity = owl_sparsities(ratios, sparsity, owl_lambda)
                report["owl"] = {
                    "m": owl_m,
                    "lambda": owl_lambda,
                    "outlier_ratios": ratios,
                    "block_sparsity": block_sparsity,
                }
            masks, blocks, layers = engine.run(batches, block_sparsity)
    finally:
        model.train(was_training)

    params = dict(model.named_parameters())
    report["blocks"] = blocks
    report["layers"] = {
        name: {
            "shape": list(mask.shape),
            "sparsity": 1.0 - float(mask.float().mean()),
            "weight_sparsity": float((params[name] == 0).float().mean()),
            **layers.get(name[: -len(".weight")], {}),
        }
        for name, mask in masks.items()
    }
    report["pruned_sparsity"] = masks.sparsity
    report["seconds"] = time.perf_counter() - start
    masks.metadata["report"] = {"method": method, "sparsity": sparsity}
    return masks, report


def calibration_tokens(
    model: nn.Module,
    adapter: ModelAdapter,
    config: LLMPruneConfig,
    calibration: CalibrationSource,
    tokenizer: Any,
    device: torch.device,
    text_column: str = "text",
) -> tuple[Tensor, dict[str, Any]]:
    """The ``(nsamples, seqlen)`` calibration windows of a layer-wise pass, and their shape.

    ``seqlen`` defaults to min(2048, context), is cut to the model's context with a warning, and
    is capped, with a warning, so that two activation buffers fit in ``config.max_memory``
    (default: half the free memory where the buffers live; no cap when offloading to disk).
    """
    context = adapter.context_length(model)
    requested = config.seqlen or default_seqlen(context)
    if context and requested > context:
        warnings.warn(
            f"seqlen: {requested} exceeds the model's context of {context}; using {context}",
            stacklevel=3,
        )
        requested = context
    budget = config.max_memory
    if budget is None and config.offload != "disk":
        free = available_memory(torch.device("cpu") if config.offload == "cpu" else device)
        budget = free // 2 if free else None
    hidden = adapter.hidden_size(model) or _embedding_dim(model)
    dtype_bytes = next(model.parameters()).element_size()
    used = requested
    if hidden and (config.offload != "disk" or config.max_memory is not None):
        used = cap_seqlen(requested, config.nsamples, hidden, dtype_bytes, budget)
    tokens = load_calibration(
        calibration,
        tokenizer=tokenizer,
        nsamples=config.nsamples,
        seqlen=used,
        seed=config.seed,
        text_column=text_column,
    )
    check_token_ids(tokens, model)
    shape = {
        "nsamples": int(tokens.shape[0]),
        "seqlen": int(tokens.shape[1]),
        "seqlen_requested": int(requested),
        "seqlen_capped": tokens.shape[1] < requested,
    }
    return tokens, shape


def _embedding_dim(model: nn.Module) -> int | None:
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return module.embedding_dim
    return None


def block_count(model: nn.Module, adapter: str | ModelAdapter | None = None) -> int:
    """Number of transformer blocks the engine would walk."""
    return len(get_adapter(model, adapter).blocks(model)[1])
