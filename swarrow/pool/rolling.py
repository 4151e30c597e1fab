"""SIGHUP's rolling restart: each worker is replaced only once its replacement consumes.

Replacement first, then stop: N stay consuming throughout (N+1 briefly), where stop-then-start would
drop to N-1 for a drain plus a start. A replacement that cannot start consuming leaves the old worker
in place, so a broken deploy does not take the pool down.
"""

from __future__ import annotations

import logging
import signal
from typing import Protocol

import anyio

from swarrow.pool.slots import Slot, Worker

__all__ = ["RollingPool", "roll"]

logger = logging.getLogger(__name__)


class RollingPool(Protocol):
    """What a rolling restart needs of the pool (`WorkerPool` is one)."""

    slots: list[Slot]
    generation: int
    ready_timeout: float
    grace_period: float
    kill_after: float

    @property
    def stopping(self) -> bool: ...

    async def spawn_replacement(self, slot: Slot) -> Worker | None:
        """Start `slot`'s incoming worker; raises `OSError` if the system refuses."""

    async def wait_changed(self) -> None:
        """Return at the pool's next snapshot (a worker started, changed state or exited)."""

    def refresh(self) -> None:
        """Rebuild the pool's snapshot."""


async def roll(pool: RollingPool) -> None:
    """Replace, one at a time, every worker older than the pool's generation, until none is or the
    pool stops or a replacement fails."""
    while not pool.stopping:
        stale = [s for s in pool.slots if s.current is not None and s.current.generation < pool.generation]
        if not stale:
            logger.info("rolling restart done: every worker runs generation %d", pool.generation)
            return
        if not await _replace(pool, stale[0]):
            return


async def _replace(pool: RollingPool, slot: Slot) -> bool:
    """Start `slot`'s replacement, wait until it consumes, then drain the old one; False to give up."""
    old = slot.current
    if old is None:
        raise RuntimeError("internal state: old is unset here")
    try:
        new = await pool.spawn_replacement(slot)
    except OSError as exc:
        logger.error(
            "rolling restart stopped: cannot start the replacement of worker %d (%s); the old workers "
            "keep running (send SIGHUP again)",
            slot.index,
            exc.strerror or exc,
        )
        return False
    if new is None:
        return False
    with anyio.move_on_after(pool.ready_timeout):
        while not (new.consuming or new.exit is not None or pool.stopping):
            await pool.wait_changed()
    if pool.stopping:
        return False
    if new.exit is not None:
        slot.incoming = None
        logger.error(
            "rolling restart stopped: the replacement of worker %d exited (%s%s); the old workers keep "
            "running (fix and send SIGHUP again)",
            slot.index,
            new.exit.reason,
            f": {new.exit.detail}" if new.exit.detail else "",
            extra={"worker": slot.index, "pid": new.pid},
        )
        return False
    if not new.consuming:
        logger.warning(
            "the replacement of worker %d (pid %d) is not consuming after %.0fs; swapping it in anyway",
            slot.index,
            new.pid,
            pool.ready_timeout,
        )
    if slot.incoming is new:  # not adopted already because the old one exited on its own
        slot.incoming = None
        slot.current = new
        logger.info(
            "worker %d: pid %d consuming, draining pid %d",
            slot.index,
            new.pid,
            old.pid,
            extra={"worker": slot.index, "pid": old.pid},
        )
        old.terminate()
    pool.refresh()
    with anyio.move_on_after(pool.grace_period + pool.kill_after):
        await old.exited.wait()
    if old.exit is None:
        logger.error("worker pid %d did not stop within %.0fs: killing it", old.pid, pool.grace_period)
        old.signal(signal.SIGKILL)
        await old.exited.wait()
    return True
