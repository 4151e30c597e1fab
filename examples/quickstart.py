import json
import logging

import swarrow

logger = logging.getLogger("emails")


async def send_email(message: swarrow.Message) -> None:
    order = json.loads(message.body)  # not JSON: raises, so the broker retries it, then emails.dead
    logger.info("e-mailing %s: your order shipped", order["email"])  # call your mailer here


# ack, retry (1 s, 2 s, 4 s, then emails.dead), a log line per message, signals, stop after 10k messages:
swarrow.run(send_email, queue="emails", concurrency=10, max_messages=10_000, declare=True)
