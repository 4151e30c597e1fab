"""Callables and stand-in workers for the `--workers` pool tests.

Imported by worker processes (`swarrow consume pool_callbacks:record_id` with tests/ on PYTHONPATH) and
run as a script (`python tests/pool_callbacks.py memory …`) to give the supervisor a worker without a
broker: a real Consumer on an in-memory queue, with the same signal, limit and status layers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
RECORD_ENV = "POOL_TEST_RECORD"
EVENTS_ENV = "POOL_TEST_EVENTS"
RELEASE_ENV = "POOL_TEST_RELEASE"


def _append(env: str, line: str) -> None:
    path = os.environ.get(env)
    if path:
        # One short O_APPEND write per line: atomic across the pool's processes.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def record_id(message: object) -> None:
    """Append the message body and this pid to the file named by POOL_TEST_RECORD."""
    body = message.body.decode() if hasattr(message, "body") else str(message)
    _append(RECORD_ENV, f"{body} {os.getpid()}")


def hold(message: object) -> None:
    """Record the message, then block until the file named by POOL_TEST_RELEASE exists."""
    record_id(message)
    release = Path(os.environ[RELEASE_ENV])
    while not release.exists():
        time.sleep(0.01)


def crash(message: object) -> None:
    """Die without cleanup, as a segfault or the OOM killer would."""
    _append(RECORD_ENV, f"crash {os.getpid()}")
    os._exit(1)


async def _memory_worker(args: argparse.Namespace) -> int:
    from prometheus_client import Counter

    from processors.ack import AckProcessor
    from processors.max_messages import MaxMessagesProcessor
    from processors.pool_status import PoolStatusProcessor
    from processors.signal_handler import SignalHandlerProcessor
    from swarrow import Consumer, Layer, MemoryBroker, Message, Stack
    from swarrow.pool.status import pool_worker_env

    pool = pool_worker_env()
    assert pool is not None, "run me under a WorkerPool"
    done = Counter("pooltest_done", "Messages the stand-in worker handled.", ["worker"])
    child = done.labels(worker="memory")
    _append(EVENTS_ENV, f"start {os.getpid()} {pool.slot}")

    async def handle(message: Message) -> None:
        child.inc()
        if args.delay:
            await anyio.sleep(args.delay)

    broker = MemoryBroker(f"pool-{os.getpid()}")
    broker.declare_queue_nowait("work")
    for n in range(args.messages):
        broker.publish_nowait(Message(body=str(n).encode()), "work")
    provider = broker.provider("work", prefetch=1)
    layers: list[Layer[...]] = [Layer(SignalHandlerProcessor)]
    if args.limit:
        layers.append(Layer(MaxMessagesProcessor, limit=args.limit))
    layers.append(Layer(PoolStatusProcessor, directory=pool.directory, slot=pool.slot, interval=0.2))
    layers.append(Layer(AckProcessor, provider=provider))
    reason = await Consumer(provider, Stack(*layers, callback=handle), grace_period=5).run()
    _append(EVENTS_ENV, f"stop {os.getpid()} {reason.code}")
    return int(args.exit_code)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pool_callbacks")
    sub = parser.add_subparsers(dest="mode", required=True)
    memory = sub.add_parser("memory", help="a real consumer on an in-memory queue")
    memory.add_argument("--messages", type=int, default=2_000)
    memory.add_argument("--limit", type=int, default=0)
    memory.add_argument("--delay", type=float, default=0.0)
    memory.add_argument("--exit-code", type=int, default=0)
    steps = sub.add_parser("steps", help="the n-th start runs the n-th step (the last one repeats)")
    steps.add_argument("counter", help="file counting the starts")
    steps.add_argument("steps", nargs="+", help="exit:CODE or memory:LIMIT (0: consume until stopped)")
    exit_ = sub.add_parser("exit", help="exit at once with a code")
    exit_.add_argument("code", type=int)
    pool = sub.add_parser("pool", help="a WorkerPool of stand-in workers (the rest: the worker's argv)")
    pool.add_argument("--workers", type=int, required=True)
    pool.add_argument("--port", type=int, default=0)
    pool.add_argument("--grace-period", type=float, default=30.0)
    pool.add_argument("worker", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.mode == "pool":
        import logging

        from swarrow.pool import WorkerPool

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
        return WorkerPool(
            command(*args.worker),
            workers=args.workers,
            metrics_address=("127.0.0.1", args.port) if args.port else None,
            grace_period=args.grace_period,
        ).run_sync()
    if args.mode == "steps":
        return _step(args.counter, args.steps)
    if args.mode == "exit":
        _append(EVENTS_ENV, f"exit {os.getpid()} {args.code}")
        return int(args.code)
    return anyio.run(_memory_worker, args, backend="asyncio")


def _step(counter: str, steps: list[str]) -> int:
    # Starts are sequential in a one-worker pool: a plain read-then-write count is enough, but the test
    # polls the file while a worker writes it, so the new count replaces the file whole (never seen empty).
    path = Path(counter)
    start = int(path.read_text()) if path.exists() else 0
    fresh = path.with_name(f"{path.name}.{os.getpid()}")
    fresh.write_text(str(start + 1))
    os.replace(fresh, path)
    kind, _, value = steps[min(start, len(steps) - 1)].partition(":")
    _append(EVENTS_ENV, f"step {start} {kind}:{value} {os.getpid()}")
    if kind == "exit":
        return int(value)
    memory = argparse.Namespace(messages=2_000, limit=int(value), delay=0.01, exit_code=0)
    return anyio.run(_memory_worker, memory, backend="asyncio")


def command(*args: str) -> list[str]:
    """The argv of a stand-in worker."""
    return [sys.executable, str(HERE / "pool_callbacks.py"), *args]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    sys.exit(main(sys.argv[1:]))
