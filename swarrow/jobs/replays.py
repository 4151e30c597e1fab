"""A job `swarrow dead replay` sent back to its queue: recorded as waiting again, not left dead-lettered."""

from __future__ import annotations

import os
import socket

from swarrow._dead_letter import REPLAY_COUNT_HEADER
from swarrow.jobs.model import JOB_ID_HEADER, MAX_JOB_ID, RETRYING, JobRecord
from swarrow.message import Message
from swarrow.topology import header_count

__all__ = ["replayed_job"]


def replayed_job(copy: Message, queue: str, now: float) -> JobRecord | None:
    """The record of a replayed copy: `retrying` in `queue`, attempts 0, its replay count; None without an id.

    The id is the one the job tracker uses (the `x-swarrow-job-id` header, else the message id); the
    store ranks it above the dead letter (a higher replay count) and below the copy's first run.
    """
    header = copy.headers.get(JOB_ID_HEADER)
    job_id = header if isinstance(header, str) and 0 < len(header) <= MAX_JOB_ID else copy.message_id
    if not job_id:
        return None
    replays = header_count(copy.headers.get(REPLAY_COUNT_HEADER)) or 1
    return JobRecord(job_id, queue, RETRYING, 0, now, now, None, None, socket.gethostname(), os.getpid(),
                     None, None, None, None, replays)  # fmt: skip
