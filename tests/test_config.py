from __future__ import annotations

import re
from pathlib import Path

import pytest

from swarrow.config import load_config
from swarrow.errors import ConfigurationError
from swarrow.urls import parse_url


def pattern(message: str) -> str:
    """`message` as a regex where only `.*` is special (config messages are full of brackets)."""
    return ".*".join(re.escape(part) for part in message.split(".*"))


EXAMPLE = Path(__file__).parent.parent / "examples" / "swarrow.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "swarrow.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_the_example_file_into_consume_option_names() -> None:
    config = load_config(EXAMPLE)
    emails = config.consumer("emails").values
    assert emails["queue"] == ("emails",)  # one queue, or a list in order of preference
    assert emails["callable"] == "examples.callbacks:send_email"
    assert emails["url"] == "amqp://guest:guest@127.0.0.1:5672/"
    assert emails["log_format"] == "json"
    assert emails["prefetch"] == 50
    assert emails["memory_limit"] == 512.0
    assert emails["max_runtime"] == 3600.0
    assert emails["retry_delays"] == (5.0, 60.0, 600.0)
    assert emails["metrics_addr"] == ("127.0.0.1", 9100)
    thumbnails = config.consumer("thumbnails").values
    assert thumbnails["retry_attempts"] == 5
    assert thumbnails["delivery_limit"] == 5
    assert thumbnails["stop_when_idle"] == 10.0


def test_a_consumer_overrides_shared_tables_wherever_they_appear(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[consumers.a]
queue = "a"
callable = "m:f"
url = "memory://own"
[consumers.a.logging]
level = "debug"

[consumers.b]
queue = "b"
callable = "m:g"

[connection]
url = "memory://shared"
[logging]
level = "WARNING"
""",
    )
    config = load_config(path)
    assert config.consumer("a").values["url"] == "memory://own"
    assert config.consumer("a").values["log_level"] == "DEBUG"
    assert config.consumer("b").values["url"] == "memory://shared"
    assert config.consumer("b").values["log_level"] == "WARNING"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[consumers.emails]\nqueue = "q"\nprefech = 10\n',
            "unknown key 'prefech' in [consumers.emails] of ",
        ),
        ("[consumers.emails.retry]\ntries = 3\n", "unknown key 'tries' in [consumers.emails.retry] of "),
        ('[connection]\nhost = "x"\n', "unknown key 'host' in [connection] of "),
        ("[consumer.emails]\n", "unknown key 'consumer' at the top level of "),
        ("[consumers.emails]\nprefetch = 0\n", "invalid value for 'prefetch' in [consumers.emails] of "),
        ('[consumers.e.limits]\nmemory_limit = "1XB"\n', "invalid value for 'memory_limit'"),
        ('[consumers.e.retry]\ndelays = "exp:1s"\n', "invalid value for 'delays' in [consumers.e.retry]"),
        ('[consumers.e]\ndeclare = "yes"\n', "expected true or false"),
        ("[consumers.e]\nretry = 3\n", "'retry' in [consumers.e] of .* must be a table"),
        ('[consumers.e.logging]\nformat = "xml"\n', "expected one of text, json"),
        ('[consumers.e.metrics]\naddr = "::1:80"\n', "IPv6 host in brackets"),
        ("consumers = 3\n", "must be a table"),
        ("[consumers\n", "is not valid TOML"),
    ],
)
def test_errors_name_the_key_the_table_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError, match=pattern(message)) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_picks_the_only_consumer_when_no_name_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[consumers.only]\nqueue = "q"\n')
    assert load_config(path).consumer(None).name == "only"


def test_an_unknown_or_missing_consumer_name_lists_the_defined_ones() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(
        ConfigurationError, match=pattern("no consumer 'sms' in .* (it defines: emails, thumbnails)")
    ):
        config.consumer("sms")
    with pytest.raises(
        ConfigurationError, match=pattern("name the consumer to run: .* defines emails, thumbnails")
    ):
        config.consumer(None)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_the_url_may_list_the_nodes_of_a_cluster(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[connection]\nurl = ["amqp://app:pw@h1:5672/", "amqp://app:pw@h2:5672/"]\n'
        '[consumers.c]\nqueue = "q"\ncallable = "m:f"\n',
    )
    config = load_config(path)
    url = config.consumer("c").values.get("url", config.shared.get("url"))
    assert [n.authority for n in parse_url(url).nodes] == ["h1:5672", "h2:5672"]


def test_the_cluster_example_lists_three_nodes_quorum_and_at_least_once() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "examples" / "cluster.toml")
    values = config.consumer("orders").values
    url = values.get("url", config.shared.get("url"))
    assert [n.port for n in parse_url(url).nodes] == [5701, 5702, 5703]
    assert values["quorum"] is True and values["dead_letter_strategy"] == "at-least-once"
    assert values["delivery_limit"] == 5


@pytest.mark.parametrize(
    "line",
    [
        'track_jobs = ["postgresql://u:s3cret@h/db"]',
        'track_jobs = {url = "postgresql://u:s3cret@h/db"}',
        'prefetch = "amqp://u:s3cret@h/"',
        'track_jobs = ["host=h password=s3cret dbname=jobs"]',
        'url = {u = "amqp://u:s3cret@h/"}',
    ],
)
def test_a_value_of_the_wrong_type_is_named_without_the_password_it_holds(tmp_path: Path, line: str) -> None:
    path = tmp_path / "swarrow.toml"
    path.write_text(f'[consumers.a]\nqueue = "a"\ncallable = "m:f"\n{line}\n')
    with pytest.raises(ConfigurationError) as err:
        load_config(path)
    assert "s3cret" not in str(err.value) and f"'{line.split()[0]}'" in str(err.value)
