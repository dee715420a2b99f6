"""Project-wide rules: the README's commands are the ones CI runs, and the import rules of docs/architecture.md hold."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The parts of docs/architecture.md, most specific first: a module belongs to the first part that prefixes it.
PARTS = (
    "flowlet.data",
    "flowlet.paths",
    "flowlet.solvers",
    "flowlet.guidance",
    "flowlet.wavelets",
    "flowlet.models",
    "flowlet",
    "bap",
    "analysis",
    "pipelines",
    "configs",
)
LEAVES = ("flowlet.paths", "flowlet.solvers", "flowlet.guidance", "flowlet.wavelets")
# What each part may import from the project besides itself (docs/architecture.md, "Allowed imports").
ALLOWED: dict[str, frozenset[str]] = {
    "flowlet.data": frozenset({"configs"}),
    **{leaf: frozenset() for leaf in LEAVES},
    "flowlet.models": frozenset(),
    "flowlet": frozenset({"flowlet.data", *LEAVES, "flowlet.models", "configs"}),
    "bap": frozenset({"flowlet.data", "configs"}),
    "analysis": frozenset({"flowlet.data", "configs"}),
    "pipelines": frozenset(PARTS),
    "configs": frozenset(),
}
TOP_LEVEL = ("flowlet", "bap", "analysis", "pipelines", "configs")


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


def module_name(root: Path, path: Path) -> str:
    """``root/flowlet/data/io.py`` -> ``flowlet.data.io``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(root: Path, name: str) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """Every project module a file imports, as (line, absolute dotted name).

    Relative imports are resolved against the file's package, and ``from package import name`` counts as an import
    of ``package.name`` when that is a module (``from flowlet import sampling`` imports ``flowlet.sampling``). Lazy
    imports inside functions count too.
    """
    this = module_name(root, path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                yield node.lineno, candidate if _is_module(root, candidate) else module


def part_of(name: str) -> str | None:
    for part in PARTS:
        if name == part or name.startswith(part + "."):
            return part
    return None


def violations(root: Path) -> list[str]:
    """Every import in ``root``'s packages that docs/architecture.md forbids, as readable lines."""
    found = []
    for top in TOP_LEVEL:
        for path in sorted((root / top).rglob("*.py")):
            source = part_of(module_name(root, path))
            for line, name in imported_modules(root, path):
                target = part_of(name)
                if target is None or target == source or target in ALLOWED[source]:
                    continue
                found.append(f"{path.relative_to(root)}:{line}: {source} may not import {name} ({target})")
    return found


def test_every_import_follows_the_architecture():
    assert violations(ROOT) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for top in TOP_LEVEL:
        for folder in [root / top, *(p for p in (root / top).rglob("*") if p.is_dir())]:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").touch()
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"bap/x.py": "from flowlet import sampling\n", "flowlet/sampling.py": ""},
            "bap may not import flowlet.sampling",
        ),
        ({"bap/x.py": "from flowlet import __version__\n"}, "bap may not import flowlet (flowlet)"),
        ({"analysis/x.py": "def f():\n    import bap.train\n"}, "analysis may not import bap.train"),
        ({"flowlet/data/x.py": "import flowlet\n"}, "flowlet.data may not import flowlet (flowlet)"),
        (
            {"flowlet/data/prep/x.py": "from ...sampling import f\n", "flowlet/sampling.py": ""},
            "flowlet.data may not import flowlet.sampling",
        ),
        (
            {"flowlet/solvers.py": "from .models import unet\n", "flowlet/models/unet.py": ""},
            "flowlet.solvers",
        ),
        ({"flowlet/x.py": "from analysis import volumetrics\n"}, "flowlet may not import analysis"),
        ({"configs/x.py": "import pipelines\n"}, "configs may not import pipelines"),
    ],
)
def test_the_rules_catch_a_planted_violation(tmp_path, files, expected):
    found = violations(_plant(tmp_path, files))
    assert len(found) == 1, found
    assert expected in found[0]


def test_allowed_imports_are_not_flagged(tmp_path):
    files = {
        "bap/x.py": "from flowlet.data import io\nfrom . import y\n",
        "bap/y.py": "",
        "flowlet/data/io.py": "",
        "flowlet/x.py": "from flowlet import __version__\nfrom .data import io\n",
        "pipelines/x.py": "import bap.y\nimport analysis\nfrom flowlet import x\n",
    }
    assert violations(_plant(tmp_path, files)) == []
