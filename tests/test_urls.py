from __future__ import annotations

import pytest

from swarrow.errors import ConfigurationError, InvalidURLError
from swarrow.urls import BrokerNode, BrokerURL, encode_credentials, mask_argv, mask_text, mask_url, parse_url

# --- masking: every shape (hardening item 9) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://svc:s3cr/et@host/", "amqp://svc:***@host/"),
        ("amqp://svc:s3cr#et@host/vh", "amqp://svc:***@host/vh"),
        ("amqp://svc:s3cr?et@host:5672/", "amqp://svc:***@host:5672/"),
        ("amqp://svc:a@b:c/d?e#f@h1,h2:5673/vh?heartbeat=5", "amqp://svc:***@h1,h2:5673/vh?heartbeat=5"),
        ("amqp://svc:%2Fenc@host/", "amqp://svc:***@host/"),
        ("amqp:/svc:one-slash@host/", "amqp:/svc:***@host/"),
        ("amqp:svc:no-slash@host/", "amqp:***@host/"),
        ("svc:no-scheme@host", "svc:***@host"),
        ("bare-secret@host", "***@host"),
        ("amqp://svc:p1@h1/,amqp://svc:p2@h2/", "amqp://svc:***@h1/,amqp://svc:***@h2/"),
        ("amqp://svc:p1@h1/ ; amqps://svc:p/2@h2/v", "amqp://svc:***@h1/ ; amqps://svc:***@h2/v"),
        ("amqp://svc:a,amqp://b@h1/", "amqp://svc:***@h1/"),  # a password that looks like a list
        ("--url=amqp://svc:s3cr/et@host/", "--url=amqp://svc:***@host/"),
        ("amqp://user-only@host/", "amqp://***@host/"),  # a user alone may be a token
        ("amqps://s3cr3tT0ken@host:5671/vh", "amqps://***@host:5671/vh"),
        ("amqp://host/", "amqp://host/"),
        ("memory://x", "memory://x"),
    ],
)
def test_mask_url_hides_the_password_whatever_the_shape(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("secret", ["s3cr/et", "a#b", "x?y=z", "p@ss", "c:o:l", "sp ace"])
def test_a_password_never_survives_masking(secret: str) -> None:
    url = f"amqps://svc:{secret}@broker.example:5671/prod"
    assert secret not in mask_url(url)
    error = f"error: cannot reach '{url}' (timeout)"
    if " " not in secret:  # in free text a URL ends at a blank: scrub() knows the password
        assert secret not in mask_text(error)
    assert secret not in parse_url(url).scrub(error)
    assert all(secret not in arg for arg in mask_argv(["swarrow", "consume", "--url", url, f"--url={url}"]))
    parsed = parse_url(url)
    assert parsed.password == secret
    for shown in (str(parsed), repr(parsed), parsed.masked, parsed.masked_node(parsed.nodes[0])):
        assert secret not in shown and "***" in shown


def test_mask_text_masks_every_url_in_a_message() -> None:
    text = "tried amqp://a:one@h1:5672/ then amqps://b:two@h2/v and 'amqp://c:th/ree@h3/'; giving up"
    masked = mask_text(text)
    assert masked == "tried amqp://a:***@h1:5672/ then amqps://b:***@h2/v and 'amqp://c:***@h3/'; giving up"


def test_scrub_removes_the_password_in_every_encoding_from_a_library_error() -> None:
    parsed = parse_url("amqp://svc:s3cr/et@host/")
    error = "auth failed for s3cr/et (s3cr%2Fet) at amqp://svc:s3cr%2Fet@host:5672/"
    scrubbed = parsed.scrub(error)
    assert "s3cr" not in scrubbed and "et@" not in scrubbed.replace("***@", "")


def test_mask_argv_leaves_other_arguments_alone() -> None:
    argv = ["python", "-m", "swarrow", "consume", "mod:fn", "--queue", "a@b", "--url", "amqp://u:p@h/"]
    assert mask_argv(argv) == [*argv[:-1], "amqp://u:***@h/"]


# --- parsing and checking once, up front (issue 23 item 1) ------------------------------------------------


def test_parse_a_plain_url_with_defaults() -> None:
    parsed = parse_url("amqp://guest:guest@127.0.0.1/")
    assert parsed == BrokerURL("amqp", (BrokerNode("127.0.0.1", 5672),), "guest", "guest", "/", "")
    assert parsed.node_urls() == ("amqp://guest:guest@127.0.0.1:5672/",)
    assert parse_url("amqps://h").nodes == (BrokerNode("h", 5671),)
    assert parse_url("amqp://h").username is None and parse_url("amqp://h").password is None
    assert parse_url("  amqp://h:1/\n").nodes == (BrokerNode("h", 1),)


def test_parse_percent_encoded_parts_and_the_vhost() -> None:
    parsed = parse_url("amqp://us%40er:p%2F%3Fw@host:5673/my%2Fvhost?heartbeat=5&cafile=/c.pem")
    assert (parsed.username, parsed.password, parsed.vhost) == ("us@er", "p/?w", "my/vhost")
    assert parsed.query == "heartbeat=5&cafile=/c.pem"
    assert parsed.node_urls() == ("amqp://us%40er:p%2F%3Fw@host:5673/my%2Fvhost?heartbeat=5&cafile=/c.pem",)
    assert parse_url("amqp://h/%2F").vhost == "/"
    assert parse_url("amqp://h/").vhost == "/" and parse_url("amqp://h").vhost == "/"


def test_an_unencoded_password_is_taken_whole_and_reencoded_for_the_client() -> None:
    parsed = parse_url("amqp://svc:s3cr/et?x#y@host/vh")
    assert parsed.password == "s3cr/et?x#y" and parsed.nodes == (BrokerNode("host", 5672),)
    assert parsed.vhost == "vh"
    assert parsed.node_url(parsed.nodes[0]) == "amqp://svc:s3cr%2Fet%3Fx%23y@host:5672/vh"


def test_the_client_library_reads_back_what_was_parsed() -> None:
    from aio_pika.connection import make_url

    parsed = parse_url("amqp://svc:s3cr/et@local:5673/v%20h?heartbeat=5")
    url = make_url(parsed.node_url(parsed.nodes[0]))
    assert (url.user, url.password, url.host, url.port) == ("svc", "s3cr/et", "local", 5673)
    assert url.path[1:] == "v h"
    assert url.query["heartbeat"] == "5"


def test_secret_url_rebuilds_the_whole_url_for_a_client() -> None:
    parsed = parse_url("amqp://svc:s3cr/et@h1,h2:5673/v?heartbeat=5")
    assert parsed.secret_url() == "amqp://svc:s3cr%2Fet@h1:5672,h2:5673/v?heartbeat=5"
    assert parse_url(parsed.secret_url()) == parsed
    assert parse_url("memory://x").secret_url() == "memory://x"


def test_ipv6_nodes() -> None:
    parsed = parse_url("amqp://u:p@[::1]:5673,[fe80::1]/")
    assert parsed.nodes == (BrokerNode("::1", 5673), BrokerNode("fe80::1", 5672))
    assert parsed.masked == "amqp://u:***@[::1]:5673,[fe80::1]:5672/"


def test_memory_urls() -> None:
    assert parse_url("memory://").is_memory and parse_url("memory://").name == ""
    assert parse_url("memory://jobs").name == "jobs" and parse_url("memory://jobs").nodes == ()
    assert str(parse_url("memory://jobs")) == "memory://jobs"


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("amqp:/user:pass@host/", "expected '//' after 'amqp:'"),
        ("amqp://user:pass@host:99999/", "port 99999 of host 'host' is out of range (1-65535)"),
        ("amqp://user:pass@host:0/", "port 0 of host 'host' is out of range"),
        ("amqp://user:pass@host:notaport/", "port 'notaport' of host 'host' is not a number"),
        ("amqp://user:pass@host:/", "empty port after host 'host'"),
        ("http://user:pass@host/", "unsupported scheme 'http'"),
        ("rabbitmq://user:pass@host/", "unsupported scheme 'rabbitmq'"),
        ("localhost:5672", "no scheme"),
        ("//user:pass@host/", "no scheme"),
        ("", "it is empty"),
        ("amqp://user:pass@/vhost", "no host"),
        ("amqp://user:pass@:5672/", "no host before ':5672'"),
        ("amqp://", "no host"),
        ("amqp://user:pass@h1,,h3/", "empty host in the node list"),
        ("amqp://user:pass@h1,/", "empty host in the node list"),
        ("amqp://user:pass@ho st/", "host 'ho st' is not a valid host name"),
        ("amqp://user:pass@[::1/", "unclosed '['"),
        ("amqp://user:pass@[nothost]:1/", "is not an IPv6 address"),
        ("amqp://user:pass@h1:5672,h1:5672/", "node h1:5672 is listed twice"),
        ("amqp://user:pass@h1,h1:5672/", "node h1:5672 is listed twice"),
    ],
)
def test_a_bad_url_is_one_clear_error_with_the_password_masked(url: str, names: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        parse_url(url)
    message = str(caught.value)
    assert names in message
    assert "pass@" not in message and "\n" not in message
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, ValueError)


# --- several nodes for a cluster (issue 14) ----------------------------------------------------------------


def test_a_cluster_url_lists_nodes_that_share_credentials_vhost_and_options() -> None:
    parsed = parse_url("amqp://app:s3cr/et@h1:5672,h2:5673,h3/prod?heartbeat=10")
    assert parsed.is_cluster
    assert parsed.nodes == (BrokerNode("h1", 5672), BrokerNode("h2", 5673), BrokerNode("h3", 5672))
    assert [str(node) for node in parsed.nodes] == ["h1:5672", "h2:5673", "h3:5672"]
    assert parsed.node_urls() == tuple(
        f"amqp://app:s3cr%2Fet@{node}/prod?heartbeat=10" for node in ("h1:5672", "h2:5673", "h3:5672")
    )
    assert parsed.masked == "amqp://app:***@h1:5672,h2:5673,h3:5672/prod?heartbeat=10"
    assert parsed.masked_node(parsed.nodes[1]) == "amqp://app:***@h2:5673/prod?heartbeat=10"


@pytest.mark.parametrize(
    "urls",
    [
        ["amqp://app:pw@h1:5672/prod", "amqp://app:pw@h2/prod"],
        "amqp://app:pw@h1:5672/prod,amqp://app:pw@h2/prod",
        "amqp://app:pw@h1:5672/prod ; amqp://app:pw@h2/prod",
    ],
)
def test_a_list_of_urls_is_one_cluster(urls: str | list[str]) -> None:
    parsed = parse_url(urls)
    assert parsed == parse_url("amqp://app:pw@h1:5672,h2:5672/prod")


@pytest.mark.parametrize(
    ("urls", "names"),
    [
        (["amqp://a:pw@h1/", "amqps://a:pw@h2/"], "differ in scheme ('amqp' vs 'amqps')"),
        (["amqp://a:pw@h1/", "amqp://b:pw@h2/"], "differ in user ('a' vs 'b')"),
        (["amqp://a:pw1@h1/", "amqp://a:pw2@h2/"], "differ in password:"),
        (["amqp://a:pw@h1/x", "amqp://a:pw@h2/y"], "differ in vhost ('x' vs 'y')"),
        (["amqp://a:pw@h1/", "amqp://a:pw@h2/?heartbeat=1"], "differ in query options"),
        (["amqp://a:pw@h1/", "amqp://a:pw@h1:5672/"], "node h1:5672 is listed twice"),
        (["amqp://a:pw@h1/", "memory://"], "memory:// cannot be part of a list"),
        (["amqp://a:pw@h1/", "amqp://a:pw@h2:x/"], "port 'x' of host 'h2' is not a number"),
        ([], "non-empty list"),
        (["amqp://a:pw@h1/", 5], "strings only, got [str, int]"),
    ],
)
def test_a_list_that_cannot_be_one_cluster_is_refused(urls: list[object], names: str) -> None:
    with pytest.raises(InvalidURLError) as caught:
        parse_url(urls)  # type: ignore[arg-type]
    assert names in str(caught.value)
    message = str(caught.value)
    assert "pw1" not in message and "pw2" not in message and ":pw@" not in message


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://jobs:p/w@db:5432/app", "postgresql://jobs:***@db:5432/app"),
        ("postgresql://jobs:s3c#r?t@db/app?sslmode=require", "postgresql://jobs:***@db/app?sslmode=require"),
        (
            "postgresql://db/app?user=jobs&password=s3cret&sslmode=require",
            "postgresql://db/app?user=jobs&password=***&sslmode=require",
        ),
        ("sqlite:///var/lib/jobs.db", "sqlite:///var/lib/jobs.db"),
    ],
)
def test_job_store_urls_are_masked_by_the_same_rule(url: str, masked: str) -> None:
    from swarrow.jobs import mask_store_url

    assert mask_store_url(url) == masked


@pytest.mark.parametrize("url", ["amqp:/u:s3cr/et@h/", "amqp://u:s3cr/et@h:99999/", "amqp://u:s3cr/et@h,,g/"])
def test_the_library_checks_the_url_before_anything_connects(url: str) -> None:
    import swarrow
    from swarrow.factory import open_broker

    with pytest.raises(InvalidURLError) as opened:
        open_broker(url)
    assert "s3cr" not in str(opened.value)
    with pytest.raises(InvalidURLError) as ran:
        swarrow.run(lambda message: None, queue="q", url=url)
    assert "s3cr" not in str(ran.value) and str(ran.value) == str(opened.value)


def test_open_broker_hands_the_client_a_re_encoded_url() -> None:
    from swarrow.factory import open_broker

    broker = open_broker("amqp://svc:s3cr/et@127.0.0.1:5672/")
    assert broker.url == "amqp://svc:***@127.0.0.1:5672/"
    assert "s3cr" not in repr(broker)


@pytest.mark.parametrize(
    ("url", "encoded"),
    [
        ("http://otel:Zq/7#x?y@h:4318/v1", "http://otel:Zq%2F7%23x%3Fy@h:4318/v1"),
        ("http://u:p@ss:w@h/", "http://u:p%40ss%3Aw@h/"),
        ("http://u:Zq%2F7@h/", "http://u:Zq%2F7@h/"),  # already encoded: unchanged
        ("http://tok@h/", "http://tok@h/"),
        ("http://h:4318/v1/traces", "http://h:4318/v1/traces"),
    ],
)
def test_encode_credentials_reads_them_up_to_the_last_at(url: str, encoded: str) -> None:
    assert encode_credentials(url) == encoded


@pytest.mark.parametrize(
    "argv",
    [
        ["--track-jobs", "postgresql://127.0.0.1:5432/db?user=pg&password=Zqsecret"],
        ["--track-jobs=postgresql://h/db?sslpassword=Zqsecret&sslmode=require"],
        ["--track-jobs", "postgresql://pg@h/db?PASSWORD=Zqsecret#x"],
        ["--secret-password=Zqsecret"],
    ],
)
def test_mask_argv_masks_a_password_given_as_a_parameter(argv: list[str]) -> None:
    # The pool logs its workers' command line with it: a job store URL's ?password= was printed whole.
    masked = " ".join(mask_argv(["swarrow", "consume", "app:run", *argv]))
    assert "Zqsecret" not in masked and "password=***" in masked.lower()


def test_mask_text_keeps_tls_file_paths_of_a_url_query() -> None:
    text = "connecting to amqps://u:pw@h/?cafile=/tls/ca.pem&keyfile=/tls/key.pem&api_key=k3y"
    assert (
        mask_text(text)
        == "connecting to amqps://u:***@h/?cafile=/tls/ca.pem&keyfile=/tls/key.pem&api_key=***"
    )


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("job x&token=S3cretTok3 failed", "S3cretTok3"),  # a parameter without its `?`
        ("ran with --password=S3cret11", "S3cret11"),
        ("amqp://u:S3c\nret6@h/", "ret6"),  # a line break inside the password
        ("http://u:S3cret17\u2028@h/", "S3cret17"),
        ("id;api_key=K3y99 done", "K3y99"),
        ("--PASSWORD=hunter2", "hunter2"),  # any case (attack 2)
        ("PGPASSWORD=hunter3 psql", "hunter3"),
    ],
)
def test_mask_text_masks_credentials_in_the_shapes_an_attack_found(text: str, secret: str) -> None:
    # Message ids and routing keys are a producer's text and reach every per-message log line
    # (attack, session 9: these five were printed in clear, text and JSON alike).
    assert secret not in mask_text(text)


def test_mask_text_leaves_plain_equals_signs_alone() -> None:
    assert mask_text("retry attempt=2 of max=5 on queue=orders") == "retry attempt=2 of max=5 on queue=orders"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token=Tk3nA1 sent", "Tk3nA1"),  # at the start of the text
        ("call failed: token=Tk3nA2", "Tk3nA2"),  # after a blank
        ("login with password = Pw9a", "Pw9a"),
        ("password:Pw9b", "Pw9b"),
        ("password: Pw9c", "Pw9c"),
        ("Authorization: Bearer eyJhbG.c1.s2", "eyJhbG"),
        ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("sent with bearer eyJx9.y.z", "eyJx9"),
        ("ran `login --password Pw9d`", "Pw9d"),
        ("run --client-secret Cs3x --verbose", "Cs3x"),
        ("X-Api-Key: AkAk77", "AkAk77"),
        ('{"password": "Pw9e", "user": "u"}', "Pw9e"),
        ("{'client_secret': 'Cs3y'}", "Cs3y"),
        ("SECRET=Sx1 ACCESS_KEY=Ak2", "Sx1"),
        ("SECRET=Sx1 ACCESS_KEY=Ak2", "Ak2"),
        ('token: "a b Tk3nA3"', "Tk3nA3"),  # a quoted value with blanks
        ("credentials=Cr3d1;next", "Cr3d1"),
    ],
)
def test_mask_text_masks_credentials_written_as_free_text(text: str, secret: str) -> None:
    # A callback's exception or a library's log line names its credentials in these shapes (the
    # residuals the session 9 attack listed): none may reach a log line or an x-swarrow-error header.
    assert secret not in mask_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "retry attempt=2 of max=5 on queue=orders",
        "routing_key=orders.created",
        "tokens=5 max_tokens: 100",  # the word must end the name
        "token_file=/etc/swarrow/token keyfile=/etc/tls/key.pem",  # paths, not secrets
        "worker 0 (pid 12) stopped after 5 messages in 0.4s: max_messages; restarting it",
        "message m-1 from orders processed in 0.001s (attempt 1)",
        "key: value",
    ],
)
def test_mask_text_leaves_ordinary_lines_alone(text: str) -> None:
    assert mask_text(text) == text


def test_mask_text_keeps_a_quoted_value_quoted() -> None:
    assert mask_text('{"password": "Pw9e", "user": "u"}') == '{"password": "***", "user": "u"}'


def test_mask_argv_masks_the_value_after_a_secret_flag() -> None:
    argv = ["app", "--password", "Pw1", "--client-secret", "Cs1", "--token", "--verbose", "--queue", "orders"]
    assert mask_argv(argv) == [
        "app", "--password", "***", "--client-secret", "***", "--token", "--verbose", "--queue", "orders",
    ]  # fmt: skip
