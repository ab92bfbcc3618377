"""Shared plumbing of the data-driven criteria: batches, the loss, and leaving the model untouched.

Every data-driven criterion reads ``data`` (an iterable of ``(inputs, targets)`` batches), takes
``num_batches`` of them, and computes gradients with :func:`torch.autograd.grad`, so ``.grad`` of
the model's parameters is never written. Buffers (e.g. BatchNorm running statistics) that the
forward passes update are restored afterwards: computing scores does not change the model.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LossFn = Callable[[Any, Any], Tensor]


def default_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the last dimension (works for (B, C) logits and (B, T, V) LM logits)."""
    if not isinstance(outputs, Tensor):
        raise TypeError(
            "loss_fn: the default cross-entropy needs the model to return a logits tensor, got "
            f"{type(outputs).__name__}; pass criterion_options={{'loss_fn': ...}}"
        )
    if outputs.dim() > 2:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))
    return F.cross_entropy(outputs, targets)


def check_num_batches(num_batches: int | None, criterion: str) -> int | None:
    """``num_batches``: a positive int, or None for every batch of ``data``."""
    if num_batches is None:
        return None
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(
            f"num_batches: criterion {criterion!r} expects a positive int (or None for all "
            f"batches), got {num_batches!r}"
        )
    return num_batches


def check_loss_fn(loss_fn: LossFn | None, criterion: str) -> LossFn:
    if loss_fn is None:
        return default_loss
    if not callable(loss_fn):
        raise TypeError(
            f"loss_fn: criterion {criterion!r} expects a callable (outputs, targets) -> scalar "
            f"loss, got {type(loss_fn).__name__}"
        )
    return loss_fn


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, Mapping):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def iter_batches(
    data: Iterable[Any] | None, num_batches: int | None, criterion: str, device: torch.device
) -> Iterator[tuple[Any, Any]]:
    """Yield up to ``num_batches`` ``(inputs, targets)`` pairs moved to ``device``.

    Raises:
        ValueError: ``data`` is missing or yields no batch.
        TypeError: a batch is not an ``(inputs, targets)`` pair.
    """
    if data is None:
        raise ValueError(f"data: criterion {criterion!r} needs an iterable of (inputs, targets)")
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            f"data: criterion {criterion!r} expects an iterable of (inputs, targets) batches "
            f"(e.g. a DataLoader or a list of tuples), got {type(data).__name__}"
        )
    seen = 0
    # islice: never pull a batch beyond ``num_batches`` from a loader.
    for batch in itertools.islice(data, num_batches):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"data: criterion {criterion!r} expects each batch to be an (inputs, targets) "
                f"pair, got {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            )
        seen += 1
        yield _to(batch[0], device), _to(batch[1], device)
    if seen == 0:
        raise ValueError(f"data: criterion {criterion!r} got an empty iterable of batches")


def first_inputs(data: Iterable[Any]) -> Any:
    """The inputs of the first batch of ``data`` (to learn the model's input shape)."""
    for batch in data:
        if isinstance(batch, (tuple, list)) and len(batch) >= 1:
            return batch[0]
        return batch
    raise ValueError("data: got an empty iterable of batches")


def forward(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


@contextlib.contextmanager
def untouched(model: nn.Module, params: Mapping[str, nn.Parameter]) -> Iterator[None]:
    """Make ``params`` require grad and restore buffers and ``requires_grad`` on exit."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    flags = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def batch_gradients(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    data: Iterable[Any] | None,
    num_batches: int | None,
    loss_fn: LossFn,
    criterion: str,
) -> Iterator[dict[str, Tensor]]:
    """Yield the gradient of the loss w.r.t. ``params`` for each batch (model left untouched)."""
    names = list(params)
    tensors = [params[n] for n in names]
    device = model_device(model)
    with untouched(model, params):
        for inputs, targets in iter_batches(data, num_batches, criterion, device):
            loss = loss_fn(forward(model, inputs), targets)
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            yield {
                n: (g.detach() if g is not None else torch.zeros_like(t))
                for n, t, g in zip(names, tensors, grads)
            }
