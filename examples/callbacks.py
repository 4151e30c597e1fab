"""Callables used by examples/swarrow.toml: `swarrow consume --config examples/swarrow.toml emails`."""

from __future__ import annotations

import json
import logging

from swarrow import Message, PermanentError

__all__ = ["make_thumbnail", "send_email"]

logger = logging.getLogger(__name__)


def send_email(message: Message) -> None:
    """Pretend to send the e-mail described by a JSON body; a body that is not JSON can never succeed."""
    try:
        email = json.loads(message.body)
    except ValueError:
        raise PermanentError("the body is not JSON") from None
    logger.info("sending an e-mail to %s", email.get("to"), extra={"message_id": message.message_id})


async def make_thumbnail(message: Message) -> None:
    """Pretend to render a thumbnail (async callables run on the event loop)."""
    logger.info("thumbnail for %r", message.body[:80], extra={"message_id": message.message_id})
