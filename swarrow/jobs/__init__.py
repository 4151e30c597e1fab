"""Job tracking: what became of each message, kept in SQLite or PostgreSQL and asked through `JobStore`."""

from __future__ import annotations

from swarrow.jobs.model import (
    DEAD_LETTERED,
    EXPIRED,
    FAILED,
    FINAL_STATES,
    JOB_ID_HEADER,
    JOB_STATES,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    Job,
    JobRecord,
    JobState,
    JobStats,
)
from swarrow.jobs.replays import replayed_job
from swarrow.jobs.store import JobBackend, JobStore, JobStoreError, mask_store_url

__all__ = [
    "DEAD_LETTERED",
    "EXPIRED",
    "FAILED",
    "FINAL_STATES",
    "JOB_ID_HEADER",
    "JOB_STATES",
    "RETRYING",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "JobBackend",
    "JobRecord",
    "JobState",
    "JobStats",
    "JobStore",
    "JobStoreError",
    "mask_store_url",
    "replayed_job",
]
