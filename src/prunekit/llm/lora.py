"""Low-rank adapters for pruned linears that keep (or, for plain LoRA, do not keep) sparsity.

With the frozen pruned weight ``W``, its mask ``M`` (True = kept), rank ``r`` and scale ``alpha / r``:

* ``lora``:      W' = W + (alpha/r) B A                (merging fills the pruned positions)
* ``masklora``:  W' = W + (alpha/r) (B A) * M          (pruned positions stay exactly zero)
* ``scalelora``: W' = W * (B A), A = B = 1/sqrt(r)     (BA starts as all ones; zeros stay zero)

``B A`` has the shape of the stored weight, so transformers' ``Conv1D`` (weight stored
``in x out``) works like ``nn.Linear``. An :class:`AdapterLinear` replaces the linear inside its
parent module while training; :func:`merge_adapters` writes W' back into the original module and
puts it back, so parameter names and the model's structure are exactly as before.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "ADAPTER_KINDS",
    "AdapterLinear",
    "add_adapters",
    "adapter_modules",
    "merge_adapters",
]

ADAPTER_KINDS = ("lora", "masklora", "scalelora")


class AdapterLinear(nn.Module):
    """A frozen linear-like module plus a low-rank adapter (see the module docstring).

    Args:
        base: ``nn.Linear`` or any module with a 2-D ``weight`` (HF ``Conv1D``).
        kind: ``"lora"``, ``"masklora"`` or ``"scalelora"``.
        rank: adapter rank r >= 1.
        alpha: LoRA scale numerator (the update is scaled by alpha / r); unused by ScaleLoRA.
        mask: bool tensor in the weight's layout (True = kept); default ``weight != 0``.
        scale_init_noise: ScaleLoRA only. With A = B = 1/sqrt(r) exactly, all r components receive
            identical gradients and the product stays rank one; a small relative noise breaks
            the symmetry (BA then starts close to, not exactly at, all ones). Default 0 (exact).
        generator: random generator for the LoRA ``A`` initialisation.
    """

    def __init__(
        self,
        base: nn.Module,
        kind: str = "masklora",
        rank: int = 8,
        alpha: float | None = None,
        mask: Tensor | None = None,
        *,
        scale_init_noise: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"kind: expected one of {list(ADAPTER_KINDS)}, got {kind!r}")
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank!r}")
        weight = getattr(base, "weight", None)
        if not isinstance(weight, Tensor) or weight.dim() != 2:
            raise TypeError(f"base: expected a module with a 2-D weight, got {type(base).__name__}")
        self.base = base
        self.kind = kind
        self.rank = rank
        self.alpha = float(alpha if alpha is not None else rank)
        self.scaling = self.alpha / rank
        rows, cols = weight.shape
        if mask is None:
            mask = weight.detach() != 0
        if mask.shape != weight.shape:
            raise ValueError(f"mask: expected shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(device=weight.device, dtype=torch.bool), False)
        kw = {"device": weight.device, "dtype": torch.float32}
        if kind == "scalelora":
            value = 1.0 / math.sqrt(rank)
            a = torch.full((rank, cols), value, **kw)
            b = torch.full((rows, rank), value, **kw)
            if scale_init_noise:
                a += (
                    scale_init_noise
                    * value
                    * torch.randn(a.shape, generator=generator, device="cpu").to(a)
                )
                b += (
                    scale_init_noise
                    * value
                    * torch.randn(b.shape, generator=generator, device="cpu").to(b)
                )
        else:  # LoRA init: A random (Kaiming-uniform as in the LoRA paper's code), B zero
            bound = 1.0 / math.sqrt(cols)
            a = (
                (torch.rand((rank, cols), generator=generator, device="cpu") * 2 - 1)
                .mul_(bound)
                .to(**kw)
            )
            b = torch.zeros((rows, rank), **kw)
        self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(b)

    def delta(self) -> Tensor:
        """``B A`` in the stored weight's layout (float32)."""
        return self.lora_B @ self.lora_A

    def effective_weight(self) -> Tensor:
        """W' as used in the forward pass, in the weight's dtype."""
        w = self.base.weight
        ba = self.delta()
        if self.kind == "scalelora":
            new = w.float() * ba
        elif self.kind == "masklora":
            new = w.float() + self.scaling * ba * self.mask
        else:
            new = w.float() + self.scaling * ba
        return new.to(w.dtype)

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return functional_call(self.base, {"weight": self.effective_weight()}, args, kwargs)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """W' with the pruned positions copied bit for bit from W (MaskLoRA / ScaleLoRA)."""
        new = self.effective_weight()
        if self.kind == "lora":
            return new
        # Pruned entries are exactly 0 already (0 * x, 0 + 0); ``where`` also keeps -0.0 out.
        return torch.where(self.mask, new, self.base.weight)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}, alpha={self.alpha}"


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name


def add_adapters(
    model: nn.Module,
    modules: dict[str, nn.Module] | list[str],
    kind: str = "masklora",
    rank: int = 8,
    alpha: float | None = None,
    masks: dict[str, Tensor] | None = None,
    *,
    scale_init_noise: float = 0.0,
    seed: int = 0,
) -> dict[str, AdapterLinear]:
    """Wrap the named linears of ``model`` in :class:`AdapterLinear`, in place.

    Args:
        modules: module names (``"blocks.0.attn.q_proj"``) or a name -> module dict.
        masks: parameter name (``"<module>.weight"``) -> bool mask; default: ``weight != 0``.

    Returns:
        module name -> the adapter now in its place.
    """
    names = list(modules)
    if not names:
        raise ValueError("modules: no linear layer to put an adapter on")
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, AdapterLinear] = {}
    for name in names:
        base = model.get_submodule(name)
        if isinstance(base, AdapterLinear):
            raise ValueError(f"modules: {name!r} already has an adapter")
        mask = None if masks is None else masks.get(f"{name}.weight")
        adapter = AdapterLinear(
            base,
            kind,
            rank,
            alpha,
            mask,
            scale_init_noise=scale_init_noise,
            generator=generator,
        )
        parent, child = _parent(model, name)
        setattr(parent, child, adapter)
        out[name] = adapter
    return out


def adapter_modules(model: nn.Module) -> dict[str, AdapterLinear]:
    """Every :class:`AdapterLinear` inside ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLinear)}


@torch.no_grad()
def merge_adapters(model: nn.Module) -> dict[str, str]:
    """Write each adapter's W' into its base module and put the base module back, in place.

    MaskLoRA and ScaleLoRA leave every pruned weight exactly zero; a merged plain LoRA update
    generally makes the whole matrix dense again.

    Returns:
        module name -> adapter kind, for each merged adapter.
    """
    merged = {}
    for name, adapter in list(adapter_modules(model).items()):
        new = adapter.merged_weight()
        adapter.base.weight.data.copy_(new)
        parent, child = _parent(model, name)
        setattr(parent, child, adapter.base)
        merged[name] = adapter.kind
    return merged
