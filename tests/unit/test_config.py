"""Settings: TOML file, KANTATA_SYNC_* environment, overrides, token sources, errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from worker.config import (
    DEFAULT_API_BASE_URL,
    DEFAULT_DATABASE_URL,
    Settings,
    load_settings,
    token_problem,
)
from worker.exceptions import ConfigError

TOKEN = "tok-S3cr3t-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "kantata-sync.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.api_base_url == DEFAULT_API_BASE_URL
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.token is None
    assert (settings.rate_limit, settings.concurrency, settings.max_attempts) == (10.0, 8, 5)
    with pytest.raises(ConfigError, match="token"):
        settings.api_token()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("rate_limit = 3.5\nconcurrency = 2\n", id="top-level"),
        pytest.param("[kantata_sync]\nrate_limit = 3.5\nconcurrency = 2\n", id="table"),
    ],
)
def test_toml_file(tmp_path: Path, text: str) -> None:
    settings = load_settings(write(tmp_path, text), {})
    assert (settings.rate_limit, settings.concurrency) == (3.5, 2)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "max_attempts = 9\n")
    assert load_settings(None, {"KANTATA_SYNC_CONFIG": str(path)}).max_attempts == 9


def test_precedence_file_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "rate_limit = 1\nconcurrency = 2\nmax_attempts = 3\n")
    env = {"KANTATA_SYNC_CONCURRENCY": "20", "KANTATA_SYNC_MAX_ATTEMPTS": "30"}
    settings = load_settings(path, env, {"max_attempts": 40, "batch_size": None})
    assert (settings.rate_limit, settings.concurrency, settings.max_attempts) == (1.0, 20, 40)
    assert settings.batch_size == 500  # a None override leaves the value alone


def test_env_values_are_parsed() -> None:
    env = {
        "KANTATA_SYNC_RATE_LIMIT": "2.5",
        "KANTATA_SYNC_LOG_LEVEL": "debug",
        "KANTATA_SYNC_WORKER_NAME": "w1",
        "KANTATA_SYNC_API_BASE_URL": "http://127.0.0.1:8080/api/v1/",
    }
    settings = load_settings(None, env)
    assert settings.rate_limit == 2.5
    assert settings.log_level == "debug"
    assert settings.worker_name == "w1"
    assert settings.api_base_url == "http://127.0.0.1:8080/api/v1"


def test_unrelated_env_ignored() -> None:
    settings = load_settings(None, {"KANTATA_SYNC_NOPE": "1", "RATE_LIMIT": "3"})
    assert settings.rate_limit == 10.0


ERRORS = [
    # (file text or None, env, overrides, fragments the message must contain)
    pytest.param(
        "rate_limit = -1\n",
        {},
        {},
        ["rate_limit", "greater than or equal to 0", "kantata-sync.toml"],
        id="file-bound",
    ),
    pytest.param(
        None,
        {"KANTATA_SYNC_RATE_LIMIT": "fast"},
        {},
        ["rate_limit", "KANTATA_SYNC_RATE_LIMIT"],
        id="env-type",
    ),
    pytest.param(
        None, {}, {"concurrency": 0}, ["concurrency", "command line"], id="override-bound"
    ),
    pytest.param(
        "colour = 'red'\n",
        {},
        {},
        ["colour", "unknown setting", "kantata-sync.toml"],
        id="unknown-key",
    ),
    pytest.param(
        None,
        {"KANTATA_SYNC_LOG_LEVEL": "INFO"},
        {},
        ["log_level", "KANTATA_SYNC_LOG_LEVEL"],
        id="enum",
    ),
    pytest.param(
        None,
        {"KANTATA_SYNC_API_BASE_URL": "http://api.example.com/api/v1"},
        {},
        ["api_base_url", "https"],
        id="http-remote",
    ),
    pytest.param(None, {"KANTATA_SYNC_API_BASE_URL": "ftp://x/y"}, {}, ["api_base_url"], id="ftp"),
    pytest.param(
        None, {"KANTATA_SYNC_API_BASE_URL": "api.example.com"}, {}, ["api_base_url"], id="no-scheme"
    ),
    pytest.param(
        None, {"KANTATA_SYNC_DATABASE_URL": "mysql://x/y"}, {}, ["database_url"], id="db-driver"
    ),
    pytest.param(
        None,
        {"KANTATA_SYNC_REQUEST_TIMEOUT": "181"},
        {},
        ["request_timeout"],
        id="timeout-over-3min",
    ),
    pytest.param(
        None, {"KANTATA_SYNC_MAX_ATTEMPTS": "0"}, {}, ["max_attempts"], id="attempts-zero"
    ),
    pytest.param(
        "rate_limit = -1\nconcurrency = 0\n",
        {},
        {},
        ["rate_limit", "concurrency"],
        id="all-errors-listed",
    ),
]


@pytest.mark.parametrize(("text", "env", "overrides", "fragments"), ERRORS)
def test_errors_name_key_and_source(
    tmp_path: Path,
    text: str | None,
    env: dict[str, str],
    overrides: dict[str, Any],
    fragments: list[str],
) -> None:
    path = write(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_settings(path, env, overrides)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", {})


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "rate_limit = = 1\n"), {})


def test_kantata_sync_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[kantata_sync\] must be a table"):
        load_settings(write(tmp_path, "kantata_sync = 5\n"), {})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://api.mavenlink.com/api/v1/", "https://api.mavenlink.com/api/v1", id="https"
        ),
        pytest.param("http://localhost:9000", "http://localhost:9000", id="localhost"),
        pytest.param(
            "http://127.0.0.1:9000/api/v1", "http://127.0.0.1:9000/api/v1", id="ipv4-loopback"
        ),
        pytest.param("http://127.1.2.3", "http://127.1.2.3", id="ipv4-loopback-range"),
        pytest.param("http://[::1]:9000", "http://[::1]:9000", id="ipv6-loopback"),
    ],
)
def test_api_base_url_accepted(url: str, expected: str) -> None:
    assert load_settings(None, {}, {"api_base_url": url}).api_base_url == expected


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1", "http://localhost.example.com", "http://[::2]", "https://", "localhost:80"],
)
def test_api_base_url_rejected(url: str) -> None:
    with pytest.raises(ConfigError, match="api_base_url"):
        load_settings(None, {}, {"api_base_url": url})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("sqlite:///x.db", "sqlite+aiosqlite:///x.db", id="sqlite"),
        pytest.param("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db", id="postgresql"),
        pytest.param("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db", id="postgres"),
        pytest.param("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db", id="asyncpg"),
    ],
)
def test_database_url_normalised(url: str, expected: str) -> None:
    assert load_settings(None, {"KANTATA_SYNC_DATABASE_URL": url}).database_url == expected


def test_aiosqlite_database_url_unchanged() -> None:
    url = "sqlite+aiosqlite:///x.db"
    assert load_settings(None, {"KANTATA_SYNC_DATABASE_URL": url}).database_url == url


def test_rate_limit_zero_allowed() -> None:
    assert load_settings(None, {"KANTATA_SYNC_RATE_LIMIT": "0"}).rate_limit == 0.0


# --------------------------------------------------------------------------- token


def test_token_from_env() -> None:
    settings = load_settings(None, {"KANTATA_SYNC_TOKEN": TOKEN})
    assert settings.api_token() == TOKEN


def test_token_from_file(tmp_path: Path) -> None:
    token_file = write(tmp_path, f"  {TOKEN}\n", "token")
    settings = load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(token_file)})
    assert settings.api_token() == TOKEN


def test_token_file_from_toml(tmp_path: Path) -> None:
    token_file = write(tmp_path, TOKEN, "token")
    path = write(tmp_path, f"[kantata_sync]\ntoken_file = '{token_file}'\n")
    assert load_settings(path, {}).api_token() == TOKEN


def test_token_from_credentials_directory(tmp_path: Path) -> None:
    write(tmp_path, TOKEN + "\n", "kantata-token")
    settings = load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.api_token() == TOKEN


def test_credentials_directory_without_token_file(tmp_path: Path) -> None:
    assert load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)}).token is None


def test_token_wins_over_token_file(tmp_path: Path) -> None:
    token_file = write(tmp_path, "from-file", "token")
    env = {"KANTATA_SYNC_TOKEN": TOKEN, "KANTATA_SYNC_TOKEN_FILE": str(token_file)}
    assert load_settings(None, env).api_token() == TOKEN


def test_token_file_wins_over_credentials_directory(tmp_path: Path) -> None:
    write(tmp_path, "from-credentials", "kantata-token")
    token_file = write(tmp_path, TOKEN, "token")
    env = {"KANTATA_SYNC_TOKEN_FILE": str(token_file), "CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_settings(None, env).api_token() == TOKEN


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(None, "does not exist", id="missing"),
        pytest.param(" \n", "is empty", id="empty"),
    ],
)
def test_token_file_errors(tmp_path: Path, content: str | None, fragment: str) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(token_file)})
    assert str(info.value).startswith("token_file:")
    assert fragment in str(info.value)


def test_token_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="token_file: cannot read"):
        load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(tmp_path)})


def test_empty_credential_file(tmp_path: Path) -> None:
    write(tmp_path, "\n", "kantata-token")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(None, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_empty_token_env_not_accepted() -> None:
    try:
        settings = load_settings(None, {"KANTATA_SYNC_TOKEN": ""})
    except ConfigError:
        return
    assert settings.token is None


# --------------------------------------------------------------------------- sendable tokens

SENDABLE = [
    # raw value, the token that is sent
    pytest.param(TOKEN, TOKEN, id="plain"),
    pytest.param(TOKEN + "\r", TOKEN, id="trailing-cr"),
    pytest.param(TOKEN + "\r\n", TOKEN, id="trailing-crlf"),
    pytest.param(f" \t{TOKEN} \n", TOKEN, id="surrounding-whitespace"),
    pytest.param("a.b_c-d~e+f/g==", "a.b_c-d~e+f/g==", id="b64token-characters"),
]


@pytest.mark.parametrize(("raw", "sent"), SENDABLE)
def test_token_surrounding_whitespace_is_stripped(tmp_path: Path, raw: str, sent: str) -> None:
    assert load_settings(None, {"KANTATA_SYNC_TOKEN": raw}).api_token() == sent
    toml = write(tmp_path, f"token = {raw!r}\n".replace("'", '"'))
    assert load_settings(toml, {}).api_token() == sent
    token_file = write(tmp_path, raw, "token")
    token_file.chmod(0o600)
    assert load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(token_file)}).api_token() == sent


UNSENDABLE = [
    # raw value, what the message says
    pytest.param("tok-abc\rdef-123", "whitespace (U+000D at character 8)", id="inner-cr"),
    pytest.param("tok-abc def-123", "whitespace (U+0020 at character 8)", id="inner-space"),
    pytest.param("tok-abc\tdef-123", "whitespace (U+0009", id="inner-tab"),
    pytest.param("tok-abc\ndef-123", "whitespace (U+000A", id="inner-lf"),
    pytest.param("Bearer tok-abcdef", "whitespace (U+0020 at character 7)", id="bearer-prefix"),
    pytest.param("tok-abc\x00def-123", "a control character (U+0000", id="nul"),
    pytest.param("tok-abc\x1bdef-123", "a control character (U+001B", id="escape"),
    pytest.param("tok-abc\x7fdef-123", "a control character (U+007F", id="del"),
    pytest.param("tok-abc\u200bdef-123", "a control character (U+200B", id="zero-width-space"),
    pytest.param("tok-abc\u00e9def-123", "a non-ASCII character (U+00E9", id="non-ascii"),
    pytest.param("\ufefftok-abcdef", "a control character (U+FEFF at character 1)", id="bom"),
]


@pytest.mark.parametrize(("raw", "problem"), UNSENDABLE)
def test_token_problem(raw: str, problem: str) -> None:
    message = token_problem(raw)
    assert message is not None and message.startswith(f"contains {problem}")
    assert raw not in message


@pytest.mark.parametrize("raw", [TOKEN, "x", "!~"])
def test_token_problem_none_for_visible_ascii(raw: str) -> None:
    assert token_problem(raw) is None


@pytest.mark.parametrize(("raw", "problem"), UNSENDABLE)
def test_unsendable_token_from_env_is_a_config_error(raw: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"KANTATA_SYNC_TOKEN": raw})
    message = str(info.value)
    assert message.startswith("token: ")
    assert problem in message and "(from KANTATA_SYNC_TOKEN)" in message
    assert raw.strip() not in message


def test_unsendable_token_from_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'token = "tok-abc\\rdef-123"\n')
    with pytest.raises(ConfigError, match=r"^token: .*U\+000D.*\(from .*kantata-sync.toml\)$"):
        load_settings(path, {})


def test_empty_token_in_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^token: .*is empty"):
        load_settings(write(tmp_path, 'token = " \\r\\n"\n'), {})


@pytest.mark.parametrize(("raw", "problem"), UNSENDABLE)
@pytest.mark.parametrize("source", ["token_file", "credentials"])
def test_unsendable_token_from_a_file_is_a_config_error(
    tmp_path: Path, raw: str, problem: str, source: str
) -> None:
    name = "token" if source == "token_file" else "kantata-token"
    path = write(tmp_path, raw + "\r\n", name)
    path.chmod(0o600)
    env = (
        {"KANTATA_SYNC_TOKEN_FILE": str(path)}
        if source == "token_file"
        else {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    if raw.startswith("\ufeff"):  # a BOM at the start of a file is stripped, not refused
        assert load_settings(None, env).api_token() == raw[1:]
        return
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    message = str(info.value)
    assert message.startswith(f"token_file: the token in {path} contains {problem}")
    assert raw not in message


def test_token_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"tok-\xff\xfe-abcdef")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"^token_file: .*token is not UTF-8 text$"):
        load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(path)})


def test_token_file_too_long(tmp_path: Path) -> None:
    path = write(tmp_path, "a" * 70_000, "token")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="too long to hold a token"):
        load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(path)})


@pytest.mark.parametrize(
    ("mode", "warned"),
    [
        pytest.param(0o600, False, id="0600"),
        pytest.param(0o400, False, id="0400"),
        pytest.param(0o640, True, id="0640-group-read"),
        pytest.param(0o644, True, id="0644-world-read"),
        pytest.param(0o620, True, id="0620-group-write"),
        pytest.param(0o601, True, id="0601-other-execute"),
    ],
)
@pytest.mark.parametrize("source", ["token_file", "credentials"])
def test_token_file_open_to_others_warns(
    tmp_path: Path, mode: int, warned: bool, source: str
) -> None:
    path = write(tmp_path, TOKEN + "\n", "token" if source == "token_file" else "kantata-token")
    path.chmod(mode)
    env = (
        {"KANTATA_SYNC_TOKEN_FILE": str(path)}
        if source == "token_file"
        else {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    warnings: list[str] = []
    assert load_settings(None, env, warn=warnings.append).api_token() == TOKEN
    if warned:
        assert warnings == [
            f"token_file: {path} is accessible to group or others (mode 0{mode:o}); chmod 600 it"
        ]
    else:
        assert warnings == []


def test_token_file_warning_goes_to_stderr_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, TOKEN, "token")
    path.chmod(0o644)
    load_settings(None, {"KANTATA_SYNC_TOKEN_FILE": str(path)})
    err = capsys.readouterr().err
    assert err == (
        f"kantata-sync: warning: token_file: {path} is accessible to group or others "
        "(mode 0644); chmod 600 it\n"
    )
    assert TOKEN not in err


# --------------------------------------------------------------------------- response limits


def test_response_limits_defaults() -> None:
    settings = load_settings(None, {})
    assert settings.max_response_bytes == 4 * 1024 * 1024
    assert settings.max_retry_after == 120.0


def test_response_limits_from_toml_and_env(tmp_path: Path) -> None:
    path = write(tmp_path, "max_retry_after = 30\nmax_response_bytes = 1048576\n")
    from_file = load_settings(path, {})
    assert (from_file.max_retry_after, from_file.max_response_bytes) == (30.0, 1_048_576)
    env = {"KANTATA_SYNC_MAX_RETRY_AFTER": "7.5", "KANTATA_SYNC_MAX_RESPONSE_BYTES": "65536"}
    from_env = load_settings(path, env)
    assert (from_env.max_retry_after, from_env.max_response_bytes) == (7.5, 65_536)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_retry_after", "-1"),
        ("max_retry_after", "86401"),
        ("max_retry_after", "nan"),
        ("max_response_bytes", "65535"),
        ("max_response_bytes", str(1024**3 + 1)),
        ("max_response_bytes", "4MiB"),
    ],
)
def test_response_limits_bounds(key: str, value: str) -> None:
    env_name = f"KANTATA_SYNC_{key.upper()}"
    with pytest.raises(ConfigError, match=rf"^{key}: .*\(from {env_name}\)$"):
        load_settings(None, {env_name: value})


def test_example_config_loads_and_documents_the_response_limits() -> None:
    path = Path(__file__).parents[2] / "config" / "kantata-sync.example.toml"
    section = tomllib.loads(path.read_text(encoding="utf-8"))["kantata_sync"]
    assert section["max_response_bytes"] == Settings().max_response_bytes
    assert section["max_retry_after"] == Settings().max_retry_after
    settings = load_settings(path, {})
    assert settings.max_response_bytes == 4 * 1024 * 1024


# --------------------------------------------------------------------------- secrecy


def test_token_never_shown() -> None:
    settings = load_settings(
        None,
        {"KANTATA_SYNC_TOKEN": TOKEN, "KANTATA_SYNC_DATABASE_URL": "postgresql://u:pw-Secret@db/x"},
    )
    masked = settings.masked()
    assert masked["token"] == "********"
    assert masked["database_url"] == "postgresql+asyncpg://u:********@db/x"
    for text in (str(masked), repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in text
    assert "pw-Secret" not in str(masked)


def test_masked_without_token() -> None:
    masked = load_settings(None, {}).masked()
    assert masked["token"] is None
    assert masked["rate_limit"] == 10.0


def test_config_errors_never_show_the_token(tmp_path: Path) -> None:
    path = write(tmp_path, f"token = '{TOKEN}'\nrate_limit = -1\nbogus = '{TOKEN}'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {})
    assert TOKEN not in str(info.value)
    assert "rate_limit" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.rate_limit = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("environ", "messages"),
    [
        ({}, []),
        ({"KANTATA_SYNC_RATE_LIMIT": "5", "KANTATA_SYNC_CONFIG": "x.toml", "PATH": "/bin"}, []),
        (
            {"KANTATA_SYNC_RATELIMIT": "5"},
            [
                "KANTATA_SYNC_RATELIMIT is not a kantata-sync setting and is ignored; "
                "did you mean KANTATA_SYNC_RATE_LIMIT?"
            ],
        ),
        (
            {"KANTATA_SYNC_CONCURENCY": "2", "KANTATA_SYNC_FROBNICATE": "1"},
            [
                "KANTATA_SYNC_CONCURENCY is not a kantata-sync setting and is ignored; "
                "did you mean KANTATA_SYNC_CONCURRENCY?",
                "KANTATA_SYNC_FROBNICATE is not a kantata-sync setting and is ignored",
            ],
        ),
    ],
)
def test_unknown_variables_are_named(environ: dict[str, str], messages: list[str]) -> None:
    from worker.config import unknown_variables

    assert unknown_variables(environ) == messages


def test_stray_top_level_keys_beside_the_table_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('concurrency = 3\nlog_level = "debug"\n[kantata_sync]\nrate_limit = 4\n')
    with pytest.raises(ConfigError, match=r"concurrency, log_level: outside the \[kantata_sync\]"):
        load_settings(path, {})


@pytest.mark.parametrize(
    ("env", "learns", "budget"),
    [
        ({"KANTATA_SYNC_RATE_LIMIT": "auto"}, True, 250.0),
        ({"KANTATA_SYNC_RATE_LIMIT": " Auto "}, True, 250.0),
        ({"KANTATA_SYNC_RATE_LIMIT": "auto", "KANTATA_SYNC_RATE_LIMIT_MAX": "40"}, True, 40.0),
        ({"KANTATA_SYNC_RATE_LIMIT": "12.5", "KANTATA_SYNC_RATE_LIMIT_MAX": "5"}, False, 12.5),
        ({"KANTATA_SYNC_RATE_LIMIT": "0"}, False, 0.0),
        ({}, False, 10.0),
    ],
)
def test_rate_limit_fixed_or_learned(env: dict[str, str], learns: bool, budget: float) -> None:
    settings = load_settings(None, env)
    assert (settings.learns_rate, settings.rate_budget) == (learns, budget)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"KANTATA_SYNC_RATE_LIMIT": "fast"}, "rate_limit: must be requests per second"),
        ({"KANTATA_SYNC_RATE_LIMIT": "-1"}, "rate_limit: must be greater than or equal to 0"),
        ({"KANTATA_SYNC_RATE_LIMIT": "nan"}, "rate_limit: must be greater than or equal to 0"),
        ({"KANTATA_SYNC_RATE_LIMIT": "20000"}, "rate_limit: must be at most 10000"),
        (
            {"KANTATA_SYNC_RATE_LIMIT_MIN": "50", "KANTATA_SYNC_RATE_LIMIT_MAX": "10"},
            "rate_limit_min (50.0) is above rate_limit_max (10.0)",
        ),
        ({"KANTATA_SYNC_RATE_LIMIT_MIN": "0"}, "rate_limit_min"),
    ],
)
def test_rate_limit_errors_say_what_is_wrong(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    assert fragment in str(info.value)


def test_a_toml_auto_rate_limit(tmp_path: Path) -> None:
    path = write(tmp_path, 'rate_limit = "auto"\nrate_limit_min = 2\nrate_limit_max = 60\n')
    settings = load_settings(path, {})
    assert (settings.rate_limit, settings.rate_limit_min, settings.rate_limit_max) == (
        "auto",
        2.0,
        60.0,
    )
