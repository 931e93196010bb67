"""From claimed rows to the plans a run sends: validate, mark ambiguity, coalesce, split.

Pure, and shared by ``run`` and ``plan``, so that the two agree request for request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .changes import Change, ClaimedRow, Kind
from .exceptions import InputError
from .outcomes import may_have_landed
from .planner import Step, WorkspacePlan, one_status_change, plan
from .validation import validate_row


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An unexpected exception as one short line: its type and message."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:limit]}"


def admit(row: ClaimedRow) -> Change:
    """A claimed row as a change ready to plan, or :class:`InputError` naming the column.

    SQLite stores anything anywhere, so a value no check foresaw is bad input too, never a
    crash. A status change whose last attempt may have landed is marked ``ambiguous``: it is
    read back before it is sent again.
    """
    try:
        change = validate_row(row)
    except InputError:
        raise
    except Exception as exc:
        raise InputError("row", f"cannot be read ({one_line(exc)})") from exc
    if change.kind is Kind.STATUS_CHANGE and row.attempts > 0 and may_have_landed(row.http_status):
        change = replace(change, ambiguous=True)
    return change


@dataclass(frozen=True, slots=True)
class Planned:
    """What a claim turns into: plans to run now, and steps to hand back untouched."""

    plans: list[WorkspacePlan]
    later: list[Step]


def plans_of(changes: Iterable[Change]) -> Planned:
    """Plan valid changes; each workspace runs at most one status change per claim."""
    plans: list[WorkspacePlan] = []
    later: list[Step] = []
    for workspace_plan in plan(list(changes)):
        now, rest = one_status_change(workspace_plan)
        plans.append(now)
        later.extend(rest)
    return Planned(plans, later)
