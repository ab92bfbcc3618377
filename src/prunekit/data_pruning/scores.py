"""The built-in data scores: EL2N, GraNd, self-supervised prototypes and random.

Every score returns one float per training example, higher = harder (less typical). Forgetting
lives in :mod:`prunekit.data_pruning.forgetting`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.data_pruning.base import ScoreContext, register_score
from prunekit.data_pruning.data import iter_batches
from prunekit.data_pruning.training import train_for_score

__all__ = ["el2n_scores", "embeddings", "per_example_grad_norms", "penultimate"]


def _check_runs(runs: int) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs: expected a positive integer, got {runs!r}")


def _early_epochs(ctx: ScoreContext, epochs: float | None) -> float:
    if epochs is None:
        return max(1.0, 0.1 * ctx.train.epochs)  # ~epoch 20 of 200 in Paul et al.
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs: expected a non-negative number, got {epochs!r}")
    return float(epochs)


@torch.no_grad()
def el2n_scores(model: nn.Module, data: Any, num_classes: int, batch_size: int = 256) -> Tensor:
    """``||softmax(f(x)) - onehot(y)||_2`` per example of ``data`` (model in eval mode)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for _, x, y in iter_batches(data, batch_size):
            p = torch.softmax(model(x.to(device)).float(), dim=-1)
            onehot = F.one_hot(y.to(device).long(), num_classes).to(p.dtype)
            out.append(torch.linalg.vector_norm(p - onehot, dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, device="cpu")


@register_score(
    "el2n",
    doc="EL2N: mean over `runs` short trainings of ||softmax(f(x)) - onehot(y)||_2.",
)
def el2n(ctx: ScoreContext, *, runs: int = 3, epochs: float | None = None) -> Tensor:
    """EL2N (Paul et al. 2021). ``epochs``: training before scoring (default a tenth of
    ``train.epochs``, at least 1); run ``r`` starts from ``make_model(seed + r)``."""
    _check_runs(runs)
    ep = _early_epochs(ctx, epochs)
    total = torch.zeros(len(ctx.data), device="cpu")  # scores are gathered on the CPU
    for r in range(runs):
        model = train_for_score(ctx, ctx.seed + r, ep)
        total += el2n_scores(model, ctx.data, ctx.num_classes, ctx.batch_size)
    return total / runs


def per_example_grad_norms(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``||grad_theta CE(f(x_i), y_i)||_2`` for each example of the batch, in one vectorised call.

    Per-sample gradients come from ``torch.func`` (``functional_call`` + ``vmap(grad)``) over
    all trainable parameters, the model in eval mode (BatchNorm uses its running statistics).
    """
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**p, **frozen, **buffers}, (xi.unsqueeze(0),))
        return F.cross_entropy(out.float(), yi.unsqueeze(0))

    was_training = model.training
    model.eval()
    try:
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y.long())
    finally:
        model.train(was_training)
    squares = sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values())
    return torch.as_tensor(squares).sqrt()


@register_score(
    "grand",
    doc="GraNd: expected per-example gradient norm E||grad l(x, y)||_2 (torch.func, batched).",
)
def grand(ctx: ScoreContext, *, runs: int = 3, epochs: float = 0.0, batch_size: int = 64) -> Tensor:
    """GraNd (Paul et al. 2021): the mean over ``runs`` models (``make_model(seed + r)`` trained
    ``epochs`` epochs; 0 = at initialisation, as in the paper) of the per-example gradient
    norm. ``batch_size`` examples share one vectorised call (memory ~ batch x parameters)."""
    _check_runs(runs)
    ep = _early_epochs(ctx, epochs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    total = torch.zeros(len(ctx.data), device="cpu")  # scores are gathered on the CPU
    for r in range(runs):
        model = train_for_score(ctx, ctx.seed + r, ep)
        device = next(model.parameters()).device
        for idx, x, y in iter_batches(ctx.data, batch_size):
            norms = per_example_grad_norms(model, x.to(device), y.to(device))
            total[idx] += norms.detach().cpu()
    return total / runs


def penultimate(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` of ``model`` (the classifier); its input is the embedding."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError(
            "encoder: the model has no nn.Linear classifier to take a penultimate-layer "
            "embedding from; pass an encoder module"
        )
    return last


@torch.no_grad()
def embeddings(
    model: nn.Module, data: Any, batch_size: int = 256, encoder: nn.Module | None = None
) -> Tensor:
    """One embedding row per example: ``encoder(x)`` flattened, or (``encoder=None``) the input
    of ``model``'s last ``nn.Linear`` (its penultimate-layer features)."""
    net = encoder if encoder is not None else model
    first = next(net.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    captured: list[Tensor] = []
    handle = None
    if encoder is None:
        handle = penultimate(model).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach().flatten(1).float().cpu())
        )
    was_training = net.training
    net.eval()
    rows = []
    try:
        for _, x, _y in iter_batches(data, batch_size):
            out = net(x.to(device))
            if encoder is not None:
                rows.append(out.detach().flatten(1).float().cpu())
            else:
                rows.append(captured.pop())
    finally:
        net.train(was_training)
        if handle is not None:
            handle.remove()
    return torch.cat(rows)


@register_score(
    "prototypes",
    doc="Self-supervised prototypes: cosine distance to the nearest k-means centroid.",
    uses_labels=False,
)
def prototypes(
    ctx: ScoreContext,
    *,
    clusters: int | None = None,
    embedding: str = "penultimate",
    encoder: nn.Module | None = None,
    n_init: int = 3,
) -> Tensor:
    """Sorscher et al. 2022: k-means (scikit-learn) on L2-normalised embeddings; the score is
    the cosine distance to the nearest centroid (far = hard). Labels are not used.

    ``embedding``: ``penultimate`` (input of ``ctx.model``'s last Linear layer) or ``input``
    (the flattened inputs; no trained model at all). ``encoder`` (Python API): any module
    mapping a batch to embeddings, used instead. ``clusters`` defaults to ``num_classes``.
    """
    from sklearn.cluster import KMeans

    if embedding not in ("penultimate", "input"):
        raise ValueError(f"embedding: expected 'penultimate' or 'input', got {embedding!r}")
    if encoder is not None and not isinstance(encoder, nn.Module):
        raise TypeError(f"encoder: expected an nn.Module, got {type(encoder).__name__}")
    k = ctx.num_classes if clusters is None else clusters
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ctx.data):
        raise ValueError(f"clusters: expected an integer in [1, {len(ctx.data)}], got {k!r}")
    if encoder is None and embedding == "input":
        encoder = nn.Flatten()
    if encoder is None and ctx.model is None:
        raise ValueError("model: the penultimate embedding needs a trained model (ctx.model)")
    emb = embeddings(ctx.model if ctx.model is not None else encoder, ctx.data,
                     ctx.batch_size, encoder)  # fmt: skip
    emb = F.normalize(emb.double(), dim=1)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=ctx.seed).fit(emb.numpy())
    centroids = F.normalize(torch.from_numpy(km.cluster_centers_), dim=1)
    cosine = (emb @ centroids.T).max(dim=1).values
    return (1.0 - cosine).float()


@register_score("random", doc="Uniform random scores (the baseline every score must beat).",
                uses_labels=False)  # fmt: skip
def random(ctx: ScoreContext) -> Tensor:
    """Uniform random numbers from ``seed``: any keep rule selects a random subset."""
    gen = torch.Generator().manual_seed(ctx.seed)
    return torch.rand(len(ctx.data), generator=gen, device="cpu")
