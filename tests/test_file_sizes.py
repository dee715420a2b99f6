"""The size rule of docs/architecture.md: a module over 400 lines is listed there, with its reason."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 400
PACKAGES = ("flowlet", "bap", "analysis", "pipelines")


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/architecture.md has no '## {title}' section"
    return match.group(1)


def listed_files(text: str) -> dict[str, str]:
    """``{path: reason}`` of the table rows ``| `path` | lines | reason |`` in the long-files section."""
    rows = re.findall(
        r"^\| `([^`]+\.py)` \| \d+ \| (.+?) \|$", _section(text, "Files longer than 400 lines"), re.M
    )
    return dict(rows)


def long_files(root: Path) -> dict[str, int]:
    """``{path: lines}`` of the Python modules over :data:`LIMIT` lines in the packages."""
    counts = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > LIMIT:
                counts[path.relative_to(root).as_posix()] = lines
    return counts


def test_every_long_module_is_listed_with_a_reason():
    listed = listed_files((ROOT / "docs" / "architecture.md").read_text(encoding="utf-8"))
    unlisted = {path: n for path, n in long_files(ROOT).items() if path not in listed}
    assert not unlisted, f"split these along their ideas, or list them in docs/architecture.md: {unlisted}"
    stale = sorted(set(listed) - set(long_files(ROOT)))
    assert not stale, (
        f"docs/architecture.md lists modules that are gone or no longer over {LIMIT} lines: {stale}"
    )
    assert all(len(reason.split()) >= 3 for reason in listed.values())


def test_the_rule_catches_a_long_module_that_is_not_listed(tmp_path):
    (tmp_path / "bap").mkdir()
    (tmp_path / "bap" / "short.py").write_text("x = 1\n" * LIMIT)
    (tmp_path / "bap" / "long.py").write_text("x = 1\n" * (LIMIT + 1))
    assert long_files(tmp_path) == {"bap/long.py": LIMIT + 1}
    doc = "## Files longer than 400 lines\n\n| file | lines | why |\n|---|---|---|\n| `bap/other.py` | 401 | one idea here |\n"
    assert "bap/long.py" not in listed_files(doc) and listed_files(doc) == {"bap/other.py": "one idea here"}
