"""A real Prometheus scrapes a real consumer's /metrics; its query API must see every message processed.

Skipped only where the `prometheus` binary is missing and cannot be installed — never when CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from swarrow import Message
from swarrow.amqp import AmqpBroker

pytestmark = [pytest.mark.integration, pytest.mark.prometheus, pytest.mark.slow, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = 50

# The consumer, as a separate process: a signal handler (SIGTERM = graceful stop), metrics serving
# /metrics on the given port from the global registry, acks, and a callback that does nothing.
CONSUMER = """
import sys
import anyio
from processors.ack import AckProcessor
from processors.metrics import MetricsProcessor
from processors.signal_handler import SignalHandlerProcessor
from swarrow import Consumer, Layer, Stack
from swarrow.amqp import AmqpBroker

async def main(url: str, queue: str, port: int) -> None:
    broker = AmqpBroker(url, reconnect_interval=0.5)
    await broker.connect()
    provider = broker.provider(queue, prefetch=50)
    stack = Stack(
        Layer(SignalHandlerProcessor),
        Layer(MetricsProcessor, provider=provider, address=("127.0.0.1", port)),
        Layer(AckProcessor, provider=provider),
        callback=lambda message: None,
    )
    try:
        reason = await Consumer(provider, stack).run()
    finally:
        await broker.close()
    print("stopped:", reason, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def _which_prometheus() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def spawn(
    args: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a process writing stdout and stderr to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def prometheus_binary() -> str:
    """The prometheus binary, installed with apt-get if need be; skip only outside CI."""
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-q", "prometheus"], env=env, timeout=600, check=False)
        found = shutil.which("prometheus") or (
            "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
        )
    if found is None:
        message = "the prometheus binary is missing and `apt-get install prometheus` failed"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


async def wait_http_200(url: str, within: float, process: subprocess.Popen[bytes], log: Path) -> None:
    with anyio.fail_after(within):
        while (await anyio.to_thread.run_sync(http_get, url))[0] != 200:
            if process.poll() is not None:
                pytest.fail(f"{process.args!r} exited {process.returncode}:\n{tail(log)}")
            await anyio.sleep(0.1)


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    status, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    if status != 200:
        return []
    result: list[dict[str, object]] = json.loads(body)["data"]["result"]
    return result


def scalar(prometheus: str, promql: str) -> float | None:
    result = query(prometheus, promql)
    if not result:
        return None
    value = result[0]["value"]
    assert isinstance(value, list)
    return float(value[1])


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return process.returncode


@pytest.fixture
def prometheus_path() -> str:
    return prometheus_binary()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            stop(process)


@pytest.mark.parametrize("launcher", ["cli", "script"])
async def test_prometheus_scrapes_every_processed_message(
    launcher: str,
    amqp_url: str,
    amqp_broker: AmqpBroker,
    queue_name: str,
    prometheus_path: str,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    await amqp_broker.declare_queue(queue_name)
    metrics_port, prometheus_port = free_port(), free_port()

    consumer_log = tmp_path / "consumer.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if launcher == "cli":
        # `swarrow consume` with the default stack (signals, metrics, logger, catcher, ack), as documented
        (tmp_path / "handler.py").write_text("def handle(message):\n    return None\n")
        args = [
            sys.executable, "-m", "swarrow", "consume", "handler:handle",
            "--queue", queue_name, "--url", amqp_url, "--no-retry",
            "--metrics-addr", f"127.0.0.1:{metrics_port}",
        ]  # fmt: skip
        consumer = spawn(args, consumer_log, cwd=tmp_path, env=env)
    else:
        script = tmp_path / "consumer.py"
        script.write_text(CONSUMER)
        consumer = spawn(
            [sys.executable, str(script), amqp_url, queue_name, str(metrics_port)],
            consumer_log,
            cwd=ROOT,
            env=env,
        )
    processes.append(consumer)

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: swarrow\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prometheus_log = tmp_path / "prometheus.log"
    prometheus = spawn(
        [
            prometheus_path,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
            "--log.level=warn",
        ],
        prometheus_log,
        cwd=tmp_path,
    )
    processes.append(prometheus)
    api = f"http://127.0.0.1:{prometheus_port}"

    await wait_http_200(f"http://127.0.0.1:{metrics_port}/readyz", 15, consumer, consumer_log)
    await wait_http_200(f"{api}/-/ready", 15, prometheus, prometheus_log)

    publisher = amqp_broker.publisher()
    for i in range(MESSAGES):
        await publisher.publish(Message(str(i).encode(), message_id=str(i)), queue_name)

    processed = f'sum(swarrow_messages_processed_total{{queue="{queue_name}"}})'
    seen: float | None = None
    with anyio.fail_after(30):
        while seen != MESSAGES:
            seen = await anyio.to_thread.run_sync(scalar, api, processed)
            assert seen is None or seen <= MESSAGES, seen
            await anyio.sleep(0.25)

    def value(promql: str) -> float | None:
        return scalar(api, promql)

    assert value(f'swarrow_messages_processed_total{{queue="{queue_name}",outcome="acked"}}') == MESSAGES
    assert value(f'swarrow_messages_processed_total{{queue="{queue_name}",outcome="failed"}}') == 0
    assert value(f'swarrow_messages_received_total{{queue="{queue_name}"}}') == MESSAGES
    assert value(f'swarrow_message_duration_seconds_count{{queue="{queue_name}"}}') == MESSAGES
    assert value(f'swarrow_consumer_up{{queue="{queue_name}"}}') == 1
    assert value('up{job="swarrow"}') == 1
    rss = value('process_resident_memory_bytes{job="swarrow"}')
    assert rss is not None and rss > 0

    # every query of the example dashboard is valid PromQL and finds data (no stop happened yet);
    # rate() needs two samples in its window, so wait for a few scrapes first
    samples = f'count_over_time(swarrow_consumer_up{{queue="{queue_name}"}}[1m])'
    with anyio.fail_after(10):
        while (await anyio.to_thread.run_sync(scalar, api, samples) or 0) < 3:
            await anyio.sleep(0.25)
    for expr in dashboard_queries():
        promql = (
            expr.replace("$queue", queue_name).replace("$job", "swarrow").replace("$__rate_interval", "1m")
        )
        status, body = await anyio.to_thread.run_sync(
            http_get, f"{api}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        )
        assert status == 200, (promql, body)
        # Series born of an event that this run does not have: a stop, a reply to a request.
        if not any(name in promql for name in ("swarrow_consumer_stops_total", "swarrow_replies_total")):
            assert json.loads(body)["data"]["result"], f"no data for {promql}"

    assert await anyio.to_thread.run_sync(stop, consumer) == 0, tail(consumer_log)
    log = tail(consumer_log)
    assert re.search(r"stopped:? \(?signal", log), log  # the stop reason, logged (CLI) or printed (script)
    assert "Traceback" not in log, log
    assert http_get(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 0  # the endpoint stopped with it
