"""The aiohttp application: the four Kantata OX routes under ``/api/v1``.

Every API request passes, in order: an injected 429 burst, the strict rate limiter (429: the
main window, or the read window for a GET or HEAD when reads are limited apart),
added latency, injected 5xx / hang / dropped connection, authentication (401), the body shape
(400), the workspace lookup (404), the edit permission (403), field validation (422), the change
itself, and finally an injected "apply, then fail". A POST whose ``workspace_id`` or
``to_status_key`` is not a JSON integer is a 422 before the lookup. Forbidden workspaces can
still be read: only PUT and POST answer 403, with a ``system`` error, as for a project the user
can view but not edit. A plain GET of an archived workspace is a 404 unless
``include_archived=true``. The index route ``GET /workspaces`` (see :mod:`.listing`) reads many
workspaces at once and never answers 404 for an unknown ID. Any other path under ``/api/v1`` is
rate limited but never faulted, and answers a JSON 404. Every API request is kept in the
request log (``state.requests``) with the status it got.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .config import SandboxConfig
from .errors import ErrorType, RequestError, unprocessable
from .faults import NO_FAULT, FaultDecision, FaultInjector, FaultKind
from .inspection import add_inspection_routes
from .listing import page_of, parse_list_query, select
from .ratelimit import RateLimits
from .render import (
    custom_field_values_json,
    dumps,
    envelope,
    error_body,
    list_envelope,
    parse_includes,
    status_change_json,
    system_error,
    user_json,
    workspace_json,
)
from .state import DROPPED, Route, SandboxState, Workspace
from .validation import (
    check_status_key,
    parse_body,
    require_object,
    validate_status_change,
    validate_workspace_update,
)

API_PREFIX = "/api/v1"
SAME_STATUS_MESSAGE = "Project already has specified status"
JSON = "application/json"

_UNAUTHORIZED = RequestError.single(401, ErrorType.OAUTH, "Invalid OAuth 2 Request")
_RATE_LIMITED = system_error("Rate limit exceeded")
_TIMED_OUT = system_error("The request timed out")
_UNAVAILABLE = system_error("Service is temporarily unavailable")
_SERVER_ERRORS = {
    500: system_error("Internal server error"),
    502: system_error("Bad gateway"),
    503: _UNAVAILABLE,
}

READ_METHODS = frozenset({"GET", "HEAD"})
"""Methods counted against the read window when the sandbox limits reads apart."""

Operation = Callable[[web.Request], Awaitable[dict[str, Any]]]


class Sandbox:
    """One running sandbox: its configuration, state, rate limiters and fault injector.

    ``started`` is the ``clock`` reading that rate-limit schedules count their seconds from.
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.state = SandboxState(config)
        self.started = clock()
        self.rate_limits = RateLimits(
            config.main_schedule, config.read_schedule, self.started, self.state.stats.accepted
        )
        self.faults = FaultInjector(config.faults)
        self._retry_after = None if config.retry_after is None else str(config.retry_after)

    def json_response(self, body: bytes, status: int = 200) -> web.Response:
        """A JSON response from serialised bytes."""
        return web.Response(body=body, status=status, content_type=JSON)

    def too_many_requests(self) -> web.Response:
        """The 429 answer, with ``Retry-After`` when configured and no other rate-limit header."""
        response = web.Response(body=_RATE_LIMITED, status=429, content_type=JSON)
        if self._retry_after is not None:
            response.headers["Retry-After"] = self._retry_after
        return response

    async def serve(
        self, request: web.Request, route: Route, operation: Operation, *, faults: bool = True
    ) -> web.StreamResponse:
        """Run one API request through rate limiting, faults (unless off) and the operation."""
        target = request.path_qs.removeprefix(API_PREFIX)
        entry = self.state.record_request(request.method, target, await request.read())
        response = await self._serve(request, route, operation, faults=faults)
        if entry is not None:
            transport = request.transport
            dropped = transport is None or transport.is_closing()
            entry.status = DROPPED if dropped else response.status
        return response

    async def _serve(
        self, request: web.Request, route: Route, operation: Operation, *, faults: bool
    ) -> web.StreamResponse:
        now = self.clock()
        stats = self.state.stats
        stats.received.add(now)
        decision = self.faults.decide(now) if faults else NO_FAULT
        kind = decision.kind
        if kind is FaultKind.BURST_429:
            stats.faults[kind] += 1
            stats.record(route, 429)
            return self.too_many_requests()
        if not self.rate_limits.try_acquire(now, read=request.method in READ_METHODS):
            stats.rate_limited += 1
            stats.record(route, 429)
            return self.too_many_requests()
        if decision.latency:
            await asyncio.sleep(decision.latency)
        if kind is not FaultKind.NONE and kind is not FaultKind.APPLY_THEN_FAIL:
            return await self._fail(request, route, decision)
        try:
            body = await operation(request)
        except RequestError as error:
            stats.record(route, error.status)
            return self.json_response(error_body(error.errors), error.status)
        if kind is FaultKind.APPLY_THEN_FAIL:
            stats.faults[kind] += 1
            return await self._fail(request, route, decision)
        stats.record(route, 200)
        return self.json_response(dumps(body).encode())

    async def _fail(
        self, request: web.Request, route: Route, decision: FaultDecision
    ) -> web.StreamResponse:
        stats = self.state.stats
        kind = decision.kind
        if kind is not FaultKind.APPLY_THEN_FAIL:
            stats.faults[kind] += 1
        if kind is FaultKind.DROP:
            stats.record(route, DROPPED)
            return await _drop(request)
        if decision.hang:
            await asyncio.sleep(decision.hang_seconds)
            stats.record(route, 503)
            return self.json_response(_TIMED_OUT, 503)
        status = decision.status or 503
        stats.record(route, status)
        return self.json_response(_SERVER_ERRORS[status], status)

    def authenticate(self, request: web.Request) -> int:
        """The user behind the bearer token, or a 401."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise _UNAUTHORIZED
        user_id = self.state.user_for(token.strip())
        if user_id is None:
            raise _UNAUTHORIZED
        return user_id

    def lookup(self, workspace_id: int | str, *, include_archived: bool = True) -> Workspace:
        """The workspace with this ID, or a 404."""
        raw = str(workspace_id).removesuffix(".json")
        workspace = self.state.workspaces.get(int(raw)) if raw.isascii() and raw.isdigit() else None
        if workspace is None or (workspace.archived and not include_archived):
            raise RequestError.single(
                404, ErrorType.SYSTEM, f"Couldn't find Workspace with id={raw}"
            )
        return workspace

    def check_editable(self, workspace: Workspace) -> None:
        """A 403 when the account may read but not edit the workspace."""
        if workspace.id in self.config.forbidden:
            raise RequestError.single(
                403, ErrorType.SYSTEM, "You do not have permission to edit this project"
            )

    def workspace_envelope(self, workspace: Workspace, includes: frozenset[str]) -> dict[str, Any]:
        """The success body for a workspace, honouring ``include=custom_field_values``."""
        with_values = "custom_field_values" in includes
        record = workspace_json(workspace, self.state.statuses, custom_field_value_ids=with_values)
        extra = (
            [("custom_field_values", custom_field_values_json(workspace))] if with_values else []
        )
        return envelope("workspaces", workspace.id, record, extra)


async def _drop(request: web.Request) -> web.StreamResponse:
    """Start a response, send part of it, then cut the connection."""
    response = web.StreamResponse(status=200)
    response.content_type = JSON
    response.content_length = 4096
    await response.prepare(request)
    await response.write(b'{"count":1,"results":[{"key":')
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


class ApiHandlers:
    """The route handlers; each delegates the common pipeline to ``Sandbox.serve``."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def get_workspace(self, request: web.Request) -> web.StreamResponse:
        """``GET /workspaces/{id}``."""
        return await self.sandbox.serve(request, Route.GET_WORKSPACE, self._get)

    async def list_workspaces(self, request: web.Request) -> web.StreamResponse:
        """``GET /workspaces``: the index route."""
        return await self.sandbox.serve(request, Route.GET_WORKSPACES, self._list)

    async def put_workspace(self, request: web.Request) -> web.StreamResponse:
        """``PUT /workspaces/{id}``."""
        return await self.sandbox.serve(request, Route.PUT_WORKSPACE, self._put)

    async def post_status_change(self, request: web.Request) -> web.StreamResponse:
        """``POST /workspace_status_changes``."""
        return await self.sandbox.serve(request, Route.POST_STATUS_CHANGE, self._post)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        """Any other path under ``/api/v1``: rate limited, never faulted, then a JSON 404."""
        return await self.sandbox.serve(request, Route.OTHER, self._missing, faults=False)

    async def _get(self, request: web.Request) -> dict[str, Any]:
        sandbox = self.sandbox
        sandbox.authenticate(request)
        query = request.query
        archived_ok = query.get("include_archived", "").lower() == "true"
        workspace = sandbox.lookup(request.match_info["id"], include_archived=archived_ok)
        return sandbox.workspace_envelope(workspace, parse_includes(query.get("include")))

    async def _list(self, request: web.Request) -> dict[str, Any]:
        sandbox = self.sandbox
        sandbox.authenticate(request)
        query = parse_list_query(request.query)
        matches = select(sandbox.state.workspaces, query)
        page = page_of(matches, query)
        with_values = "custom_field_values" in parse_includes(request.query.get("include"))
        statuses = sandbox.state.statuses
        records = [
            (w.id, workspace_json(w, statuses, custom_field_value_ids=with_values)) for w in page
        ]
        extra: list[tuple[str, Any]] = []
        if with_values:
            values: dict[str, Any] = {}
            for workspace in page:
                values.update(custom_field_values_json(workspace))
            extra.append(("custom_field_values", values))
        return list_envelope(
            "workspaces",
            records,
            extra,
            count=len(matches),
            page_number=query.page,
            page_size=query.per_page,
        )

    async def _put(self, request: web.Request) -> dict[str, Any]:
        sandbox = self.sandbox
        sandbox.authenticate(request)
        fields = require_object(parse_body(await request.read()), "workspace")
        workspace = sandbox.lookup(request.match_info["id"])
        sandbox.check_editable(workspace)
        update = validate_workspace_update(fields, sandbox.state.statuses)
        sandbox.state.apply_update(workspace, update)
        return sandbox.workspace_envelope(workspace, parse_includes(request.query.get("include")))

    async def _post(self, request: web.Request) -> dict[str, Any]:
        sandbox = self.sandbox
        state = sandbox.state
        user_id = sandbox.authenticate(request)
        change_request = validate_status_change(parse_body(await request.read()))
        workspace = sandbox.lookup(change_request.workspace_id)
        sandbox.check_editable(workspace)
        to_key = change_request.to_status_key
        problem = check_status_key("to_status_key", to_key, state.statuses)
        if problem is not None:
            raise RequestError(422, [problem])
        if to_key == workspace.status_key:
            raise unprocessable(SAME_STATUS_MESSAGE, "to_status_key")
        change = state.change_status(workspace, to_key, user_id)
        includes = parse_includes(request.query.get("include"))
        with_user = "user" in includes
        with_workspace = "workspace" in includes
        record = status_change_json(
            change, state.statuses, user=with_user, workspace=with_workspace
        )
        extra: list[tuple[str, Any]] = []
        if with_user:
            extra.append(("users", {str(user_id): user_json(user_id)}))
        if with_workspace:
            extra.append(
                ("workspaces", {str(workspace.id): workspace_json(workspace, state.statuses)})
            )
        return envelope("workspace_status_changes", change.id, record, extra)

    async def _missing(self, request: web.Request) -> dict[str, Any]:
        raise RequestError.single(404, ErrorType.SYSTEM, "Page not found")


SANDBOX_KEY = web.AppKey("sandbox", Sandbox)


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    if "X-Request-Id" not in response.headers:
        response.headers["X-Request-Id"] = str(uuid.uuid4())


def create_app(config: SandboxConfig | None = None) -> web.Application:
    """A ready-to-run sandbox application; ``app[SANDBOX_KEY]`` is its live ``Sandbox``."""
    sandbox = Sandbox(config or SandboxConfig())
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    app.on_response_prepare.append(_add_request_id)
    handlers = ApiHandlers(sandbox)
    router = app.router
    for path in ("/workspaces", "/workspaces.json"):
        router.add_get(f"{API_PREFIX}{path}", handlers.list_workspaces)
    router.add_get(f"{API_PREFIX}/workspaces/{{id}}", handlers.get_workspace)
    router.add_put(f"{API_PREFIX}/workspaces/{{id}}", handlers.put_workspace)
    for path in ("/workspace_status_changes", "/workspace_status_changes.json"):
        router.add_post(f"{API_PREFIX}{path}", handlers.post_status_change)
    router.add_route("*", f"{API_PREFIX}/{{tail:.*}}", handlers.not_found)
    if sandbox.config.inspect:
        add_inspection_routes(app, sandbox)
    return app
