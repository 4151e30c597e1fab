"""End to end over OTLP/HTTP: `swarrow publish --otel` and `swarrow consume --otel` export one trace.

No OpenTelemetry Collector or Jaeger installs here (neither Debian nor PyPI ships one), so the receiving
end is a minimal OTLP/HTTP receiver in this test, decoding what the real exporter sends with
opentelemetry-proto.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


class _Receiver(BaseHTTPRequestHandler):
    spans: list[Any] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    _Receiver.spans.append((service, span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    _Receiver.spans = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_publish_and_consume_export_one_trace_over_otlp(
    amqp_url: str, delete_queue_family: str, collector: str
) -> None:
    queue_name = delete_queue_family
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }  # fmt: skip
    swarrow = [sys.executable, "-m", "swarrow"]

    def run(*args: str, service: str) -> None:
        done = subprocess.run([*swarrow, *args], env={**env, "OTEL_SERVICE_NAME": service},
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr

    run("declare", "--queue", queue_name, service="setup")
    run("publish", "--queue", queue_name, "--body", "hello", "--otel", service="web")
    run("consume", "tests.rpc.callbacks:echo", "--queue", queue_name, "--otel", "--max-messages", "1",
        service="worker")  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_Receiver.spans) < 2:
        time.sleep(0.05)
    by_name = {span.name: (service, span) for service, span in _Receiver.spans}
    web, send = by_name[f"send {queue_name}"]
    worker, process = by_name[f"process {queue_name}"]
    assert (web, worker) == ("web", "worker")
    assert process.trace_id == send.trace_id, "the worker's span continues the publisher's trace"
    assert process.parent_span_id == send.span_id
    attributes = {a.key: a.value for a in process.attributes}
    assert attributes["messaging.system"].string_value == "rabbitmq"
    assert attributes["messaging.destination.name"].string_value == queue_name


def test_call_otel_puts_the_request_the_worker_and_its_reply_in_one_trace(
    amqp_url: str, delete_queue_family: str, collector: str
) -> None:
    queue_name = delete_queue_family
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }  # fmt: skip
    swarrow = [sys.executable, "-m", "swarrow"]
    subprocess.run([*swarrow, "declare", "--queue", queue_name], env=env, check=True, capture_output=True)
    worker = subprocess.Popen(
        [*swarrow, "consume", "tests.rpc.callbacks:echo", "--queue", queue_name, "--otel",
         "--max-messages", "1"],
        env={**env, "OTEL_SERVICE_NAME": "worker"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        done = subprocess.run(
            [*swarrow, "call", "--queue", queue_name, "--body", "ping", "--otel", "--timeout", "30s"],
            env={**env, "OTEL_SERVICE_NAME": "caller"}, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == b"PING"
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_Receiver.spans) < 3:
        time.sleep(0.05)
    by_name = {span.name: (service, span) for service, span in _Receiver.spans}
    caller, request = by_name[f"send {queue_name}"]
    where, process = by_name[f"process {queue_name}"]
    replier, reply = by_name["send"]  # a reply's destination is temporary: no name in the span's
    assert (caller, where, replier) == ("caller", "worker", "worker")
    assert process.trace_id == request.trace_id == reply.trace_id
    assert process.parent_span_id == request.span_id and reply.parent_span_id == process.span_id
    attributes = {a.key: a.value for a in reply.attributes}
    assert attributes["messaging.destination.temporary"].bool_value is True
    assert attributes["messaging.destination.anonymous"].bool_value is True


@pytest.fixture
def hanging_collector() -> Iterator[str]:
    """An OTLP endpoint that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def test_a_hanging_otlp_endpoint_delays_the_exit_by_the_flush_budget_only(
    amqp_url: str, delete_queue_family: str, hanging_collector: str
) -> None:
    queue_name = delete_queue_family
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": hanging_collector, "OTEL_BSP_EXPORT_TIMEOUT": "1000",
    }  # fmt: skip
    swarrow = [sys.executable, "-m", "swarrow"]
    subprocess.run([*swarrow, "declare", "--queue", queue_name], env=env, check=True, capture_output=True)
    subprocess.run([*swarrow, "publish", "--queue", queue_name, "--body", "x", "--count", "20"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    worker = subprocess.Popen(
        [*swarrow, "consume", "tests.rpc.callbacks:echo", "--queue", queue_name, "--otel",
         "--max-messages", "20"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stderr is not None
    stopped = None
    for line in worker.stderr:
        if "consumer of" in line and "stopped" in line:
            stopped = time.monotonic()
            break
    assert stopped is not None, "the consumer never stopped"
    code = worker.wait(timeout=60)
    waited = time.monotonic() - stopped
    assert code == 0
    # Spans not exported within OTEL_BSP_EXPORT_TIMEOUT are given up: before, 10 s (the OTLP request's
    # own timeout) per batch left, 30 s for 3,000 spans.
    assert waited < 4, f"{waited:.1f}s from the stop to the exit"


def test_console_spans_never_mix_with_the_ids_publish_prints(amqp_url: str, delete_queue_family: str) -> None:
    queue_name = delete_queue_family
    # `swarrow publish --print-ids | swarrow jobs status -` must read ids only, tracing or not.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "console"}
    swarrow = [sys.executable, "-m", "swarrow"]
    subprocess.run([*swarrow, "declare", "--queue", queue_name], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [*swarrow, "publish", "--queue", queue_name, "--body", "x", "--count", "3", "--print-ids",
         "--otel"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == 3 and all(len(i) >= 8 and "{" not in i for i in ids), done.stdout[:500]
    assert f'"name": "send {queue_name}"' in done.stderr, "the spans go to stderr"


def test_dead_replay_otel_traces_each_copy(amqp_url: str, delete_queue_family: str) -> None:
    queue_name = delete_queue_family
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "console"}
    swarrow = [sys.executable, "-m", "swarrow"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*swarrow, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    assert run("declare", "--queue", queue_name).returncode == 0
    assert run("publish", "--queue", queue_name, "--body", "x", "--otel").returncode == 0
    consumed = run("consume", "tests.rpc.callbacks:refuse", "--queue", queue_name, "--otel",
                   "--max-messages", "1")  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    traced = [line for line in consumed.stdout.splitlines() if '"trace_id"' in line]
    replayed = run("dead", "replay", "--queue", queue_name, "--otel", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert '"replayed": 1' in replayed.stdout.replace(" ", "").replace('":1', '": 1'), replayed.stdout
    assert f'"name": "send {queue_name}"' in replayed.stderr and "SpanKind.PRODUCER" in replayed.stderr
    trace_ids = {line.split('"')[3] for line in traced}
    assert any(t in replayed.stderr for t in trace_ids), "the copy's span is in the message's trace"


def test_a_pools_workers_trace_each_message_in_the_publishers_trace(
    amqp_url: str, delete_queue_family: str, collector: str
) -> None:
    queue_name = delete_queue_family
    port = _free_port()
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "100",
    }  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    swarrow = [sys.executable, "-m", "swarrow"]
    subprocess.run([*swarrow, "declare", "--queue", queue_name], env=env, check=True, capture_output=True)
    subprocess.run([*swarrow, "publish", "--queue", queue_name, "--body", "x", "--count", "4", "--otel"],
                   env={**env, "OTEL_SERVICE_NAME": "web"}, check=True, capture_output=True)  # fmt: skip
    pool = subprocess.Popen(
        [*swarrow, "consume", "tests.rpc.callbacks:echo", "--queue", queue_name, "--otel",
         "--workers", "2", "--metrics-addr", f"127.0.0.1:{port}"],
        env={**env, "OTEL_SERVICE_NAME": "pool"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_processed(queue_name)) < 4:
            time.sleep(0.05)
    finally:
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=30) == 0
    sends = {span.span_id: span for _, span in _Receiver.spans if span.name == f"send {queue_name}"}
    processed = _processed(queue_name)
    assert len(processed) == 4 and len(sends) == 4
    for service, span in processed:
        assert service == "pool" and span.parent_span_id in sends
        attributes = {a.key: a.value for a in span.attributes}
        assert attributes["server.address"].string_value == "127.0.0.1"


def _processed(queue: str) -> list[Any]:
    return [(service, span) for service, span in _Receiver.spans if span.name == f"process {queue}"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _AuthReceiver(_Receiver):
    authorizations: list[str] = []

    def do_POST(self) -> None:
        _AuthReceiver.authorizations.append(self.headers.get("Authorization", ""))
        super().do_POST()


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"])
def test_an_otlp_endpoint_password_holding_slash_hash_question_mark_is_sent_and_never_printed(
    amqp_url: str, delete_queue_family: str, variable: str
) -> None:
    """The password runs to the last `@`, as in broker URLs: sent as Basic auth, absent from the output.

    Before: the exporter cut the URL at the `#` and logged "Failed to parse: 'otel:Zq' is not a valid
    host or port" at every export (the password's start), and no span arrived.
    """
    queue_name = delete_queue_family
    import base64

    _Receiver.spans, _AuthReceiver.authorizations = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    password = "Zq/7#x?y@w:z%41"
    endpoint = f"http://otel:{password.replace('%', '%25')}@127.0.0.1:{server.server_address[1]}"
    if variable.endswith("TRACES_ENDPOINT"):
        endpoint += "/v1/traces"
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "SWARROW_URL": amqp_url, "OTEL_TRACES_EXPORTER": "otlp",
        variable: endpoint, "OTEL_SERVICE_NAME": "web",
    }  # fmt: skip
    swarrow = [sys.executable, "-m", "swarrow"]
    try:
        subprocess.run([*swarrow, "declare", "--queue", queue_name, "--no-retry"], env=env, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        done = subprocess.run(
            [*swarrow, "publish", "--queue", queue_name, "--body", "hi", "--otel"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert "Zq" not in output and "7#x" not in output, output
    assert [span.name for _, span in _Receiver.spans] == [f"send {queue_name}"]
    basic = base64.b64decode(_AuthReceiver.authorizations[0].removeprefix("Basic ")).decode()
    assert basic == f"otel:{password}"
