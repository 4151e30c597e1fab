"""Building deliveries: the providers' fast constructor gives ordinary frozen `Message`s."""

from __future__ import annotations

import dataclasses
from typing import cast

import pytest

from swarrow import Message


def test_providers_build_deliveries_the_fast_way_and_get_ordinary_messages() -> None:
    from datetime import UTC, datetime

    from swarrow.message import _WritableMessage, delivered_message

    # Gated on the two classes' layouts: it must be active here (CPython 3.11+, dataclass slots).
    assert delivered_message is cast(object, _WritableMessage)
    fields = (
        b"body", {"h": [1, {"n": 2}]}, "application/json", "gzip", 2, 5, "corr", "replies", "60000", "m-1",
        datetime(2026, 11, 29, tzinfo=UTC), "kind", "guest", "app", 7, "ctag", True, "ex", "rk", "q",
    )  # fmt: skip
    message = delivered_message(*fields)
    assert type(message) is Message and message == Message(*fields)
    assert [getattr(message, f.name) for f in dataclasses.fields(Message)] == list(fields)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.body = b"changed"  # type: ignore[misc]
    assert message.replace(body=b"x").body == b"x" and message.body == b"body"
