"""Job store URLs a user may get wrong: refused up front (exit 2), and never printed with a secret."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from swarrow.cli import cli
from swarrow.errors import ConfigurationError
from swarrow.jobs import JobStore, mask_store_url

SECRET = "S3cr3t-pw"
LEAKY_URLS = [
    f"host=127.0.0.1 password={SECRET} dbname=jobs",  # libpq's keyword form, not a URL
    f"host=127.0.0.1 password = '{SECRET} x' dbname=jobs",
    f"postgresql://127.0.0.1:1/jobs?user=app&Password={SECRET}",
    f"postgresql://app@127.0.0.1:1/jobs?sslkey=/k.pem&sslpassword={SECRET}",
    f"postgresql://127.0.0.1:1/jobs?PASSWORD={SECRET}&user=app",
]


@pytest.mark.parametrize("url", LEAKY_URLS)
def test_mask_store_url_hides_every_password_parameter(url: str) -> None:
    masked = mask_store_url(url)
    assert SECRET not in masked and "***" in masked


@pytest.mark.parametrize("url", LEAKY_URLS)
def test_jobs_and_consume_never_print_a_password_parameter(url: str) -> None:
    runner = CliRunner()
    jobs = runner.invoke(cli, ["jobs", "status", "x", "--store", url])
    consume = runner.invoke(cli, ["consume", "tests.cli_callbacks:ok", "-q", "q", "--url", "memory://unused",
                                  "--track-jobs", url, "--print-settings"])  # fmt: skip
    for result in (jobs, consume):
        assert result.exit_code in (0, 2, 4), result.output
        assert SECRET not in result.output


@pytest.mark.parametrize(
    ("url", "bad"),
    [
        (f"postgresql://app:{SECRET}@127.0.0.1:abc/jobs", "'abc'"),
        (f"postgresql://app:{SECRET}@127.0.0.1:99999/jobs", "'99999'"),
        (f"postgresql://app:{SECRET}@h1:5432,h2:x5/jobs", "'x5'"),
        (f"postgresql://app:{SECRET}@[::1]:p/jobs", "'p'"),
    ],
)
def test_a_bad_postgresql_port_is_a_configuration_error_up_front(url: str, bad: str) -> None:
    with pytest.raises(ConfigurationError, match=f"port {bad}") as err:
        JobStore.open(url)
    assert SECRET not in str(err.value) and "app:***@" in str(err.value)
    # consume refuses it at start (exit 2) instead of running with tracking that can never connect
    result = CliRunner().invoke(cli, ["consume", "tests.cli_callbacks:ok", "-q", "q", "--url", "memory://unused",
                                      "--track-jobs", url])  # fmt: skip
    assert result.exit_code == 2 and "--track-jobs" in result.output and bad in result.output, result.output
    assert SECRET not in result.output


def test_several_hosts_and_default_ports_are_accepted() -> None:
    good = [
        "postgresql://app:pw@h1:5432,h2:5433/jobs",
        "postgresql://app:pw@[::1]/jobs",
        "postgresql://app:pw@[::1]:5432/jobs",
        "postgresql:///jobs?host=/run/pg",
        "postgres://h/db",
    ]
    for url in good:
        assert JobStore.open(url).url.startswith("postgres")


ODD_PASSWORD = "p/#?@%:x"


def test_a_raw_password_holding_url_characters_reaches_postgresql_as_written(postgres_url: str) -> None:
    # As with amqp:// URLs, the credentials end at the last '@': the server must be asked, as user
    # swarrow, with that password (it refuses it: exit 4), not the URL misread ('invalid literal for int()').
    scheme, _, rest = postgres_url.partition("://")
    location = rest.rpartition("@")[2]
    url = f"{scheme}://swarrow:{ODD_PASSWORD}@{location}"
    result = CliRunner().invoke(cli, ["jobs", "status", "x", "--store", url])
    assert result.exit_code == 4, result.output
    assert 'password authentication failed for user "swarrow"' in result.output
    assert ODD_PASSWORD not in result.output and "swarrow:***@" in result.output
    # an already percent-encoded password still works (sw%61rrow is the test server's 'swarrow')
    encoded = f"{scheme}://swarrow:sw%61rrow@{location}"
    assert CliRunner().invoke(cli, ["jobs", "status", "x", "--store", encoded]).exit_code == 6


@pytest.mark.parametrize(
    "url", [f"postgresql://app:{SECRET}@[::1/jobs", f"postgresql://app:{SECRET}@h]/jobs"]
)
def test_a_postgresql_url_that_does_not_parse_is_refused_up_front_naming_it(url: str) -> None:
    with pytest.raises(ConfigurationError, match="does not parse") as err:
        JobStore.open(url)
    assert SECRET not in str(err.value) and "app:***@" in str(err.value)
    runner = CliRunner()
    jobs = runner.invoke(cli, ["jobs", "status", "x", "--store", url])
    assert jobs.exit_code == 2 and "does not parse" in jobs.output and "app:***@" in jobs.output, jobs.output
    consume = runner.invoke(cli, ["consume", "tests.cli_callbacks:ok", "-q", "q", "--url", "memory://unused",
                                  "--track-jobs", url])  # fmt: skip
    assert consume.exit_code == 2 and "--track-jobs" in consume.output and SECRET not in consume.output


def test_a_store_that_accepts_and_never_answers_is_exit_4_saying_so() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = server.getsockname()[1]
        result = CliRunner().invoke(
            cli, ["jobs", "status", "x", "--store", f"postgresql://app:{SECRET}@127.0.0.1:{port}/j"]
        )
    assert result.exit_code == 4, result.output
    assert "no answer within 5 s" in result.output and SECRET not in result.output
