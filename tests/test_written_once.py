"""Written once: exit codes live in `swarrow/exits.py`, exponential backoff in `swarrow/backoff.py`.

Scanned from the source with `ast`: a second copy of either is a test failure, not a review comment.
The "second signal = stop now" rule is `swarrow/stop_signals.py`, used by the consumer and the pool.
"""

from __future__ import annotations

import ast
from pathlib import Path

from processors.signal_handler import SignalHandlerProcessor
from swarrow import exits
from swarrow.backoff import Backoff
from swarrow.stop_signals import StopSignals

ROOT = Path(__file__).resolve().parent.parent


def _trees() -> dict[str, ast.AST]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
        for package in ("swarrow", "processors")
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def test_exit_codes_are_defined_in_one_module_and_distinct() -> None:
    defined = []
    for where, tree in _trees().items():
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            value = getattr(node, "value", None)
            for target in targets:
                if (
                    isinstance(target, ast.Name)
                    and target.id.startswith("EXIT_")
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, int)
                ):
                    defined.append((where, target.id, value.value))
    assert {where for where, _, _ in defined} == {"swarrow/exits.py"}
    codes = [code for _, _, code in defined]
    assert len(codes) == len(set(codes)) >= 8, defined
    assert {name: getattr(exits, name) for _, name, _ in defined} == {name: code for _, name, code in defined}


def _grows_exponentially(node: ast.AST) -> bool:
    """`2 ** n`, `base * factor ** n` with a variable exponent, or `delay = min(delay * 2, cap)`."""
    if (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and not isinstance(node.right, ast.Constant)
    ):
        left = node.left
        return (
            (isinstance(left, ast.Constant) and left.value in (2, 2.0))
            or (isinstance(left, ast.Name) and "factor" in left.id)
            or (isinstance(left, ast.Attribute) and "factor" in left.attr)
        )
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        name = node.targets[0].id
        for inner in ast.walk(node.value):
            if (
                isinstance(inner, ast.BinOp)
                and isinstance(inner.op, ast.Mult)
                and name in _names(inner)
                and any(
                    isinstance(side, ast.Constant) and side.value in (2, 2.0)
                    for side in (inner.left, inner.right)
                )
            ):
                return True
    if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Mult):
        return isinstance(node.value, ast.Constant) and node.value.value in (2, 2.0)
    return False


def test_exponential_backoff_is_written_once() -> None:
    found = sorted(
        f"{where}:{node.lineno}"
        for where, tree in _trees().items()
        for node in ast.walk(tree)
        if _grows_exponentially(node)
    )
    assert [spot.partition(":")[0] for spot in found] == ["swarrow/backoff.py"], found


def test_the_backoff_check_sees_the_shapes_it_forbids() -> None:
    for source in ("d = 0.25 * 2 ** n", "d = min(d * 2, cap)", "d *= 2", "d = base * self.factor ** k"):
        assert any(_grows_exponentially(node) for node in ast.walk(ast.parse(source))), source
    for source in ("size = 2**20", "n = 1024 ** 2", "total = count * 2"):
        assert not any(_grows_exponentially(node) for node in ast.walk(ast.parse(source))), source


def test_backoff_grows_caps_and_survives_huge_counts() -> None:
    backoff = Backoff(initial=0.2, maximum=5.0)
    assert backoff.delays(6) == (0.2, 0.4, 0.8, 1.6, 3.2, 5.0)
    assert backoff.delay(0) == 0.0
    assert backoff.delay(100_000) == 5.0
    assert Backoff(initial=1, maximum=100, factor=3).delays(3) == (1, 3, 9)


def test_a_second_stop_signal_asks_to_stop_now() -> None:
    stops = StopSignals()
    assert stops.receive(15) == ("SIGTERM", False)
    assert stops.receive(2) == ("SIGINT", True)
    assert stops.receive(15) == ("SIGTERM", True)
    assert stops.received == 3


def test_the_consumer_and_the_pool_count_signals_through_stop_signals() -> None:
    for module in ("processors/signal_handler.py", "swarrow/pool/supervisor.py"):
        source = (ROOT / module).read_text(encoding="utf-8")
        assert "StopSignals()" in source and ".receive(signum)" in source, module
    assert isinstance(SignalHandlerProcessor(lambda message: None).stops, StopSignals)  # type: ignore[arg-type,return-value]
