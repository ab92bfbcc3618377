"""Damaged files of every kind prunekit writes fail with a prunekit error naming the file.

Each file is written once, then bytes are flipped and the file truncated at offsets drawn with a
fixed seed (plus the header-length bytes, the header and the last byte). Loading must either
succeed (a flip inside tensor data is still a valid file) or raise
:class:`prunekit.core.errors.FileFormatError` whose message names the file, never another exception
type, and a failed load leaves the in-memory model and optimizer bitwise unchanged.
"""

from __future__ import annotations

import random
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from conftest import toy_mlp
from prunekit.core.errors import FileFormatError
from prunekit.core.serialization import read_json, write_json
from prunekit.experiments.store import ResultsStore
from prunekit.export import load_compressed_into, save_compressed
from prunekit.recipes.files import load_masks as _load_masks
from prunekit.recipes.files import read_stage_json as _read_stage_json
from prunekit.structured.serialize import load_pruned, save_pruned
from prunekit.training.checkpoint import load_checkpoint, save_checkpoint

FLIPS = 14
TRUNCATIONS = 6


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _offsets(size: int, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    fixed = [0, 3, 7, 8, 9, size // 2, size - 1]
    return sorted({o for o in fixed + [rng.randrange(size) for _ in range(count)] if 0 <= o < size})


def _mutations(data: bytes, seed: int) -> list[tuple[str, bytes]]:
    out = [("empty", b""), ("random bytes", random.Random(seed).randbytes(max(len(data), 64)))]
    if len(data) >= 8:
        out.append(("huge header", struct.pack("<Q", 2**40) + data[8:]))
    for offset in _offsets(len(data), FLIPS, seed):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        out.append((f"flip@{offset}", bytes(flipped)))
    rng = random.Random(seed + 1)
    for cut in sorted(
        {1, 7, 9, len(data) - 1, *(rng.randrange(len(data)) for _ in range(TRUNCATIONS))}
    ):
        out.append((f"truncate@{cut}", data[:cut]))
    return out


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = toy_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 32)).sum().backward()
    optimizer.step()
    return model, optimizer


def _check(
    path: Path, data: bytes, load: Callable[[], object], watched: list[nn.Module] = ()
) -> int:
    """Run every mutation of ``data`` written to ``path`` through ``load``; count the failures."""
    failures = 0
    for label, mutated in _mutations(data, seed=len(data)):
        path.write_bytes(mutated)
        before = [_state(m) for m in watched]
        try:
            load()
        except FileFormatError as err:
            failures += 1
            assert str(path) in str(err), (label, str(err))
            assert all(_same(b, m.state_dict()) for b, m in zip(before, watched)), label
        except Exception as err:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"{path.name} {label}: {type(err).__name__}: {err}")
    return failures


def test_masks_file(tmp_path):
    model = toy_mlp()
    path = tmp_path / "masks.safetensors"
    prunekit.prune(model, 0.6).save(path)
    target = toy_mlp()
    assert _check(path, path.read_bytes(), lambda: _load_masks(path, target), [target]) > 5


def test_compressed_model(tmp_path):
    model = toy_mlp()
    prunekit.prune(model, 0.6).finalize(model)
    path = tmp_path / "model.compressed.safetensors"
    save_compressed(model, path)
    target = toy_mlp()
    with torch.no_grad():
        target[0].weight.add_(1.0)
    assert _check(path, path.read_bytes(), lambda: load_compressed_into(target, path), [target]) > 5


def test_checkpoint(tmp_path):
    model, optimizer = _model_and_optimizer()
    masks = prunekit.prune(model, 0.5)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, model, optimizer, masks=masks, iteration=7, extra={"seed": 0})
    target, target_opt = _model_and_optimizer()
    with torch.no_grad():
        target[0].weight.add_(1.0)
    momentum = target_opt.state[target[0].weight]["momentum_buffer"]

    def load() -> None:
        before = momentum.clone()
        try:
            load_checkpoint(path, target, target_opt, restore_rng=False)
        except FileFormatError:
            assert torch.equal(before, target_opt.state[target[0].weight]["momentum_buffer"])
            raise

    assert _check(path, path.read_bytes(), load, [target]) > 5


def test_structured_model_directory(tmp_path):
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_features=8, num_classes=3, hidden=[6])
    save_pruned(model, tmp_path / "m")
    failures = 0
    for name in ("architecture.json", "model.safetensors"):
        path = tmp_path / "m" / name
        original = path.read_bytes()
        failures += _check(path, original, lambda: load_pruned(tmp_path / "m"))
        path.write_bytes(original)
    assert failures > 10
    assert isinstance(load_pruned(tmp_path / "m"), nn.Module)


def test_results_database(tmp_path):
    store = ResultsStore(tmp_path)
    for i in range(3):
        store.record(f"run{i}", f"h{i}", {"seed": i}, "done", {"acc": 0.5 + i}, str(tmp_path), "m")
    path = tmp_path / "results.sqlite"
    for extra in ("-wal", "-shm"):
        assert not (tmp_path / f"results.sqlite{extra}").exists()  # all merged into the file
    data = path.read_bytes()

    def load() -> None:
        for extra in ("-wal", "-shm"):
            (tmp_path / f"results.sqlite{extra}").unlink(missing_ok=True)
        ResultsStore(tmp_path, timeout=1.0).runs()

    assert _check(path, data, load) > 3


def test_run_json(tmp_path):
    path = tmp_path / "phase.json"
    write_json({"phase": 1, "sparsity": 0.5, "retrained": {"test_top1": 0.9}}, path)
    assert _check(path, path.read_bytes(), lambda: read_json(path)) > 3
    assert _check(path, path.read_bytes(), lambda: _read_stage_json(path)) > 3


def test_corrupt_database_error_is_not_a_raw_sqlite_error(tmp_path):
    (tmp_path / "results.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xff" * 4080)
    with pytest.raises(FileFormatError) as info:
        ResultsStore(tmp_path, timeout=1.0).runs()
    assert not isinstance(info.value, sqlite3.Error)


def test_dense_model_file(tmp_path):
    from safetensors.torch import save_file

    from prunekit.recipes.files import load_state_file as _load_state

    path = tmp_path / "dense.safetensors"
    save_file({k: v.contiguous() for k, v in toy_mlp().state_dict().items()}, str(path))
    target = toy_mlp()
    with torch.no_grad():
        target[0].weight.add_(1.0)
    assert _check(path, path.read_bytes(), lambda: _load_state(target, path), [target]) > 5


def test_calibration_tokens_file(tmp_path):
    from safetensors.torch import save_file

    from prunekit.commands.prune_llm import _calibration

    path = tmp_path / "calib.safetensors"
    save_file({"input_ids": torch.arange(64, dtype=torch.long).reshape(4, 16)}, str(path))
    assert _check(path, path.read_bytes(), lambda: _calibration(str(path))) > 5
    save_file({"input_ids": torch.zeros(4, 16)}, str(path))
    with pytest.raises(FileFormatError, match="dtype torch.float32, expected an integer dtype"):
        _calibration(str(path))
