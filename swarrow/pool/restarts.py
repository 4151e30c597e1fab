"""What a slot does after its worker exited: end, stop the pool, restart at once or after a backoff.

A worker that stopped gracefully (a limit reached) is replaced at once; one that crashed is replaced
after an exponential backoff. A usage or import error stops the pool only at the first start, before
any worker consumed (a restart would fail the same way); later it is a passing condition and gets the
backoff too, as does a worker that cannot be spawned (EAGAIN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from swarrow.backoff import Backoff
from swarrow.pool.exits import ExitInfo
from swarrow.pool.slots import Slot

__all__ = ["NextStep", "after_exit", "after_spawn_error"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NextStep:
    """`restart` after `delay` seconds; else the slot ends, and with `stop_pool` the whole pool stops."""

    restart: bool
    delay: float = 0.0
    stop_pool: bool = False


_END = NextStep(restart=False)


def after_exit(slot: Slot, info: ExitInfo, *, stopping: bool, proven: bool, backoff: Backoff) -> NextStep:
    """Decide (and log) what `slot` does now that its worker exited with `info`.

    `proven`: some worker consumed already, so a usage or import exit is passing, not fatal.
    """
    extra = {"worker": slot.index, "pid": info.pid}
    if stopping:
        logger.info(
            "worker %d (pid %d) stopped after %d messages: %s",
            slot.index,
            info.pid,
            info.messages_done,
            info.reason,
            extra=extra,
        )
        return _END
    if info.fatal and not proven:
        logger.error(
            "worker %d (pid %d) failed (%s, exit code %d) at the first start: stopping the "
            "pool, a restart would fail the same way",
            slot.index,
            info.pid,
            info.reason.replace("_", " "),
            info.code,
            extra=extra,
        )
        return NextStep(restart=False, stop_pool=True)
    if info.graceful and info.reason == "idle":
        # --stop-when-idle in a pool is a batch job draining a queue: a slot whose worker found
        # nothing to do is finished, and the pool ends (exit 0) once every slot is.
        logger.info(
            "worker %d (pid %d) stopped for idle after %d messages: not restarting it "
            "(the pool ends once every worker stopped for idle)",
            slot.index,
            info.pid,
            info.messages_done,
            extra=extra,
        )
        return _END
    delay = slot.after_exit(info, backoff)
    if delay > 0:
        logger.warning(
            "worker %d (pid %d) exited after %.1fs: %s%s; restarting in %.3gs (failure %d in a row)",
            slot.index,
            info.pid,
            info.uptime,
            info.reason,
            f" ({info.detail})" if info.detail else "",
            delay,
            slot.failures,
            extra={**extra, "restart_delay": delay},
        )
    else:
        logger.info(
            "worker %d (pid %d) stopped after %d messages in %.1fs: %s; restarting it",
            slot.index,
            info.pid,
            info.messages_done,
            info.uptime,
            info.reason,
            extra=extra,
        )
    return NextStep(restart=True, delay=delay)


def after_spawn_error(slot: Slot, exc: OSError, *, program: str, backoff: Backoff) -> float:
    """Count a failed spawn of `slot`'s worker, log it, and return the delay before the next try."""
    slot.failures += 1
    delay = backoff.delay(slot.failures)
    logger.error(
        "cannot start worker %d (%s): %s; retrying in %.3gs (failure %d in a row)",
        slot.index,
        program,
        exc.strerror or exc,
        delay,
        slot.failures,
        extra={"worker": slot.index, "restart_delay": delay},
    )
    return delay
