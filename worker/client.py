"""The Kantata OX client: the three requests kantata-sync makes, over one aiohttp session.

Every request carries the Bearer token, a JSON body and a User-Agent with the version. Any HTTP
answer comes back as an :class:`~worker.outcomes.ApiResponse` for the pure classifier to judge;
no answer at all raises :class:`~worker.exceptions.TransportError`. The token lives only in the
session's default headers and never reaches a message, a log line or a repr.
"""

from __future__ import annotations

import functools
import json
import time
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp.payload import BytesPayload
from yarl import URL

from . import USER_AGENT
from .changes import JSONObject
from .exceptions import ProtocolError, TransportError
from .outcomes import ApiResponse, parse_retry_after

JSON = "application/json"
URL_CACHE_SIZE = 4096
PUT_WORKSPACE = "PUT /workspaces/{id}"
POST_STATUS_CHANGE = "POST /workspace_status_changes"
GET_WORKSPACE = "GET /workspaces/{id}"


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
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
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
        return self._workspaces_url.joinpath(str(workspace_id), encoded=True)

    async def update_workspace(self, workspace_id: int, fields: JSONObject) -> ApiResponse:
        """``PUT /workspaces/{id}`` with ``{"workspace": fields}``."""
        url = self._workspace_url(workspace_id)
        return await self._request("PUT", url, {"workspace": fields})

    async def change_status(self, workspace_id: int, to_status_key: int) -> ApiResponse:
        """``POST /workspace_status_changes``, including the workspace to read its new state."""
        body = {
            "workspace_status_change": {
                "workspace_id": workspace_id,
                "to_status_key": to_status_key,
            }
        }
        return await self._request("POST", self._status_changes_url, body)

    async def get_workspace(self, workspace_id: int) -> ApiResponse:
        """``GET /workspaces/{id}``: the read-back that proves a status is in place."""
        return await self._request("GET", self._workspace_url(workspace_id), None)

    async def _request(
        self,
        method: str,
        url: URL,
        body: JSONObject | None,
    ) -> ApiResponse:
        if self._session is None:
            raise RuntimeError("KantataClient used outside 'async with'")
        started = time.perf_counter()
        try:
            async with self._session.request(
                method,
                url,
                data=None if body is None else BytesPayload(_dumps(body), content_type=JSON),
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
        except TimeoutError as exc:
            where = self._where(method, url)
            raise TransportError("timeout", f"{where}: no answer in time") from exc
        except aiohttp.ClientPayloadError as exc:
            where = self._where(method, url)
            raise TransportError("connection", f"{where}: response cut off") from exc
        except aiohttp.ClientConnectionError as exc:
            where = self._where(method, url)
            raise TransportError(
                "connection", f"{where}: {type(exc).__name__}: {_safe(exc)}"
            ) from exc
        except aiohttp.ClientError as exc:
            where = self._where(method, url)
            raise TransportError("connection", f"{where}: {type(exc).__name__}") from exc
        return ApiResponse(
            status=status,
            body=_parse_body(raw),
            request_id=headers.get("X-Request-Id"),
            retry_after=parse_retry_after(headers.get("Retry-After")),
            duration_ms=(time.perf_counter() - started) * 1000,
        )


def _safe(exc: BaseException) -> str:
    return str(exc).replace("\n", " ")[:200]


def _dumps(body: JSONObject) -> bytes:
    try:
        return orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        # A lone surrogate from the payload column; the standard encoder escapes it.
        return json.dumps(body).encode("ascii")


def _parse_body(raw: bytes) -> JSONObject | None:
    if not raw:
        return None
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # orjson refuses a lone surrogate escape, which json takes
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return None
    return parsed if isinstance(parsed, dict) else None


def primary_objects(body: JSONObject | None) -> list[JSONObject]:
    """The objects the ``results`` array points at, in order (the documented envelope)."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ProtocolError("response has no results array")
    objects = []
    for ref in body["results"]:
        if not isinstance(ref, dict):
            raise ProtocolError("results entry is not an object")
        key, ident = ref.get("key"), ref.get("id")
        table = body.get(key) if isinstance(key, str) else None
        if not isinstance(table, dict) or str(ident) not in table:
            raise ProtocolError(f"results points at {key}/{ident}, which the response lacks")
        objects.append(table[str(ident)])
    return objects


def workspace_snapshot(body: JSONObject | None, workspace_id: int) -> JSONObject | None:
    """The workspace's ``status`` and ``updated_at`` as returned, for the change's result."""
    if not isinstance(body, dict):
        return None
    workspaces = body.get("workspaces")
    workspace = workspaces.get(str(workspace_id)) if isinstance(workspaces, dict) else None
    if not isinstance(workspace, dict):
        return None
    snapshot: JSONObject = {}
    if isinstance(workspace.get("status"), dict):
        snapshot["status"] = workspace["status"]
    if workspace.get("updated_at") is not None:
        snapshot["updated_at"] = workspace["updated_at"]
    return snapshot


def status_key_of(body: JSONObject | None, workspace_id: int) -> int | None:
    """The workspace's current ``status.key`` from a GET, or None when absent."""
    snapshot = workspace_snapshot(body, workspace_id)
    status = snapshot.get("status") if snapshot else None
    key = status.get("key") if isinstance(status, dict) else None
    try:
        return int(key) if key is not None else None
    except (TypeError, ValueError):
        return None


__all__ = [
    "GET_WORKSPACE",
    "POST_STATUS_CHANGE",
    "PUT_WORKSPACE",
    "ApiResponse",
    "KantataClient",
    "primary_objects",
    "status_key_of",
    "workspace_snapshot",
]
