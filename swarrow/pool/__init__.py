"""`swarrow consume --workers N`: a small supervisor that keeps N worker processes consuming.

Rooms: `supervisor` (`WorkerPool`), `slots` (a slot and its worker process), `exits` (why a worker
ended), `restarts` (what a slot does next: restart now, back off, or stop the pool), `spawn` (a
worker's environment and process), `rolling` (SIGHUP's one-at-a-time replacement), `command` (a
worker's argv), `status` (what a worker tells its supervisor, the shared Prometheus directory),
`directories` (the supervisor's locked temporary directory), `snapshot` and `http` (the endpoint).
"""

from swarrow.backoff import Backoff
from swarrow.pool.command import default_command, strip_options
from swarrow.pool.exits import ExitInfo, classify_exit
from swarrow.pool.slots import WORKER_STATES
from swarrow.pool.supervisor import WorkerPool

__all__ = [
    "WORKER_STATES",
    "Backoff",
    "ExitInfo",
    "WorkerPool",
    "classify_exit",
    "default_command",
    "strip_options",
]
