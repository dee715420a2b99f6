"""Project-wide rules: the README's commands are the ones CI runs, and the package dependency rule holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```\s*\n(.*?)\n```\s*<!-- /{marker} -->", text, re.S)
    assert match, f"README.md lacks the {marker} block"
    return match.group(1).strip()


def test_readme_has_two_single_line_commands():
    for marker in ("main-command", "test-command"):
        command = _block(marker)
        assert "\n" not in command
        assert "pip install torch==2.13.0" in command
    assert "pytest" in _block("test-command")


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "test-command" in script


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["flowlet", "bap", "analysis"])
def test_dependency_rule(package):
    """pipelines -> {flowlet, bap, analysis}; bap/analysis use only flowlet.data; flowlet uses neither."""
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top != "pipelines", f"{path} imports {name}"
            if package == "flowlet":
                assert top not in {"bap", "analysis"}, f"{path} imports {name}"
            elif top == "flowlet":
                assert name == "flowlet" or name.startswith("flowlet.data"), f"{path} imports {name}"
