"""The recipe registry drives the runner, the config validator, `prunekit list` and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from prunekit.experiments.config import ConfigError, accepted_names, resolve
from prunekit.recipes import list_recipes, schedule_names
from prunekit.recipes.context import RunContext
from prunekit.recipes.executor import Stage, execute
from prunekit.recipes.registry import RECIPES, get_recipe, recipes_table
from prunekit.recipes.spec import PruneSpec, TrainSpec

ROOT = Path(__file__).resolve().parents[1]


def test_docs_table_is_the_registry():
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(
        r"<!-- recipes-table:begin -->\n(.*?)\n<!-- recipes-table:end -->", text, re.S
    )
    assert block is not None
    assert block.group(1) == recipes_table()


def test_runner_names_no_method():
    """runner.py looks recipes up; no recipe name appears in it as a string."""
    source = (ROOT / "src" / "prunekit" / "experiments" / "runner.py").read_text()
    for name in list_recipes():
        assert f'"{name}"' not in source and f"'{name}'" not in source, name


def test_config_validator_accepts_exactly_the_schedules():
    assert accepted_names()["prune.schedule"] == schedule_names()
    assert set(schedule_names()) | {"data_prune"} == set(list_recipes())
    with pytest.raises(ConfigError, match="prune.schedule: unknown schedule 'nope'"):
        resolve({"prune": {"schedule": "nope"}})


def test_unknown_recipe_names_the_argument():
    with pytest.raises(ValueError, match="prune.schedule: unknown schedule 'nope'; valid names"):
        get_recipe("nope")


def test_duplicate_registration_is_refused():
    recipe = get_recipe("imp")
    with pytest.raises(ValueError, match="already registered"):
        RECIPES.register("imp")(recipe)


def _ctx(run_dir=None) -> RunContext:
    from prunekit.data import create_dataset

    data = create_dataset("digits")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = RunContext(model, data, TrainSpec(epochs=1), PruneSpec(), run_dir=run_dir)
    ctx.dense_dir = None if run_dir is None else run_dir / "dense"
    ctx.run_key = ctx.dense_key = "0" * 64
    return ctx


def test_executor_skips_a_done_stage_and_applies_its_record(tmp_path):
    calls: list[str] = []

    def run(ctx, directory):
        calls.append("run")
        with torch.no_grad():
            ctx.model[1].weight.add_(1.0)
        return {"value": 7}

    def apply(ctx, record):
        ctx.extra["value"] = record["value"]

    stage = Stage("work", run, apply)
    first = execute([stage], _ctx(tmp_path))
    second = execute([stage], _ctx(tmp_path))  # a fresh model: the weights come from the file
    assert calls == ["run"]
    assert first.extra == second.extra == {"value": 7}
    assert torch.equal(first.model[1].weight, second.model[1].weight)
    assert (tmp_path / "work" / "stage.json").is_file()


def test_executor_in_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ctx = execute([Stage("work", lambda ctx, d: {"dir": d}, None)], _ctx())
    assert ctx.run_dir is None and list(tmp_path.iterdir()) == []


def test_stage_output_of_another_config_is_refused(tmp_path):
    from prunekit.core.errors import StaleFileError

    stage = Stage("work", lambda ctx, d: {"x": 1}, None)
    execute([stage], _ctx(tmp_path))
    other = _ctx(tmp_path)
    other.run_key = "1" * 64
    with pytest.raises(StaleFileError, match="work"):
        execute([stage], other)


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_builds_named_stages(name):
    recipe = get_recipe(name)
    assert recipe.doc and recipe.name == name
    ctx = _ctx()
    selected = recipe.selected_by == "prune.schedule"
    cfg = resolve({"prune": {"schedule": name}} if selected else {"data_prune": {"score": "el2n"}})
    from prunekit.experiments.runner import recipe_of

    assert recipe_of(cfg) is recipe
    ctx.options = recipe.configure(cfg)
    stages = recipe.stages(ctx)
    names = [s.name for s in stages]
    assert len(set(names)) == len(names) and names
    assert (names[0] == "dense") == recipe.trains_dense


def test_recipe_option_errors_name_the_config_key(tmp_path):
    """An option the recipe refuses before training is named by its full config key."""
    from prunekit.experiments.runner import run_experiment

    base = {
        "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
        "data": {"name": "digits"},
        "train": {"epochs": 1, "threads": 1},
        "output": str(tmp_path),
    }
    soups = resolve({**base, "prune": {"schedule": "soups", "options": {"m": 0}}})
    with pytest.raises(ConfigError, match=r"^prune\.options\.m: "):
        run_experiment(soups, quiet=True)
    imp = resolve({**base, "prune": {"schedule": "imp", "rewind": "weights",
                                     "rewind_iteration": 10**6}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"^prune\.rewind_iteration: "):
        run_experiment(imp, quiet=True)
