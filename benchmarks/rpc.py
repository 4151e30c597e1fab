"""RPC round trips: swarrow's RpcClient and reply layer beside aio-pika's patterns.RPC and FastStream's request().

    python benchmarks/rpc.py [--runs 3] [--calls-single 2000] [--calls-many 20000] [--only swarrow,aiopika,faststream]

Each peer runs its own server (one worker process, concurrency 10) on a fresh queue, and its own client
in this process (FastStream's in the peers' venv, `make bench-peers-env`): first one caller making
calls one after another, then 100 concurrent callers. ~100-byte requests, answered with the same
bytes. Runs alternate between peers so machine drift hits all of them; the table shows the median run
(calls per second, p50 and p99 latency in ms) and swarrow's ratio to each peer. swarrow's server is
`swarrow consume` with its full default stack, a log line per request written to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS, ROOT, URL, delete_queue, unique_queue

PY = sys.executable
PEERS_PY = os.environ.get("SWARROW_PEERS_PYTHON") or os.path.join(ROOT, ".venv-peers", "bin", "python")
BODY = b"x" * 100
CONCURRENCY = 10


async def _consumers(url: str, queue: str) -> int:
    import aiormq

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        ok = await channel.queue_declare(queue, passive=True)
        return int(ok.consumer_count or 0)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0
    finally:
        await connection.close()


async def wait_for_consumer(
    url: str, queue: str, server: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    """Poll (bounded) until the server consumes `queue`."""
    deadline = time.monotonic() + timeout
    while await _consumers(url, queue) < 1:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} before consuming {queue}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no consumer on {queue} after {timeout:.0f} s")
        await asyncio.sleep(0.1)


def start_server(peer: str, queue: str, log: Any) -> subprocess.Popen[bytes]:
    """One server process for `peer` on `queue`, concurrency 10."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": here}
    if peer == "swarrow":
        command = [PY, "-m", "swarrow", "consume", "rpc_servers:echo", "--queue", queue, "--url", URL,
                   "--concurrency", str(CONCURRENCY), "--prefetch", "100", "--declare"]  # fmt: skip
    elif peer == "aiopika":
        command = [PY, os.path.join(here, "rpc_servers.py"), "aiopika", "--queue", queue, "--url", URL]
    else:
        command = [
            PEERS_PY,
            os.path.join(here, "peer_faststream_rpc.py"),
            "server",
            "--queue",
            queue,
            "--url",
            URL,
        ]
    return subprocess.Popen(command, env=env, cwd=here, stdout=log, stderr=log)


def summary(peer: str, latencies: list[float], seconds: float) -> dict[str, Any]:
    latencies.sort()
    return {
        "peer": peer,
        "calls": len(latencies),
        "rate": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def drive(call: Callable[[], Awaitable[bytes]], callers: int, calls: int) -> tuple[list[float], float]:
    """`calls` round trips from `callers` concurrent tasks; each reply must be the request's bytes."""
    latencies: list[float] = []

    async def caller() -> None:
        for _ in range(calls // callers):
            started = time.perf_counter()
            if await call() != BODY:
                raise RuntimeError("a reply did not carry the request's bytes")
            latencies.append(time.perf_counter() - started)

    await call()  # warm-up
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return latencies, time.perf_counter() - started


async def measure_swarrow(queue: str, callers: int, calls: int) -> dict[str, Any]:
    from swarrow import RpcClient, open_broker

    broker = open_broker(URL)
    try:
        async with RpcClient(broker, timeout=30) as client:

            async def call() -> bytes:
                return (await client.call(queue, BODY)).body

            latencies, seconds = await drive(call, callers, calls)
    finally:
        await broker.close()
    from importlib.metadata import version

    return summary(f"swarrow {version('swarrow')}", latencies, seconds)


async def measure_aiopika(queue: str, callers: int, calls: int) -> dict[str, Any]:
    import aio_pika
    from aio_pika.patterns import RPC

    connection = await aio_pika.connect_robust(URL)
    try:
        channel = await connection.channel()
        rpc = await RPC.create(channel)

        async def call() -> bytes:
            return bytes(await rpc.call(queue, kwargs={"body": BODY}))

        latencies, seconds = await drive(call, callers, calls)
        await rpc.close()
    finally:
        await connection.close()
    return summary(f"aio-pika {aio_pika.__version__} patterns.RPC", latencies, seconds)


def measure_faststream(queue: str, callers: int, calls: int) -> dict[str, Any]:
    here = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [PEERS_PY, os.path.join(here, "peer_faststream_rpc.py"), "client", "--queue", queue, "--url", URL,
         "--callers", str(callers), "--calls", str(calls)],
        env={**os.environ, "PYTHONPATH": here}, cwd=here, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"FastStream client failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def one_run(peer: str, shapes: list[tuple[int, int]]) -> dict[int, dict[str, Any]]:
    queue = unique_queue(f"rpc-{peer}")
    results: dict[int, dict[str, Any]] = {}
    with tempfile.NamedTemporaryFile("wb", prefix=f"swarrow-rpc-{peer}-", suffix=".log") as log:
        server = start_server(peer, queue, log)
        try:
            await wait_for_consumer(URL, queue, server)
            for callers, calls in shapes:
                if peer == "swarrow":
                    results[callers] = await measure_swarrow(queue, callers, calls)
                elif peer == "aiopika":
                    results[callers] = await measure_aiopika(queue, callers, calls)
                else:
                    results[callers] = await asyncio.to_thread(measure_faststream, queue, callers, calls)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            for name in (queue, f"{queue}.dead", *(f"{queue}.retry.{k}" for k in range(1, 4))):
                await delete_queue(URL, name)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls-single", type=int, default=2000, help="calls made by the single caller")
    parser.add_argument(
        "--calls-many", type=int, default=20000, help="calls made by the 100 callers together"
    )
    parser.add_argument("--only", default="swarrow,aiopika,faststream")
    args = parser.parse_args()
    peers = [p for p in args.only.split(",") if p]
    if "faststream" in peers and not os.path.exists(PEERS_PY):
        print(f"skipping FastStream: {PEERS_PY} is missing (make bench-peers-env)", file=sys.stderr)
        peers.remove("faststream")
    shapes = [(1, args.calls_single), (100, args.calls_many)]
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {p: {1: [], 100: []} for p in peers}
    failures: dict[str, int] = {}
    for run in range(args.runs):
        for peer in peers:
            try:
                results = asyncio.run(one_run(peer, shapes))
            except Exception as exc:  # one peer failing (a timeout on a loaded machine) spoils only its run
                print(f"run {run + 1} {peer:10} failed: {str(exc).strip()[-300:]}", flush=True)
                failures[peer] = failures.get(peer, 0) + 1
                continue
            for callers, result in results.items():
                runs[peer][callers].append(result)
                print(f"run {run + 1} {peer:10} callers {callers:3}: {result['rate']:8.0f} calls/s  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms", flush=True)  # fmt: skip
    median = {
        peer: {c: sorted(rs, key=lambda r: r["rate"])[len(rs) // 2] for c, rs in by.items() if rs}
        for peer, by in runs.items()
    }
    for peer, count in failures.items():
        print(f"{peer}: {count} of {args.runs} runs failed (left out of the median)")
    print(f"\nmedian of {args.runs} runs (server concurrency {CONCURRENCY}, ~100-byte bodies, loopback)")
    print(f"| {'peer':38} | callers | calls/s | p50 ms | p99 ms | swarrow ÷ peer |")
    print(f"|{'-' * 40}|---------|---------|--------|--------|----------------|")
    for by in median.values():
        for callers, r in by.items():
            ratio = median.get("swarrow", {}).get(callers, {}).get("rate", 0) / r["rate"]
            print(f"| {r['peer']:38} | {callers:7} | {r['rate']:7.0f} | {r['p50_ms']:6.2f} | {r['p99_ms']:6.2f} | "
                  f"{ratio:14.2f} |")  # fmt: skip
    os.makedirs(RESULTS, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with open(os.path.join(RESULTS, f"rpc-{stamp}.json"), "w") as out:
        json.dump({"runs": runs, "median": median, "failures": failures}, out, indent=1)


if __name__ == "__main__":
    main()
