"""Entry point of `make bench` / `make bench-quick`: every benchmark, one table, results in benchmarks/results/.

    python benchmarks/run.py [--quick] [--messages N] [--runs R] [--prefetch 10,100,1000]
                             [--concurrency 1,10,100] [--only e2e,layers,memory,publish]

End to end (against RabbitMQ): each cell fills a fresh queue with N persistent ~100-byte messages
(publisher confirms), then one worker process consumes and acks them all. Runs alternate
(raw, swarrow, raw, swarrow …) so machine drift hits both sides; the table shows the median, min–max
and the ratio of medians against raw aio-pika (per-message ack, same prefetch) and raw aiormq
(multiple=True acks every 100, prefetch 1000).

Beside the consumer's CPU per message, each cell shows the broker's (every local `beam.smp`'s CPU
time, from /proc, around the run): a classic queue's broker runs here at either ~11 or ~22 µs a
message for the same consumer, settled early in a run, so a cell's wall rate says as much about the
broker's mode as about the consumer. The pika table adds the ratio over the runs in the fast mode.

Peers (prefetch 1000, in the same interleaved runs): a FastStream subscriber and a dramatiq worker
(peer_faststream.py, peer_dramatiq.py), run by benchmarks/.venv-peers/bin/python, the venv that
`make bench-peers-env` builds from peers-requirements.txt. Without that venv they are skipped with the
reason, and the rest runs. Their rates are low, so they consume min(N, --peer-messages) messages.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    RESULTS,
    ROOT,
    URL,
    broker_cpu_seconds,
    delete_queue,
    fill_queue,
    queue_depth,
    unique_queue,
)

PY = sys.executable
PEERS_PY = os.environ.get("SWARROW_PEERS_PYTHON") or os.path.join(ROOT, ".venv-peers", "bin", "python")
SWARROW_VS_PEERS = "default/p1000/c10"  # the (c) cell the peers are compared with, when it was measured


def run_async(coro: Any) -> Any:
    """The orchestrator's own work (fills, checks) on uvloop when installed: fills take ~20% less."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass
class Variant:
    """One consumer configuration measured end to end."""

    key: str
    label: str
    script: str
    args: list[str]
    prefetch: int
    concurrency: int | None = None
    uvloop: bool = False
    python: str = PY  # the peers run in their own venv
    messages: int | None = None  # None: the run's N
    fills_own_queue: bool = False  # dramatiq declares its own queues and reads only its own envelope
    queue_suffixes: tuple[str, ...] = ("",)  # every queue the script may leave, deleted after each run
    loop: str | None = None  # the table's loop column, when not asyncio / uvloop
    rates: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # consumer CPU µs per message, where the script reports it
    broker_cpu: list[float] = field(default_factory=list)  # the broker's CPU µs per message, same runs
    errors: list[str] = field(default_factory=list)
    library: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def build_variants(
    prefetches: list[int], concurrencies: list[int], quick: bool, peers_python: str | None, peer_messages: int | None
) -> list[Variant]:
    """Raw baselines first in each prefetch group, then swarrow (b) and (c) at each concurrency; peers last."""
    variants: list[Variant] = []
    for p in prefetches:
        variants.append(Variant(f"aiopika/p{p}", "raw aio-pika, ack each", "raw_aiopika.py", [], p))
        for kind, name in (("callback", "(b) swarrow ack+callback"), ("default", "(c) swarrow default stack")):
            for c in concurrencies:
                if c > p:
                    continue  # the consumer refuses concurrency > prefetch
                variants.append(
                    Variant(f"{kind}/p{p}/c{c}", name, "swarrow_consumer.py", ["--stack", kind], p, c)
                )
        if p == 1000:
            if quick:
                variants.append(
                    Variant("aiormq/p1000/single", "raw aiormq, ack each", "raw_aiormq.py", ["--ack-every", "1"], p)
                )
            variants.append(
                Variant("aiormq/p1000/m100", "raw aiormq, multiple every 100", "raw_aiormq.py", ["--ack-every", "100"], p)
            )
            variants.append(Variant("aiopika/p1000/uv", "raw aio-pika, ack each", "raw_aiopika.py", [], p, uvloop=True))
            for c in concurrencies:
                variants.append(
                    Variant(
                        f"default/p{p}/c{c}/nolog", "(c) swarrow default stack, logger off", "swarrow_consumer.py",
                        ["--stack", "default", "--no-log"], p, c,
                    )
                )
            variants.append(
                Variant(
                    f"default/p{p}/c10/frames", "(c) swarrow default stack, no bulk intake (A/B)",
                    "swarrow_consumer.py", ["--stack", "default", "--frame-per-read"], p, 10,
                )
            )
            uv_concurrency = [c for c in (concurrencies if quick else [10]) if c <= p]
            for c in uv_concurrency:
                variants.append(
                    Variant(
                        f"default/p{p}/c{c}/uv", "(c) swarrow default stack", "swarrow_consumer.py",
                        ["--stack", "default"], p, c, uvloop=True,
                    )
                )
            if peers_python is not None:
                variants += peer_variants(peers_python, peer_messages)
    return variants


def peer_variants(python: str, messages: int | None) -> list[Variant]:
    """FastStream (quiet: its INFO logging costs ~25%, see `peer_faststream.py --log`) and dramatiq at prefetch 1000."""
    return [
        Variant(
            "pika/p1000/m100", "sync pika, multiple every 100", "peer_pika.py", [], 1000,
            python=python, loop="blocking",
        ),
        Variant(
            "faststream/p1000", "FastStream subscriber, quiet", "peer_faststream.py", [], 1000,
            python=python, messages=messages,
        ),
        Variant(
            "dramatiq/p1000/t8", "dramatiq worker, 8 threads", "peer_dramatiq.py", ["--threads", "8"], 1000,
            concurrency=8, python=python, messages=messages, fills_own_queue=True,
            queue_suffixes=("", ".DQ", ".XQ"), loop="8 threads",
        ),
    ]


def peers_unavailable(python: str) -> str | None:
    """None when `python` can import both peers, else why the peers are skipped."""
    venv = os.path.dirname(os.path.dirname(os.path.abspath(python)))
    repo = os.path.dirname(ROOT)
    where = os.path.relpath(venv, repo) if venv.startswith(repo + os.sep) else venv
    if not os.path.exists(python):
        return f"{where} does not exist (`make bench-peers-env` creates it; it needs PyPI)"
    try:
        out = subprocess.run(
            [python, "-c", "import faststream.rabbit, dramatiq.brokers.rabbitmq"],
            capture_output=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{where}: {exc}"
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {out.returncode}"]
        # No stamp: the install failed and make retries it; a stamp: the venv broke after it was built.
        fix = f"rm -rf {where} && " if os.path.exists(os.path.join(venv, ".install-stamp")) else ""
        return f"{where} cannot import faststream and dramatiq ({lines[-1][:160]}): `{fix}make bench-peers-env`"
    return None


async def one_run(variant: Variant, messages: int, timeout: float) -> None:
    queue = unique_queue(variant.key.replace("/", "."))
    messages = variant.messages or messages
    try:
        if not variant.fills_own_queue:
            await fill_queue(URL, queue, messages)
        cmd = [variant.python, os.path.join(ROOT, variant.script), "--url", URL, "--queue", queue,
               "--messages", str(messages), "--prefetch", str(variant.prefetch), *variant.args]
        if variant.python != PY:
            # A peer gives up (and says so) before run.py kills it.
            cmd += ["--timeout", str(max(30.0, timeout - 20))]
        elif variant.concurrency is not None:
            cmd += ["--concurrency", str(variant.concurrency)]
        if variant.uvloop:
            cmd.append("--uvloop")
        broker_before = broker_cpu_seconds()
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            variant.errors.append(f"timed out after {timeout:.0f}s")
            return
        if proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines() or [f"exit code {proc.returncode}"]
            variant.errors.append(lines[-1][:200])
            return
        result = json.loads(out.decode().strip().splitlines()[-1])
        # A script that filled its own queues checked them itself (they are gone by now).
        left = result["left_in_queue"] if variant.fills_own_queue else await queue_depth(URL, queue)
        if left:
            variant.errors.append(f"{left} messages left unacked in the queue")
        if result.get("dead_lettered"):
            variant.errors.append(f"{result['dead_lettered']} messages dead-lettered")
        variant.rates.append(result["rate"])
        broker_after = broker_cpu_seconds()
        if broker_before is not None and broker_after is not None:
            variant.broker_cpu.append((broker_after - broker_before) / messages * 1e6)
        else:
            variant.broker_cpu.append(float("nan"))  # aligned with `rates`: unknown for this run
        if "cpu_us_per_message" in result:
            variant.cpu.append(result["cpu_us_per_message"])
        variant.library = result.get("library", variant.library)
    finally:
        for suffix in variant.queue_suffixes:
            await delete_queue(URL, queue + suffix)


def fmt_rate(x: float) -> str:
    return "—" if x != x else f"{x:,.0f}"


def e2e_table(variants: list[Variant]) -> list[str]:
    by_key = {v.key: v for v in variants}
    aiormq = by_key.get("aiormq/p1000/m100")
    pika = by_key.get("pika/p1000/m100")
    lines = [
        "| consumer | prefetch | concurrency | loop | msg/s median | min–max | CPU µs/msg | broker CPU µs/msg "
        "| × raw aio-pika | × raw aiormq m100 | × sync pika |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        raw = by_key.get(f"aiopika/p{v.prefetch}")
        lo_hi = f"{fmt_rate(min(v.rates))}–{fmt_rate(max(v.rates))}" if v.rates else "—"
        vs_raw = f"{v.median / raw.median:.2f}×" if raw and raw.rates and v.rates else "—"
        if v.uvloop and v.script == "swarrow_consumer.py":
            uv_raw = by_key.get(f"aiopika/p{v.prefetch}/uv")
            if uv_raw and uv_raw.rates and v.rates:
                vs_raw += f" ({v.median / uv_raw.median:.2f}× uv)"
        vs_mq = f"{v.median / aiormq.median:.2f}×" if aiormq and aiormq.rates and v.rates else "—"
        vs_pika = f"{v.median / pika.median:.2f}×" if pika and pika.rates and v.rates else "—"
        cpu = f"{statistics.median(v.cpu):.1f}" if v.cpu else "—"
        broker = broker_range(v)
        conc = "—" if v.concurrency is None else str(v.concurrency)
        loop = v.loop or ("uvloop" if v.uvloop else "asyncio")
        note = f" (N={v.messages:,})" if v.messages is not None else ""
        note += f" ⚠ {'; '.join(sorted(set(v.errors)))}" if v.errors else ""
        lines.append(
            f"| {v.label}{note} | {v.prefetch} | {conc} | {loop} | {fmt_rate(v.median)} | {lo_hi} | {cpu} "
            f"| {broker} | {vs_raw} | {vs_mq} | {vs_pika} |"
        )
    return lines


def broker_range(v: Variant) -> str:
    """The broker's CPU per message in `v`'s runs, "median (min–max)": a wide range is the broker's
    two modes, and says the wall rates beside it are the broker's too."""
    known = [b for b in v.broker_cpu if b == b]
    if not known:
        return "—"
    return f"{statistics.median(known):.0f} ({min(known):.0f}–{max(known):.0f})"


#: A run is in the broker's fast mode when the broker spent at most this many times the lowest CPU per
#: message of any run. On these machines a classic queue's broker runs either at ~11–13 µs a message
#: or at ~21–25 µs, decided in a run's first thousands of messages and kept to its end, whatever the
#: consumer (its acks are the same frames in both: strace counts the same sends).
FAST_MODE_FACTOR = 1.5


def fast_mode_rates(v: Variant, floor: float) -> list[float]:
    """`v`'s rates in the runs where the broker was in its fast mode (`floor`: the lowest broker CPU)."""
    return [r for r, b in zip(v.rates, v.broker_cpu, strict=False) if b == b and b <= floor * FAST_MODE_FACTOR]


def swarrow_for_peers(variants: list[Variant]) -> Variant | None:
    """The (c) cell to set against the peers: prefetch 1000, concurrency 10, asyncio; else the nearest measured."""
    cells = [v for v in variants if v.key.startswith("default/p1000/") and v.rates]
    if not cells:
        return None
    return min(cells, key=lambda v: (v.key != SWARROW_VS_PEERS, v.uvloop, abs((v.concurrency or 10) - 10)))


def peers_table(variants: list[Variant], messages: int, skipped: str | None) -> list[str]:
    """Ratios of swarrow's (c) cell to each peer, the figure the performance issue asks for (≥ 2.5×)."""
    if skipped is not None:
        return [f"Peers (FastStream, dramatiq) skipped: {skipped}.", ""]
    peers = [v for v in variants if v.python != PY and not v.key.startswith("pika/")]
    ours = swarrow_for_peers(variants)
    if not peers:
        return []
    peer_n = max(v.messages or messages for v in peers)
    libs = "; ".join(sorted({v.library for v in peers if v.library}))
    sizes = (
        f"N={messages:,} like the rest"
        if peer_n == messages
        else f"N={peer_n:,} per run against {messages:,} for swarrow: their rates are low, and a shorter "
        "run keeps `make bench` under 10 minutes"
    )
    lines = [
        f"Against the peers, in the same interleaved runs, prefetch 1000 ({libs}); the peers consume {sizes}. "
        "The performance issue asks for ≥ 2.5× each.",
        "",
        "| ratio of medians | swarrow msg/s | peer msg/s | × |",
        "|---|---:|---:|---:|",
    ]
    if ours is None:
        return [*lines[:2], "(no (c) swarrow default stack cell at prefetch 1000 to compare with)", ""]
    cell = f"p1000, c{ours.concurrency}, {'uvloop' if ours.uvloop else 'asyncio'}"
    for peer in peers:
        ratio = f"**{ours.median / peer.median:.2f}×**" if peer.rates else "—"
        lines.append(
            f"| (c) swarrow default stack ({cell}) / {peer.label} | {fmt_rate(ours.median)} "
            f"| {fmt_rate(peer.median)} | {ratio} |"
        )
    return [*lines, ""]


def pika_table(variants: list[Variant]) -> list[str]:
    """Each prefetch-1000 default-stack cell against sync pika's ceiling (the performance issue: ≥ 1.0×, logger off ≥ 1.3×)."""
    pika = next((v for v in variants if v.key == "pika/p1000/m100" and v.rates), None)
    if pika is None:
        return []
    lines = [
        f"Against synchronous pika with multiple acks ({pika.library or 'pika'}), the pure-Python ceiling, same runs. "
        "The last column compares only the runs where the broker was in its fast mode (its CPU per message within "
        f"{FAST_MODE_FACTOR:g}× the lowest of the whole bench), with how many runs of each side that left:",
        "",
        "| swarrow cell | swarrow msg/s | pika msg/s | × | CPU µs/msg swarrow / pika | × in the broker's fast mode (runs) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pika_cpu = f"{statistics.median(pika.cpu):.1f}" if pika.cpu else "—"
    known = [b for v in variants for b in v.broker_cpu if b == b]
    floor = min(known) if known else float("nan")
    pika_fast = fast_mode_rates(pika, floor)
    for v in variants:
        if not v.key.startswith("default/p1000/") or v.uvloop or not v.rates:
            continue
        cpu = f"{statistics.median(v.cpu):.1f}" if v.cpu else "—"
        ours_fast = fast_mode_rates(v, floor)
        same_mode = (
            f"{statistics.median(ours_fast) / statistics.median(pika_fast):.2f}× ({len(ours_fast)} / {len(pika_fast)})"
            if ours_fast and pika_fast
            else f"— ({len(ours_fast)} / {len(pika_fast)})"
        )
        lines.append(
            f"| {v.label}, c{v.concurrency} | {fmt_rate(v.median)} | {fmt_rate(pika.median)} "
            f"| **{v.median / pika.median:.2f}×** | {cpu} / {pika_cpu} | {same_mode} |"
        )
    return [*lines, ""]


def run_script(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run([PY, *args], capture_output=True, timeout=timeout, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace").strip()[-2000:])
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=5,000, 1 run, prefetch 1000, concurrency 10")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--prefetch", type=parse_list)
    parser.add_argument("--concurrency", type=parse_list)
    parser.add_argument("--only", default="e2e,layers,memory,publish")
    parser.add_argument("--soak-messages", type=int)
    parser.add_argument("--no-peers", action="store_true", help="leave out the FastStream and dramatiq peers")
    parser.add_argument("--peer-messages", type=int, default=20_000, help="peers consume min(N, this) (default 20,000)")
    parser.add_argument(
        "--peers-python", default=PEERS_PY, help="the peers' interpreter (default: $SWARROW_PEERS_PYTHON, else benchmarks/.venv-peers)"
    )
    args = parser.parse_args()
    quick = args.quick
    messages = args.messages or (5_000 if quick else 50_000)
    runs = args.runs or (1 if quick else 3)
    prefetches = args.prefetch or ([1000] if quick else [10, 100, 1000])
    concurrencies = args.concurrency or ([10] if quick else [1, 10, 100])
    soak = args.soak_messages or (100_000 if quick else 1_000_000)
    results_soak = soak
    parts = set(args.only.split(","))
    os.makedirs(RESULTS, exist_ok=True)
    started = time.perf_counter()
    when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = os.getloadavg()[0]
    header = (
        f"swarrow benchmarks — {when} — {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, load {load:.2f} at start — N={messages:,}, {runs} run(s) — "
        f"`{' '.join(['python', 'benchmarks/run.py', *sys.argv[1:]])}`"
    )
    print(header, flush=True)
    if load >= 1.0:
        print(f"warning: load average {load:.2f} >= 1.0: other work is running, figures are noisy", flush=True)
    report: list[str] = [header, ""]
    results: dict[str, Any] = {"date": when, "cores": os.cpu_count(), "messages": messages, "runs": runs, "soak": results_soak}

    if "e2e" in parts:
        peers_python: str | None = os.path.abspath(args.peers_python)  # the scripts run with cwd=benchmarks/
        peers_skipped = "--no-peers" if args.no_peers else peers_unavailable(peers_python)
        if peers_skipped is not None:
            print(f"peers skipped: {peers_skipped}", flush=True)
            peers_python = None
        peer_n = args.peer_messages if args.peer_messages < messages else None
        variants = build_variants(prefetches, concurrencies, quick, peers_python, peer_n)
        timeout = max(60.0, messages / 500)
        for r in range(runs):
            for v in variants:
                run_async(one_run(v, messages, timeout))
                print(f"  run {r + 1}/{runs} {v.key}: {fmt_rate(v.rates[-1]) if v.rates else v.errors[-1]}", flush=True)
        table = e2e_table(variants)
        report += ["End to end against RabbitMQ (msg/s consumed and acked):", "", *table, ""]
        report += peers_table(variants, messages, peers_skipped)
        report += pika_table(variants)
        results["e2e"] = [
            {"key": v.key, "label": v.label, "prefetch": v.prefetch, "concurrency": v.concurrency,
             "uvloop": v.uvloop, "messages": v.messages or messages, "library": v.library,
             "rates": v.rates, "median": v.median, "errors": v.errors, "cpu_us": v.cpu,
             "broker_cpu_us": [round(b, 1) if b == b else None for b in v.broker_cpu]}
            for v in variants
        ]
        results["peers_skipped"] = peers_skipped

    if "layers" in parts:
        print("  layers (in memory)…", flush=True)
        lay = run_script(["layers.py", "--messages", str(50_000 if quick else 200_000), "--repeat", str(3 if quick else 5)], 300)
        results["layers"] = lay
        report += [
            "Per-layer overhead, in memory (µs per message, best of repeats; no broker, no consumer loop):",
            "",
            "| stack | µs/msg |",
            "|---|---:|",
            *(f"| {d} trivial layers + callback | {lay[f'trivial_{d}']:.2f} |" for d in (0, 1, 5, 12)),
            f"| → per trivial layer | **{lay['per_trivial_layer']:.2f}** |",
            f"| AckProcessor + callback (MemoryMessageProvider) | {lay['ack_callback']:.2f} |",
            f"| default stack, {lay['default_no_log_layers']} layers, per-message log off | {lay['default_no_log']:.2f} "
            f"(+{lay['default_no_log_cost']:.2f} over ack+callback) |",
            f"| default stack, {lay['default_layers']} layers, logger at INFO to a file | {lay['default']:.2f} "
            f"(+{lay['default_stack_cost']:.2f} over ack+callback) |",
            "",
        ]
    if "memory" in parts:
        print(f"  memory soak ({soak:,} messages)…", flush=True)
        mem = run_script(["memory_soak.py", "--messages", str(soak)], 600)
        results["memory"] = mem
        base_label = "100k" if soak >= 200_000 else "10% of the run"
        report += [
            f"Memory, full default stack in memory, {mem['messages']:,} messages ({mem['us_per_message']:.1f} µs/msg "
            f"incl. consumer loop and in-memory broker): RSS {mem['rss_at_100k_mib']:.1f} MiB at {base_label} → "
            f"{mem['rss_end_mib']:.1f} MiB at the end = **{mem['growth_pct']:+.1f}%** "
            f"(samples every 10,000 in the JSON; MemoryMessageProvider's `.acked` log cleared at each sample).",
            "",
        ]
    if "publish" in parts:
        pub_n = messages
        rates: dict[str, list[float]] = {"raw": [], "cli": []}
        for r in range(runs):
            for which in ("raw", "cli"):
                out = run_script(["publish.py", "--messages", str(pub_n), "--which", which, "--url", URL], 300)
                rates[which].append(out["rate"])
                print(f"  run {r + 1}/{runs} publish/{which}: {fmt_rate(out['rate'])}", flush=True)
        results["publish"] = rates
        raw_m, cli_m = statistics.median(rates["raw"]), statistics.median(rates["cli"])
        report += [
            f"Publish, {pub_n:,} persistent messages with confirms, 100 awaiting their confirm at once:",
            "",
            "| publisher | msg/s median | min–max | × raw |",
            "|---|---:|---:|---:|",
            f"| raw aio-pika `exchange.publish` | {fmt_rate(raw_m)} | {fmt_rate(min(rates['raw']))}–{fmt_rate(max(rates['raw']))} | 1.00× |",
            f"| `swarrow publish --window 100` | {fmt_rate(cli_m)} | {fmt_rate(min(rates['cli']))}–{fmt_rate(max(rates['cli']))} | {cli_m / raw_m:.2f}× |",
            "",
        ]
    report.append(f"total time {time.perf_counter() - started:.0f} s")
    text = "\n".join(report)
    print()
    print(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(RESULTS, f"bench-{stamp}.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(RESULTS, f"bench-{stamp}.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
