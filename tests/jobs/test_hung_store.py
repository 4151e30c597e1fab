"""A job store that accepts the connection and then never answers: the tracker's stop stays bounded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import anyio
import pytest
from anyio.abc import SocketStream
from prometheus_client import CollectorRegistry

from swarrow.jobs import JobRecord, JobStore
from swarrow.jobs.recorder import JobRecorder

pytestmark = pytest.mark.anyio


class FreezingProxy:
    """A loopback TCP proxy to the real PostgreSQL; `freeze()` stops forwarding (the sockets stay open)."""

    def __init__(self) -> None:
        self.frozen = anyio.Event()
        self.port = 0

    def freeze(self) -> None:
        self.frozen.set()

    async def _pipe(self, source: SocketStream, sink: SocketStream) -> None:
        try:
            async for chunk in source:
                if self.frozen.is_set():
                    await anyio.sleep_forever()  # a server that got the query and went silent
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass

    @asynccontextmanager
    async def running(self, host: str, port: int) -> AsyncIterator[FreezingProxy]:
        async def handle(client: SocketStream) -> None:
            async with client, await anyio.connect_tcp(host, port) as server, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, client, server)
                tg.start_soon(self._pipe, server, client)

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()


def _record(n: int) -> JobRecord:
    return JobRecord(f"hung-{n}", "q", "succeeded", 1, 1.0, 1.0, 2.0, 1.0, "h", 1, None, None, None, None)


async def test_a_stop_while_the_store_hangs_takes_close_timeout_in_all(postgres_schema_url: str) -> None:
    real = urlsplit(postgres_schema_url)
    proxy = FreezingProxy()
    async with proxy.running(real.hostname or "127.0.0.1", real.port or 5432):
        url = postgres_schema_url.replace(f"{real.hostname}:{real.port}", f"127.0.0.1:{proxy.port}")
        registry = CollectorRegistry()
        recorder = JobRecorder(
            JobStore.open(url), buffer_size=1_000, flush_interval=0.01, close_timeout=1.0, write_timeout=30.0,
            registry=registry,
        )  # fmt: skip
        with anyio.fail_after(20):
            async with recorder.running("q"):
                recorder.buffer.append(_record(0))
                while not registry.get_sample_value("swarrow_job_records_written_total", {"queue": "q"}):
                    await anyio.sleep(0.01)  # connected and migrated through the proxy
                proxy.freeze()
                recorder.buffer.extend(_record(n) for n in range(1, 101))
                while recorder.buffer:
                    await anyio.sleep(0.01)  # a batch is now being written to a server that will not answer
                recorder.buffer.extend(_record(n) for n in range(101, 201))  # and more waits behind it
                stopping = anyio.current_time()
            took = anyio.current_time() - stopping
    # close_timeout bounds the whole stop: the write in progress, what is buffered, closing the store.
    assert took < 1.8, f"the stop took {took:.2f}s with close_timeout=1s"
    assert recorder.dropped_total == 200  # every record that never reached the store is counted
    assert registry.get_sample_value("swarrow_job_records_dropped_total", {"queue": "q"}) == 200
