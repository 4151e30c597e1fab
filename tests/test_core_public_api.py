"""Keep `swarrow.__all__` honest: sorted, importable, and re-exporting what the top level promises."""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys
from types import ModuleType

import swarrow

# Modules whose whole `__all__` is the top-level API (`from swarrow import ...`).
REEXPORTED = {
    "broker",
    "callback",
    "consumer",
    "control",
    "errors",
    "factory",
    "message",
    "processor",
    "provider",
    "publisher",
}
# Modules used by their own name (`from swarrow.topology import ...`): not re-exported wholesale.
# `swarrow.runner`, `memory`, `stack`, `settings` are partly re-exported: the top level picks by name.
SUBMODULE_API = {
    "amqp",
    "backoff",
    "cli",
    "config",
    "dead_letters",
    "demo",
    "exits",
    "health",
    "http",
    "jobs",
    "log_fast",
    "log_writer",
    "logs",
    "memory",
    "metrics",
    "multi_queue",
    "ordering",
    "otel",
    "outcome",
    "pool",
    "prepare",
    "publishable",
    "replies",
    "rpc",
    "runner",
    "settings",
    "stack",
    "stop_signals",
    "swarrot",
    "scan",
    "topology",
    "units",
    "urls",
    "validation",
}


def _ruff_sort_key(name: str) -> tuple[int, list[int | str]]:
    # RUF022's "isort-style" order: SCREAMING_CASE, then CamelCase, then the rest; natural within each.
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _public_modules() -> dict[str, ModuleType]:
    return {
        info.name: importlib.import_module(f"swarrow.{info.name}")
        for info in pkgutil.iter_modules(swarrow.__path__)
        if not info.name.startswith("_")
    }


def test_all_is_sorted_and_unique() -> None:
    assert swarrow.__all__ == sorted(swarrow.__all__, key=_ruff_sort_key)
    assert len(set(swarrow.__all__)) == len(swarrow.__all__)


def test_every_exported_name_is_importable() -> None:
    for name in swarrow.__all__:
        assert hasattr(swarrow, name), name


def test_every_public_module_is_classified_and_declares_real_names() -> None:
    modules = _public_modules()
    unclassified = set(modules) - REEXPORTED - SUBMODULE_API
    assert not unclassified, f"classify in this test (REEXPORTED or SUBMODULE_API): {sorted(unclassified)}"
    assert set(modules) >= REEXPORTED
    for name, module in modules.items():
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"swarrow.{name} has no __all__"
        for attr in exported:
            assert hasattr(module, attr), f"swarrow.{name}.__all__ lists missing {attr!r}"


def test_reexported_modules_are_exported_whole_and_unshadowed() -> None:
    modules = _public_modules()
    for name in REEXPORTED:
        module = modules[name]
        for attr in module.__all__:
            assert attr in swarrow.__all__, f"swarrow.{name}.{attr} missing from swarrow.__all__"
            assert getattr(swarrow, attr) is getattr(module, attr), f"swarrow.{attr} shadows swarrow.{name}"


def test_every_top_level_name_comes_from_a_public_module() -> None:
    modules = list(_public_modules().values())
    for attr in swarrow.__all__:
        if attr == "__version__":
            continue
        owners = [module for module in modules if attr in module.__all__]
        assert owners, f"swarrow.{attr} is not in any public module's __all__"
        assert any(getattr(swarrow, attr) is getattr(owner, attr) for owner in owners), attr
    assert isinstance(swarrow.__version__, str)


def test_the_top_level_is_what_the_readme_documents() -> None:
    # Internal or submodule names stay where they are defined.
    for internal in ("BuiltStack", "mask_url", "DEFAULT_URL", "MemoryPublisher", "PoolStatusProcessor"):
        assert internal not in swarrow.__all__, internal
    assert {"AmqpBroker", "MemoryBroker", "MemoryMessageProvider", "Settings", "run", "consume"} <= set(
        swarrow.__all__
    )


def test_import_swarrow_does_not_import_aio_pika_until_amqp_broker_is_used() -> None:
    code = (
        "import sys, swarrow; assert 'aio_pika' not in sys.modules, 'imported eagerly'; "
        "broker = swarrow.AmqpBroker; assert 'aio_pika' in sys.modules; print(broker.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AmqpBroker"
