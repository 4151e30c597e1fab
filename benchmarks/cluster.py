"""Quorum vs classic, 1 vs 3 nodes, 1 vs 3 workers: the default stack on the 3-node cluster, in one run.

    scripts/rabbitmq-cluster.sh start
    python benchmarks/cluster.py [--messages 20000] [--runs 1]

For each of the 8 combinations: a fresh durable queue on the cluster (scripts/rabbitmq-cluster.sh, 5701-5703) is
filled with `--messages` persistent 100-byte messages (confirms), then W processes of
`benchmarks/swarrow_consumer.py --stack default` (the CLI's default stack, prefetch 1000, concurrency 10) drain it,
each stopping after its share. "1 node": the queue has one replica (classic, or quorum with
`x-quorum-initial-group-size=1`) and every worker connects to that node. "3 nodes": quorum queues get 3 replicas and
the workers are given the three-node URL list, each starting at a different node (classic queues are not replicated,
so only the connections spread). Reported per combination: msg/s (first worker start to last worker exit, start-up
included), the workers' CPU µs/message and the three brokers' CPU µs/message (beam.smp utime+stime from /proc), and
ratios against classic / 1 node / 1 worker measured in the same run. The machine's load average is printed: on a
shared 2-core machine the brokers, the workers and everyone else share the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from _common import BODY, delete_queue, queue_depth, unique_queue

HERE = os.path.dirname(os.path.abspath(__file__))
PORTS = (5701, 5702, 5703)


def node_url(port: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def list_url(first: int) -> str:
    """The three-node URL starting at node `first` (0-2)."""
    order = [PORTS[(first + i) % 3] for i in range(3)]
    return "amqp://guest:guest@" + ",".join(f"127.0.0.1:{p}" for p in order) + "/"


def broker_pids() -> list[int]:
    """The cluster's Erlang processes (RABBITMQ_NODENAME rmq1..3@localhost; reading them needs root)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == b"beam.smp" and any(
            f"RABBITMQ_NODENAME=rmq{n}@localhost".encode() in env for n in (1, 2, 3)
        ):
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / ticks


async def fill(url: str, queue: str, count: int, arguments: dict[str, Any]) -> None:
    import aiormq
    from pamqp.commands import Basic

    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(queue, durable=True, arguments=arguments)
        properties = Basic.Properties(delivery_mode=2, message_id="bench")
        sent = 0
        while sent < count:
            batch = min(1000, count - sent)
            confirms = await asyncio.gather(
                *(channel.basic_publish(BODY, routing_key=queue, properties=properties) for _ in range(batch))
            )
            if not all(isinstance(c, Basic.Ack) for c in confirms):
                raise RuntimeError("the broker nacked a benchmark message")
            sent += batch
    finally:
        await connection.close()


def one(kind: str, nodes: int, workers: int, messages: int) -> dict[str, Any]:
    queue = unique_queue(f"cluster-{kind}")
    arguments: dict[str, Any] = {}
    if kind == "quorum":
        arguments = {"x-queue-type": "quorum", "x-quorum-initial-group-size": nodes}
    asyncio.run(fill(node_url(PORTS[0]), queue, messages, arguments))
    urls = [node_url(PORTS[0])] * workers if nodes == 1 else [list_url(i) for i in range(workers)]
    shares = [messages // workers + (1 if i < messages % workers else 0) for i in range(workers)]
    pids = broker_pids()
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    broker_before = cpu_seconds(pids)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "swarrow_consumer.py"),
                "--stack",
                "default",
                "--url",
                url,
                "--queue",
                queue,
                "--messages",
                str(share),
                "--log-file",
                os.devnull,
            ],
            stdout=subprocess.PIPE,
        )
        for url, share in zip(urls, shares, strict=True)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    elapsed = time.perf_counter() - started
    broker_cpu = cpu_seconds(pids) - broker_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (after.ru_utime - before_children.ru_utime) + (after.ru_stime - before_children.ru_stime)
    handled = sum(json.loads(out.splitlines()[-1])["messages"] for out in outputs)
    left = asyncio.run(queue_depth(node_url(PORTS[0]), queue))
    asyncio.run(delete_queue(node_url(PORTS[0]), queue))
    return {
        "queue": kind,
        "nodes": nodes,
        "workers": workers,
        "handled": handled,
        "left": left,
        "rate": messages / elapsed,
        "worker_us": worker_cpu / messages * 1e6,
        "broker_us": broker_cpu / messages * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument(
        "--json", action="store_true", help="one JSON line per combination instead of the table"
    )
    args = parser.parse_args()
    if len(broker_pids()) != 3:
        sys.exit("the 3-node cluster is not running: scripts/rabbitmq-cluster.sh start")
    load_before = os.getloadavg()
    rows = [
        one(kind, nodes, workers, args.messages)
        for kind in ("classic", "quorum")
        for nodes in (1, 3)
        for workers in (1, 3)
    ]
    base = {(r["nodes"], r["workers"]): r for r in rows if r["queue"] == "classic"}
    first = rows[0]
    if args.json:
        for row in rows:
            print(json.dumps(row))
    print(
        f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores;"
        f" {args.messages} persistent messages per row"
    )
    print(
        f"{'queue':8} {'nodes':>5} {'workers':>7} {'msg/s':>7} {'worker µs/msg':>13} {'broker µs/msg':>13}"
        f" {'vs classic':>10} {'vs 1n1w':>8} {'lost':>5}"
    )
    for r in rows:
        vs_classic = r["rate"] / base[(r["nodes"], r["workers"])]["rate"]
        print(
            f"{r['queue']:8} {r['nodes']:>5} {r['workers']:>7} {r['rate']:>7.0f} {r['worker_us']:>13.0f}"
            f" {r['broker_us']:>13.0f} {vs_classic:>10.2f} {r['rate'] / first['rate']:>8.2f}"
            f" {args.messages - r['handled'] - r['left']:>5}"
        )


if __name__ == "__main__":
    main()
