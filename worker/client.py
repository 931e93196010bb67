"""The Kantata OX client: the requests kantata-sync makes, over one aiohttp session.

What each request is (:mod:`worker.endpoints`) and how an answer's envelope is read
(:mod:`worker.envelopes`) live apart from the transport; their names are re-exported here.

Every request carries the Bearer token, a JSON body and a User-Agent with the version. Any HTTP
answer comes back as an :class:`~worker.outcomes.ApiResponse` for the pure classifier to judge;
no usable answer raises :class:`~worker.exceptions.TransportError`: none at all, or a body over
``max_body_bytes`` as sent or inflated (``too_large``). A body that does not parse as a JSON
object is no body (None). The token lives only in the request headers: an answer that echoes
it has it masked before anything reads the body or ``X-Request-Id``, so it never reaches a
message, a column, a log line or a repr.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp.payload import BytesPayload
from yarl import URL

from . import USER_AGENT
from .changes import JSONObject
from .config import token_problem
from .endpoints import (
    GET_WORKSPACE,
    GET_WORKSPACES,
    MAX_PER_PAGE,
    POST_STATUS_CHANGE,
    PUT_WORKSPACE,
    RequestSpec,
    list_query,
    list_request,
    read_back_request,
    status_change_request,
    update_request,
)
from .envelopes import (
    WorkspacePage,
    primary_objects,
    status_key_of,
    workspace_page,
    workspace_snapshot,
)
from .exceptions import ConfigError, LeaseLost, TransportError, TransportKind
from .logging import REDACTED
from .outcomes import ApiResponse, cap_message, parse_retry_after

JSON = "application/json"
URL_CACHE_SIZE = 4096
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
READ_CHUNK = 64 * 1024
MIN_REDACTED_TOKEN = 8
"""A shorter token is not masked in answers: it would mask ordinary words."""
ORJSON_MAX_BYTES = 1024 * 1024
"""Bodies over this parse with ``json``: orjson briefly takes ~12 times a long string's size."""


SendGuard = Callable[[], str | None]
"""Asked right before a request's bytes are written: None to send, or why not to."""


class GuardedPayload(BytesPayload):
    """A JSON body that asks its guard at the moment it is written to the socket.

    aiohttp holds a request's headers back until the body's first write, which runs in a task
    of its own, a loop iteration (or, for a process frozen in between, minutes) after the
    request was started. Refusing here sends nothing at all: the lease check is made as close
    to the socket as the library allows.
    """

    def __init__(self, value: bytes, guard: SendGuard) -> None:
        super().__init__(value, content_type=JSON)
        self._guard = guard

    def _check(self) -> None:
        problem = self._guard()
        if problem is not None:
            raise LeaseLost(problem)

    async def write(self, writer: Any) -> None:
        self._check()
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        self._check()
        await super().write_with_length(writer, content_length)


class KantataClient:
    """An async client for the workspace endpoints of one Kantata OX account."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        token = token.strip()
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(f"token: {problem}")
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_body_bytes = max_body_bytes
        self._token = token if len(token) >= MIN_REDACTED_TOKEN else None
        self._token_forms = _token_forms(token) if self._token is not None else ()
        self._headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": USER_AGENT,
            "Accept": JSON,
        }
        # URLs are parsed once, not on every request: the status-change URL is fixed, and a
        # workspace's URL is kept while it is among the most recently used.
        self._status_changes_url = URL(f"{self._base_url}/workspace_status_changes").with_query(
            include="workspace"
        )
        self._workspaces_url = URL(f"{self._base_url}/workspaces")
        self._workspaces_text = str(self._workspaces_url)
        self._base_path = self._workspaces_url.parent.path
        self._workspace_url = functools.lru_cache(maxsize=URL_CACHE_SIZE)(self._new_workspace_url)
        self._max_connections = max_connections
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"KantataClient({self._base_url!r})"

    async def __aenter__(self) -> KantataClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections)
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _where(self, method: str, url: URL) -> str:
        """A request as messages name it: the method and the path after the base URL."""
        return f"{method} {url.path.removeprefix(self._base_path)}"

    def _new_workspace_url(self, workspace_id: int) -> URL:
        # An integer needs no quoting: building from text is a quarter of joinpath's cost.
        return URL(f"{self._workspaces_text}/{int(workspace_id)}", encoded=True)

    async def update_workspace(
        self, workspace_id: int, fields: JSONObject, *, guard: SendGuard | None = None
    ) -> ApiResponse:
        """``PUT /workspaces/{id}`` with ``{"workspace": fields}``; see :class:`GuardedPayload`."""
        url = self._workspace_url(workspace_id)
        return await self._request("PUT", url, {"workspace": fields}, guard)

    async def change_status(
        self, workspace_id: int, to_status_key: int, *, guard: SendGuard | None = None
    ) -> ApiResponse:
        """``POST /workspace_status_changes``, including the workspace to read its new state."""
        body = {
            "workspace_status_change": {
                "workspace_id": workspace_id,
                "to_status_key": to_status_key,
            }
        }
        return await self._request("POST", self._status_changes_url, body, guard)

    async def get_workspace(self, workspace_id: int) -> ApiResponse:
        """``GET /workspaces/{id}``: the read-back that proves a status is in place."""
        return await self._request("GET", self._workspace_url(workspace_id), None)

    async def list_workspaces(
        self,
        ids: Sequence[int],
        *,
        include_custom_fields: bool = False,
        include_archived: bool = True,
        page: int = 1,
    ) -> ApiResponse:
        """``GET /workspaces?only=…&per_page=200``: up to 200 workspaces in one read.

        Unknown IDs are skipped, not answered with 404; archived projects come back only with
        ``include_archived``; custom field values with ``include_custom_fields``. Parse the
        answer with :func:`workspace_page`.
        """
        query = list_query(
            ids,
            include_custom_fields=include_custom_fields,
            include_archived=include_archived,
            page=page,
        )
        return await self._request("GET", self._workspaces_url.with_query(query), None)

    async def _request(
        self,
        method: str,
        url: URL,
        body: JSONObject | None,
        guard: SendGuard | None = None,
    ) -> ApiResponse:
        if self._session is None:
            raise RuntimeError("KantataClient used outside 'async with'")
        started = time.perf_counter()
        data: BytesPayload | None = None
        if body is not None:
            data = (
                BytesPayload(_dumps(body), content_type=JSON)
                if guard is None
                else GuardedPayload(_dumps(body), guard)
            )
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await self._read(response, method, url)
                status = response.status
                headers = response.headers
        except TimeoutError as exc:
            where = self._where(method, url)
            raise TransportError(TransportKind.TIMEOUT, f"{where}: no answer in time") from exc
        except aiohttp.ClientPayloadError as exc:
            where = self._where(method, url)
            raise TransportError(TransportKind.CONNECTION, f"{where}: response cut off") from exc
        except aiohttp.ClientConnectionError as exc:
            if isinstance(exc.__cause__, LeaseLost):
                raise LeaseLost(str(exc.__cause__)) from exc  # the guard refused: nothing left
            where = self._where(method, url)
            raise TransportError(
                TransportKind.CONNECTION,
                self._redact(f"{where}: {type(exc).__name__}: {_safe(exc)}"),
            ) from exc
        except aiohttp.ClientError as exc:
            where = self._where(method, url)
            raise TransportError(
                TransportKind.CONNECTION, f"{where}: {type(exc).__name__}"
            ) from exc
        request_id = headers.get("X-Request-Id")
        return ApiResponse(
            status=status,
            body=self._parse(raw),
            request_id=None if request_id is None else self._redact(request_id),
            retry_after=parse_retry_after(headers.get("Retry-After")),
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    async def _read(self, response: aiohttp.ClientResponse, method: str, url: URL) -> bytes:
        """The body, inflated, in chunks; ``too_large`` once it passes the cap either way."""
        limit = self._max_body_bytes
        declared = response.content_length
        if (
            declared is not None
            and declared <= limit
            and not response.headers.get("Content-Encoding")
        ):
            # The usual answer: its length is known and nothing inflates it, so the body can
            # be no longer than declared (aiohttp stops there) and is read in one go.
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        if declared is None or declared <= limit:
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > limit or _raw_bytes(response) > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        response.close()  # the rest is never read: drop the connection, do not reuse it
        raise TransportError(
            TransportKind.TOO_LARGE,
            f"{self._where(method, url)}: response body over {limit} bytes",
        )

    def _redact(self, text: str) -> str:
        """``text`` with the token masked, at most :data:`~worker.outcomes.MAX_MESSAGE_CHARS`."""
        if self._token is not None and self._token in text:
            text = text.replace(self._token, REDACTED)
        return cap_message(text)

    def _parse(self, raw: bytes) -> JSONObject | None:
        """The JSON object in ``raw`` with the token masked anywhere in it, or None."""
        for form in self._token_forms:
            if form in raw:
                raw = raw.replace(form, REDACTED.encode())
        parsed = _parse_body(raw)
        if parsed is not None and self._token is not None and b"\\u" in raw:
            # An escape can spell the token out after parsing: mask what it decoded to.
            scrubbed = _mask_strings(parsed, self._token)
            return scrubbed if isinstance(scrubbed, dict) else None
        return parsed


def _token_forms(token: str) -> tuple[bytes, ...]:
    """The token as bytes, and as JSON encoders may escape it (quotes, backslash, solidus)."""
    escaped = json.dumps(token)[1:-1]
    forms = {token, escaped, escaped.replace("/", "\\/")}
    return tuple(form.encode() for form in sorted(forms, key=len, reverse=True))


def _raw_bytes(response: aiohttp.ClientResponse) -> int:
    """Bytes read off the connection so far (before inflating), where aiohttp counts them."""
    raw = getattr(response.content, "total_raw_bytes", 0)
    return raw if isinstance(raw, int) else 0


def _mask_strings(value: Any, token: str) -> Any:
    """``value`` with ``token`` masked in every string, keys included; iterative, any depth."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        parent, slot, item = stack.pop()
        if isinstance(item, str):
            parent[slot] = item.replace(token, REDACTED)
        elif isinstance(item, dict):
            copy: dict[str, Any] = {}
            for key, member in item.items():
                new_key = key.replace(token, REDACTED)
                copy[new_key] = member
                stack.append((copy, new_key, member))
            parent[slot] = copy
        elif isinstance(item, list):
            items = list(item)
            parent[slot] = items
            stack.extend((items, index, member) for index, member in enumerate(item))
    return root[0]


def _safe(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


def _dumps(body: JSONObject) -> bytes:
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        # A lone surrogate from the payload column; the standard encoder escapes it.
        return json.dumps(body).encode("ascii")


def _parse_body(raw: bytes) -> JSONObject | None:
    """The JSON object in ``raw``; anything else (not JSON, too deep, a list) is None."""
    if not raw:
        return None
    try:
        parsed: Any = orjson.loads(raw) if len(raw) <= ORJSON_MAX_BYTES else _loads(raw)
    except orjson.JSONDecodeError:  # orjson refuses a lone surrogate escape, which json takes
        parsed = _loads(raw)
    return parsed if isinstance(parsed, dict) else None


def _loads(raw: bytes) -> Any:
    """``json.loads``, or None for what it cannot parse or recurse through (deep nesting)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError, MemoryError):
        return None


__all__ = [
    "GET_WORKSPACE",
    "GET_WORKSPACES",
    "MAX_PER_PAGE",
    "POST_STATUS_CHANGE",
    "PUT_WORKSPACE",
    "ApiResponse",
    "KantataClient",
    "RequestSpec",
    "WorkspacePage",
    "list_request",
    "primary_objects",
    "read_back_request",
    "status_change_request",
    "status_key_of",
    "update_request",
    "workspace_page",
    "workspace_snapshot",
]
