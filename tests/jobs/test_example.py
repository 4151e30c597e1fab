"""examples/job_tracking.py runs and finds what the README says it finds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "job_tracking.py"

pytestmark = pytest.mark.anyio


async def test_the_job_tracking_example_tracks_three_orders(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("example_job_tracking", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    waiting = await module.main(sqlite_url)
    out = capsys.readouterr().out
    assert "order-1 succeeded 1" in out and "order-2 succeeded 2" in out and "order-9 unknown 0" in out
    assert waiting == ["order-9"]
