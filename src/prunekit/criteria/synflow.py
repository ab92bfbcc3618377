"""Iterative SynFlow (Tanaka et al. 2020): data-free pruning that avoids layer collapse.

One SynFlow evaluation: every weight (and every floating buffer) is replaced by its absolute value
in float64, BatchNorm runs in eval mode, an input of ones goes through the network, and
R = sum of the outputs = 1ᵀ(Π_l |W_l|)1. The score of a weight is |∂R/∂θ ⊙ θ|.

SynFlow is iterative: over ``rounds`` rounds (100 by default) the density goes down as d^{k/rounds}
and each round re-scores the already-pruned network. A criterion in prunekit only returns scores,
so the iteration runs inside :meth:`SynFlow.scores`, which is told the target sparsity, and the
result is encoded in the returned scores: a weight removed in round k scores ``k + f`` with
``f`` in [0, 0.5] its (normalised) SynFlow score in that round, and a survivor scores
``rounds + 1 + f`` with ``f`` its score in the final round. A global threshold at the target
sparsity therefore keeps exactly the survivors of the iterative procedure; other allocations see
the elimination order (a weight that survived longer is more important).

The model is left as it was: the signs, dtypes and buffers are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.scores import Scores, TensorScores
from prunekit.criteria import Criterion, register_criterion
from prunekit.criteria._batches import first_inputs, model_device


@contextmanager
def linearized(model: nn.Module) -> Iterator[None]:
    """Temporarily make ``model`` float64 with |θ| everywhere and in eval mode; restore on exit."""
    saved: list[tuple[Tensor, Tensor]] = []
    modes = [(m, m.training) for m in model.modules()]
    try:
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                saved.append((tensor, tensor.data))
                # A new storage: the original tensor data is kept untouched in ``saved``.
                tensor.data = tensor.data.detach().to(torch.float64).abs()
        model.eval()
        yield
    finally:
        for tensor, data in saved:
            tensor.data = data
            tensor.grad = None
        for module, mode in modes:
            module.training = mode


def _input_of_ones(
    model: nn.Module, params: Mapping[str, nn.Parameter], input_shape: Sequence[int] | None, data
) -> Tensor:
    device = model_device(model)
    if input_shape is not None:
        return torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    if data is not None:
        inputs = first_inputs(data)
        if not isinstance(inputs, Tensor):
            raise TypeError(
                "data: synflow infers the input shape from a batch whose inputs are a tensor; "
                f"got {type(inputs).__name__} (pass criterion_options={{'input_shape': ...}})"
            )
        dtype = torch.float64 if inputs.is_floating_point() else inputs.dtype
        return torch.ones((1, *inputs.shape[1:]), dtype=dtype, device=device)
    # The first Linear layer tells the input width of an MLP.
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return torch.ones((1, module.in_features), dtype=torch.float64, device=device)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)):
            break
    raise ValueError(
        "input_shape: synflow needs the shape of one input without the batch dimension, e.g. "
        "criterion_options={'input_shape': (3, 32, 32)}, or data to infer it from"
    )


def _flow_scores(
    model: nn.Module, params: Mapping[str, nn.Parameter], ones: Tensor
) -> dict[str, Tensor]:
    """|∂R/∂θ ⊙ θ| of a linearized model (call inside :func:`linearized`)."""
    names = list(params)
    tensors = [params[n] for n in names]
    flags = [p.requires_grad for p in tensors]
    try:
        for p in tensors:
            p.requires_grad_(True)
        outputs = model(ones)
        if not isinstance(outputs, Tensor):
            raise TypeError(
                f"model: synflow needs the model to return a tensor, got {type(outputs).__name__}"
            )
        grads = torch.autograd.grad(outputs.sum(), tensors, allow_unused=True)
    finally:
        for p, flag in zip(tensors, flags):
            p.requires_grad_(flag)
    return {
        n: (g * p.detach()).abs() if g is not None else torch.zeros_like(p.detach())
        for n, p, g in zip(names, tensors, grads)
    }


def synflow_scores(
    model: nn.Module,
    params: Mapping[str, nn.Parameter],
    *,
    input_shape: Sequence[int] | None = None,
    masks: Mapping[str, Tensor] | None = None,
    data: Iterable[Any] | None = None,
) -> dict[str, Tensor]:
    """One SynFlow evaluation (no iteration): |∂R/∂θ ⊙ θ| in float64, pruned entries at zero.

    Args:
        model: any module whose forward takes one input tensor.
        params: the parameters to score, by name (e.g. from :func:`prunekit.select_targets`).
        input_shape: one input's shape without the batch dimension; inferred from ``data`` or
            the first Linear layer when left out.
        masks: keep-masks applied (to the float64 copy) before scoring.
        data: batches, only read to infer the input shape.
    """
    ones = _input_of_ones(model, params, input_shape, data)
    with linearized(model):
        if masks:
            with torch.no_grad():
                for n, p in params.items():
                    if n in masks:
                        p.data.mul_(masks[n])
        return _flow_scores(model, params, ones)


def _prune_lowest(
    scores: Mapping[str, Tensor], current: Mapping[str, Tensor], k: int
) -> dict[str, Tensor]:
    """Keep-masks pruning exactly the ``k`` lowest scores in total; pruned entries stay pruned.

    Ties go to the earlier layer, then the lower flat index (as in the library's selection).
    One sort per round: SynFlow already holds float64 copies of every weight, so the
    concatenated scores add no new order of memory.
    """
    names = list(scores)
    flat = torch.cat(
        [scores[n].masked_fill(~current[n], -math.inf).reshape(-1).cpu() for n in names]
    )
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)  # one CPU sort
    keep[flat.sort(stable=True).indices[:k]] = False
    parts = keep.split([scores[n].numel() for n in names])
    return {n: part.reshape(scores[n].shape).to(current[n].device) for n, part in zip(names, parts)}


def _normalised(score: Tensor) -> Tensor:
    top = float(score.max()) if score.numel() else 0.0
    return score / (2.0 * top) if top > 0 else torch.zeros_like(score)


@register_criterion("synflow")
class SynFlow(Criterion):
    """Iterative SynFlow (Tanaka et al. 2020): data-free, float64, BN in eval, d^{k/rounds} rounds.

    Options: ``rounds`` (default 100), ``input_shape`` (one input without the batch dimension;
    inferred from ``data`` or an MLP's first Linear when left out). :func:`prunekit.prune` passes
    the target sparsity and earlier masks; the scores reproduce the iterative result exactly
    under the ``global`` allocation (see the module docstring).
    """

    target_aware = True
    # The class is listed with the data-driven criteria because running on any model (a CNN's
    # spatial size) needs ``data`` or ``input_shape``; an instance never insists on data and
    # says what is missing when it cannot infer the input shape.
    requires_data = True

    def __init__(
        self, *, rounds: int = 100, input_shape: Sequence[int] | None = None, **unknown: Any
    ) -> None:
        super().__init__(**unknown)  # rejects unknown options, naming them
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"rounds: criterion 'synflow' expects a positive int, got {rounds!r}")
        if input_shape is not None:
            if isinstance(input_shape, (str, bytes)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_shape
            ):
                raise ValueError(
                    "input_shape: criterion 'synflow' expects a sequence of positive ints "
                    f"(one input without the batch dimension), got {input_shape!r}"
                )
            input_shape = tuple(input_shape)
        self.rounds = rounds
        self.input_shape = input_shape
        self.requires_data = False

    def scores(
        self,
        model: nn.Module,
        params,
        *,
        data=None,
        seed=0,
        sparsity: float | None = None,
        masks: Mapping[str, Tensor] | None = None,
    ) -> Scores:
        if sparsity is None:
            raise ValueError(
                "sparsity: synflow prunes iteratively and needs the target sparsity "
                "(prunekit.prune passes it; when calling scores() yourself pass sparsity=...)"
            )
        names = list(params)
        total = sum(params[n].numel() for n in names)
        current = {
            n: (masks[n].clone() if masks and n in masks else torch.ones_like(p, dtype=torch.bool))
            for n, p in params.items()
        }
        # 0 = pruned before we started; k = removed in round k; rounds + 1 = survivor.
        encoded = {n: torch.where(current[n], math.inf, 0.0).to(torch.float64) for n in names}
        already = sum(int((~m).sum()) for m in current.values())
        final_k = max(round(sparsity * total), already)
        ones = _input_of_ones(model, params, self.input_shape, data)
        density = 1.0 - sparsity
        with linearized(model):
            absolute = {n: params[n].data.clone() for n in names}
            flow: dict[str, Tensor] = {}
            for k in range(1, self.rounds + 1):
                with torch.no_grad():
                    for n in names:
                        params[n].data.copy_(absolute[n] * current[n])
                flow = _flow_scores(model, params, ones)
                if k == self.rounds:
                    prune_k = final_k
                else:
                    prune_k = round((1.0 - density ** (k / self.rounds)) * total)
                prune_k = min(max(prune_k, already), final_k)
                new = _prune_lowest(flow, current, prune_k)
                for n in names:
                    removed = current[n] & ~new[n]
                    encoded[n][removed] = k + _normalised(flow[n])[removed]
                    current[n] = new[n]
                already = prune_k
        for n in names:
            survivors = current[n]
            encoded[n][survivors] = self.rounds + 1 + _normalised(flow[n] * survivors)[survivors]
        return TensorScores({n: encoded[n].to(params[n].device) for n in names})
