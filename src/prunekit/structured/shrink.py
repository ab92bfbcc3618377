"""Physical removal: slice parameters and buffers, then fix every dependent module attribute."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import fields, is_dataclass

import torch
from torch import Tensor, nn

from prunekit.structured.groups import ChannelGroup

__all__ = ["keep_indices", "shrink", "update_attributes"]

# Attribute names used for attention geometry across transformers, timm and hand-written models.
_HEAD_DIM = (
    "head_dim",
    "attention_head_size",
    "head_size",
    "d_head",
    "dim_head",
    "key_value_proj_dim",
    "d_kv",
)
_N_HEADS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "heads")
_N_KV = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_INNER = ("all_head_size", "inner_dim", "attn_dim")
_Q = ("q_proj", "query", "q", "wq", "q_lin", "to_q")
_K = ("k_proj", "key", "k", "wk", "k_lin", "to_k")
_FUSED = ("c_attn", "qkv", "Wqkv", "query_key_value", "qkv_proj")
_OUT = ("o_proj", "out_proj", "c_proj", "proj", "wo", "out_lin", "to_out", "dense", "o")
_MLP_IN = (
    "gate_proj",
    "up_proj",
    "fc1",
    "fc_in",
    "c_fc",
    "w1",
    "lin1",
    "wi",
    "wi_0",
    "dense_h_to_4h",
)
_MLP_FUSED = ("gate_up_proj",)  # gate and up projections in one Linear (Phi-3)


def keep_indices(
    groups: list[ChannelGroup], pruned: dict[int, Tensor], sizes: dict[tuple[str, int], int]
) -> dict[tuple[str, int], Tensor]:
    """Indices to keep along each affected ``(tensor, axis)``, given pruned component positions."""
    masks: dict[tuple[str, int], Tensor] = {}
    for gi, positions in pruned.items():
        group = groups[gi]
        for member in group.members:
            # the graph's indices are CPU metadata; ``shrink`` moves them to each tensor's device
            rows = group.member_index(member)[positions.cpu()].reshape(-1)
            if member not in masks:
                masks[member] = torch.ones(sizes[member], dtype=torch.bool, device=rows.device)
            masks[member][rows] = False
    return {m: mask.nonzero().flatten() for m, mask in masks.items()}


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """Every (module, attribute, is_parameter) holding each tensor, shared ones included."""
    found: dict[int, list[tuple[nn.Module, str, bool]]] = defaultdict(list)
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                found[id(p)].append((module, attr, True))
        for attr, b in module._buffers.items():
            if b is not None:
                found[id(b)].append((module, attr, False))
    return found


@torch.no_grad()
def shrink(model: nn.Module, keep: dict[tuple[str, int], Tensor]) -> list[str]:
    """Slice the named tensors in place (``keep``: (name, axis) -> indices) and fix attributes.

    Returns the qualified names of the modules whose tensors changed.
    """
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    by_name: dict[str, dict[int, Tensor]] = defaultdict(dict)
    for (name, axis), idx in keep.items():
        by_name[name][axis] = idx
    owners = _owners(model)
    touched: set[nn.Module] = set()
    for name, axes in by_name.items():
        old = tensors[name]
        new = old.detach()
        for axis, idx in axes.items():
            new = new.index_select(axis, idx.to(new.device))
        new = new.contiguous()
        touched.update(owner[0] for owner in owners[id(old)])
        if isinstance(old, nn.Parameter):
            replacement: Tensor = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            replacement = new
        for module, attr, is_param in owners[id(old)]:
            (module._parameters if is_param else module._buffers)[attr] = replacement
    names = {id(m): n for n, m in model.named_modules()}
    update_attributes(model, touched)
    return sorted(names[id(m)] for m in touched if id(m) in names)


def _child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for n in names:
        child = getattr(module, n, None)
        if isinstance(child, nn.Module) and getattr(child, "weight", None) is not None:
            return child
    return None


def _out_features(m: nn.Module) -> int:
    if hasattr(m, "nf"):  # Hugging Face Conv1D stores weight as (in, out)
        return int(m.weight.shape[1])
    return int(m.weight.shape[0])


def _in_features(m: nn.Module) -> int:
    if hasattr(m, "nf"):
        return int(m.weight.shape[0])
    return int(m.weight.shape[1])


def _set_int(module: object, names: tuple[str, ...], value: int) -> None:
    for n in names:
        if isinstance(getattr(module, n, None), int) and not isinstance(getattr(module, n), bool):
            setattr(module, n, int(value))


def _fix_layer(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = int(m.weight.shape[0]), int(m.weight.shape[1])
    elif isinstance(m, nn.modules.conv._ConvNd):
        w = m.weight
        if m.transposed:
            m.in_channels = int(w.shape[0])
            m.out_channels = int(w.shape[1]) * m.groups
        elif m.groups > 1 and m.groups == m.in_channels:  # depthwise: groups follow channels
            mult = m.out_channels // m.in_channels
            m.out_channels = int(w.shape[0])
            m.in_channels = m.groups = m.out_channels // mult
        else:
            m.out_channels = int(w.shape[0])
            m.in_channels = int(w.shape[1]) * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = int(ref.shape[0])
    elif isinstance(m, nn.GroupNorm):
        m.num_channels = int(m.weight.shape[0])
    elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        if m.weight is not None:
            m.normalized_shape = (int(m.weight.shape[0]),)
    elif isinstance(m, nn.Embedding):
        m.embedding_dim = int(m.weight.shape[1])
    elif isinstance(m, nn.MultiheadAttention):
        e = int(m.in_proj_weight.shape[1])
        old_head_dim = m.head_dim
        m.embed_dim = m.kdim = m.vdim = e
        m.head_dim = e // m.num_heads
        if m.head_dim != old_head_dim:
            # Attention divides by sqrt(head_dim): rescale the queries so the scores do not change.
            factor = (m.head_dim / old_head_dim) ** 0.5
            with torch.no_grad():
                m.in_proj_weight[:e].mul_(factor)
                if m.in_proj_bias is not None:
                    m.in_proj_bias[:e].mul_(factor)
        _fix_layer(m.out_proj)
    elif hasattr(m, "nf") and getattr(m, "weight", None) is not None and m.weight.dim() == 2:
        m.nf = int(m.weight.shape[1])
        if hasattr(m, "nx"):
            m.nx = int(m.weight.shape[0])


def _attn_geometry(m: nn.Module) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, query width) of an attention module, from its weights."""
    head_dim = next(
        (getattr(m, n) for n in _HEAD_DIM if isinstance(getattr(m, n, None), int)), None
    )
    q = _child(m, _Q)
    fused = _child(m, _FUSED) if q is None else None
    if not head_dim or (q is None and fused is None):
        return None
    out = _child(m, _OUT)
    if q is not None:
        q_out = _out_features(q)
        k = _child(m, _K)
        kv_out = _out_features(k) if k is not None else q_out
    else:
        total = _out_features(fused)
        # Query width is what the output projection reads; keys and values share the rest.
        q_out = _in_features(out) if out is not None else total // 3
        if not 0 < q_out <= total or (total - q_out) % 2:
            q_out = total // 3
        kv_out = (total - q_out) // 2
    return q_out // head_dim, kv_out // head_dim, q_out


def _fix_attention(m: nn.Module) -> None:
    geometry = _attn_geometry(m)
    if geometry is None:
        return
    heads, kv_heads, q_out = geometry
    fused = _child(m, _FUSED) if _child(m, _Q) is None else None
    if fused is not None and _out_features(fused) == 3 * q_out:
        _set_int(m, ("split_size",), q_out)
    _set_int(m, _N_HEADS, heads)
    if kv_heads:
        _set_int(m, _N_KV, kv_heads)
        if heads % kv_heads == 0:
            _set_int(m, ("num_key_value_groups",), heads // kv_heads)
    _set_int(m, _INNER, q_out)
    out = _child(m, _OUT)
    if out is not None:
        _set_int(m, ("embed_dim",), _out_features(out))


def _mlp_width(m: nn.Module) -> tuple[int, int] | None:
    """(intermediate width, input width) of an MLP block, or None."""
    first = _child(m, _MLP_IN)
    if first is not None:
        return _out_features(first), _in_features(first)
    fused = _child(m, _MLP_FUSED)
    if fused is not None:
        return _out_features(fused) // 2, _in_features(fused)
    dense = _child(m, ("dense",))
    if dense is not None and type(m).__name__.endswith("Intermediate"):  # BERT-style MLP input
        return _out_features(dense), _in_features(dense)
    return None


def _fix_mlp(m: nn.Module) -> None:
    widths = _mlp_width(m)
    if widths is None:
        return
    _set_int(m, ("intermediate_size", "hidden_features"), widths[0])
    _set_int(m, ("hidden_size", "in_features"), widths[1])


def update_attributes(model: nn.Module, touched: set[nn.Module] | None = None) -> None:
    """Bring layer attributes, attention head counts and the model config in line with weights."""
    for m in model.modules():
        if touched is None or m in touched:
            _fix_layer(m)
    for m in model.modules():
        _fix_attention(m)
        _fix_mlp(m)
    _fix_config(model)


_WIDTH = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim")
_TIED_WIDTH = ("embedding_size", "word_embed_proj_dim")
_HEAD_KEYS = (
    "num_attention_heads",
    "n_head",
    "n_heads",
    "num_heads",
    "encoder_attention_heads",
    "decoder_attention_heads",
)
_INTER_KEYS = (
    "intermediate_size",
    "n_inner",
    "ffn_dim",
    "ffn_hidden_size",
    "d_ff",
    "hidden_dim",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
)


def _fix_config(model: nn.Module) -> None:
    """Update ``model.config`` fields that are uniform across layers (hidden size, heads, MLP)."""
    config = getattr(model, "config", None)
    if config is None:
        return
    embeds = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    norms = [
        m
        for m in model.modules()
        if "norm" in type(m).__name__.lower()
        and isinstance(getattr(m, "weight", None), Tensor)
        and m.weight.dim() == 1
    ]
    heads: set[int] = set()
    kv: set[int] = set()
    inter: set[int] = set()
    for m in model.modules():
        geometry = _attn_geometry(m)
        if geometry is not None:
            heads.add(geometry[0])
            kv.add(geometry[1])
        widths = _mlp_width(m)
        if widths is not None and _child(m, _Q + _FUSED) is None:
            inter.add(widths[0])
    updates: dict[str, int] = {}
    width = None
    if embeds:
        width = int(embeds[0].weight.shape[1])
    elif norms:
        width = int(norms[-1].weight.shape[0])
    if width is not None:
        for n in _WIDTH:
            updates[n] = width
    if len(heads) == 1:
        for n in _HEAD_KEYS:
            updates[n] = next(iter(heads))
    if len(kv) == 1:
        for n in ("num_key_value_heads", "num_kv_heads"):
            updates[n] = next(iter(kv))
    if len(inter) == 1:
        for n in _INTER_KEYS:
            updates[n] = next(iter(inter))
    names = {f.name for f in fields(config)} if is_dataclass(config) else None
    old_width = next(
        (getattr(config, k) for k in _WIDTH if isinstance(getattr(config, k, None), int)), None
    )
    if width is not None and old_width is not None:
        for key in _TIED_WIDTH:  # embedding widths that equalled the hidden size still do
            if getattr(config, key, None) == old_width:
                updates[key] = width
    original = model.__dict__.setdefault("_prunekit_config0", {})
    before = {k: getattr(config, k, None) for k in (*updates, *_STAGE_LISTS)}
    _fix_stage_lists(model, config)
    for key, value in updates.items():
        current = getattr(config, key, None)
        if names is not None and key not in names:
            continue
        if isinstance(current, int) and not isinstance(current, bool):
            setattr(config, key, int(value))
    for key, value in before.items():
        if getattr(config, key, None) != value:
            # The unpruned value rebuilds the original architecture (see ``save_pruned``).
            original.setdefault(key, value)


_STAGE_LISTS = ("hidden_sizes", "embed_dims", "dims")


def _fix_stage_lists(model: nn.Module, config: object) -> None:
    """Per-stage width lists (``hidden_sizes``) read back from the last norm layer of each stage.

    Applies where the model holds a ``ModuleList`` of stages, one per list entry, each ending in a
    normalisation layer over its output width (SegFormer, ConvNeXt, ResNet, RegNet), so that code
    and configs reading ``config.hidden_sizes[i]`` see the new width.
    """
    for key in _STAGE_LISTS:
        value = getattr(config, key, None)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            continue
        for m in model.modules():
            if not isinstance(m, nn.ModuleList) or len(m) != len(value):
                continue
            widths = [_norm_width(c) for c in m]
            if all(w is not None for w in widths):
                setattr(config, key, type(value)(widths))
                break


def _norm_width(m: nn.Module) -> int | None:
    """Width of the last normalisation layer in ``m`` (``m`` itself included)."""
    width = None
    for sub in m.modules():
        w = getattr(sub, "weight", None)
        if "norm" in type(sub).__name__.lower() and isinstance(w, Tensor) and w.dim() == 1:
            width = int(w.shape[0])
    return width
