"""Controls that honest pruning papers report (Frankle & Carbin 2019; Liu et al. 2019).

* same mask, random re-initialisation: :func:`random_reinit`;
* random mask with the same layer-wise densities: :func:`shuffle_masks`;
* Scratch-E / Scratch-B: train the pruned architecture from scratch for the same epochs, or for
  the same compute (epochs x FLOPs_dense / FLOPs_pruned, at most 2x): :func:`scratch_iterations`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from prunekit.core.masks import MaskSet


def shuffle_masks(masks: MaskSet, seed: int = 0) -> MaskSet:
    """A random mask with exactly the same number of kept entries in every tensor."""
    gen = torch.Generator().manual_seed(int(seed))
    out = MaskSet()
    for name, mask in masks.items():
        flat = mask.reshape(-1).cpu()
        perm = torch.randperm(flat.numel(), generator=gen, device="cpu")
        out[name] = flat[perm].reshape(mask.shape).to(mask.device)
    return out


@torch.no_grad()
def random_reinit(
    model: nn.Module,
    masks: MaskSet | None = None,
    seed: int = 0,
    factory: Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Re-initialise ``model`` at random (in place) and apply ``masks``.

    With ``factory`` the new weights are those of ``factory()`` built under ``seed`` (the model's own
    initialisation scheme); without it every submodule's ``reset_parameters()`` is called.
    """
    devices = {p.device for p in model.parameters()}
    cpu_state = torch.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        if factory is not None:
            fresh = factory()
            missing = model.load_state_dict(fresh.state_dict(), strict=True)
            del missing
        else:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
    finally:
        torch.set_rng_state(cpu_state)
    if len(devices) == 1:
        model.to(next(iter(devices)))
    if masks is not None:
        masks.apply(model)
    return model


def count_flops(model: nn.Module, example: Tensor, masks: MaskSet | None = None) -> int:
    """Multiply-accumulates of one forward pass of ``example`` through Linear / Conv layers.

    With ``masks`` each masked weight counts only its kept entries (the work a sparse kernel does).
    """
    params = dict(model.named_parameters())
    owner = {id(p): n for n, p in params.items()}
    total = [0]
    handles = []

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        weight = module.weight
        name = owner.get(id(weight))
        density = 1.0
        if masks is not None and name in masks:
            density = float(masks[name].float().mean())
        if isinstance(module, nn.Linear):
            positions = output.numel() // output.shape[-1]
            macs = positions * weight.numel()
        else:  # convolution: every output position uses in/groups * kernel weights per channel
            positions = output.numel() // output.shape[1]
            macs = positions * weight.numel()
        total[0] += int(round(macs * density))

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0]


def scratch_iterations(
    iterations: int, dense_flops: int, sparse_flops: int, mode: str = "B", max_factor: float = 2.0
) -> int:
    """Training length of a Scratch-E (same iterations) or Scratch-B (same compute) control."""
    key = mode.upper()
    if key == "E":
        return iterations
    if key != "B":
        raise ValueError(f"mode: expected 'E' or 'B', got {mode!r}")
    if sparse_flops <= 0:
        raise ValueError(f"sparse_flops: expected a positive count, got {sparse_flops}")
    factor = min(dense_flops / sparse_flops, max_factor)
    return int(round(iterations * factor))
