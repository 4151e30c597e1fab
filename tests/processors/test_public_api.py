"""Keep `processors.__all__` honest: sorted, importable, and complete over every public module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from types import ModuleType

import processors


def _ruff_sort_key(name: str) -> tuple[int, list[int | str]]:
    # RUF022's "isort-style" order: SCREAMING_CASE, then CamelCase, then the rest; natural within each.
    kind = 0 if name.isupper() and len(name) > 1 else 1 if name[:1].isupper() else 2
    return kind, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _public_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"processors.{info.name}")
        for info in pkgutil.iter_modules(processors.__path__)
        if not info.name.startswith("_")
    ]


def test_all_is_sorted_and_unique() -> None:
    assert processors.__all__ == sorted(processors.__all__, key=_ruff_sort_key)
    assert len(set(processors.__all__)) == len(processors.__all__)


def test_every_exported_name_is_importable() -> None:
    for name in processors.__all__:
        assert getattr(processors, name, None) is not None, name


def test_every_public_module_declares_an_all_of_real_names() -> None:
    modules = _public_modules()
    assert len(modules) >= 14
    for module in modules:
        exported = getattr(module, "__all__", None)
        assert exported, f"{module.__name__} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{module.__name__}.__all__ lists missing {name!r}"


def test_every_public_class_and_default_stack_are_reexported() -> None:
    expected = {"default_stack"}
    for module in _public_modules():
        for name in module.__all__:
            if inspect.isclass(getattr(module, name)):
                expected.add(name)
                assert getattr(processors, name, None) is getattr(module, name), f"{module.__name__}.{name}"
    missing = expected - set(processors.__all__)
    assert not missing, f"add to processors.__all__: {sorted(missing)}"
    unexpected = set(processors.__all__) - expected
    assert not unexpected, f"exported but not a public class of a module: {sorted(unexpected)}"


def test_agreed_processor_names_are_exported() -> None:
    agreed = {
        "AckProcessor",
        "CallbackProcessor",
        "DeliveryLimitProcessor",
        "ExceptionCatcherProcessor",
        "InstantRetryProcessor",
        "LoggerProcessor",
        "MaxMessagesProcessor",
        "MaxRuntimeProcessor",
        "MemoryLimitProcessor",
        "MetricsProcessor",
        "RetryProcessor",
        "SignalHandlerProcessor",
        "StopWhenIdleProcessor",
        "TimeLimitProcessor",
    }
    assert agreed <= set(processors.__all__)


def test_wrapping_processors_take_inner_positionally_and_options_by_keyword() -> None:
    for name in processors.__all__:
        cls = getattr(processors, name)
        if not name.endswith("Processor") or name == "CallbackProcessor":
            continue
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert params[0].name == "inner", name
        assert params[0].kind is inspect.Parameter.POSITIONAL_ONLY, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name
        assert cls.__doc__, f"{name} needs a docstring"
