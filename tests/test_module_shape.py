"""Small rooms with a name on the door: no module in `swarrow/` over 450 lines, each opens with a docstring.

A module past the limit is doing several jobs: split it by concern (see ARCHITECTURE.md) rather than
raise the limit. The docstring's first line names the module's job: `head -1` over the tree is the
table of contents.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450


def _sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def test_the_trees_are_there() -> None:
    """Else the checks below pass on nothing."""
    assert len(_sources("swarrow")) > 80
    assert len(_sources("processors")) > 10


def test_no_module_in_swarrow_is_over_the_limit() -> None:
    sizes = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in _sources("swarrow")}
    over = {str(path.relative_to(ROOT)): lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: split them by concern"


@pytest.mark.parametrize("package", ["swarrow", "processors"])
def test_every_module_opens_with_a_docstring_naming_its_job(package: str) -> None:
    missing = []
    for path in _sources(package):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        docstring = ast.get_docstring(tree, clean=False)
        if not docstring or not docstring.splitlines()[0].strip():
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], "modules without a docstring whose first line names their job"
