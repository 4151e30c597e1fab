import logging

import sentry_sdk
from sentry_sdk.integrations.logging import LoggingIntegration

# Every message swarrow gives up on (dead-lettered, failed) is logged at ERROR with structured fields:
# queue, message_id, attempt, error_type. Sentry's logging integration turns those records into events.
sentry_sdk.init(
    dsn="https://key@sentry.example.com/1",
    integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
)
