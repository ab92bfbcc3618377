"""PERP: parameter-efficient retraining after pruning, and block-wise reconstruction.

After one-shot pruning (magnitude / Wanda / SparseGPT), retrain only a tiny subset of the
parameters (Zimmer et al., arXiv 2312.15230): biases, normalisation parameters, the LM head,
and/or low-rank adapters on the pruned linears (:mod:`prunekit.llm.lora`); everything else is
frozen. :func:`perp_retrain` trains the whole model on next-token prediction;
:func:`reconstruct` prunes block by block and trains each block's selected parameters to
reproduce the dense block's outputs on calibration data.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.core.masks import MaskSet
from prunekit.llm.adapters import ModelAdapter, get_adapter, linear_layers, model_device
from prunekit.llm.calibration import CalibrationSource, default_seqlen, load_calibration
from prunekit.llm.engine import (
    LLMPruneConfig,
    _Engine,
    _forward_all,
    _hook_stats,
    _output_error,
    _run_block,
    _Stats,
    _weight_matrix,
    calibration_tokens,
)
from prunekit.llm.lora import ADAPTER_KINDS, add_adapters, merge_adapters
from prunekit.llm.options import OptionRecord

__all__ = [
    "PARAM_GROUPS",
    "PerpConfig",
    "RECONSTRUCT_SKIPS",
    "ReconstructConfig",
    "TrainableSelection",
    "linear_warmup_decay",
    "perp_retrain",
    "check_retrain",
    "retrain_objective",
    "reconstruct",
    "select_trainable",
]

#: Switchable parameter groups. ``full`` trains every parameter (masks enforced).
PARAM_GROUPS = ("biases", "norms", "head", "embeddings", *ADAPTER_KINDS, "full")


def _is_norm(module: nn.Module) -> bool:
    # LayerNorm, RMSNorm and look-alikes such as transformers' LlamaRMSNorm / T5LayerNorm.
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in name


def parse_params(params: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise ``"biases,norms,masklora"`` or a sequence into a validated tuple."""
    if isinstance(params, str):
        params = [p for p in params.replace(" ", "").split(",") if p]
    out = tuple(params)
    if not out:
        raise ValueError(f"params: expected at least one of {list(PARAM_GROUPS)}")
    bad = [p for p in out if p not in PARAM_GROUPS]
    if bad:
        raise ValueError(f"params: unknown group(s) {bad}; expected some of {list(PARAM_GROUPS)}")
    kinds = [p for p in out if p in ADAPTER_KINDS]
    if len(kinds) > 1:
        raise ValueError(f"params: choose one adapter kind, got {kinds}")
    if "full" in out and kinds:
        raise ValueError("params: 'full' trains the weights themselves; it excludes adapters")
    return out


@dataclass
class TrainableSelection:
    """What :func:`select_trainable` made trainable."""

    names: list[str]
    trainable: int
    total: int
    groups: dict[str, int]
    adapters: dict[str, str]

    @property
    def fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "trainable": self.trainable,
            "total": self.total,
            "fraction": self.fraction,
            "groups": dict(self.groups),
            "adapters": len(self.adapters),
        }


def select_trainable(
    model: nn.Module,
    params: str | Sequence[str] = ("biases", "norms", "masklora"),
    *,
    masks: MaskSet | None = None,
    rank: int = 8,
    alpha: float | None = None,
    adapter_targets: Sequence[str] | None = None,
    head: nn.Module | None = None,
    scale_init_noise: float = 0.0,
    seed: int = 0,
    adapter: str | ModelAdapter | None = None,
) -> TrainableSelection:
    """Freeze ``model`` except the chosen parameter groups; add adapters if asked, in place.

    Args:
        params: some of ``biases`` (every bias outside the norms), ``norms`` (weights and biases of
            LayerNorm / RMSNorm modules), ``head`` (the LM head), ``embeddings``, one adapter kind
            (``masklora``, ``scalelora``, ``lora``) and ``full`` (all parameters).
        masks: the pruning masks; adapters go on the linears they cover (default: every linear
            inside the transformer blocks) and MaskLoRA uses them as M (default: ``W != 0``).
        rank, alpha: adapter rank and scale numerator (scale alpha / r; alpha defaults to r).
        adapter_targets: module names to put adapters on (overrides ``masks``).
        head: the LM head module (default: found by the model adapter).

    Returns:
        a :class:`TrainableSelection` (trainable count, total, fraction, per-group counts).
        The total counts the model's original parameters (adapter parameters excluded), so the
        fraction is relative to the pruned model's size.
    """
    groups = parse_params(params)
    total = sum(p.numel() for p in model.parameters())
    chosen: dict[str, nn.Parameter] = {}
    counts: dict[str, int] = {}

    def take(group: str, items: Iterator[tuple[str, nn.Parameter]]) -> None:
        n = 0
        for name, p in items:
            if name not in chosen and all(p is not q for q in chosen.values()):
                chosen[name] = p
                n += p.numel()
        counts[group] = n

    named = dict(model.named_parameters())
    if "full" in groups:
        take("full", iter(named.items()))
    norm_names = {
        f"{m}.{p}" if m else p
        for m, mod in model.named_modules()
        if _is_norm(mod)
        for p, _ in mod.named_parameters(recurse=False)
    }
    if "norms" in groups:
        take("norms", ((n, p) for n, p in named.items() if n in norm_names))
    if "biases" in groups:
        take(
            "biases",
            ((n, p) for n, p in named.items() if n.endswith("bias") and n not in norm_names),
        )
    needs_adapter = "head" in groups or "embeddings" in groups or adapter_targets is None
    model_adapter = get_adapter(model, adapter) if needs_adapter else None
    if "head" in groups:
        head_module = head if head is not None else model_adapter.head(model)
        if head_module is None:
            raise ValueError("params: 'head' chosen but the model has no LM head")
        ids = {id(p) for p in head_module.parameters()}
        take("head", ((n, p) for n, p in named.items() if id(p) in ids))
    if "embeddings" in groups:
        emb = set(model_adapter.embeddings(model))
        take("embeddings", ((n, p) for n, p in named.items() if n.rsplit(".", 1)[0] in emb))

    kinds = [g for g in groups if g in ADAPTER_KINDS]
    adapters: dict[str, str] = {}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen.values():
        p.requires_grad_(True)
    if kinds:
        if adapter_targets is not None:
            targets = list(adapter_targets)
        elif masks is not None and len(masks):
            targets = [n[: -len(".weight")] for n in masks if n.endswith(".weight")]
        else:
            path, blocks = model_adapter.blocks(model)
            targets = [
                name
                for i, block in enumerate(blocks)
                for name in linear_layers(block, f"{path}.{i}" if path else str(i))
            ]
        mask_dict = None if masks is None else dict(masks.items())
        made = add_adapters(
            model,
            targets,
            kinds[0],
            rank,
            alpha,
            mask_dict,
            scale_init_noise=scale_init_noise,
            seed=seed,
        )
        n = 0
        for name, module in made.items():
            for pname, p in module.named_parameters(recurse=False):
                chosen[f"{name}.{pname}"] = p
                n += p.numel()
            adapters[name] = kinds[0]
        counts[kinds[0]] = n
    trainable = sum(p.numel() for p in chosen.values())
    return TrainableSelection(list(chosen), trainable, total, counts, adapters)


@dataclass
class PerpConfig(OptionRecord):
    """Options of :func:`perp_retrain` (see there); ``perp_retrain(model, masks, data,
    **config.kwargs())``."""

    params: str | Sequence[str] = ("biases", "norms", "masklora")
    steps: int = 1000
    lr: float = 1e-4
    batch_size: int = 8
    seqlen: int | None = None
    rank: int = 8
    alpha: float | None = None
    weight_decay: float = 0.0
    warmup: float = 0.1
    grad_clip: float | None = 1.0
    gradient_checkpointing: bool = False
    amp: str | None = "auto"
    scale_init_noise: float = 0.0
    merge: bool = True
    seed: int = 0
    progress: bool = True
    log_every: int = 0
    mask_token_id: int | None = None
    mlm_probability: float = 0.15

    def validate(self) -> tuple[str, ...]:
        """Check the options that do not depend on the model; the parsed parameter groups."""
        groups = parse_params(self.params)
        _check_training(self.steps, self.batch_size, self.lr, self.rank)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(
                f"mlm_probability: expected a number in (0, 1), got {self.mlm_probability!r}"
            )
        return groups


@dataclass
class ReconstructConfig(OptionRecord):
    """The training options of :func:`reconstruct` (its pruning options are an
    :class:`~prunekit.llm.engine.LLMPruneConfig`)."""

    params: str | Sequence[str] = ("biases", "norms", "masklora")
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 8
    rank: int = 8
    alpha: float | None = None
    warmup: float = 0.1
    scale_init_noise: float = 0.0

    def validate(self) -> tuple[str, ...]:
        """Check the options; the parsed parameter groups (all inside the blocks)."""
        groups = parse_params(self.params)
        if "head" in groups or "embeddings" in groups:
            raise ValueError(
                "params: 'head' and 'embeddings' lie outside the blocks; not in reconstruct"
            )
        _check_training(self.steps, self.batch_size, self.lr, self.rank)
        return groups


#: Options of :class:`~prunekit.llm.engine.LLMPruneConfig` that :func:`reconstruct` does not
#: take: its ``batch_size`` is the training one, OWL and true-sequential are prune_llm's only.
RECONSTRUCT_SKIPS = ("batch_size", "owl", "owl_m", "owl_lambda", "true_sequential")


def _check_training(steps: int, batch_size: int, lr: float, rank: int) -> None:
    for key, value in (("steps", steps), ("batch_size", batch_size), ("rank", rank)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: expected a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected a positive number, got {lr!r}")


#: What :func:`perp_retrain` can train on: next-token prediction (decoders) or masked-LM.
OBJECTIVES = ("causal", "masked")


def retrain_objective(model: nn.Module, adapter: str | ModelAdapter | None = None) -> str | None:
    """``"causal"`` for a decoder, ``"masked"`` for an encoder with a masked-LM head, else None.

    None means there are no token logits to train on (an encoder without a head, e.g. a
    sentence-embedding model): use :func:`reconstruct`, which matches the dense model's block
    outputs instead.
    """
    chosen = get_adapter(model, adapter)
    if chosen.causal:
        return "causal"
    return "masked" if chosen.head(model) is not None else None


def _mask_tokens(
    batch: Tensor, mask_id: int, vocab: int, probability: float, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """BERT's masking: pick ``probability`` of the positions (at least one); of those, 80 %
    become ``mask_id``, 10 % a random token, 10 % stay. Returns (inputs, labels with -100 at
    the positions that are not predicted)."""
    pick = torch.rand(batch.shape, generator=gen, device=gen.device) < probability
    pick.view(-1)[torch.randint(0, batch.numel(), (1,), generator=gen, device=gen.device)] = True
    labels = torch.where(pick, batch, torch.full_like(batch, -100))
    roll = torch.rand(batch.shape, generator=gen, device=gen.device)
    inputs = batch.clone()
    inputs[pick & (roll < 0.8)] = mask_id
    rand = pick & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.randint(0, vocab, (int(rand.sum()),), generator=gen, device=gen.device)
    return inputs, labels


def check_retrain(
    model: nn.Module,
    params: str | Sequence[str],
    *,
    tokenizer: Any = None,
    mask_token_id: int | None = None,
    amp: str | None = "auto",
    device: str | torch.device | None = None,
    adapter: str | ModelAdapter | None = None,
    seqlen: int | None = None,
) -> str:
    """Validate :func:`perp_retrain`'s options against ``model`` before any work; the objective.

    Raises:
        ValueError: an unknown or unusable parameter group, an encoder without a masked-LM head,
            a masked-LM model without a mask token, an autocast mode the device cannot run,
            a ``seqlen`` (when given) longer than the model's context.
    """
    groups = parse_params(params)
    dev = torch.device(device) if device is not None else model_device(model)
    _autocast(dev, amp)
    chosen = get_adapter(model, adapter)
    context = chosen.context_length(model)
    if seqlen and context and seqlen > context:
        raise ValueError(f"seqlen: {seqlen} tokens exceed the model's context of {context}")
    objective = retrain_objective(model, chosen)
    if objective is None:
        raise ValueError(
            f"model: {type(model).__name__} is an encoder without a masked-LM head, so there "
            "are no token logits to retrain on; use block-wise reconstruction against the "
            "dense model's hidden states instead (reconstruct / --reconstruct)"
        )
    if "head" in groups and chosen.head(model) is None:
        raise ValueError("params: 'head' chosen but the model has no LM head")
    if objective == "masked" and _mask_id(tokenizer, mask_token_id) is None:
        raise ValueError(
            f"model: {type(model).__name__} retrains with a masked-LM loss, which needs a mask "
            "token: give a tokenizer that has one (mask_token_id) or pass mask_token_id="
        )
    return objective


def _mask_id(tokenizer: Any, mask_token_id: int | None) -> int | None:
    if mask_token_id is not None:
        return int(mask_token_id)
    value = getattr(tokenizer, "mask_token_id", None)
    return int(value) if isinstance(value, int) else None


def linear_warmup_decay(step: int, total: int, warmup: float = 0.1) -> float:
    """LR factor: linear warm-up over ``warmup * total`` steps, then linear decay to zero."""
    w = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    return max(0.0, (total - step) / max(1, total - w))


def _autocast(device: torch.device, amp: str | None) -> tuple[Any, torch.dtype | None]:
    """(context manager, dtype) for ``amp`` in None / "auto" / "bf16" / "fp16" / "off"."""
    if amp in (None, "off", "no", False):
        return contextlib.nullcontext(), None
    if amp == "auto":
        if device.type != "cuda":
            return contextlib.nullcontext(), None
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp: expected None, 'auto', 'bf16' or 'fp16', got {amp!r}")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError("amp: fp16 autocast needs a CUDA device; use 'bf16' on CPU")
    return torch.autocast(device.type, dtype=dtype), dtype


@contextlib.contextmanager
def _checkpointed_blocks(model: nn.Module, blocks: Sequence[nn.Module]) -> Iterator[str]:
    """Activation checkpointing: HF's own when available, else torch.utils.checkpoint per block."""
    # transformers >= 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    enable = getattr(model, f"{prefix}_checkpointing_enable", None)
    if callable(enable) and getattr(model, "supports_gradient_checkpointing", False):
        was = bool(getattr(model, f"is_{prefix}_checkpointing", False))
        try:
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            enable()
        try:
            yield "transformers"
        finally:
            if not was:
                getattr(model, f"{prefix}_checkpointing_disable")()
        return
    from torch.utils.checkpoint import checkpoint

    originals = []
    for block in blocks:
        original = block.forward

        def forward(*args: Any, _f: Any = original, **kwargs: Any) -> Any:
            if torch.is_grad_enabled():
                return checkpoint(_f, *args, use_reentrant=False, **kwargs)
            return _f(*args, **kwargs)

        block.forward = forward
        originals.append(block)
    try:
        yield "torch.utils.checkpoint"
    finally:
        for block in originals:
            del block.forward  # back to the class's forward


def _peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


def _token_windows(
    data: CalibrationSource,
    tokenizer: Any,
    count: int,
    seqlen: int,
    seed: int,
) -> Tensor:
    if isinstance(data, Tensor) and data.dim() == 2:
        if data.shape[1] < 2:
            raise ValueError("data: windows need at least 2 tokens")
        return data[:, :seqlen]
    return load_calibration(data, tokenizer=tokenizer, nsamples=count, seqlen=seqlen, seed=seed)


def perp_retrain(
    model: nn.Module,
    masks: MaskSet | None,
    data: CalibrationSource,
    params: str | Sequence[str] = ("biases", "norms", "masklora"),
    *,
    tokenizer: Any = None,
    steps: int = 1000,
    lr: float = 1e-4,
    batch_size: int = 8,
    seqlen: int | None = None,
    rank: int = 8,
    alpha: float | None = None,
    weight_decay: float = 0.0,
    warmup: float = 0.1,
    grad_clip: float | None = 1.0,
    gradient_checkpointing: bool = False,
    amp: str | None = "auto",
    scale_init_noise: float = 0.0,
    merge: bool = True,
    device: str | torch.device | None = None,
    adapter: str | ModelAdapter | None = None,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 0,
    mask_token_id: int | None = None,
    mlm_probability: float = 0.15,
) -> dict[str, Any]:
    """Retrain a pruned language model, training only ``params``, in place.

    Decoders train on next-token prediction; encoders with a masked-LM head (``BertForMaskedLM``
    ...) on the masked-LM loss (BERT's 80/10/10 masking of ``mlm_probability`` of the tokens,
    mask token from ``tokenizer.mask_token_id`` or ``mask_token_id``). An encoder without a head
    has no token logits: use :func:`reconstruct`. Everything is checked
    (:func:`check_retrain`) before any work.

    Args:
        model: the pruned model (Hugging Face causal or masked LM, or prunekit GPT).
        masks: its pruning masks (from :func:`prune_llm`); None means ``W != 0`` for adapters.
            Whenever a pruned weight is itself trainable (``full``), the masks are attached to
            the optimizer so pruned weights stay zero after every step.
        data: text file, dataset directory, 1-D token stream (random windows are drawn,
            ``steps * batch_size`` of them, seeded) or a 2-D ``(n, seqlen)`` tensor of windows.
        params: groups to train, see :func:`select_trainable`; ``"biases,norms,masklora"`` works.
        steps, lr, batch_size, seqlen: optimisation length, peak LR, windows per step, tokens
            per window (default: min(2048, context)).
        rank, alpha: adapter rank and scale numerator.
        weight_decay, warmup, grad_clip: AdamW decay, warm-up fraction before linear decay,
            global gradient-norm clip (None: off).
        gradient_checkpointing: recompute block activations in the backward pass.
        amp: ``"auto"`` (bf16 or fp16 autocast on CUDA, off on CPU), ``"bf16"``, ``"fp16"`` or None.
        merge: merge the adapters into the weights at the end (sparsity kept by MaskLoRA /
            ScaleLoRA; plain LoRA warns that the merged weights are dense).

    Returns:
        a report: trainable counts and fraction, losses, wall time, peak memory (CUDA).
    """
    config = PerpConfig.from_values(locals())  # the options, before any other local
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    config.validate()
    chosen_adapter = get_adapter(model, adapter)
    objective = check_retrain(
        model,
        params,
        tokenizer=tokenizer,
        mask_token_id=mask_token_id,
        amp=amp,
        device=device,
        adapter=chosen_adapter,
    )
    mask_id = _mask_id(tokenizer, mask_token_id)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    context = chosen_adapter.context_length(model)
    seqlen = seqlen or default_seqlen(context)
    windows = _token_windows(data, tokenizer, steps * batch_size, seqlen, seed)
    grad_flags = {id(p): p.requires_grad for p in model.parameters()}
    selection = select_trainable(
        model,
        params,
        masks=masks,
        rank=rank,
        alpha=alpha,
        scale_init_noise=scale_init_noise,
        seed=seed,
        adapter=chosen_adapter,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, steps, warmup))
    handle = None
    if masks is not None and len(masks):
        named = dict(model.named_parameters())
        if any(named.get(n) is not None and named[n].requires_grad for n in masks):
            masks.apply(model)
            handle = masks.attach(opt, model)
    autocast, amp_dtype = _autocast(dev, amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    _, blocks = chosen_adapter.blocks(model)
    ckpt = _checkpointed_blocks(model, blocks) if gradient_checkpointing else None
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    _peak_memory_start(dev)
    was_training = model.training
    model.train()
    start = time.perf_counter()
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc="perp retrain", disable=not progress)
    try:
        with ckpt if ckpt is not None else contextlib.nullcontext() as ckpt_kind:
            for step in bar:
                idx = torch.randint(0, windows.shape[0], (batch_size,), generator=gen, device="cpu")
                batch = windows[idx]
                if objective == "masked":
                    inputs, labels = _mask_tokens(
                        batch, mask_id, vocab or int(windows.max()) + 1, mlm_probability, gen
                    )
                else:  # next-token prediction
                    inputs, labels = batch[:, :-1], batch[:, 1:]
                with autocast:
                    logits = chosen_adapter.logits(model, inputs.to(dev))
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]),
                    labels.to(dev).reshape(-1),
                    ignore_index=-100,
                )
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                sched.step()
                losses.append(float(loss.detach()))
                if log_every and (step + 1) % log_every == 0:
                    bar.set_postfix(loss=f"{sum(losses[-log_every:]) / log_every:.4f}")
    finally:
        bar.close()
        if handle is not None:
            handle.remove()
        model.train(was_training)
    seconds = time.perf_counter() - start
    merged = {}
    if merge:
        merged = merge_adapters(model)
        if any(k == "lora" for k in merged.values()):
            warnings.warn(
                "params: merged plain LoRA updates fill the pruned positions; the weights are "
                "no longer sparse (use masklora or scalelora to keep the sparsity)",
                stacklevel=2,
            )
    for p in model.parameters():  # as before (merged-away adapter parameters are gone)
        p.requires_grad_(grad_flags.get(id(p), True))
    if masks is not None and handle is not None:
        masks.apply(model)
    k = max(1, min(len(losses) // 10, 50))
    return {
        "params": list(parse_params(params)),
        "objective": objective,
        **selection.as_dict(),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seqlen": int(windows.shape[1]) - (1 if objective == "causal" else 0),
        "rank": rank if selection.adapters else None,
        "amp": None if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
        "gradient_checkpointing": ckpt_kind if ckpt is not None else None,
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "merged": bool(merged),
        "seconds": seconds,
        "peak_memory_bytes": _peak_memory(dev),
    }


# ---------------------------------------------------------------------------- reconstruction


def reconstruct(
    model: nn.Module,
    method: str = "wanda",
    sparsity: float = 0.5,
    pattern: str | tuple[int, int] | None = None,
    calibration: CalibrationSource | None = None,
    params: str | Sequence[str] = ("biases", "norms", "masklora"),
    *,
    tokenizer: Any = None,
    nsamples: int = 128,
    seqlen: int | None = None,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    rank: int = 8,
    alpha: float | None = None,
    warmup: float = 0.1,
    scale_init_noise: float = 0.0,
    magnitude_scope: str = "layer",
    blocksize: int = 128,
    percdamp: float = 0.01,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    device: str | torch.device | None = None,
    offload: str | None = None,
    offload_dir: str | None = None,
    max_memory: int | None = None,
    adapter: str | ModelAdapter | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[MaskSet, dict]:
    """Prune block by block and retrain each block's selected parameters to match the dense block.

    For block i, with X its inputs from the already pruned and reconstructed blocks 0..i-1:
    Y = dense block(X); prune the block (magnitude / Wanda / SparseGPT, statistics from X);
    train ``params`` of the block (AdamW, no weight decay, ``warmup`` fraction of linear warm-up
    then linear decay) to minimise MSE(block(X), Y) over the calibration windows; merge the
    adapters (sparsity exactly kept); block(X) becomes the inputs of block i + 1. ``head`` and
    ``embeddings`` are outside the blocks and cannot be chosen here.

    Args:
        method, sparsity, pattern, calibration, tokenizer, nsamples, seqlen, magnitude_scope,
            blocksize, percdamp, include, exclude, offload, offload_dir, max_memory: as in
            :func:`prune_llm` (calibration is required, also for magnitude, since the targets
            need activations); the options are an ``LLMPruneConfig`` without
            :data:`RECONSTRUCT_SKIPS` plus a :class:`ReconstructConfig`.
        params: block parameters to train (``biases``, ``norms``, one adapter kind, ``full``).
        steps, lr, batch_size: optimisation per block (windows per step drawn from the
            calibration set).

    Returns:
        (masks, report); ``report["blocks"]`` holds, per block, the relative output error
        ||block(X) - Y||^2 / ||Y||^2 right after pruning (``error_pruned``) and after
        reconstruction (``error_reconstructed``), the trainable count and the time taken.
    """
    # the options, before any other local; batch_size is the training one
    config = LLMPruneConfig.from_values(locals(), skip=RECONSTRUCT_SKIPS)
    train = ReconstructConfig.from_values(locals())
    groups = train.validate()
    if calibration is None:
        raise ValueError("calibration: reconstruction needs calibration data (the block inputs)")
    nm = config.validate()
    if nm is not None:
        sparsity = 1.0 - nm[0] / nm[1]
    chosen = get_adapter(model, adapter)
    dev = torch.device(device) if device is not None else model_device(model)
    engine = _Engine(model, chosen, config, nm, dev)
    tokens, shape = calibration_tokens(model, chosen, config, calibration, tokenizer, dev)
    masks = MaskSet()
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(seed)

    def visit(i: int, block: nn.Module, inputs: Any, inps: Any, outs: Any) -> dict:
        start = time.perf_counter()
        modules = engine.targets[i]
        stats = {
            n: _Stats(_weight_matrix(m).shape[1], engine.rule.needs == "hessian", dev)
            for n, m in modules.items()
        }
        handles = _hook_stats(modules, stats) if engine.rule.needs != "weights" else []
        with torch.no_grad():
            try:  # dense outputs Y (and the layer statistics) on the pruned inputs X
                _forward_all(chosen, block, inputs, inps, outs, dev)
            finally:
                for h in handles:
                    h.remove()
            for name, module in modules.items():
                mask, _info = engine.prune_layer(name, module, stats.pop(name, None), sparsity)
                masks[f"{name}.weight"] = mask
            error_pruned = _output_error(chosen, block, inputs, inps, outs, dev)
        # The block's parameters only: names are relative to the block.
        prefix = f"{engine.path}.{i}." if engine.path else f"{i}."
        rel_masks = MaskSet({f"{n[len(prefix) :]}.weight": masks[f"{n}.weight"] for n in modules})
        selection = select_trainable(
            block,
            groups,
            masks=rel_masks,
            rank=rank,
            alpha=alpha,
            adapter_targets=[n[: -len(".weight")] for n in rel_masks],
            scale_init_noise=scale_init_noise,
            seed=seed + i,
            adapter=chosen,
        )
        trainable = [p for p in block.parameters() if p.requires_grad]
        losses: list[float] = []
        if trainable:
            losses = _train_block(
                chosen,
                block,
                inputs,
                inps,
                outs,
                dev,
                trainable,
                rel_masks if "full" in groups else None,
                train,
                gen,
            )
        merge_adapters(block)
        for p in block.parameters():
            p.requires_grad_(True)
        with torch.no_grad():  # the pruned outputs become the next block's inputs
            error_rec = _output_error(chosen, block, inputs, inps, outs, dev, replace=True)
        rows.append(
            {
                "block": i,
                "sparsity": sparsity,
                "error_pruned": error_pruned,
                "error_reconstructed": error_rec,
                "trainable": selection.trainable,
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
                "seconds": time.perf_counter() - start,
            }
        )
        return {"block": i, "rel_err": f"{error_rec:.2e}"}

    was_training = model.training
    model.eval()
    start_all = time.perf_counter()
    _peak_memory_start(dev)
    try:
        engine.walk(list(tokens.split(1)), "reconstruct", visit, masks)
    finally:
        model.train(was_training)
    report = {
        "method": method,
        "sparsity": sparsity,
        "pattern": None if nm is None else f"{nm[0]}:{nm[1]}",
        "params": list(groups),
        "steps_per_block": steps,
        "lr": lr,
        "nsamples": shape["nsamples"],
        "seqlen": shape["seqlen"],
        "trainable_per_block_max": max((r["trainable"] for r in rows), default=0),
        "total_params": sum(p.numel() for p in model.parameters()),
        "blocks": rows,
        "pruned_sparsity": masks.sparsity,
        "seconds": time.perf_counter() - start_all,
        "peak_memory_bytes": _peak_memory(dev),
    }
    masks.metadata["report"] = {"method": method, "sparsity": sparsity, "reconstruct": True}
    return masks, report


def _batched_loss(adapter, block, inputs, inps, outs, dev, idx) -> Tensor | None:  # noqa: ANN001
    """MSE over samples ``idx`` in one block call when they share their extra arguments."""
    first = idx[0]
    if any(
        inputs.args[b] is not inputs.args[first] or inputs.kwargs[b] is not inputs.kwargs[first]
        for b in idx
    ):
        return None
    hidden = torch.cat([inps[b] for b in idx])
    target = torch.cat([outs[b] for b in idx]).to(dev)
    try:
        out = _run_block(adapter, block, inputs, first, hidden.to(dev), dev)
    except RuntimeError:  # arguments that do not broadcast over the batch
        return None
    if out.shape != target.shape:
        return None
    return F.mse_loss(out.float(), target.float())


def _train_block(
    adapter: ModelAdapter,
    block: nn.Module,
    inputs: Any,
    inps: Any,
    outs: Any,
    dev: torch.device,
    trainable: list[nn.Parameter],
    masks: MaskSet | None,
    train: ReconstructConfig,
    gen: torch.Generator,
) -> list[float]:
    steps, batch_size = train.steps, train.batch_size
    opt = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: linear_warmup_decay(s, steps, train.warmup)
    )
    handle = masks.attach(opt, block) if masks is not None else None
    n = len(inps)
    losses = []
    batched = True
    try:
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device="cpu").tolist()
            opt.zero_grad(set_to_none=True)
            total = 0.0
            loss = _batched_loss(adapter, block, inputs, inps, outs, dev, idx) if batched else None
            if loss is not None:
                loss.backward()
                total = float(loss.detach())
            else:
                batched = False  # samples carry their own masks / positions: one call each
                for b in idx:
                    out = _run_block(adapter, block, inputs, b, inps[b], dev)
                    loss = F.mse_loss(out.float(), outs[b].float()) / len(idx)
                    loss.backward()
                    total += float(loss.detach())
            opt.step()
            sched.step()
            losses.append(total)
    finally:
        if handle is not None:
            handle.remove()
    if not all(math.isfinite(v) for v in losses):
        warnings.warn("reconstruct: non-finite block loss; lower lr", RuntimeWarning, stacklevel=3)
    return losses
