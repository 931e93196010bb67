"""Configuration: a TOML file overridden by ``KANTATA_SYNC_*`` variables, read once at the edge.

The CLI calls :func:`load_settings` with the process environment; everything below it receives
the resulting :class:`Settings` and never looks at the environment itself.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import sys
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .exceptions import ConfigError

ENV_PREFIX = "KANTATA_SYNC_"
DEFAULT_API_BASE_URL = "https://api.mavenlink.com/api/v1"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///kantata-sync.db"
CREDENTIAL_NAME = "kantata-token"
DEFAULT_HTTP_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 9464
"""Where ``serve`` listens by default; 9464 is a common choice for an application's exporter."""
MAX_RATE_LIMIT = 10_000
MAX_TOKEN_FILE_BYTES = 65_536
"""A token file longer than this is not a token file (``/dev/zero``, a log, a dump)."""


class Settings(BaseModel):
    """Every setting kantata-sync reads, with its default and its bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    api_base_url: str = DEFAULT_API_BASE_URL
    token: SecretStr | None = None
    token_file: Path | None = None
    rate_limit: float | Literal["auto"] = 10.0
    """Requests per second for this token, shared by all workers; 0 turns the limiter off;
    ``"auto"`` learns the highest rate the token sustains without 429s."""
    rate_limit_min: float = Field(default=1.0, gt=0, le=MAX_RATE_LIMIT)
    """With ``rate_limit = "auto"``: the learned rate never goes below this."""
    rate_limit_max: float = Field(default=250.0, gt=0, le=MAX_RATE_LIMIT)
    """With ``rate_limit = "auto"``: the learned rate never goes above this."""
    concurrency: int = Field(default=8, ge=1, le=512)
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_delay: float = Field(default=1.0, ge=0, le=3600)
    retry_max_delay: float = Field(default=60.0, ge=0, le=86_400)
    lease_seconds: float = Field(default=300.0, gt=0, le=86_400)
    request_timeout: float = Field(default=60.0, gt=0, le=180)
    max_response_bytes: int = Field(default=4 * 1024 * 1024, ge=65_536, le=1024**3)
    """The largest answer body read, compressed or inflated; a bigger one is ``too_large``."""
    max_retry_after: float = Field(default=120.0, ge=0, le=86_400)
    """The longest pause a 429's ``Retry-After`` may impose on all sending, in seconds."""
    verify_interval: float | None = Field(default=None, gt=0, le=30 * 86_400)
    """``serve`` sweeps the synced workspaces for drift every this many seconds; None: never."""
    verify_budget_share: float = Field(default=0.1, gt=0, le=1)
    """The share of ``rate_limit`` that the drift sweep's reads may use."""
    batch_size: int = Field(default=500, ge=1, le=10_000)
    grace_period: float = Field(default=30.0, ge=0, le=3600)
    breaker_threshold: int = Field(default=10, ge=0, le=10_000)
    """Consecutive 5xx/timeouts/connection errors that pause all sending; 0 disables."""
    breaker_cooldown: float = Field(default=30.0, gt=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    worker_name: str | None = None
    db_retry_seconds: float = Field(default=30.0, ge=0, le=3600)
    """How long a worker rides out a database it cannot use before it ends the run."""
    retention_days: int | None = Field(default=None, ge=1, le=36_500)
    """``serve`` prunes terminal changes, their attempts and runs older than this, daily."""

    @field_validator("token", mode="before")
    @classmethod
    def _sendable_token(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            problem = token_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value == "auto":
                return value
            try:
                value = float(value)
            except ValueError:
                value = None
        what = 'requests per second (0: no limit) or "auto" (learn it)'
        if value is None or isinstance(value, bool):
            raise ValueError(f"must be {what}")
        if isinstance(value, int | float):
            if not value >= 0:
                raise ValueError(f"must be greater than or equal to 0: {what}")
            if value > MAX_RATE_LIMIT:
                raise ValueError(f"must be at most {MAX_RATE_LIMIT}: {what}")
        return value

    @field_validator("api_base_url")
    @classmethod
    def _https_unless_loopback(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ValueError("must use https unless the host is loopback")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        scheme, _, rest = value.partition("://")
        if scheme in {"sqlite", "sqlite+aiosqlite"}:
            return "sqlite+aiosqlite://" + rest
        if scheme in {"postgresql", "postgres", "postgresql+asyncpg"}:
            return "postgresql+asyncpg://" + rest
        raise ValueError("must start with sqlite:// or postgresql://")

    @model_validator(mode="after")
    def _rate_bounds(self) -> Settings:
        if self.rate_limit_min > self.rate_limit_max:
            raise ValueError(
                f"rate_limit_min ({self.rate_limit_min}) is above rate_limit_max"
                f" ({self.rate_limit_max})"
            )
        return self

    @property
    def learns_rate(self) -> bool:
        """Whether the rate limit is learned (``rate_limit = "auto"``)."""
        return self.rate_limit == "auto"

    @property
    def rate_budget(self) -> float:
        """The fixed budget in requests/s, or the learned one's ceiling; 0: no limit."""
        return self.rate_limit_max if self.rate_limit == "auto" else float(self.rate_limit)

    def api_token(self) -> str:
        """The token itself; only the HTTP client should call this."""
        if self.token is None:
            raise ConfigError(
                "token: no API token; set KANTATA_SYNC_TOKEN or KANTATA_SYNC_TOKEN_FILE"
            )
        return self.token.get_secret_value()

    def masked(self) -> dict[str, Any]:
        """The effective values, secrets masked, for ``config check`` and logs."""
        values = self.model_dump(mode="json")
        values["token"] = "********" if self.token is not None else None
        values["database_url"] = _mask_url_password(self.database_url)
        return values


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot go into an ``Authorization`` header, or None. Never quotes it."""
    if not token:
        return "is empty"
    for position, char in enumerate(token, start=1):
        if "!" <= char <= "~":
            continue
        if char.isspace():
            what = "whitespace"
        elif unicodedata.category(char).startswith("C"):
            what = "a control character"
        else:
            what = "a non-ASCII character"
        return (
            f"contains {what} (U+{ord(char):04X} at character {position}), "
            "which an HTTP header cannot carry"
        )
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":********@", 1)
    return url


def _warn_on_stderr(message: str) -> None:
    print(f"kantata-sync: warning: {message}", file=sys.stderr)


def load_settings(
    config_file: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    warn: Callable[[str], None] = _warn_on_stderr,
    origins: dict[str, str] | None = None,
    strict: bool = False,
) -> Settings:
    """Merge the TOML file, the environment and explicit overrides, then validate.

    Precedence, lowest first: defaults, the file, ``KANTATA_SYNC_<KEY>``, ``overrides``.
    The token is also read from ``token_file`` or systemd's ``$CREDENTIALS_DIRECTORY``;
    ``warn`` hears about a token file that group or others may read; ``origins``, when
    given, is filled with where each value that is not a default came from. A variable that
    names no setting is a warning, or with ``strict`` (``config check``) an error.
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(environ[ENV_PREFIX + "CONFIG"])
    if config_file is not None:
        for key, value in _read_toml(config_file).items():
            raw[key] = value
            sources[key] = str(config_file)
    for name in Settings.model_fields:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ and (environ[env_name] or name not in {"token", "token_file"}):
            raw[name] = environ[env_name]
            sources[name] = env_name
    unknown = unknown_variables(environ)
    if strict and unknown:
        raise ConfigError("; ".join(unknown))
    for message in unknown:
        warn(message)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
            sources[key] = "command line"
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from exc
    if settings.token is None:
        credentials = environ.get("CREDENTIALS_DIRECTORY")
        token = _read_token(settings.token_file, credentials, warn)
        if token is not None:
            settings = settings.model_copy(update={"token": SecretStr(token)})
            sources["token"] = (
                str(settings.token_file)
                if settings.token_file is not None
                else f"{credentials}/{CREDENTIAL_NAME}"
            )
    if origins is not None:
        origins.update(sources)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from exc
    section = data.get("kantata_sync", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [kantata_sync] must be a table")
    if "kantata_sync" in data and len(data) > 1:
        stray = sorted(key for key in data if key != "kantata_sync")
        raise ConfigError(
            f"config file {path}: {', '.join(stray)}: outside the [kantata_sync] table, where "
            "nothing is read; put every setting inside the table, or use no table at all"
        )
    return section


NOT_SETTINGS = frozenset({"CONFIG"})
"""``KANTATA_SYNC_*`` variables that are not settings but are read all the same."""


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Pure: a warning for each ``KANTATA_SYNC_*`` variable that names no setting.

    A misspelt variable would otherwise be ignored without a word; the closest setting's
    variable is suggested.
    """
    known = {name.upper() for name in Settings.model_fields} | NOT_SETTINGS
    messages = []
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX):
            continue
        name = variable.removeprefix(ENV_PREFIX)
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        messages.append(f"{variable} is not a kantata-sync setting and is ignored{hint}")
    return messages


def _read_token(
    token_file: Path | None, credentials_dir: str | None, warn: Callable[[str], None]
) -> str | None:
    """The token from the first file that exists, stripped (a UTF-8 BOM and CRLF included)."""
    candidates = [token_file] if token_file is not None else []
    if credentials_dir:
        candidates.append(Path(credentials_dir) / CREDENTIAL_NAME)
    for path in candidates:
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:
                mode = os.fstat(handle.fileno()).st_mode & 0o777
                text = handle.read(MAX_TOKEN_FILE_BYTES + 1)
        except FileNotFoundError:
            if path == token_file:
                raise ConfigError(f"token_file: {path} does not exist") from None
            continue
        except OSError as exc:
            raise ConfigError(f"token_file: cannot read {path} ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"token_file: {path} is not UTF-8 text") from None
        if len(text) > MAX_TOKEN_FILE_BYTES:
            raise ConfigError(f"token_file: {path} is too long to hold a token")
        token = text.strip()
        if not token:
            raise ConfigError(f"token_file: {path} is empty")
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(f"token_file: the token in {path} {problem}")
        if mode & 0o077:
            warn(
                f"token_file: {path} is accessible to group or others (mode {mode:04o}); "
                f"chmod 600 it"
            )
        return token
    return None


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown setting"
        elif error["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        where = f" (from {sources[key]})" if key in sources else ""
        lines.append(f"{key}: {message}{where}")
    return "; ".join(lines)
