"""docs/architecture.md stays true: every file, module and name it mentions exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "gateway"


def _code_spans() -> list[str]:
    return re.findall(r"`([^`\s]+)`", DOC.read_text())


def _modules() -> dict[str, list[str]]:
    """Module names by the stem of their file (``relay`` -> ``gateway.server.relay``)."""
    found: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.stem == "__main__":  # importing it runs the command
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.setdefault(path.stem, []).append(name)
    return found


FILES = sorted({span for span in _code_spans() if span.endswith((".py", "/"))})
NAMES = sorted(
    {
        span.removesuffix("()")
        for span in _code_spans()
        if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+(\(\))?", span) and not span.endswith(".py")
    }
)


@pytest.mark.parametrize("path", FILES)
def test_every_file_it_names_exists(path: str) -> None:
    if (ROOT / path).exists() or (PACKAGE / path).exists():
        return
    assert "/" not in path.rstrip("/") and list(PACKAGE.rglob(path.rstrip("/"))), path


@pytest.mark.parametrize("name", NAMES)
def test_every_name_it_names_exists(name: str) -> None:
    """``module.attr`` (a module of the package by its file's stem) or ``Class.attr`` (a class
    some module of the package defines)."""
    first, *rest = name.split(".")
    modules = _modules()
    candidates = [importlib.import_module(m) for m in modules.get(first, [])]
    if not candidates:
        candidates = [
            getattr(importlib.import_module(m), first)
            for names in modules.values()
            for m in names
            if hasattr(importlib.import_module(m), first)
        ]
    assert candidates, f"{first} is neither a module nor a class of the package"
    for candidate in candidates:
        target = candidate
        for attribute in rest:
            target = getattr(target, attribute, None)
        if target is not None:
            return
    raise AssertionError(f"{name} does not exist")


def test_the_page_names_things_to_check() -> None:
    assert len(FILES) > 20 and len(NAMES) > 20


def test_every_module_is_on_the_map() -> None:
    """A newcomer finds every module of the package on the page (generated code aside)."""
    text = DOC.read_text()
    modules = [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "v1" not in path.relative_to(PACKAGE).parts and path.name != "__init__.py"
    ]
    missing = [str(path.relative_to(ROOT)) for path in modules if f"`{path.name}`" not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}"
