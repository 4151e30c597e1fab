"""Security checks of the chaos suite: no password in any output, metrics on loopback by default,
bodies never unpickled, TLS options passed through to the connection."""

from __future__ import annotations

import ast
import os
import pickle
import socket
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from callbacks import Recorder

from processors import default_stack
from swarrow import Consumer, Stack, open_broker
from swarrow.cli import EXIT_BROKER, EXIT_OK
from swarrow.http import DEFAULT_HOST, MetricsServer, parse_metrics_addr

if TYPE_CHECKING:
    from conftest import Chaos

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[2]


def _secret() -> str:
    return f"pw-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the password never appears in logs or error output ---------------------------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:{secret}@127.0.0.1:5672/",  # refused credentials
        "amqp://guest:{secret}@127.0.0.1:1/",  # nothing listens
        "amqps://guest:{secret}@127.0.0.1:1/?cafile=/nonexistent/ca.pem",  # TLS options, nothing listens
    ],
    ids=["refused", "unreachable", "amqps-unreachable"],
)
async def test_password_is_not_in_the_output_of_a_failed_connection(chaos: Chaos, url: str) -> None:
    secret = _secret()
    worker = chaos.consume(
        "record", "--retry-delays", "100ms", "--log-level", "debug", url=url.format(secret=secret)
    )
    code = await worker.wait(45)
    output = worker.output()
    assert code == EXIT_BROKER, output[-2000:]
    assert secret not in output
    assert "***" in output, "the error names the broker URL, masked"


@pytest.mark.timeout(90)
async def test_password_is_not_in_the_debug_logs_of_a_real_run(chaos: Chaos) -> None:
    user, secret = f"swarrow-test-{uuid.uuid4().hex[:8]}", _secret()
    chaos.rabbitmqctl("add_user", user, secret)
    try:
        chaos.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        await chaos.declare_topology((0.05,))
        url = chaos.url.replace("guest:guest@", f"{user}:{secret}@")
        assert secret in url
        outputs = []
        published: list[str] = []
        for fmt in ("text", "json"):
            # One good message and one the JSON callback rejects: the error paths log too.
            await chaos.publish_one(f"good-{fmt}", b'{"ok": 1}')
            await chaos.publish_one(f"bad-json-{fmt}", b"{")
            published += [f"good-{fmt}", f"bad-json-{fmt}"]
            worker = chaos.consume(
                "json_record",
                *("--retry-delays", "50ms", "--log-level", "debug", "--log-format", fmt, "--log-body"),
                *("--metrics-addr", f"127.0.0.1:{_free_port()}", "--stop-when-idle", "1s"),
                url=url,
            )
            assert await worker.wait(45) == EXIT_OK, worker.output()[-2000:]
            outputs.append(worker.output())
        row, dead = await chaos.settle("security: run with a password URL", published, chaos.processed())
        assert sorted(d.message_id for d in dead) == ["bad-json-json", "bad-json-text"]
        for output in outputs:
            assert "DEBUG" in output, "debug logging was not on: the check would prove nothing"
            assert secret not in output
            assert f"{user}:***@" in output, "the URL is logged, masked"
    finally:
        chaos.rabbitmqctl("delete_user", user)


# --- the metrics endpoint binds 127.0.0.1 by default ------------------------------------------------------
def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on `port`, from /proc/net/tcp (state 0A = LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_metrics_endpoint_binds_loopback_by_default() -> None:
    assert DEFAULT_HOST == "127.0.0.1"
    assert parse_metrics_addr("9100") == ("127.0.0.1", 9100)
    # ":9100" is the explicit every-interface spelling (Prometheus' exporters' convention): an opt-in,
    # like 0.0.0.0:9100; only what is left out (no address, a bare port) defaults, and to loopback.
    assert parse_metrics_addr(":9100") == ("0.0.0.0", 9100)
    server = MetricsServer(port=0)
    server.start()
    try:
        assert server.host == "127.0.0.1"
        assert _listening_addresses(server.port) == {"127.0.0.1"}
    finally:
        server.stop()


@pytest.mark.timeout(60)
async def test_cli_metrics_address_without_a_host_listens_on_loopback_only(chaos: Chaos) -> None:
    await chaos.declare_topology((0.1,))
    port = _free_port()
    worker = chaos.consume("record", "--retry-delays", "100ms", "--metrics-addr", str(port))
    await chaos.wait_until(
        lambda: bool(_listening_addresses(port)) or worker.returncode is not None,
        timeout=20,
        what="the metrics endpoint listening",
    )
    assert _listening_addresses(port) == {"127.0.0.1"}, worker.output()[-2000:]
    worker.send(15)
    assert await worker.wait(20) == EXIT_OK


# --- bodies are never unpickled -----------------------------------------------------------------------------
_UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}


def test_swarrow_source_never_imports_a_deserializer_of_code() -> None:
    offenders = []
    for package in ("swarrow", "processors"):
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module.split(".")[0]]
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    names = [node.func.id] if node.func.id in {"eval", "exec", "__import__"} else []
                elif isinstance(node, ast.Attribute) and node.attr in {"loads", "load"}:
                    base = node.value.id if isinstance(node.value, ast.Name) else ""
                    names = [base] if base in _UNSAFE_MODULES | {"yaml"} else []
                bad = [n for n in names if n in _UNSAFE_MODULES | {"eval", "exec", "__import__", "yaml"}]
                offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in bad]  # type: ignore[attr-defined]
    assert not offenders, offenders


class _Canary:
    """Unpickling this creates a directory: proof that someone called pickle.loads on the body."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)


@pytest.mark.timeout(60)
async def test_a_pickle_body_is_delivered_as_bytes_and_never_unpickled(chaos: Chaos) -> None:
    canary = chaos.directory / "unpickled"
    payload = pickle.dumps(_Canary(str(canary)))
    await chaos.declare_topology((0.05,))
    await chaos.publish_one("pickled", payload)
    broker = chaos.broker()
    recorder = Recorder()
    bodies: list[bytes] = []

    async def callback(message: Any) -> None:
        bodies.append(message.body)
        await recorder(message)

    provider = broker.provider(chaos.queue, prefetch=10)
    stack = Stack(
        *default_stack(provider=provider, publisher=broker.publisher(), signals=False, log_body=True,
                       metrics=True, retry_attempts=1, retry_delays=(0.05,), delivery_limit=5),
        callback=callback,
    )  # fmt: skip
    reason = await chaos.run_until(
        Consumer(provider, stack), lambda: bool(recorder.done), timeout=20, what="the pickle body consumed"
    )
    assert reason.code == "test"
    await chaos.settle("security: pickle body", ["pickled"], recorder.processed)
    assert bodies == [payload]
    assert not canary.exists(), "the body was unpickled"


# --- amqps:// with CA / client certificate: options passed through ----------------------------------------
def _make_certificate(directory: Path) -> tuple[Path, Path]:
    key, cert = directory / "client.key", directory / "client.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=swarrow-test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


async def test_amqps_url_and_ssl_context_reach_the_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No TLS listener on the shared test broker (its config is not ours to change): this checks that
    # what the user gives swarrow is exactly what the AMQP client receives.
    cert, key = _make_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    context.load_cert_chain(str(cert), str(key))
    secret = _secret()
    url = f"amqps://guest:{secret}@rabbit.example:5671/vhost?cafile={cert}&certfile={cert}&keyfile={key}"
    seen: dict[str, Any] = {}

    class Reached(Exception):
        pass

    from swarrow.amqp.failover import FailoverConnection

    async def fake_connect(self: FailoverConnection, timeout: Any = None) -> None:
        seen.update(url=str(self.url), ssl_context=self.kwargs.get("context"))
        raise Reached

    # The AMQP client's connection is aio-pika's robust one (swarrow's failover subclass of it): stop it
    # where it would open the socket and look at what it was given.
    monkeypatch.setattr(FailoverConnection, "connect", fake_connect)
    broker = open_broker(url, ssl_context=context)
    assert secret not in broker.url
    with pytest.raises(Reached):
        await broker.connect()
    assert seen["url"] == url, "the amqps URL (with its cafile/certfile/keyfile options) is passed unchanged"
    assert seen["ssl_context"] is context
