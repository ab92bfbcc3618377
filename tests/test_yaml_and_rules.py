"""YAML configs: N:M stays a string and implies the sparsity, alias bombs are rejected, and
cross-field rules fail before any work starts."""

from __future__ import annotations

import pytest

from prunekit.cli import main
from prunekit.experiments.config import load_config, parse_overrides
from prunekit.experiments.typed import ConfigError
from prunekit.experiments.yamlio import MAX_EXPANDED_NODES, YAMLError, load_yaml


def test_yaml_1_2_numbers():
    data = load_yaml("a: 2:4\nb: 1:30:00\nc: 0.5\nd: 1e-3\ne: 12\nf: 0x1f\ng: 1_000\nh: .5\n")
    assert data == {"a": "2:4", "b": "1:30:00", "c": 0.5, "d": 0.001, "e": 12, "f": 31,
                    "g": 1000, "h": 0.5}  # fmt: skip
    assert load_yaml("[true, null, ~, 'x', -3, -2.5e2]") == [True, None, None, "x", -3, -250.0]


def test_tags_are_not_objects():
    with pytest.raises(YAMLError, match="src.yaml: not valid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['echo hi']", "src.yaml")


def _bomb(depth: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_rejected(tmp_path):
    # 9 levels of 9 aliases: 9**10 (about 3.5e9) nodes once expanded; rejected while composing
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb(9))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "alias" in str(err.value)
    assert f"more than {MAX_EXPANDED_NODES} nodes" in str(err.value)
    assert main(["run", str(path), "--dry-run"]) == 2
    with pytest.raises(ConfigError, match="--set sweep: aliases expand"):
        parse_overrides(["sweep=" + "{" + _bomb(9).replace("\n", ", ").rstrip(", ") + "}"])


def test_recursive_alias_and_small_aliases():
    with pytest.raises(YAMLError, match="recursion"):
        load_yaml("a: &a [1, *a]")
    # ordinary anchors still work
    data = load_yaml("base: &b {epochs: 2}\ntrain: *b\nretrain: *b\n")
    assert data["train"] == data["retrain"] == {"epochs": 2}


def test_nm_unquoted_implies_sparsity(tmp_path):
    path = tmp_path / "nm.yaml"
    path.write_text("prune:\n  allocation: 2:4\n  schedule: one_shot\n")
    cfg = load_config(path)
    assert cfg.prune.allocation == "2:4" and cfg.prune.sparsity == 0.5
    cfg = load_config(path, ["prune.allocation=1:4"])
    assert cfg.prune.allocation == "1:4" and cfg.prune.sparsity == 0.75
    # the default sparsity stays 0.9 without N:M
    assert load_config(path, ["prune.allocation=global"]).prune.sparsity == 0.9
    assert load_config(path, ["prune.sparsity=0.5"]).prune.sparsity == 0.5


def test_nm_conflicts_fail_at_load(tmp_path):
    path = tmp_path / "nm.yaml"
    path.write_text("prune:\n  allocation: 2:4\n  sparsity: 0.9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        "prune.sparsity: allocation '2:4' prunes exactly 0.5; leave sparsity out or set it to "
        "0.5, got 0.9"
    )
    path.write_text("prune:\n  allocation: 2:4\n  sparsity: null\n")
    assert load_config(path).prune.sparsity == 0.5  # null means: implied
    path.write_text("prune: {allocation: '2:4', schedule: imp}\n")
    with pytest.raises(ConfigError, match="prune.schedule: N:M allocation '2:4' prunes"):
        load_config(path)
    path.write_text("prune: {allocation: '4:2'}\n")
    with pytest.raises(ConfigError, match="prune.allocation: expected N:M with 0 < N < M"):
        load_config(path)


def test_cross_field_rules_before_any_work(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    out = tmp_path / "out"
    cases = {
        "prune: {criterion: snip, criterion_options: {bogus: 1}}": "prune.criterion_options:",
        "prune: {criterion: wanda}": "prune.criterion: 'wanda' is a layer-wise LLM",
        "prune: {allocation: 2:4, sparsity: 0.9}": "prune.sparsity: allocation '2:4'",
        "prune: {schedule: oneshot}": "prune.schedule: unknown schedule",
    }
    for text, message in cases.items():
        path.write_text(f"{text}\noutput: {out}\n")
        for extra in (["--dry-run"], []):
            assert main(["run", str(path), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"prunekit run: error: {message}"), (text, err)
            assert len(err.strip().splitlines()) == 1
        assert not out.exists()  # nothing was created: no data, no training


def test_nm_dry_run_plans_half(tmp_path, capsys):
    path = tmp_path / "nm.yaml"
    path.write_text(
        "model: {name: mlp, kwargs: {hidden: [8]}}\ndata: {name: digits}\n"
        "prune: {allocation: 2:4, targets: {keep_last: true}}\n"
        f"output: {tmp_path / 'out'}\n"
    )
    assert main(["run", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "sparsity: 0.5" in text and "2:4" in text


def test_only_alias_expansion_is_capped(monkeypatch):
    import prunekit.experiments.yamlio as yamlio

    monkeypatch.setattr(yamlio, "MAX_EXPANDED_NODES", 20)
    assert len(load_yaml("[" + ", ".join(["1"] * 50) + "]")) == 50  # big, but written out
    with pytest.raises(YAMLError, match="aliases expand to more than 20 nodes"):
        load_yaml("a: &a [1, 2, 3, 4, 5]\nb: [*a, *a, *a, *a, *a]\n")
