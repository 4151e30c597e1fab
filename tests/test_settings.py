"""`Settings`: one frozen typed object, built once, validated once, handed to `consume()` / `run()`."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from swarrow import MemoryBroker, Message
from swarrow.errors import ConfigurationError
from swarrow.runner import run
from swarrow.settings import Settings


def test_settings_are_frozen() -> None:
    settings = Settings(queue="jobs")
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.prefetch = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"prefetch": 1, "concurrency": 2}, r"prefetch \(1\) must be >= concurrency \(2\)"),
        ({"prefetch": 0}, "prefetch must be an integer >= 1, got 0"),
        ({"max_runtime": -1.0}, "max_runtime must be a finite number of seconds > 0"),
        ({"memory_limit": 0.0}, "memory_limit must be a finite number of MiB > 0"),
        ({"retry_delays": (1.0, float("nan"))}, "each of retry_delays"),
        ({"queue": ""}, "a queue name is required"),
    ],
)
def test_a_bad_value_is_one_configuration_error_naming_it(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Settings(**{"queue": "jobs", **options})  # type: ignore[arg-type]
    if "retry_delays" not in options:
        with pytest.raises(ConfigurationError, match=match):
            Settings.create(**{"queue": "jobs", **options})  # type: ignore[arg-type]


def test_retry_delays_are_resolved_once_from_attempts_or_delays() -> None:
    assert Settings.create(queue="q").retry_delays == (1.0, 2.0, 4.0)
    assert not Settings.create(queue="q").retry_explicit
    assert Settings.create(queue="q", retry_attempts=2).retry_delays == (1.0, 2.0)
    given = Settings.create(queue="q", retry_delays=[5, 30])
    assert (given.retry_delays, given.retry_attempts, given.retry_explicit) == ((5, 30), 2, True)
    with pytest.raises(ConfigurationError, match=r"one delay per retry attempt \(3\)"):
        Settings.create(queue="q", retry_attempts=3, retry_delays=[1, 2])
    assert Settings.create(queue="q", retry=False).retry_delays == ()


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="concurency"):
        Settings.create(queue="q", concurency=3)  # type: ignore[call-arg]


def test_url_and_metrics_address_accept_the_cli_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARROW_URL", "memory://from-env")
    settings = Settings.create(queue="q", metrics_address=":9100")
    assert settings.url == "memory://from-env"
    assert settings.metrics_address is not None and settings.metrics_address[1] == 9100
    with pytest.raises(ConfigurationError, match="metrics_address: invalid metrics address"):
        Settings.create(queue="q", metrics_address="nope")


def test_json_round_trip_is_equal() -> None:
    settings = Settings.create(
        queue="q",
        url="amqp://u:p@h:5672/v",
        prefetch=20,
        concurrency=4,
        metrics_address=("127.0.0.1", 9100),
        retry_delays=[1, 5],
        max_runtime=60.0,
        track_jobs="sqlite:///tmp/x.db",
    )
    assert Settings.from_json(settings.to_json()) == settings
    with pytest.raises(ConfigurationError, match="settings JSON cannot be read"):
        Settings.from_json("[1, 2]")
    with pytest.raises(ConfigurationError, match=r"prefetch \(1\) must be >= concurrency \(2\)"):
        Settings.from_json('{"queue": "q", "prefetch": 1, "concurrency": 2}')


def test_stack_options_carry_every_default_stack_setting() -> None:
    options = Settings.create(queue="q", retry_delays=[2, 4], delivery_limit=5, log_body=True).stack_options()
    assert options["retry_delays"] == (2, 4) and options["retry_attempts"] == 2
    assert options["delivery_limit"] == 5 and options["log_body"] is True


def test_run_takes_a_settings_object_and_refuses_both_forms() -> None:
    name = f"settings-{uuid.uuid4().hex[:8]}"
    broker = MemoryBroker.named(name)
    broker.declare_queue_nowait("jobs")
    broker.publish_nowait(Message(b"x"), "jobs")
    seen: list[bytes] = []
    settings = Settings.create(
        queue="jobs", url=f"memory://{name}", retry=False, signals=False, max_messages=1
    )
    assert run(lambda message: seen.append(message.body), settings).code == "max_messages"
    assert seen == [b"x"]
    with pytest.raises(TypeError, match="not both"):
        run(print, settings, prefetch=5)


@pytest.mark.parametrize("password", ["s3cr/et", "s3#c?r@et:x", "p%40ss"])
def test_the_repr_of_settings_masks_the_broker_and_job_store_passwords(password: str) -> None:
    # Before: the dataclass repr printed both URLs whole (an error reporter recording locals, a log line).
    settings = Settings(
        queue="q",
        url=f"amqp://app:{password}@h1:5672,h2:5672/",
        track_jobs=f"postgresql://jobs:{password}@db/swarrow?password={password}",
    )
    for text in (repr(settings), str(settings), f"{[settings]}"):
        assert password not in text
        assert "amqp://app:***@h1:5672,h2:5672/" in text and "postgresql://jobs:***@" in text
    assert Settings.from_json(settings.to_json()) == settings  # the workers still get the password
