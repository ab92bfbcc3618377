"""Convex constraint sets for stochastic Frank-Wolfe, each with its linear minimisation oracle.

Every constraint acts on the list of tensors of one parameter group. Element-wise sets (L1, L2,
L-infinity, k-sparse polytope, k-support ball) treat the group as one flat vector; the group
k-support ball treats each output filter (dimension 0 of each tensor) as a group; the spectral
k-support and nuclear-norm balls need exactly one tensor per group, seen as the matrix
``W.flatten(1)`` (rows = output channels).

Size. A set is given either by its norm ``radius`` or by its L2 ``diameter`` D (the rule of
Zimmer et al.: ``D = 2 * tau * E||W_init||_2``). The radius then follows so that the set's L2
diameter is D:

==========================  ===============================  ===============================
set                         vertices                         radius from D
==========================  ===============================  ===============================
L2, L1, k-support, group    norm-r points                    r = D / 2
k-support, spectral
k-support, nuclear
L-infinity                  ``{-r, +r}^n``                   r = D / (2 sqrt(n))
k-sparse polytope           k entries ``+-r``, rest 0        r = D / (2 sqrt(k))
==========================  ===============================  ===============================

``k`` is an int (count) or a float in (0, 1] (a fraction of the group's size, rounded to the
nearest int, at least 1). It counts entries for the element-wise sets, filters for the group
k-support ball and singular values for the spectral k-support ball. A constraint is bound to its
parameters (:meth:`Constraint.bind`) before use; binding resolves ``k`` and validates shapes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from prunekit.core.device import arange_like
from prunekit.core.registry import Registry

CONSTRAINTS: Registry = Registry("constraint")

#: Below this norm a direction is treated as zero (no information: the LMO returns 0).
_TINY = 1e-12


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


def k_support_norm(x: Tensor, k: int) -> Tensor:
    """The k-support norm of Argyriou, Foygel and Srebro (2012) of the flattened ``x``.

    With ``z`` the absolute values sorted in decreasing order (``z_0 = +inf``), find the unique
    ``r`` in ``{0, ..., k-1}`` with ``z_{k-r-1} > T_r / (r+1) >= z_{k-r}``, ``T_r = sum_{i>=k-r} z_i``;
    then ``norm^2 = sum_{i<k-r} z_i^2 + T_r^2 / (r+1)``. k = 1 gives the L1 norm, k = n the L2 norm.
    """
    z = x.detach().reshape(-1).abs().double().sort(descending=True).values
    n = z.numel()
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 <= k <= {n}, got {k}")
    if k == 1:
        return z.sum().to(x.dtype)
    tail = z.flip(0).cumsum(0).flip(0)  # tail[j] = sum_{i >= j} z_i (0-indexed)
    head_sq = torch.cat([z.new_zeros(1), (z * z).cumsum(0)])  # head_sq[j] = sum_{i < j} z_i^2
    r = arange_like(z, k)  # on the weights' device (the device rule)
    j = k - r - 1  # 0-indexed position of z_{k-r} (1-indexed)
    mean = tail[j] / (r + 1).double()
    upper = torch.where(j > 0, z[(j - 1).clamp(min=0)], torch.full_like(mean, math.inf))
    lower = z[j]
    tol = 1e-12 * max(float(z[0]), 1.0)
    ok = (upper + tol > mean) & (mean + tol >= lower)
    # exactly one r satisfies the condition; round-off can leave none, then take the least violation
    if ok.any():
        pick = int(torch.nonzero(ok)[0])
    else:
        violation = (mean - upper).clamp(min=0) + (lower - mean).clamp(min=0)
        pick = int(violation.argmin())
    value = head_sq[int(j[pick])] + tail[int(j[pick])] ** 2 / (pick + 1)
    return value.sqrt().to(x.dtype)


def _resolve_k(k: int | float, n: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise TypeError(f"k: expected an int count or a float fraction, got {type(k).__name__}")
    if isinstance(k, float):
        if not 0.0 < k <= 1.0:
            raise ValueError(f"k: a fractional k must lie in (0, 1], got {k}")
        return max(1, min(n, int(round(k * n))))
    if k < 1:
        raise ValueError(f"k: expected at least 1 {what}, got {k}")
    return min(int(k), n)


class Constraint:
    """A compact convex set with a linear minimisation oracle (LMO).

    Subclasses implement :meth:`_lmo` (``argmin_{v in C} <v, m>``), :meth:`_norm` (the gauge: a
    point is feasible iff its norm is at most the radius) and :meth:`_radius_from_diameter`.

    Args:
        radius: the norm radius r of the set.
        diameter: the L2 diameter D of the set; the radius follows from the table in the module
            docstring. Give exactly one of ``radius`` and ``diameter``.
    """

    name = "constraint"
    uses_k = False

    def __init__(self, *, radius: float | None = None, diameter: float | None = None) -> None:
        if (radius is None) == (diameter is None):
            raise ValueError(
                f"{type(self).__name__}: give exactly one of radius= and diameter=, got "
                f"radius={radius}, diameter={diameter}"
            )
        for key, value in (("radius", radius), ("diameter", diameter)):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{key}: expected a positive finite number, got {value!r}")
        self._given_radius = None if radius is None else float(radius)
        self._given_diameter = None if diameter is None else float(diameter)
        self.n: int | None = None
        self.shapes: list[torch.Size] | None = None

    # ------------------------------------------------------------------ binding
    def bind(self, params: Sequence[Tensor]) -> Constraint:
        """A copy of this constraint fitted to ``params`` (resolves k, checks shapes)."""
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: a constrained group needs parameters")
        bound = copy.copy(self)
        bound.shapes = [p.shape for p in params]
        bound.n = sum(p.numel() for p in params)
        bound._bind(params)
        return bound

    def _bind(self, params: list[Tensor]) -> None:  # noqa: B027  (optional hook)
        pass

    def _require_bound(self) -> None:
        if self.n is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(params) first")

    # ------------------------------------------------------------------ size
    @property
    def radius(self) -> float:
        """The norm radius r (needs a bound constraint when given by diameter)."""
        if self._given_radius is not None:
            return self._given_radius
        self._require_bound()
        return self._radius_from_diameter(self._given_diameter)  # type: ignore[arg-type]

    @property
    def diameter(self) -> float:
        """The L2 diameter D of the set."""
        if self._given_diameter is not None:
            return self._given_diameter
        self._require_bound()
        return self._diameter_from_radius(self._given_radius)  # type: ignore[arg-type]

    def _radius_from_diameter(self, diameter: float) -> float:
        return diameter / 2.0

    def _diameter_from_radius(self, radius: float) -> float:
        return 2.0 * radius

    # ------------------------------------------------------------------ oracle and norm
    @torch.no_grad()
    def lmo(
        self, directions: Sequence[Tensor], state: dict[str, Any] | None = None
    ) -> list[Tensor]:
        """``argmin_{v in C} sum_i <v_i, d_i>``: a vertex of the set, one tensor per parameter.

        ``state`` is a scratch dict kept between calls (power-iteration warm starts).
        """
        self._require_bound()
        directions = list(directions)
        if [d.shape for d in directions] != self.shapes:
            raise ValueError(
                f"{type(self).__name__}: directions have shapes {[tuple(d.shape) for d in directions]}, "
                f"the constraint was bound to {[tuple(s) for s in self.shapes or []]}"
            )
        return self._lmo(directions, state if state is not None else {})

    @torch.no_grad()
    def norm(self, params: Sequence[Tensor]) -> float:
        """The gauge of ``params``; they are feasible iff this is at most :attr:`radius`."""
        self._require_bound()
        return float(self._norm(list(params)))

    def is_feasible(self, params: Sequence[Tensor], rtol: float = 1e-5) -> bool:
        return self.norm(params) <= self.radius * (1.0 + rtol)

    @torch.no_grad()
    def make_feasible(self, params: Sequence[Tensor]) -> float:
        """Rescale ``params`` in place into the set (no-op when inside); return the factor used.

        Rescaling towards 0 keeps every zero at zero and the direction of the point, unlike a
        Euclidean projection; it is the rule of the reference implementation.
        """
        value = self.norm(params)
        if value <= self.radius:
            return 1.0
        factor = self.radius / value
        for p in params:
            p.mul_(factor)
        return factor

    def relaxed(self) -> Constraint:
        """The full-dimensional set of the same L2 diameter (k = n); itself if it has no k."""
        return self

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        raise NotImplementedError

    def _norm(self, params: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        size = (
            f"radius={self._given_radius:g}"
            if self._given_radius is not None
            else f"diameter={self._given_diameter:g}"
        )
        k = f", k={getattr(self, 'k', None)}" if self.uses_k else ""
        return f"{type(self).__name__}({size}{k})"


class _KConstraint(Constraint):
    """A constraint with a sparsity / rank parameter k."""

    uses_k = True
    unit = "entries"

    def __init__(
        self, k: int | float, *, radius: float | None = None, diameter: float | None = None
    ) -> None:
        super().__init__(radius=radius, diameter=diameter)
        _resolve_k(k, 1 << 62, self.unit)  # type check now, clamp when bound
        self.k_spec = k
        self.k: int | None = None

    def _k_dimension(self, params: list[Tensor]) -> int:
        return sum(p.numel() for p in params)

    def _bind(self, params: list[Tensor]) -> None:
        self.k_dim = self._k_dimension(params)
        self.k = _resolve_k(self.k_spec, self.k_dim, self.unit)

    def relaxed(self) -> Constraint:
        """Same L2 diameter with k equal to the full dimension."""
        self._require_bound()
        out = copy.copy(self)
        out._given_diameter, out._given_radius = self.diameter, None
        out.k_spec = out.k = self.k_dim
        return out


# ---------------------------------------------------------------------- L_p balls
@CONSTRAINTS.register("l2")
class L2Ball(Constraint):
    """Euclidean ball: LMO v = -r m / ||m||_2."""

    name = "l2"

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _flat(d)
        norm = m.norm()
        if norm <= _TINY:
            return [torch.zeros_like(t) for t in d]
        return _unflat(m * (-self.radius / norm), d)

    def _norm(self, params: list[Tensor]) -> Tensor:
        return _flat(params).norm()


@CONSTRAINTS.register("l1")
class L1Ball(Constraint):
    """L1 ball: LMO v = -r sign(m_i) e_i at the largest |m_i| (a 1-sparse vertex)."""

    name = "l1"

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _flat(d)
        v = torch.zeros_like(m)
        i = int(m.abs().argmax())
        if float(m[i].abs()) > _TINY:
            v[i] = -self.radius * torch.sign(m[i])
        return _unflat(v, d)

    def _norm(self, params: list[Tensor]) -> Tensor:
        return _flat(params).abs().sum()


@CONSTRAINTS.register("linf")
class LInfBall(Constraint):
    """L-infinity ball (a hypercube): LMO v = -r sign(m)."""

    name = "linf"

    def _radius_from_diameter(self, diameter: float) -> float:
        return diameter / (2.0 * math.sqrt(self.n))  # type: ignore[arg-type]

    def _diameter_from_radius(self, radius: float) -> float:
        return 2.0 * radius * math.sqrt(self.n)  # type: ignore[arg-type]

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        return [-self.radius * torch.sign(t) for t in d]

    def _norm(self, params: list[Tensor]) -> Tensor:
        return _flat(params).abs().max()


# ---------------------------------------------------------------------- k-sparse sets
@CONSTRAINTS.register("k_sparse")
class KSparsePolytope(_KConstraint):
    """Convex hull of vectors with k entries +-r and the rest 0 (= L-inf ball of r cut by L1 ball of k r).

    LMO: v = -r sign(m) on the k largest |m|, 0 elsewhere. Norm: max(||x||_inf, ||x||_1 / k).
    """

    name = "k_sparse"

    def _radius_from_diameter(self, diameter: float) -> float:
        return diameter / (2.0 * math.sqrt(self.k))  # type: ignore[arg-type]

    def _diameter_from_radius(self, radius: float) -> float:
        return 2.0 * radius * math.sqrt(self.k)  # type: ignore[arg-type]

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _flat(d)
        v = torch.zeros_like(m)
        idx = m.abs().topk(self.k).indices  # type: ignore[arg-type]
        v[idx] = -self.radius * torch.sign(m[idx])
        return _unflat(v, d)

    def _norm(self, params: list[Tensor]) -> Tensor:
        x = _flat(params).abs()
        return torch.maximum(x.max(), x.sum() / self.k)  # type: ignore[operator]


@CONSTRAINTS.register("k_support")
class KSupportBall(_KConstraint):
    """k-support norm ball: convex hull of k-sparse vectors of L2 norm r.

    LMO: v = -r top_k(m) / ||top_k(m)||_2 (top_k keeps the k largest |entries|).
    """

    name = "k_support"

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _flat(d)
        v = torch.zeros_like(m)
        idx = m.abs().topk(self.k).indices  # type: ignore[arg-type]
        top = m[idx]
        norm = top.norm()
        if norm > _TINY:
            v[idx] = top * (-self.radius / norm)
        return _unflat(v, d)

    def _norm(self, params: list[Tensor]) -> Tensor:
        return k_support_norm(_flat(params), self.k)  # type: ignore[arg-type]


@CONSTRAINTS.register("group_k_support")
class GroupKSupportBall(_KConstraint):
    """Group (filter) k-support ball: the k-support norm of the vector of filter L2 norms.

    A filter is one slice along dimension 0 (an output channel of a Conv, a row of a Linear).
    LMO: keep the k filters of m with the largest L2 norm, v = -r m_kept / ||m_kept||_2, so v has
    exactly k non-zero filters. Several tensors in one group share one filter budget.
    """

    name = "group_k_support"
    unit = "filters"

    def _k_dimension(self, params: list[Tensor]) -> int:
        for p in params:
            if p.dim() < 1:
                raise ValueError("group_k_support: parameters need at least one dimension")
        return sum(p.shape[0] for p in params)

    @staticmethod
    def _filter_norms(tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.reshape(t.shape[0], -1).norm(dim=1) for t in tensors])

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        norms = self._filter_norms(d)
        keep = torch.zeros_like(norms, dtype=torch.bool)
        keep[norms.topk(self.k).indices] = True  # type: ignore[arg-type]
        total = norms[keep].norm()
        out, offset = [], 0
        for t in d:
            rows = keep[offset : offset + t.shape[0]]
            offset += t.shape[0]
            v = torch.zeros_like(t)
            if total > _TINY:
                v[rows] = t[rows] * (-self.radius / total)
            out.append(v)
        return out

    def _norm(self, params: list[Tensor]) -> Tensor:
        return k_support_norm(self._filter_norms(params), self.k)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- spectral sets
def _as_matrix(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def top_singular(
    matrix: Tensor,
    k: int,
    method: str = "auto",
    *,
    iters: int = 3,
    state: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets ``(U, S, Vh)`` of ``matrix`` (U: rows x k, S: k, Vh: k x cols).

    Methods: ``"exact"`` (``torch.linalg.svd``), ``"lowrank"`` (``torch.svd_lowrank``),
    ``"power"`` (block power iteration, warm-started from ``state["basis"]`` between calls: the
    momentum changes slowly, so a few iterations track the subspace), ``"auto"`` (exact up to
    512 on the small side, power above). Whatever the method, ``U`` and ``Vh`` are orthonormal
    and ``U diag(S) Vh`` has rank k exactly (unless the matrix has rank below k).
    """
    rows, cols = matrix.shape
    k = min(k, rows, cols)
    if method == "auto":
        method = "exact" if min(rows, cols) <= 512 else "power"
    work = matrix.float() if matrix.dtype in (torch.float16, torch.bfloat16) else matrix
    if method == "exact":
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
        u, s, vh = u[:, :k], s[:k], vh[:k]
    elif method == "lowrank":
        u, s, v = torch.svd_lowrank(work, q=min(k + 4, rows, cols), niter=max(iters, 2))
        u, s, vh = u[:, :k], s[:k], v[:, :k].T
    elif method == "power":
        state = state if state is not None else {}
        basis = state.get("basis")
        if basis is None or basis.shape != (1, cols, k):
            gen = torch.Generator(device="cpu").manual_seed(0)
            basis = torch.randn(cols, k, generator=gen, device="cpu").to(work.device, work.dtype)
        else:
            basis = basis[0]
        for _ in range(max(iters, 1)):
            q, _ = torch.linalg.qr(work @ basis)  # rows x k
            basis, _ = torch.linalg.qr(work.T @ q)  # cols x k
        small = q.T @ work  # k x cols, exact SVD of the projected matrix
        ub, s, vh = torch.linalg.svd(small, full_matrices=False)
        u = q @ ub
        state["basis"] = vh.T.unsqueeze(0).detach().clone()  # (1, cols, k): never param-shaped
    else:
        raise ValueError(f"svd_method: expected auto, exact, lowrank or power, got {method!r}")
    return u.to(matrix.dtype), s.to(matrix.dtype), vh.to(matrix.dtype)


class _SpectralMixin:
    def _check_single(self, params: list[Tensor]) -> None:
        if len(params) != 1 or params[0].dim() < 2:
            raise ValueError(
                f"{self.name}: needs exactly one tensor of 2 or more dimensions per parameter "  # type: ignore[attr-defined]
                f"group, got shapes {[tuple(p.shape) for p in params]}"
            )


@CONSTRAINTS.register("spectral_k_support")
class SpectralKSupportBall(_SpectralMixin, _KConstraint):
    """Spectral k-support ball: the k-support norm of the singular values of ``W.flatten(1)``.

    LMO: v = -r U_k S_k V_k^T / ||S_k||_2 from the top-k singular triplets of the momentum: rank
    exactly k, Frobenius norm r.

    Args:
        svd_method: ``"auto"``, ``"exact"``, ``"lowrank"`` or ``"power"`` (see :func:`top_singular`).
        power_iters: iterations for the power / lowrank methods.
    """

    name = "spectral_k_support"
    unit = "singular values"

    def __init__(
        self,
        k: int | float,
        *,
        radius: float | None = None,
        diameter: float | None = None,
        svd_method: str = "auto",
        power_iters: int = 3,
    ) -> None:
        super().__init__(k, radius=radius, diameter=diameter)
        if svd_method not in ("auto", "exact", "lowrank", "power"):
            raise ValueError(
                f"svd_method: expected auto, exact, lowrank or power, got {svd_method!r}"
            )
        self.svd_method, self.power_iters = svd_method, int(power_iters)

    def _k_dimension(self, params: list[Tensor]) -> int:
        self._check_single(params)
        return min(_as_matrix(params[0]).shape)

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _as_matrix(d[0])
        u, s, vh = top_singular(-m, self.k, self.svd_method, iters=self.power_iters, state=state)  # type: ignore[arg-type]
        norm = s.norm()
        if norm <= _TINY:
            return [torch.zeros_like(d[0])]
        return [((u * (s * (self.radius / norm))) @ vh).view_as(d[0])]

    def _norm(self, params: list[Tensor]) -> Tensor:
        return k_support_norm(torch.linalg.svdvals(_as_matrix(params[0]).float()), self.k)  # type: ignore[arg-type]


@CONSTRAINTS.register("nuclear")
class NuclearBall(_SpectralMixin, Constraint):
    """Nuclear-norm ball (sum of singular values of ``W.flatten(1)``): LMO v = -r u_1 v_1^T.

    The top singular pair comes from warm-started power iteration by default.
    """

    name = "nuclear"

    def __init__(
        self,
        *,
        radius: float | None = None,
        diameter: float | None = None,
        svd_method: str = "power",
        power_iters: int = 3,
    ) -> None:
        super().__init__(radius=radius, diameter=diameter)
        if svd_method not in ("auto", "exact", "lowrank", "power"):
            raise ValueError(
                f"svd_method: expected auto, exact, lowrank or power, got {svd_method!r}"
            )
        self.svd_method, self.power_iters = svd_method, int(power_iters)

    def _bind(self, params: list[Tensor]) -> None:
        self._check_single(params)

    def _lmo(self, d: list[Tensor], state: dict[str, Any]) -> list[Tensor]:
        m = _as_matrix(d[0])
        u, s, vh = top_singular(-m, 1, self.svd_method, iters=self.power_iters, state=state)
        if float(s[0]) <= _TINY:
            return [torch.zeros_like(d[0])]
        return [(self.radius * torch.outer(u[:, 0], vh[0])).view_as(d[0])]

    def _norm(self, params: list[Tensor]) -> Tensor:
        return torch.linalg.svdvals(_as_matrix(params[0]).float()).sum()


def create_constraint(name: str, **kwargs: Any) -> Constraint:
    """Build a registered constraint, e.g. ``create_constraint("k_support", k=0.1, diameter=4.0)``."""
    cls = CONSTRAINTS.get(name, argument="constraint")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"constraint {name!r}: {err}") from err


def list_constraints() -> list[str]:
    """Names of the registered constraints."""
    return CONSTRAINTS.names()
