"""One registry for every kind of criterion: weights, LLM layer-wise rules, structured groups, data."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import prunekit
from prunekit.cli import main
from prunekit.commands.list_cmd import registries
from prunekit.criteria import CRITERIA, Criterion, create_criterion, list_methods
from prunekit.criteria.registry import (
    KINDS,
    criterion_names,
    get_criterion,
    list_criteria,
    register_criterion,
    unregister_criterion,
)
from prunekit.data_pruning import DATA_SCORES, ScoreContext, compute_scores
from prunekit.llm import METHODS, LayerInputs, LLMPruneConfig, LLMRule, prune_llm
from prunekit.structured import STRUCTURED_CRITERIA, list_structured_criteria

BUILTINS = {
    "weights": ["grasp", "magnitude", "movement", "random", "snip", "synflow", "taylor"],
    "llm": ["magnitude", "sparsegpt", "wanda"],
    "structured": ["bn_scale", "fpgm", "l1", "l2", "random", "taylor"],
    "data": ["el2n", "forgetting", "grand", "prototypes", "random"],
}


@pytest.fixture
def registered():
    """Register throw-away criteria; each is removed after the test."""
    added: list[tuple[str, str]] = []

    def add(name: str, kind: str, obj: object, **options: object) -> object:
        register_criterion(name, kind=kind, **options)(obj)
        added.append((name, kind))
        return obj

    yield add
    for name, kind in added:
        unregister_criterion(name, kind=kind)


def _section(out: str, title: str) -> str:
    """The lines of one ``prunekit list`` category, heading included."""
    start = out.index(f"\n{title} (kind ")
    end = out.find("\n\n", start + 1)
    return out[start : end if end != -1 else len(out)]


def test_every_kind_is_listed_with_its_builtins(capsys):
    assert list(KINDS) == ["weights", "llm", "structured", "data"]
    assert {k: criterion_names(k) for k in KINDS} == BUILTINS
    entries = list_criteria()
    assert [(e.kind, e.name) for e in entries] == [(k, n) for k in KINDS for n in BUILTINS[k]]
    assert all(e.doc and "\n" not in e.doc for e in entries)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    sections = registries()
    for kind, info in KINDS.items():
        assert sorted(sections[info.title]) == BUILTINS[kind]
        section = _section(out, info.title)
        assert section.splitlines()[1] == (f"{info.title} (kind {kind}; used by {info.used_by})")
        rows = section.splitlines()[4:]
        assert [row.split()[0] for row in rows] == BUILTINS[kind]


def test_requires_data_comes_with_each_entry(capsys):
    needs = {(e.kind, e.name): e.requires_data for e in list_criteria()}
    for name in BUILTINS["weights"]:  # the class attribute of the criterion
        assert needs["weights", name] is CRITERIA.get(name).requires_data
    assert [n for n in BUILTINS["llm"] if needs["llm", n]] == ["sparsegpt", "wanda"]
    assert [n for n in BUILTINS["structured"] if needs["structured", n]] == ["taylor"]
    assert all(needs["data", n] for n in BUILTINS["data"])
    assert main(["list", "llm"]) == 0
    out = capsys.readouterr().out
    cells = {line.split()[0]: line.split()[1] for line in out.splitlines()[4:] if line}
    assert cells == {"magnitude": "no", "sparsegpt": "yes", "wanda": "yes"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_registered_criterion_is_listed(kind, registered, capsys):
    def fresh(*args, **kwargs):
        """A criterion registered by a test."""

    registered("zz_fresh", kind, fresh, requires_data=True)
    entry = get_criterion("zz_fresh", kind=kind)
    assert (entry.name, entry.kind, entry.factory, entry.doc, entry.requires_data) == (
        "zz_fresh",
        kind,
        fresh,
        "A criterion registered by a test.",
        True,
    )
    assert [e.name for e in list_criteria(kind)] == sorted([*BUILTINS[kind], "zz_fresh"])
    for other in KINDS:  # only in its own kind
        assert ("zz_fresh" in criterion_names(other)) is (other == kind)
    assert main(["list", KINDS[kind].title]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("zz_fresh "))
    assert row.split()[1:] == ["yes", "A", "criterion", "registered", "by", "a", "test."]
    assert main(["list"]) == 0
    assert "zz_fresh" in _section(capsys.readouterr().out, KINDS[kind].title)


def test_a_weight_criterion_registered_the_old_way_is_a_weights_entry(registered):
    class Halves(Criterion):
        """Half of |w|."""

        def scores(self, model, params, *, data=None, seed=0):
            return prunekit.TensorScores({n: p.detach().abs() / 2 for n, p in params.items()})

    # The decorator of older code: no kind given means "weights".
    assert prunekit.register_criterion("zz_halves")(Halves) is Halves
    try:
        assert get_criterion("zz_halves").kind == "weights"
        assert "zz_halves" in list_methods() and "zz_halves" in CRITERIA
        assert isinstance(create_criterion("zz_halves"), Halves)
        masks = prunekit.prune(nn.Linear(4, 4), 0.5, method="zz_halves")
        assert masks.num_pruned == 8
    finally:
        unregister_criterion("zz_halves")
    assert "zz_halves" not in CRITERIA


@pytest.mark.parametrize(
    ("kind", "name"),
    [("weights", "magnitude"), ("llm", "wanda"), ("structured", "l1"), ("data", "el2n")],
)
def test_duplicate_registration_raises(kind, name):
    before = get_criterion(name, kind=kind)
    label = KINDS[kind].label
    for spelling in (name, name.upper()):
        with pytest.raises(ValueError) as err:
            register_criterion(spelling, kind=kind)(lambda: None)
        assert str(err.value) == (
            f"name: {label} {spelling!r} (kind {kind!r}) is already registered"
        )
    assert get_criterion(name, kind=kind) is before  # the original entry is untouched


def test_unknown_names_raise_per_kind():
    for kind, info in KINDS.items():
        with pytest.raises(ValueError) as err:
            get_criterion("nope", kind=kind, argument="method")
        assert str(err.value) == (
            f"method: unknown {info.label} 'nope' (kind {kind!r}); "
            f"valid names: {', '.join(BUILTINS[kind])}"
        )
    with pytest.raises(ValueError) as err:
        get_criterion("magnitude", kind="bogus")
    assert str(err.value) == (
        "kind: expected one of 'weights', 'llm', 'structured', 'data', got 'bogus'"
    )
    with pytest.raises(TypeError, match=r"^name: expected a weight criterion name \(str\)"):
        get_criterion(3)


def test_the_public_lookups_are_views_with_their_error_messages():
    assert list_methods() == CRITERIA.names() == BUILTINS["weights"]
    assert list_structured_criteria() == STRUCTURED_CRITERIA.names() == BUILTINS["structured"]
    assert DATA_SCORES.names() == BUILTINS["data"]
    assert tuple(BUILTINS["llm"]) == METHODS
    assert CRITERIA.get("snip") is get_criterion("snip").factory
    assert STRUCTURED_CRITERIA.get("l1") is get_criterion("l1", kind="structured").factory
    assert DATA_SCORES.get("el2n") is get_criterion("el2n", kind="data").factory
    # An llm entry's factory is the rule the engine calls: what it needs, and how to call it.
    rules = {n: get_criterion(n, kind="llm").factory for n in BUILTINS["llm"]}
    assert all(isinstance(rule, prunekit.llm.LLMRule) for rule in rules.values())
    assert {n: r.needs for n, r in rules.items()} == {
        "magnitude": "weights",
        "sparsegpt": "hessian",
        "wanda": "activations",
    }
    assert prunekit.llm.get_rule("sparsegpt") is rules["sparsegpt"]
    weights = ", ".join(BUILTINS["weights"])
    with pytest.raises(ValueError) as err:
        create_criterion("nope")
    assert str(err.value) == (
        f"method: unknown weight criterion 'nope' (kind 'weights'); valid names: {weights}"
    )
    with pytest.raises(ValueError, match=r"^method: unknown weight criterion 'nope'"):
        prunekit.prune(nn.Linear(4, 4), 0.5, method="nope")
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"^criterion: unknown structured criterion 'nope' "):
        prunekit.structured.prune(model, torch.randn(1, 3), criterion="nope")
    data = [(torch.randn(2), 0) for _ in range(4)]
    with pytest.raises(ValueError, match=r"^score: unknown data score 'nope' \(kind 'data'\)"):
        compute_scores("nope", ScoreContext(data=data, num_classes=2))


def test_the_llm_engine_validates_its_method_through_the_registry(registered):
    model = nn.Sequential(nn.Linear(4, 4))
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError) as err:
        prune_llm(model, method="obs", sparsity=0.5)
    assert str(err.value) == (
        "method: unknown LLM method 'obs' (kind 'llm'); valid names: magnitude, sparsegpt, wanda"
    )
    assert torch.equal(model[0].weight, before)
    with pytest.raises(ValueError, match=r"^method: expected a lower-case name, got 'Wanda'"):
        LLMPruneConfig(method="Wanda").validate()
    # What the engine accepts is what the registry holds, not a list of its own.
    with pytest.raises(ValueError, match="unknown LLM method 'zz_rule'"):
        LLMPruneConfig(method="zz_rule").validate()
    # An entry of kind llm must be an LLMRule: a bare function is refused by name, never guessed.
    registered("zz_plain", "llm", lambda weight, sparsity: weight, requires_data=True)
    with pytest.raises(TypeError) as err:
        LLMPruneConfig(method="zz_plain").validate()
    assert str(err.value) == (
        "method: the LLM method 'zz_plain' is registered with a function, expected a "
        "prunekit.llm.LLMRule (register it with prunekit.llm.register_llm_rule)"
    )
    rule = LLMRule("activations", lambda layer: layer.weight.abs() > 0)
    registered("zz_rule", "llm", rule, requires_data=True)
    assert LLMPruneConfig(method="zz_rule").validate() is None


def _keep_largest_per_row(layer: LayerInputs) -> torch.Tensor:
    """Keep the largest |w| * 1 of each row (ties: the higher column index stays)."""
    assert layer.col_sq_norm is not None and layer.hessian is None
    scores = layer.weight.abs() * 1.0
    k = int(layer.sparsity * scores.shape[1])
    dropped = scores.argsort(dim=1, stable=True)[:, :k]
    return torch.ones_like(scores, dtype=torch.bool).scatter(1, dropped, False)


@pytest.mark.parametrize("true_sequential", [False, True])
def test_a_registered_llm_rule_runs_end_to_end_through_prune_llm(registered, true_sequential):
    from prunekit.models.gpt import GPT, GPTConfig

    seen: list[str] = []

    def rule(layer: LayerInputs) -> torch.Tensor:
        seen.append(layer.name)
        assert layer.options.method == "zz_keep" and layer.pattern is None
        return _keep_largest_per_row(layer)

    registered("zz_keep", "llm", LLMRule("activations", rule), requires_data=True)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32))
    dense = {n: p.detach().clone() for n, p in gpt.named_parameters()}
    with pytest.raises(ValueError, match=r"^calibration: method 'zz_keep' needs calibration"):
        prune_llm(gpt, "zz_keep", 0.25, progress=False)
    calibration = torch.randint(0, 32, (2, 8))
    masks, report = prune_llm(
        gpt,
        "zz_keep",
        0.25,
        calibration=calibration,
        nsamples=2,
        seqlen=8,
        true_sequential=true_sequential,
        progress=False,
    )
    assert report["method"] == "zz_keep"
    assert len(masks) == len(seen) == 12  # 6 linears in each of the 2 blocks, each pruned once
    assert sorted(f"{n}.weight" for n in seen) == sorted(masks)
    for name, param in gpt.named_parameters():
        if name not in masks:
            assert torch.equal(param, dense[name])
            continue
        # prunekit's GPT stores (out, in) weights: the mask is the rule's on the dense weight.
        weight = dense[name]
        k = int(0.25 * weight.shape[1])
        dropped = weight.abs().argsort(dim=1, stable=True)[:, :k]
        expected = torch.ones_like(weight, dtype=torch.bool).scatter(1, dropped, False)
        assert torch.equal(masks[name], expected)
        assert (masks[name].sum(1) == weight.shape[1] - k).all()
        assert torch.equal(param, weight * expected)
        assert report["layers"][name]["sparsity"] == k / weight.shape[1]


def test_names_are_unique_within_a_kind_and_shared_only_where_they_were():
    seen: dict[str, list[str]] = {}
    for entry in list_criteria():
        seen.setdefault(entry.name, []).append(entry.kind)
    for kind in KINDS:
        names = criterion_names(kind)
        assert len(names) == len(set(names))
    shared = {name: kinds for name, kinds in seen.items() if len(kinds) > 1}
    # Each pair names the same idea in two settings (|w| for weights and for LLM layers).
    assert shared == {
        "magnitude": ["weights", "llm"],
        "random": ["weights", "structured", "data"],
        "taylor": ["weights", "structured"],
    }


def test_list_help_teaches_the_kinds(capsys):
    with pytest.raises(SystemExit):
        main(["list", "--help"])
    out = capsys.readouterr().out
    assert "one category per kind" in out and "prunekit list llm" in out
    assert re.search(r"criterion kind:\s+weights, llm,\s+structured, data", out)


def test_structured_pruning_gives_gradients_to_criteria_that_need_data(registered):
    from prunekit.structured.criteria import l1

    seen: list[bool] = []

    def grad_l1(model, group, params, **kw):
        """L1 that records whether gradients were there."""
        seen.append(all(p.grad is not None for p in params.values() if p.dim() > 1))
        return l1(model, group, params)

    registered("zz_grad_l1", "structured", grad_l1, requires_data=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    inputs = torch.randn(4, 3)
    small, _ = prunekit.structured.prune(
        model, inputs, ratio=0.5, criterion="zz_grad_l1", loss_fn=lambda m: m(inputs).sum()
    )
    assert seen and all(seen) and small[0].out_features == 4
