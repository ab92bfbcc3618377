"""The documentation stays true: every ```python block of README.md and docs/*.md runs as is,
alone, in an empty folder (``examples/`` reachable as from the repository root); every relative
link points at a file and heading that exist.

A block that cannot run here (a local dataset, a GPU, a model folder) is preceded by a comment
``<!-- skip-test: the reason -->`` and reported as skipped with that reason.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import re
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*skip-test:\s*(.+?)\s*-->")
TIMEOUT_S = 120  # generous: the machine may be loaded; blocks take a few seconds when idle


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line of the fence, code, skip reason or None) of every ```python block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            match = SKIP.search(before)
            blocks.append((start + 1, "\n".join(lines[start + 1 : j]), match and match.group(1)))
            i = j
        i += 1
    return blocks


BLOCKS = [
    pytest.param(code, reason, id=f"{path.relative_to(ROOT)}:{line}")
    for path in DOCS
    for line, code, reason in python_blocks(path)
]


def _timeout(signum, frame):  # noqa: ANN001, ARG001
    raise TimeoutError(f"the block ran longer than {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def _library_registered():
    """Import every prunekit module first, so that the built-in entries are registered before
    any block runs: the clean-up below then removes only what a block itself registered."""
    import prunekit

    for info in pkgutil.walk_packages(prunekit.__path__, "prunekit."):
        with contextlib.suppress(ImportError):  # an optional dependency not installed
            importlib.import_module(info.name)


@pytest.mark.parametrize(("code", "reason"), BLOCKS)
def test_python_block_runs(code, reason, tmp_path, monkeypatch, _library_registered):
    if reason:
        pytest.skip(reason)
    from prunekit.core.registry import Registry

    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    # What a block registers (e.g. a custom criterion) is removed afterwards: blocks run alone.
    added: list[tuple[Registry, str]] = []
    original = Registry.register

    def register(self, name, **kwargs):  # noqa: ANN001, ANN202
        if name.lower() not in self._entries:  # never drop an entry the block did not add
            added.append((self, name.lower()))
        return original(self, name, **kwargs)

    monkeypatch.setattr(Registry, "register", register)
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(TIMEOUT_S)
    try:
        exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for registry, key in added:
            registry._entries.pop(key, None)
            registry._docs.pop(key, None)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code:
            anchors.update(re.findall(r'<a id="([^"]+)"', line))  # explicit anchors
        if in_code or not line.startswith("#"):
            continue
        base = _anchor(line.lstrip("#"))
        n = seen.get(base, 0)
        anchors.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return anchors


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in _links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not broken, broken


def test_anchor_rules():
    assert _anchor(" Recipe schedules: soups, sfw, sap") == "recipe-schedules-soups-sfw-sap"
    assert _anchor(" `prunekit run CONFIG.yaml [--set key=value ...]`") == (
        "prunekit-run-configyaml---set-keyvalue-"
    )


def test_license_is_the_apache_2_0_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_guide_lists_every_registered_criterion():
    from prunekit.criteria import CRITERIA

    text = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
    section = text[text.index("## Criteria") : text.index("## Allocations")]
    listed = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert listed == set(CRITERIA.names())
