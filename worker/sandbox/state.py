"""The sandbox's in-memory account: workspaces, status-change history, tokens and statistics.

Tests running the sandbox in-process read this object directly; the inspection routes serve
the same data as JSON.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from .config import SandboxConfig
from .faults import FaultKind
from .ratelimit import SlidingWindow
from .validation import WorkspaceUpdate


class Route(StrEnum):
    """The API routes, as the statistics name them."""

    GET_WORKSPACE = "GET /workspaces/{id}"
    GET_WORKSPACES = "GET /workspaces"
    PUT_WORKSPACE = "PUT /workspaces/{id}"
    POST_STATUS_CHANGE = "POST /workspace_status_changes"
    OTHER = "other /api/v1"


DROPPED = "dropped"
"""The status label of a request whose connection the sandbox cut."""


@dataclass(slots=True)
class CustomFieldValue:
    """One custom field's value on one workspace."""

    id: int
    custom_field_id: int
    value: str
    created_at: str
    updated_at: str


@dataclass(slots=True)
class Workspace:
    """A workspace as stored: ``fields`` holds every attribute in its rendered form."""

    id: int
    fields: dict[str, Any]
    status_key: int
    created_at: str
    updated_at: str
    custom_fields: dict[int, CustomFieldValue] = field(default_factory=dict)
    put_count: int = 0
    status_change_count: int = 0

    @property
    def archived(self) -> bool:
        """Whether the project is archived (a plain GET then answers 404)."""
        return bool(self.fields.get("archived"))

    def to_json(self) -> dict[str, Any]:
        """The full internal state, for the inspection endpoint."""
        return {
            **self.fields,
            "id": self.id,
            "status_key": self.status_key,
            "custom_field_values": {str(k): v.value for k, v in sorted(self.custom_fields.items())},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "put_count": self.put_count,
            "status_change_count": self.status_change_count,
        }


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One recorded ``POST /workspace_status_changes``."""

    id: int
    workspace_id: int
    from_status_key: int
    to_status_key: int
    user_id: int
    created_at: str

    def to_json(self) -> dict[str, Any]:
        """The record with integer keys, for the inspection endpoints."""
        return {
            "id": self.id,
            "workspace_id": self.workspace_id,
            "from_status_key": self.from_status_key,
            "to_status_key": self.to_status_key,
            "user_id": self.user_id,
            "created_at": self.created_at,
        }


class Stats:
    """Request counters and the busiest one-second windows, received and accepted."""

    __slots__ = ("accepted", "faults", "rate_limited", "received", "requests")

    def __init__(self) -> None:
        self.requests: Counter[tuple[Route, int | str]] = Counter()
        self.faults: Counter[FaultKind] = Counter()
        self.rate_limited = 0
        self.received = SlidingWindow()
        self.accepted = SlidingWindow()

    def record(self, route: Route, status: int | str) -> None:
        """Count one answered (or dropped) API request."""
        self.requests[route, status] += 1

    def count(self, route: Route | None = None, status: int | str | None = None) -> int:
        """How many requests matched the route and status (None matches any)."""
        return sum(
            n
            for (r, s), n in self.requests.items()
            if (route is None or r == route) and (status is None or s == status)
        )

    @property
    def total_429(self) -> int:
        """Every 429 sent, from the rate limiter and from injected bursts."""
        return self.count(status=429)

    def reset(self) -> None:
        """Zero the counters and the window maxima (the limiter keeps its recent history)."""
        self.requests.clear()
        self.faults.clear()
        self.rate_limited = 0
        self.received.reset_max()
        self.accepted.reset_max()

    def to_json(self) -> dict[str, Any]:
        """The statistics as served by ``GET /__sandbox__/stats``."""
        by_route: dict[str, dict[str, int]] = {}
        for (route, status), n in sorted(self.requests.items(), key=lambda i: str(i[0])):
            by_route.setdefault(str(route), {})[str(status)] = n
        return {
            "requests": by_route,
            "total": sum(self.requests.values()),
            "total_429": self.total_429,
            "rate_limited": self.rate_limited,
            "faults": {str(kind): self.faults[kind] for kind in FaultKind if kind != "none"},
            "max_accepted_per_second": self.accepted.max,
            "max_received_per_second": self.received.max,
        }


def _utc_iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


@dataclass(slots=True)
class RecordedRequest:
    """One API request as it arrived: method, target after ``/api/v1`` (query included), the
    raw body, and the status it was answered with (None while in progress, ``dropped``)."""

    method: str
    target: str
    body: bytes
    status: int | str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record with the body parsed when it is JSON (else as text, or None when empty)."""
        body: Any = None
        if self.body:
            text = self.body.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        return {"method": self.method, "target": self.target, "body": body, "status": self.status}


class SandboxState:
    """The live account: seeded workspaces, their history, the tokens and the statistics."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.statuses = dict(config.statuses)
        self.users: dict[str, int] = {token: n for n, token in enumerate(config.tokens, 1)}
        self.revoked: set[str] = set()
        self.stats = Stats()
        self.requests: deque[RecordedRequest] = deque(maxlen=config.request_log or None)
        """The latest API requests (``config.request_log`` of them), oldest first."""
        self.history: list[StatusChange] = []
        self._history_by_workspace: dict[int, list[StatusChange]] = {}
        self._last_stamp = datetime.now(UTC)
        self._next_custom_field_value_id = 1
        seeded = _utc_iso(self._last_stamp)
        self.workspaces: dict[int, Workspace] = {
            n: Workspace(n, _seed_fields(n), config.initial_status, seeded, seeded)
            for n in range(1, config.workspaces + 1)
        }

    def stamp(self) -> str:
        """The current UTC time, strictly later than any stamp handed out before."""
        now = datetime.now(UTC)
        if now <= self._last_stamp:
            now = self._last_stamp + timedelta(microseconds=1)
        self._last_stamp = now
        return _utc_iso(now)

    def user_for(self, token: str) -> int | None:
        """The user a token acts as, or None when it is unknown or revoked."""
        if token in self.revoked:
            return None
        return self.users.get(token)

    def revoke(self, token: str) -> None:
        """Make every further request with this token fail with 401."""
        self.revoked.add(token)

    def restore(self, token: str) -> None:
        """Undo ``revoke``."""
        self.revoked.discard(token)

    def status_changes(self, workspace_id: int) -> list[StatusChange]:
        """The status changes of one workspace, oldest first."""
        return list(self._history_by_workspace.get(workspace_id, ()))

    def record_request(self, method: str, target: str, body: bytes) -> RecordedRequest | None:
        """Log an arriving API request (unless the log is off); set its ``status`` when answered."""
        if not self.config.request_log:
            return None
        entry = RecordedRequest(method, target, body)
        self.requests.append(entry)
        return entry

    def apply_update(
        self, workspace: Workspace, update: WorkspaceUpdate, *, out_of_band: bool = False
    ) -> None:
        """Apply a validated PUT: fields, custom field values and status, then bump updated_at.

        ``out_of_band``: an edit made in Kantata's UI, not through the API (no PUT counted).
        """
        stamp = self.stamp()
        fields = workspace.fields
        fields.update(update.fields)
        if "price" in update.fields:
            fields["price_in_cents"] = int(update.fields["price"]) * 100
        fields["expenses_in_burn_rate"] = bool(
            fields.get("actual_fees_includes_expenses")
            and fields.get("actual_fees_includes_additional_line_items")
        )
        for custom_field_id, value in update.custom_fields.items():
            self._set_custom_field(workspace, custom_field_id, value, stamp)
        if update.status_key is not None:
            workspace.status_key = update.status_key
        workspace.updated_at = stamp
        if not out_of_band:
            workspace.put_count += 1

    def _set_custom_field(
        self, workspace: Workspace, custom_field_id: int, value: str | None, stamp: str
    ) -> None:
        current = workspace.custom_fields.get(custom_field_id)
        if value is None:
            workspace.custom_fields.pop(custom_field_id, None)
        elif current is None:
            workspace.custom_fields[custom_field_id] = CustomFieldValue(
                self._next_custom_field_value_id, custom_field_id, value, stamp, stamp
            )
            self._next_custom_field_value_id += 1
        else:
            current.value = value
            current.updated_at = stamp

    def change_status(self, workspace: Workspace, to_status_key: int, user_id: int) -> StatusChange:
        """Record a status change and apply it; the caller has ruled out the current status."""
        stamp = self.stamp()
        change = StatusChange(
            id=len(self.history) + 1,
            workspace_id=workspace.id,
            from_status_key=workspace.status_key,
            to_status_key=to_status_key,
            user_id=user_id,
            created_at=stamp,
        )
        self.history.append(change)
        self._history_by_workspace.setdefault(workspace.id, []).append(change)
        workspace.status_key = to_status_key
        workspace.updated_at = stamp
        workspace.status_change_count += 1
        return change


def _seed_fields(n: int) -> dict[str, Any]:
    return {
        "title": f"Project {n}",
        "description": "",
        "start_date": "2026-01-05",
        "due_date": "2026-12-18",
        "access_level": "invitation",
        "stage": "project",
        "price": "0",
        "price_in_cents": 0,
        "budgeted": True,
        "currency": "USD",
        "archived": False,
        "account_id": 1,
        "consultant_role_name": "Provider",
        "client_role_name": "Client",
        "actual_fees_includes_expenses": False,
        "actual_fees_includes_additional_line_items": False,
        "expenses_in_burn_rate": False,
    }
