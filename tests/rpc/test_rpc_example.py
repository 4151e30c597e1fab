"""The README's request-and-reply example runs as written, on both brokers."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyio

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rpc.py"


@pytest.mark.parametrize("kind", ["memory", pytest.param("amqp", marks=pytest.mark.integration)])
async def test_the_rpc_example_answers_and_refuses(
    kind: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(f"example_rpc_{uuid.uuid4().hex[:6]}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = f"memory://rpc-{uuid.uuid4().hex[:6]}" if kind == "memory" else request.getfixturevalue("amqp_url")
    queue = f"test.rpc-example.{uuid.uuid4().hex[:8]}"
    try:
        await module.main(url, queue)
    finally:
        if kind == "amqp":
            from swarrow.amqp import AmqpBroker

            broker = AmqpBroker(url)
            for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{k}" for k in (1, 2, 3))):
                await broker.delete_queue(name)
            await broker.close()
    out = capsys.readouterr().out
    assert "total: 36.0" in out
    assert "refused: swarrow.errors.PermanentError an empty order has no price" in out
