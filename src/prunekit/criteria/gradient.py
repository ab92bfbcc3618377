"""Gradient-based criteria: SNIP, GraSP, first-order Taylor and movement.

Convention (the whole library's): a higher score means more important, and the allocation prunes
the lowest scores. Where a paper removes the *largest* of its scores (GraSP), the score returned
here is the paper's score negated.

Options (pass them as ``criterion_options`` to :func:`prunekit.prune`):

* ``data``: an iterable of ``(inputs, targets)`` batches; it may be given here instead of the
  ``data`` argument of :func:`prunekit.prune`.
* ``num_batches``: how many batches to read (None: all of ``data``).
* ``loss_fn``: ``(outputs, targets) -> scalar``; default cross-entropy over the last dimension.

The model is left untouched: gradients come from :func:`torch.autograd.grad` (``.grad`` is never
written) and buffers changed by the forward passes (BatchNorm statistics) are restored. Forward
passes run in the model's current mode (``train()`` or ``eval()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.core.scores import Scores, TensorScores
from prunekit.criteria import Criterion, register_criterion
from prunekit.criteria._batches import (
    LossFn,
    batch_gradients,
    check_loss_fn,
    check_num_batches,
    forward,
    iter_batches,
    model_device,
    untouched,
)


class DataCriterion(Criterion):
    """Base of the criteria that read batches of data (options: data, num_batches, loss_fn)."""

    name = "data"
    default_num_batches: int | None = 1
    requires_data = True  # an instance given ``data`` as an option does not

    def __init__(
        self,
        *,
        data: Iterable[Any] | None = None,
        num_batches: int | None | str = "default",
        loss_fn: LossFn | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(**unknown)  # rejects unknown options, naming them
        self.data = data
        if num_batches == "default":
            num_batches = self.default_num_batches
        self.num_batches = check_num_batches(num_batches, self.name)  # type: ignore[arg-type]
        self.loss_fn = check_loss_fn(loss_fn, self.name)
        # Data given as an option satisfies ``prune``'s check for a ``data`` argument.
        self.requires_data = data is None

    def _data(self, data: Iterable[Any] | None) -> Iterable[Any] | None:
        return data if data is not None else self.data

    def _mean_gradient(self, model, params, data) -> dict[str, Tensor]:
        total: dict[str, Tensor] = {}
        count = 0
        for grads in batch_gradients(
            model, params, self._data(data), self.num_batches, self.loss_fn, self.name
        ):
            count += 1
            for n, g in grads.items():
                total[n] = total[n] + g if n in total else g.clone()
        return {n: g / count for n, g in total.items()}


@register_criterion("snip")
class Snip(DataCriterion):
    """SNIP (Lee et al. 2019): |g ⊙ θ| with g the mean loss gradient over ``num_batches`` batches."""

    name = "snip"

    def scores(self, model: nn.Module, params, *, data=None, seed=0) -> Scores:
        grads = self._mean_gradient(model, params, data)
        return TensorScores({n: (grads[n] * p.detach()).abs() for n, p in params.items()})


@register_criterion("taylor")
class Taylor(DataCriterion):
    """First-order Taylor (Molchanov et al.): mean over batches of |θ ⊙ g_b| (or (θ ⊙ g_b)²).

    Unlike SNIP, the absolute value is taken per batch before averaging, so weights whose gradient
    changes sign between batches still count. Default ``num_batches``: 8.
    """

    name = "taylor"
    default_num_batches = 8

    def __init__(self, *, squared: bool = False, **options: Any) -> None:
        super().__init__(**options)
        if not isinstance(squared, bool):
            raise TypeError(f"squared: criterion 'taylor' expects a bool, got {squared!r}")
        self.squared = squared

    def scores(self, model: nn.Module, params, *, data=None, seed=0) -> Scores:
        total: dict[str, Tensor] = {n: torch.zeros_like(p.detach()) for n, p in params.items()}
        count = 0
        for grads in batch_gradients(
            model, params, self._data(data), self.num_batches, self.loss_fn, self.name
        ):
            count += 1
            for n, p in params.items():
                term = grads[n] * p.detach()
                total[n] += term.square() if self.squared else term.abs()
        return TensorScores({n: t / count for n, t in total.items()})


@register_criterion("grasp")
class GraSP(DataCriterion):
    """GraSP (Wang et al. 2020): importance θ ⊙ (H g), the negation of the paper's S = −θ ⊙ Hg.

    The paper removes the weights with the largest S, i.e. the lowest θ ⊙ Hg: those whose removal
    reduces the gradient flow least (or increases it). The Hessian-vector product comes from a
    double backward pass. g is the mean gradient over ``num_batches`` batches and Hg the mean of
    the per-batch products. ``temperature`` divides the outputs before the loss (the official
    code uses 200 to soften the softmax); use 1.0 for the plain loss. Attention runs on the
    math kernel of ``scaled_dot_product_attention`` here, the one with a double backward.
    """

    name = "grasp"

    def __init__(self, *, temperature: float = 200.0, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            raise TypeError(f"temperature: criterion 'grasp' expects a number, got {temperature!r}")
        if not temperature > 0:
            raise ValueError(
                f"temperature: criterion 'grasp' expects a number > 0, got {temperature}"
            )
        self.temperature = float(temperature)
        inner = self.loss_fn
        t = self.temperature
        self._loss = (lambda out, y: inner(out / t, y)) if t != 1.0 else inner

    def scores(self, model: nn.Module, params, *, data=None, seed=0) -> Scores:
        data = self._data(data)
        names = list(params)
        tensors = [params[n] for n in names]
        # First pass: g, the mean gradient (a constant vector for the Hessian-vector product).
        g: dict[str, Tensor] = {}
        count = 0
        for grads in batch_gradients(model, params, data, self.num_batches, self._loss, self.name):
            count += 1
            for n, v in grads.items():
                g[n] = g[n] + v if n in g else v.clone()
        g = {n: v / count for n, v in g.items()}
        # Second pass: Hg = d(g_b · g)/dθ for each batch b, averaged.
        hg = {n: torch.zeros_like(p.detach()) for n, p in params.items()}
        count = 0
        device = model_device(model)
        with untouched(model, params), _twice_differentiable_attention():
            for inputs, targets in iter_batches(data, self.num_batches, self.name, device):
                loss = self._loss(forward(model, inputs), targets)
                grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
                dot = sum((gb * g[n]).sum() for n, gb in zip(names, grads) if gb is not None)
                if not isinstance(dot, Tensor) or not dot.requires_grad:
                    count += 1  # the loss is linear in the targets here: H g = 0
                    continue
                products = torch.autograd.grad(dot, tensors, allow_unused=True)
                for n, hv in zip(names, products):
                    if hv is not None:
                        hg[n] += hv.detach()
                count += 1
        return TensorScores({n: params[n].detach() * hg[n] / count for n in names})


def _twice_differentiable_attention() -> contextlib.AbstractContextManager:
    """Fused scaled-dot-product attention kernels have no double backward; the math one does."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: nothing to select
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


class MovementTracker:
    """Accumulates movement scores S = −Σ_t θ_t ⊙ g_t during fine-tuning (Sanh et al. 2020).

    Call :meth:`update` after ``loss.backward()`` and before ``optimizer.step()`` in your loop, or
    :meth:`attach` it to the optimizer once so that it updates itself before every step. Weights
    moving away from zero collect positive scores (important); weights shrinking towards zero
    collect negative ones. Read the scores with :meth:`scores` or prune with the ``"movement"``
    criterion: ``prunekit.prune(model, 0.9, method="movement",
    criterion_options={"tracker": tracker})``.

    Args:
        model: the model being fine-tuned.
        params: the parameters to score (default: the default prune targets of ``model``).
    """

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if params is None:
            from prunekit.core.targets import select_targets

            params = select_targets(model)
        if not params:
            raise ValueError("params: MovementTracker needs at least one parameter to score")
        self.params = dict(params)
        self.accumulated = {n: torch.zeros_like(p.detach()) for n, p in self.params.items()}
        self.steps = 0
        self._handle: Any = None

    @torch.no_grad()
    def update(self) -> None:
        """Add −θ ⊙ g for the current gradients (parameters without a gradient add nothing)."""
        for n, p in self.params.items():
            if p.grad is not None:
                self.accumulated[n].addcmul_(p.detach(), p.grad, value=-1.0)
        self.steps += 1

    def attach(self, optimizer: torch.optim.Optimizer) -> MovementTracker:
        """Update automatically before every ``optimizer.step()``; undo with :meth:`detach`."""
        self.detach()
        self._handle = optimizer.register_step_pre_hook(lambda *_: self.update())
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> None:
        for acc in self.accumulated.values():
            acc.zero_()
        self.steps = 0

    def scores(self) -> TensorScores:
        """The accumulated scores (a copy), higher = more important."""
        return TensorScores({n: a.clone() for n, a in self.accumulated.items()})


@register_criterion("movement")
class Movement(DataCriterion):
    """Movement (Sanh et al. 2020): −Σ θ ⊙ g accumulated by a :class:`MovementTracker`.

    With ``tracker`` the accumulated scores are read (no data needed). Without one, ``data`` is
    required and the score is −θ ⊙ ḡ at the current weights, ḡ the mean gradient over
    ``num_batches`` batches: the movement of one gradient step.
    """

    name = "movement"

    def __init__(self, *, tracker: MovementTracker | None = None, **options: Any) -> None:
        super().__init__(**options)
        if tracker is not None and not isinstance(tracker, MovementTracker):
            raise TypeError(
                f"tracker: criterion 'movement' expects a MovementTracker, got {type(tracker).__name__}"
            )
        self.tracker = tracker
        if tracker is not None:
            self.requires_data = False

    def scores(self, model: nn.Module, params, *, data=None, seed=0) -> Scores:
        if self.tracker is not None:
            missing = [n for n in params if n not in self.tracker.accumulated]
            if missing:
                raise ValueError(
                    f"tracker: the MovementTracker does not track {missing[0]!r}; create it with "
                    "the same targets you prune"
                )
            return TensorScores({n: self.tracker.accumulated[n].clone() for n in params})
        grads = self._mean_gradient(model, params, data)
        return TensorScores({n: -(p.detach() * grads[n]) for n, p in params.items()})
