"""Credentials written as free text (`swarrow._secret_words`, through `mask_text`): what an attack on the
first version printed, and the ordinary lines it mangled. Each case here was seen printed or mangled."""

from __future__ import annotations

import json
import time

import aiormq
import anyio
import pytest

from processors.exception_catcher import ExceptionCatcherProcessor
from processors.retry import _short
from swarrow import Message
from swarrow.amqp._errors import describe_connect_error
from swarrow.errors import InvalidURLError
from swarrow.outcome import get_error, reset_outcome
from swarrow.topology import MAX_ERROR_MESSAGE, error_text
from swarrow.urls import mask_argv, mask_text, mask_url, parse_url


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Bearer SECRETT1", "SECRETT1"),  # no `:`, `=` or `@` on the line
        ("Authorization Bearer SECRETT4", "SECRETT4"),
        (json.dumps({"password": 'hu"nter2SECRETA'}), "SECRETA"),  # an escaped quote
        ("password: abc#SECRETC&x;y", "SECRETC"),
        ('password="pa SECRETG"', "SECRETG"),  # a quoted value with a blank
        ("password='pa SECRETF'", "SECRETF"),  # libpq's keyword form
        ("{'password': b'SECRETB'}", "SECRETB"),  # a Python repr of bytes
        ("{'credentials': ('bob','SECRETK')}", "SECRETK"),  # ... and of a tuple
        ("private_key: -----BEGIN RSA PRIVATE KEY-----\nSECRETH\n-----END RSA PRIVATE KEY-----", "SECRETH"),
        ("secret_key: SECRETD", "SECRETD"),
        ("SECRET_KEY=SECRETE", "SECRETE"),
        ('{"password" => "SECRETI"}', "SECRETI"),  # Ruby's hash syntax
        ("call failed: token=Tk3nA2", "Tk3nA2"),  # after a name that is not a credential's
        ('token: "' + "A" * 1500 + " 'password': 'SECRETQ-" + "z" * 600, "SECRETQ"),  # a quote left open
    ],
)
def test_the_shapes_an_attack_printed_are_masked(text: str, secret: str) -> None:
    assert secret not in mask_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "if token == expected:",  # code in a traceback
        "def handle(token: str, secret: bytes) -> None:",
        "consume app.token:handle -q orders",  # the pool's own log line
        "Authorization: denied for user bob",
        "the bearer of this message is Bob",
        "Bearer tokens are supported",
        "pwd: /home/app",
        "next_page_token: None",
        "token bucket: 5 tokens left, refill at 12:30:00",
        "connecting to [2001:db8::1]:5672",
    ],
)
def test_ordinary_lines_an_attack_saw_mangled_are_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_a_masked_value_keeps_what_follows_it() -> None:
    # swarrow's retry warning lost its closing parenthesis.
    assert (
        mask_text("(ValueError: password: hunter2); retry 1 of 1")
        == "(ValueError: password: ***); retry 1 of 1"
    )


def test_mask_argv_masks_flag_values_given_with_equals() -> None:
    argv = ["app", "--token=X1", "--api-key=X2", "--client-secret=X3", "--secret-key", "X4"]
    assert mask_argv(argv) == [
        "app",
        "--token=***",
        "--api-key=***",
        "--client-secret=***",
        "--secret-key",
        "***",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "=?" + "key" * 33_000,
        "password" * 12_000,
        "token: " + " " * 100_000,
        "--token " * 12_000,
        "key:" * 25_000,
    ],
)
def test_masking_a_long_hostile_text_takes_linear_time(text: str) -> None:
    # A producer controls error texts and message ids: `?keykeykey…` took 7 s (a backtracking pattern)
    # and stalled the consumer. A hang guard with a wide margin (these take ~10-50 ms), not a speed claim.
    started = time.perf_counter()
    mask_text(text)
    assert time.perf_counter() - started < 2.0


def test_an_error_is_masked_before_it_is_cut() -> None:
    # Cut first, a URL's password lost its `@` and was no longer recognised.
    text = "x" * (MAX_ERROR_MESSAGE - 20) + " postgresql://u:SECRETCUT1234567890@db/x"
    assert "SECRETCUT" not in error_text(text)
    logged = _short(ValueError("x" * 170 + "'password': 'SECRETP0123456789-more'"))
    assert "SECRETP" not in logged


def test_the_error_a_job_store_and_an_rpc_reply_get_is_masked() -> None:
    # `swarrow jobs status` and `swarrow call` printed `password: …` and a URL's password in clear.
    async def fails(message: Message, /) -> bool:
        raise ValueError("db said: password: SECRETJOB3 and url postgresql://u:SECRETJOB4@db/x")

    async def run() -> tuple[str, str] | None:
        reset_outcome()
        await ExceptionCatcherProcessor(fails)(Message(b"x", queue="q"))
        return get_error()

    error = anyio.run(run)
    assert error is not None and "SECRETJOB3" not in error[1] and "SECRETJOB4" not in error[1]


def test_a_user_alone_in_the_url_is_never_shown() -> None:
    # amqp://TOKEN@host/ is how token-authenticated services are addressed: the login error named it.
    url = "amqp://SECRETTOK@127.0.0.1:5672/"
    assert "SECRETTOK" not in parse_url(url).masked
    refused = aiormq.exceptions.ProbableAuthenticationError("ACCESS_REFUSED for SECRETTOK")
    assert "SECRETTOK" not in describe_connect_error(refused, url)
    assert parse_url("amqp://app:pw@h/").masked == "amqp://app:***@h:5672/"  # a user beside a password stays


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (
            "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=abc==;EndpointSuffix=core.windows.net",
            "abc==",
        ),
        ("{'user': ['bob'], 'password': ['hunter2']}", "hunter2"),  # parse_qs's repr
        ('{"token": {"access": "abc", "refresh": "def"}}', "abc"),
        ('secret = Secret("s3cr3t")', "s3cr3t"),
        ("X-Auth-Token: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci"),
        ("spring.datasource.password=hunter2", "hunter2"),  # a dotted configuration key
        ("config.api_key: abc1", "abc1"),
        ("client_secret=Ab3)x9Qz", "x9Qz"),  # punctuation inside a generated secret
        ("token=ab'cd", "cd"),
        ("secret=ab,cd", "cd"),
        ("passphrase=pp123", "pp123"),
        ("run --api_key abc9 now", "abc9"),
        ("--passphrase x7x", "x7x"),
    ],
)
def test_the_shapes_a_second_attack_printed_are_masked(text: str, secret: str) -> None:
    assert secret not in mask_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "a-" * 50_000 + " token",  # names start only where a run starts: each start rescanned the run
        " -" + "-" * 100_000 + "token",
        ("-" + "a" * 50) * 1960 + "password",
        "@" + "a" * 100_000,  # the URL pattern rescanned the text from every position
        "@" + "a:b" * 33_333,
    ],
)
def test_masking_a_long_hyphenated_or_url_like_text_takes_linear_time(text: str) -> None:
    # 270-533 s and 10-34 s before (a 64 KB base64url body in an exception held a consumer 3.3 s a message).
    started = time.perf_counter()
    mask_text(text)
    assert time.perf_counter() - started < 2.0


def test_a_private_key_block_is_masked_without_a_name_beside_it() -> None:
    text = "loaded key file:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKC\n-----END RSA PRIVATE KEY-----"
    assert "MIIEpAIBAAKC" not in mask_text(text)


def test_masking_or_parsing_a_url_with_a_long_blank_run_takes_linear_time() -> None:
    # The separator between listed URLs began with `\s*`: 53 s for mask_url, 106 s for parse_url at 100 KB.
    started = time.perf_counter()
    mask_url("a:" + " " * 100_000 + "@b")
    mask_argv(["amqp://u:p@h" + " " * 100_000 + "@x"])
    with pytest.raises(InvalidURLError):
        parse_url("amqp://u:p@h" + " " * 100_000 + "x")
    assert time.perf_counter() - started < 2.0


def test_listed_urls_are_still_split_and_masked() -> None:
    assert mask_url("amqp://a:p1@h1/ , amqp://b:p2@h2/") == "amqp://a:***@h1/ , amqp://b:***@h2/"


def test_scrub_hides_a_token_user_but_not_a_short_user_name_inside_words() -> None:
    # A lone user of 8+ characters is a token and leaves every error text; `app` must not eat "application".
    token = parse_url("amqp://SECRETTOK123@h/")
    assert "SECRETTOK123" not in token.scrub("ACCESS_REFUSED for SECRETTOK123")
    assert parse_url("amqp://app@h/").scrub("application refused") == "application refused"


def test_the_retry_warning_says_when_it_cut_the_error() -> None:
    assert _short(ValueError("x" * 300)).endswith("…") and not _short(ValueError("short")).endswith("…")
