"""Inspection and control routes under ``/__sandbox__/``, for tests and demos.

They exist only when the sandbox runs with ``inspect=True`` (otherwise the paths are plain
404s), need no token, and are exempt from the rate limit, fault injection and statistics.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import ConfigError, FaultConfig
from .errors import RequestError
from .render import dumps
from .validation import validate_workspace_update

if TYPE_CHECKING:
    from .app import Sandbox

PREFIX = "/__sandbox__"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data).encode(), status=status, content_type="application/json")


def _problem(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return _problem(400, "body is not valid JSON")
    if not isinstance(data, dict):
        return _problem(400, "body must be a JSON object")
    return data


class InspectionHandlers:
    """JSON views of the live state, and the runtime controls."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def _workspace_id(self, request: web.Request) -> int | None:
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()):
            return None
        workspace_id = int(raw)
        return workspace_id if workspace_id in self.sandbox.state.workspaces else None

    async def workspace(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/workspaces/{id}``: every stored field, status key as an int."""
        workspace_id = self._workspace_id(request)
        if workspace_id is None:
            return _problem(404, "no such workspace")
        return _json(self.sandbox.state.workspaces[workspace_id].to_json())

    async def edit_workspace(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/workspaces/{id}/edit`` with ``{"workspace": {...}}``.

        An edit made in Kantata's UI, not through the API: the fields of a PUT body (checked
        as a PUT checks them; 422 with the errors otherwise) are applied, ``updated_at`` moves,
        and no request is counted. Answers the workspace as stored.
        """
        workspace_id = self._workspace_id(request)
        if workspace_id is None:
            return _problem(404, "no such workspace")
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        fields = data.get("workspace")
        if not isinstance(fields, dict) or not fields:
            return _problem(400, 'body must be {"workspace": {field: value, ...}}')
        state = self.sandbox.state
        try:
            update = validate_workspace_update(fields, state.statuses)
        except RequestError as error:
            return _json({"errors": [e.to_json() for e in error.errors]}, error.status)
        workspace = state.workspaces[workspace_id]
        state.apply_update(workspace, update, out_of_band=True)
        return _json(workspace.to_json())

    async def delete_workspace(self, request: web.Request) -> web.Response:
        """``DELETE /__sandbox__/workspaces/{id}``: the project is deleted in Kantata's UI."""
        workspace_id = self._workspace_id(request)
        if workspace_id is None:
            return _problem(404, "no such workspace")
        del self.sandbox.state.workspaces[workspace_id]
        return _json({"deleted": workspace_id})

    async def requests(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/requests``: the latest API requests, oldest first."""
        return _json({"requests": [entry.to_json() for entry in self.sandbox.state.requests]})

    async def workspace_history(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/workspaces/{id}/status_changes``: that workspace's history."""
        workspace_id = self._workspace_id(request)
        if workspace_id is None:
            return _problem(404, "no such workspace")
        changes = self.sandbox.state.status_changes(workspace_id)
        return _json(
            {
                "workspace_id": workspace_id,
                "status_changes": [change.to_json() for change in changes],
            }
        )

    async def history(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/history``: every status change, in the order applied."""
        return _json({"status_changes": [c.to_json() for c in self.sandbox.state.history]})

    async def stats(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/stats``: the counters, the limits in force now (``rate_limit``;
        ``read_rate_limit``, null when reads share the main window) and ``elapsed_seconds``,
        the sandbox clock's seconds since it started (what schedules count from)."""
        sandbox = self.sandbox
        data = sandbox.state.stats.to_json()
        now = sandbox.clock()
        data["rate_limit"], data["read_rate_limit"] = sandbox.rate_limits.limits_at(now)
        data["elapsed_seconds"] = round(now - sandbox.started, 3)
        return _json(data)

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/reset_stats``: zero the counters and empty the request log;
        answers the zeroed stats."""
        self.sandbox.state.stats.reset()
        self.sandbox.state.requests.clear()
        return await self.stats(request)

    async def revoke_token(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/tokens/revoke`` with ``{"token": "..."}``."""
        return await self._token(request, revoke=True)

    async def restore_token(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/tokens/restore`` with ``{"token": "..."}``."""
        return await self._token(request, revoke=False)

    async def _token(self, request: web.Request, *, revoke: bool) -> web.Response:
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        token = data.get("token")
        if not isinstance(token, str) or not token:
            return _problem(400, "token must be a non-empty string")
        state = self.sandbox.state
        if revoke:
            state.revoke(token)
        else:
            state.restore(token)
        return _json({"token": token, "revoked": token in state.revoked})

    async def get_faults(self, request: web.Request) -> web.Response:
        """``GET /__sandbox__/faults``: the fault configuration in force."""
        return _json(self.sandbox.faults.config.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        """``POST /__sandbox__/faults``: replace the fault config; missing keys take defaults."""
        data = await _json_object(request)
        if isinstance(data, web.Response):
            return data
        try:
            config = FaultConfig.from_json(data)
        except (ConfigError, ValueError) as error:
            return _problem(400, str(error))
        self.sandbox.faults.replace(config)
        return _json(config.to_json())


def add_inspection_routes(app: web.Application, sandbox: Sandbox) -> None:
    """Mount the inspection routes on ``app``."""
    handlers = InspectionHandlers(sandbox)
    router = app.router
    router.add_get(f"{PREFIX}/workspaces/{{id}}", handlers.workspace)
    router.add_delete(f"{PREFIX}/workspaces/{{id}}", handlers.delete_workspace)
    router.add_post(f"{PREFIX}/workspaces/{{id}}/edit", handlers.edit_workspace)
    router.add_get(f"{PREFIX}/workspaces/{{id}}/status_changes", handlers.workspace_history)
    router.add_get(f"{PREFIX}/requests", handlers.requests)
    router.add_get(f"{PREFIX}/history", handlers.history)
    router.add_get(f"{PREFIX}/stats", handlers.stats)
    router.add_post(f"{PREFIX}/reset_stats", handlers.reset_stats)
    router.add_post(f"{PREFIX}/tokens/revoke", handlers.revoke_token)
    router.add_post(f"{PREFIX}/tokens/restore", handlers.restore_token)
    router.add_get(f"{PREFIX}/faults", handlers.get_faults)
    router.add_post(f"{PREFIX}/faults", handlers.set_faults)
