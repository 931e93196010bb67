"""``GET /workspaces``, the index route: which workspaces a query selects, and which page.

As Kantata documents it: ``only=5,6,7`` asks for workspaces by ID and skips IDs it does not
know (no 404); archived projects are left out unless ``include_archived=true``; the order is
``updated_at`` descending (the documented default); ``per_page`` defaults to 20 and is capped
at 200; ``page`` counts from 1, and a page past the end is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import bad_request
from .state import Workspace

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The parameters of an index request that the sandbox honours."""

    only: frozenset[int] | None
    include_archived: bool
    page: int
    per_page: int


def _positive(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise bad_request(f"{name} must be a positive integer", name)
    return int(raw)


def parse_list_query(query: Mapping[str, str]) -> ListQuery:
    """The index parameters, or a 400 for a ``page``/``per_page`` that is not a number."""
    only: frozenset[int] | None = None
    if "only" in query:
        only = frozenset(
            int(part)
            for part in query["only"].split(",")
            if part.strip().isascii() and part.strip().isdigit()
        )
    return ListQuery(
        only=only,
        include_archived=query.get("include_archived", "").lower() == "true",
        page=_positive(query, "page", 1),
        per_page=min(_positive(query, "per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE),
    )


def select(workspaces: Mapping[int, Workspace], query: ListQuery) -> list[Workspace]:
    """Every workspace the query matches, in the documented order (all pages)."""
    if query.only is None:
        candidates = list(workspaces.values())
    else:
        candidates = [workspaces[i] for i in query.only if i in workspaces]
    if not query.include_archived:
        candidates = [w for w in candidates if not w.archived]
    candidates.sort(key=lambda w: (w.updated_at, w.id), reverse=True)
    return candidates


def page_of(matches: list[Workspace], query: ListQuery) -> list[Workspace]:
    """The requested page of ``matches``."""
    start = (query.page - 1) * query.per_page
    return matches[start : start + query.per_page]
