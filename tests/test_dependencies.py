"""pyproject.toml tells the truth: each imported package declared, bounded, pinned by the lowest job."""

from __future__ import annotations

import ast
import importlib.util
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lowest_constraints", ROOT / "scripts/lowest-constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for sep in "<>=!~[ ":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def _declared() -> dict[str, str]:
    """Distribution name (normalized) -> requirement, for the dependencies and every extra."""
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for items in project["optional-dependencies"].values():
        requirements.extend(items)
    return {_name(requirement): requirement for requirement in requirements}


def _imported_top_level_modules() -> set[str]:
    names: set[str] = set()
    for package in ("swarrow", "processors"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"swarrow", "processors"}


def test_every_third_party_package_the_code_imports_is_declared() -> None:
    declared = _declared()
    distributions = packages_distributions()
    missing = []
    for module in sorted(_imported_top_level_modules()):
        owners = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if not owners & declared.keys():
            missing.append(f"{module} (from {sorted(owners)})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


@pytest.mark.parametrize("name", ["aio-pika", "aiormq", "pamqp", "prometheus-client"])
def test_packages_whose_private_internals_are_used_have_an_upper_bound(name: str) -> None:
    assert "<" in _declared()[name], f"{name} needs an upper bound: {_declared()[name]!r}"


def test_every_runtime_dependency_has_a_lower_bound_pinned_by_the_lowest_job() -> None:
    pins = _script().lowest_pins(PYPROJECT)
    pinned = {line.split("==")[0] for line in pins}
    assert {_name(requirement) for requirement in PYPROJECT["project"]["dependencies"]} <= pinned
    assert all("==" in line for line in pins)
    # 8.1.8 could not import swarrow.cli; 8.2's test runner drops stderr and ends stdin with EOFError.
    assert "click==8.3" in pins
    assert "aiormq==7.2.1" in pins  # the first whose reader looks up _on_deliver_frame per frame


def test_the_constraints_script_refuses_a_dependency_without_a_lower_bound() -> None:
    with pytest.raises(SystemExit, match="no lower bound"):
        _script().lowest_pins({"project": {"dependencies": ["click"], "optional-dependencies": {}}})


def test_the_constraints_script_keeps_markers_and_skips_the_dev_tools() -> None:
    pins = _script().lowest_pins(
        {
            "project": {
                "dependencies": ["aio-pika>=10.0,<11"],
                "optional-dependencies": {
                    "uvloop": ["uvloop>=0.19; sys_platform != 'win32'"],
                    "dev": ["pytest>=8.0"],
                },
            }
        }
    )
    assert pins == ["aio-pika==10.0", "uvloop==0.19 ; sys_platform != 'win32'"]


def test_no_click_param_type_is_subscripted_at_run_time() -> None:
    # click.ParamType is generic only from click 8.4; the lowest click allowed cannot subscript it.
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "swarrow").rglob("*.py")
        if "(click.ParamType[" in path.read_text()
    ]
    assert not offenders, f"subclass swarrow.cli.params.ParamType instead: {offenders}"
