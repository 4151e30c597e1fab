#!/usr/bin/env python3
"""Print a pip constraints file pinning every runtime dependency of pyproject.toml to its lower bound.

`make test-lowest` installs swarrow with these pins in a venv of its own and runs the unit tests and a
RabbitMQ smoke test: a lower bound that does not work fails CI instead of a new user's first import.
Covers `[project] dependencies` and every optional extra except the developer tools (`dev`), whose
pytest/mypy/ruff versions do not reach users. A requirement without a `>=` or `==` bound is an error:
an unbounded dependency cannot be tested at its lowest version.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

# name, then the version specifiers, then an optional environment marker
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")
_LOWER = re.compile(r"(>=|==|~=)\s*([0-9][^,\s]*)")
_SKIPPED_EXTRAS = frozenset({"dev"})


def lowest_pins(pyproject: dict[str, Any]) -> list[str]:
    """`name==lower ; marker` lines for the runtime dependencies and user-facing extras."""
    project = pyproject["project"]
    requirements: list[str] = list(project.get("dependencies", []))
    for extra, items in sorted(project.get("optional-dependencies", {}).items()):
        if extra not in _SKIPPED_EXTRAS:
            requirements.extend(items)
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse the requirement {requirement!r}")
        name, specifiers, marker = match.groups()
        lower = _LOWER.search(specifiers)
        if lower is None:
            raise SystemExit(f"{name}: no lower bound in {requirement!r}; give one (>=X) that a test proves")
        key = re.sub(r"[-_.]+", "-", name).lower()
        pins[key] = f"{key}=={lower.group(2)}" + (f" {marker}" if marker else "")
    return [pins[key] for key in sorted(pins)]


def main(argv: list[str]) -> int:
    """`lowest-constraints.py [PYPROJECT]`: write the constraints to stdout."""
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "pyproject.toml"
    with path.open("rb") as file:
        lines = lowest_pins(tomllib.load(file))
    sys.stdout.write("# Made by scripts/lowest-constraints.py from pyproject.toml: lower bounds, pinned.\n")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
