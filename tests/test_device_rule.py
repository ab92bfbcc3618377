"""The device rule: every tensor a library function creates lives on its parameter's device.

Three checks, all on a CPU-only machine:

1. A static check over ``src/prunekit``: torch factory calls (``torch.zeros``, ``torch.arange``,
   ``torch.tensor``, ...) name their ``device=`` or are on a short, justified whitelist.
2. A virtual second device (``tests/_virtual_device.py``): the model is moved to a device that
   reports itself as ``meta`` while holding real CPU data, so every path runs with its real
   numbers, and any operation that mixes such a tensor with a CPU tensor raises as CUDA would.
   The device-sensitive paths (prune with each allocation, N:M, the criteria at initialisation,
   training with masks, structured pruning, SFW constraints, soups, sparse training, PERP and
   the LLM engine) run there with their data on the CPU, and every tensor they return must be
   on the model's device.
3. Masks on another device than their parameters are moved once and reused, not per step.

Every test of 2 and 3 takes the ``dev`` fixture: the virtual device always, and a real GPU as a
``gpu``-marked copy of the same test when CUDA is present. ``train.device: auto`` is tested by
standing the virtual device in for ``prunekit.core.device.default_device`` (what CUDA being present
changes); ``PRUNEKIT_VIRTUAL_CUDA=1`` does the same for the whole suite (see ``conftest.py``).
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import prunekit
from _virtual_device import VIRTUAL, VirtualDevice, leaves, on_virtual
from prunekit.core.allocation import list_allocations

SRC = Path(__file__).resolve().parents[1] / "src" / "prunekit"


# ---------------------------------------------------------------------- 1. the static check
FACTORIES = {
    "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "randperm", "tensor",
    "eye", "linspace",
}  # fmt: skip
# Where a factory without ``device=`` is right, and why (paths relative to src/prunekit).
WHITELIST = {
    "data/": "datasets are host data: built on the CPU, moved to the model's device per batch",
    "models/": "module constructors create parameters on the CPU like torch.nn layers; "
    "model.to(device) moves them",
    "structured/graph.py": "dependency-graph channel ids: CPU metadata, never combined with a "
    "parameter (criteria and shrink move them to the tensor they index)",
    "structured/groups.py": "channel-group index tables built from the graph: CPU metadata, "
    "moved to the tensor they index",
}


def bare_factory_calls(code: str) -> list[str]:
    """``"LINE: torch.NAME(...)"`` for every torch factory call in ``code`` without ``device=``.

    ``**kw`` counts as naming the device (e.g. ``kw = {"device": w.device, ...}``)."""
    found = []
    for node in ast.walk(ast.parse(code)):
        func = getattr(node, "func", None)
        if (
            isinstance(node, ast.Call)
            and isinstance(func, ast.Attribute)
            and func.attr in FACTORIES
            and isinstance(func.value, ast.Name)
            and func.value.id == "torch"
            and not any(k.arg in ("device", None) for k in node.keywords)
        ):
            found.append(f"{node.lineno}: torch.{func.attr}(...)")
    return found


def test_factory_calls_name_their_device():
    """New tensors that meet a parameter are made on its device (``prunekit.core.device`` helpers
    or ``device=``); tensors meant for the CPU (seeded draws, host data) say ``device="cpu"``."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in WHITELIST):
            continue
        offenders += [f"{rel}:{hit}" for hit in bare_factory_calls(path.read_text())]
    assert not offenders, "torch factory calls without device=:\n" + "\n".join(offenders)


def test_the_static_check_sees_a_bare_factory_call():
    code = (
        "import torch\n"
        "x = torch.arange(3)\n"
        "y = torch.zeros(2, device=x.device)\n"
        "z = torch.full((2,), 1.0, **{'device': x.device})\n"
        "w = torch.tensor(\n    [1, 2],\n    dtype=torch.long,\n)\n"
    )
    assert bare_factory_calls(code) == ["2: torch.arange(...)", "5: torch.tensor(...)"]


# ---------------------------------------------------------------------- 2. the virtual device
@dataclass
class Dev:
    """Where a test runs: the virtual device (always) or a real GPU (``gpu``-marked)."""

    device: torch.device
    mode: Callable[[], contextlib.AbstractContextManager]

    def holds(self, t: torch.Tensor) -> bool:
        if self.device == VIRTUAL:
            return on_virtual(t)
        return t.device.type == self.device.type


@pytest.fixture(
    params=[
        "virtual",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
            ],
        ),
    ]
)
def dev(request) -> Dev:
    if request.param == "virtual":
        return Dev(VIRTUAL, VirtualDevice)
    return Dev(torch.device("cuda", torch.cuda.current_device()), contextlib.nullcontext)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def _batches(n: int = 2, batch: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, 8, generator=g), torch.randint(0, 3, (batch,), generator=g))
        for _ in range(n)
    ]


def _all_on(dev: Dev, model: nn.Module, out=None) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        assert dev.holds(t), f"{name} left the model's device"
    for t in leaves(out):
        assert dev.holds(t), f"a returned tensor of shape {tuple(t.shape)} is on {t.device}"


@pytest.mark.parametrize("allocation", [a for a in list_allocations() if a != "N:M"] + ["2:4"])
def test_prune_each_allocation(dev, allocation):
    sparsity = 0.2 if allocation == "uniform_plus" else (None if allocation == "2:4" else 0.5)
    with dev.mode():
        model = _mlp().to(dev.device)
        masks = prunekit.prune(model, sparsity=sparsity, method="magnitude", allocation=allocation)
        _all_on(dev, model, masks)


@pytest.mark.parametrize("method", ["random", "snip", "grasp", "synflow", "taylor"])
def test_criteria_with_cpu_data(dev, method):
    with dev.mode():
        model = _mlp().to(dev.device)
        masks = prunekit.prune(model, 0.8, method=method, data=_batches())
        _all_on(dev, model, masks)
        assert masks.num_pruned == round(0.8 * masks.numel)


def test_prune_at_init_and_training_with_cpu_masks_and_data(dev):
    from conftest import toy_bundle
    from prunekit.training import Trainer

    data = toy_bundle(features=8)
    with dev.mode():
        model = _mlp()
        masks = prunekit.compute_masks(model, 0.7, method="snip", data=_batches())  # on the CPU
        model.to(dev.device)
        masks2, table = prunekit.prune_at_init(model, "synflow", 0.7, _batches())
        _all_on(dev, model, masks2)
        trainer = Trainer(
            model, data.train, iterations=4, batch_size=8, masks=masks, device=dev.device, amp=False
        )
        trainer.fit()
        _all_on(dev, model, trainer.masks)
        masks.finalize(model)  # CPU masks, model elsewhere: moved, not refused
        for name, p in model.named_parameters():
            if name in masks:
                assert not p[~masks[name].to(dev.device)].any()


def test_sparse_training_rigl_and_granet(dev):
    from prunekit.training.sparse_training import GraNet, RigL

    with dev.mode():
        for make in (
            lambda m, o: RigL(m, o, sparsity=0.8, t_end=6, delta_t=2),
            lambda m, o: GraNet(
                m, o, final_sparsity=0.8, initial_sparsity=0.0, t_start=1, t_prune_end=4,
                t_end=6, delta_t=2, regrow_fraction=0.5,
            ),
        ):  # fmt: skip
            model = _mlp().to(dev.device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            scheduler = make(model, optimizer)
            for x, y in _batches(6):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x.to(dev.device)), y.to(dev.device)).backward()
                if scheduler.step():
                    optimizer.step()
            _all_on(dev, model, scheduler.masks)


@pytest.mark.parametrize(
    "kind,k,options",
    [
        ("k_support", 0.1, {}),
        ("k_sparse", 0.1, {}),
        ("group_k_support", 0.25, {}),
        ("spectral_k_support", 0.25, {"svd_method": "power"}),
        ("nuclear", None, {"svd_method": "power"}),
        ("linf", None, {}),
    ],
)
def test_sfw_constraints(dev, kind, k, options):
    from prunekit.frank_wolfe import SFW, constraints_for_model

    with dev.mode():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(80, 4)
        ).to(dev.device)
        groups = constraints_for_model(model, kind, k=k, tau=5.0, init_samples=2, **options)
        opt = SFW(groups, lr=0.5, momentum=0.9)
        opt.make_feasible()
        x, y = torch.randn(8, 1, 10), torch.randint(0, 4, (8,))
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x.to(dev.device)), y.to(dev.device)).backward()
            opt.step()
        assert all(r is None or r <= 1 + 1e-4 for r in opt.feasibility())
        _all_on(dev, model)


def test_structured_prune(dev):
    from prunekit import structured as st

    with dev.mode():
        torch.manual_seed(0)
        model = prunekit.create_model("resnet20", width=8).to(dev.device)
        small, plan = st.prune(model, torch.randn(1, 3, 16, 16).to(dev.device), ratio=0.5)
        _all_on(dev, small)
        assert small(torch.randn(2, 3, 16, 16).to(dev.device)).shape == (2, 10)


def test_structured_slimming_and_depth(dev):
    from prunekit import structured as st

    with dev.mode():
        torch.manual_seed(0)
        model = prunekit.create_model("resnet20", width=8).to(dev.device)
        x = torch.randn(1, 3, 8, 8).to(dev.device)
        groups, pruned, _ = st.plan_pruning(model, x, 0.5, "bn_scale")
        reg = st.MaskSparsity.from_plan(model, groups, pruned, lam=1.0)
        reg.penalty().backward()
        assert reg.selected and all(dev.holds(m) for m in reg.selected.values())
        _, dropped = st.prune_depth(model, x, 1)
        assert len(dropped) == 1
        _all_on(dev, model)


def test_soups_and_batchnorm_recalibration(dev):
    from prunekit.training.soups import greedy_soup, recalibrate_batchnorm, uniform_soup

    with dev.mode():
        model = prunekit.create_model("resnet20", width=8).to(dev.device)
        sds = [{k: v + i for k, v in model.state_dict().items()} for i in range(2)]
        soup = uniform_soup(sds)
        assert all(dev.holds(v) for v in soup.values())
        res = greedy_soup(sds, lambda sd: float(next(iter(sd.values())).sum()))
        assert all(dev.holds(v) for v in res.state_dict.values())
        recalibrate_batchnorm(model, [torch.randn(4, 3, 16, 16) for _ in range(2)])
        _all_on(dev, model)


TEXT = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. " * 20


def _gpt() -> nn.Module:
    from prunekit.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32))


def _ids() -> torch.Tensor:
    from prunekit.llm import byte_tokenizer

    return torch.tensor(byte_tokenizer(TEXT))


@pytest.mark.parametrize(
    "method,pattern", [("magnitude", None), ("wanda", None), ("sparsegpt", "2:4")]
)
def test_llm_engine_model_on_the_device(dev, method, pattern):
    from prunekit.llm import prune_llm

    with dev.mode():
        model = _gpt().to(dev.device)
        masks, _ = prune_llm(
            model, method, 0.5, pattern=pattern, calibration=_ids(), nsamples=4, seqlen=32,
            progress=False,
        )  # fmt: skip
        _all_on(dev, model, masks)


@pytest.mark.parametrize("on_device", [True, False], ids=["model-on-device", "blocks-visit"])
def test_llm_engine_transformers_llama(dev, on_device):
    pytest.importorskip("transformers")
    import transformers as T

    from _llm_tiny import tiny_config, tokens
    from prunekit.llm import prune_llm

    with dev.mode():
        torch.manual_seed(0)
        model = T.AutoModelForCausalLM.from_config(tiny_config("llama"))
        if on_device:
            model.to(dev.device)
        masks, _ = prune_llm(
            model, "sparsegpt", 0.5, calibration=tokens(), nsamples=4, seqlen=32, batch_size=2,
            device=dev.device, progress=False,
        )  # fmt: skip
        assert len(masks) == 14
        for name, p in model.named_parameters():
            assert dev.holds(p) == on_device, name
            if name in masks:
                assert masks[name].device == p.device and not p[~masks[name]].any(), name


def test_llm_engine_blocks_visit_the_device_and_masks_come_home(dev):
    from prunekit.llm import prune_llm

    with dev.mode():
        model = _gpt()  # stays on the CPU; each block is processed on the device
        masks, _ = prune_llm(
            model, "sparsegpt", 0.5, calibration=_ids(), nsamples=4, seqlen=32, device=dev.device,
            progress=False,
        )  # fmt: skip
        for name, mask in masks.items():
            assert mask.device.type == "cpu" and not dev.holds(mask), name
        assert not any(dev.holds(p) for p in model.parameters())


def test_perp_retrain_and_reconstruct(dev):
    from prunekit.llm import prune_llm
    from prunekit.llm.perp import perp_retrain, reconstruct

    with dev.mode():
        model = _gpt().to(dev.device)
        masks, _ = prune_llm(model, "wanda", 0.5, calibration=_ids(), nsamples=4, progress=False)
        perp_retrain(
            model, masks.to("cpu"), _ids(), "biases,norms,masklora", steps=2, batch_size=2,
            seqlen=32, progress=False,
        )  # fmt: skip
        _all_on(dev, model)
        for name, p in model.named_parameters():
            if name in masks:
                assert not p[~masks[name]].any(), name
        model = _gpt().to(dev.device)
        masks, _ = reconstruct(
            model, "wanda", 0.5, None, _ids(), "scalelora", nsamples=4, seqlen=32, steps=2,
            batch_size=2, progress=False,
        )  # fmt: skip
        _all_on(dev, model, masks)


def test_at_init_recipe_trains_on_the_default_device(dev, monkeypatch):
    """``device=None`` means CUDA when present: here the virtual device stands in for it."""
    from conftest import toy_bundle
    from prunekit.core import device as _device
    from prunekit.training import TrainSpec, run_at_init

    monkeypatch.setattr(_device, "default_device", lambda: dev.device)
    with dev.mode():
        model = _mlp()
        spec = TrainSpec(epochs=1, batch_size=16, lr=0.05, lr_schedule="cosine")
        result = run_at_init(model, toy_bundle(features=8), spec, "snip", 0.8)
        _all_on(dev, model, result.masks)


# ---------------------------------------------------------------------- 3. masks move once
class _CountMaskCopies(TorchDispatchMode):
    """Counts boolean tensors copied to the virtual device (each mask move is one)."""

    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206
        kwargs = kwargs or {}
        if (
            func is torch.ops.aten._to_copy.default
            and args[0].dtype == torch.bool
            and kwargs.get("device") is not None
            and torch.device(kwargs["device"]).type == self.device_type
        ):
            self.count += 1
        return func(*args, **kwargs)


def test_masks_on_another_device_are_moved_once_not_per_step(dev):
    with dev.mode():
        model = _mlp()
        masks = prunekit.compute_masks(model, 0.6, method="magnitude")  # CPU masks
        model.to(dev.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        with _CountMaskCopies(dev.device.type) as copies:
            masks.apply(model)
            handle = masks.attach(optimizer, model)
            for x, y in _batches(5):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x.to(dev.device)), y.to(dev.device)).backward()
                optimizer.step()
                masks.enforce(model, optimizer)
            masks.finalize(model)
            handle.remove()
        assert copies.count == len(masks)  # one move per mask, reused by every later call
        for name, p in model.named_parameters():
            if name in masks:
                assert dev.holds(p) and not p[~masks[name]].any(), name
                assert masks[name].device.type == "cpu"  # the caller's masks stay where they were
        # the moved copy is reused until the stored mask changes; then it is made again
        params = dict(model.named_parameters())
        name = next(iter(masks))
        first = masks.placed({name: params[name]})[name]
        assert masks.placed({name: params[name]})[name] is first
        masks[name][0, 0] = ~masks[name][0, 0]  # an in-place edit of the CPU mask
        again = masks.placed({name: params[name]})[name]
        assert again is not first and bool(again[0, 0].cpu()) == bool(masks[name][0, 0])


def test_masks_already_on_the_parameters_device_are_not_copied(dev):
    with dev.mode():
        model = _mlp().to(dev.device)
        masks = prunekit.compute_masks(model, 0.6, method="magnitude")
        assert all(dev.holds(m) for m in masks.values())
        with _CountMaskCopies(dev.device.type) as copies:
            masks.apply(model)
            masks.enforce(model)
        assert copies.count == 0


def test_like_helpers_follow_their_reference(dev):
    from prunekit.core import device as d

    with dev.mode():
        ref = torch.ones(2, 3, dtype=torch.float16).to(dev.device)
        made = {
            "zeros": d.zeros_like(ref, 4, 5),
            "ones": d.ones_like(ref, (4, 5), dtype=torch.bool),
            "empty": d.empty_like(ref, [4, 5]),
            "full": d.full_like(ref, (4, 5), 7),
            "arange": d.arange_like(ref, 2, 6),
            "tensor": d.tensor_like(ref, [1, 2, 3]),
        }
        assert all(dev.holds(t) for t in made.values())
        assert made["zeros"].shape == (4, 5) and made["zeros"].dtype == torch.float16
        assert made["ones"].dtype == torch.bool and bool(made["ones"].all())
        assert made["full"].cpu().eq(7).all() and made["full"].dtype == torch.float16
        assert made["arange"].cpu().tolist() == [2, 3, 4, 5] and made["arange"].dtype == torch.long
        assert made["tensor"].dtype == torch.long
        assert d.device_of(nn.Linear(2, 2).to(dev.device)).type == dev.device.type
        assert d.device_of(nn.ReLU()) == torch.device("cpu")


# ---------------------------------------------------------------------- the default device
def test_train_device_auto_and_errors(monkeypatch):
    from prunekit.core import device as _device
    from prunekit.experiments.config import ConfigError, resolve

    monkeypatch.setattr(_device, "default_device", lambda: torch.device("cuda", 3))
    assert _device.resolve_device(None) == torch.device("cuda", 3)
    assert _device.resolve_device("auto") == torch.device("cuda", 3)
    assert _device.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(
        ValueError, match="--device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"
    ):
        _device.resolve_device("gpu", "--device")
    base = {"name": "t", "model": {"name": "mlp"}, "data": {"name": "digits"}}
    resolve({**base, "train": {"device": "auto"}})
    with pytest.raises(ConfigError, match="train.device: expected 'auto'"):
        resolve({**base, "train": {"device": "gpu"}})


def test_runner_with_cuda_visible(dev, tmp_path, monkeypatch):
    """``train.device: auto`` with CUDA present: the model trains there, the data stay on the
    CPU, the run finishes and its final masks hold."""
    from prunekit.core import device as _device
    from prunekit.experiments.config import resolve
    from prunekit.experiments.runner import run_experiment

    monkeypatch.setattr(_device, "default_device", lambda: dev.device)
    cfg = {
        "name": "tiny",
        "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "data": {"name": "digits"},
        "train": {"epochs": 0.5, "batch_size": 64, "lr": 0.05, "device": "auto"},
        "prune": {"sparsity": 0.8},
        "retrain": {"epochs": 0.25, "schedule": "llr"},
        "output": str(tmp_path / "out"),
    }
    with dev.mode():
        result = run_experiment(resolve(cfg), quiet=True)
    assert result["final"]
    masks = prunekit.MaskSet.load(next((tmp_path / "out").rglob("final/masks.safetensors")))
    state = prunekit.load_compressed(next((tmp_path / "out").rglob("final/model.compressed*")))
    assert abs(masks.sparsity - 0.8) < 1e-3
    for name, mask in masks.items():
        assert not state[name][~mask].any(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_structured_save_and_load_on_cuda(tmp_path):
    from prunekit import structured as st

    torch.manual_seed(0)
    model = prunekit.create_model("resnet20", width=8).cuda().eval()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    small, _ = st.prune(model, x[:1], ratio=0.5)
    out = st.save_pruned(small, tmp_path / "pruned", "resnet20", width=8)
    again = st.load_pruned(out).cuda().eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x))
