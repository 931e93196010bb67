"""The planner: per-workspace order, coalescing of updates, status changes as barriers."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.changes import Change, Kind
from worker.planner import PutStep, StatusStep, WorkspacePlan, one_status_change, plan


def upd(cid: int, ws: int = 1, **fields: Any) -> Change:
    return Change(cid, ws, Kind.WORKSPACE_UPDATE, fields, attempts=0, lease_token=1)


def st_(cid: int, ws: int = 1, key: int = 310) -> Change:
    return Change(cid, ws, Kind.STATUS_CHANGE, {"to_status_key": key}, attempts=0, lease_token=1)


def shape(plans: list[WorkspacePlan]) -> list[tuple[int, list[tuple[str, tuple[int, ...]]]]]:
    """Each workspace with its steps as ("put"|"status", change_ids)."""
    return [
        (
            p.workspace_id,
            [("put" if isinstance(s, PutStep) else "status", s.change_ids) for s in p.steps],
        )
        for p in plans
    ]


# --------------------------------------------------------------------------- step shapes

SHAPES = [
    pytest.param([], [], id="empty"),
    pytest.param([upd(1, title="a")], [(1, [("put", (1,))])], id="single-update"),
    pytest.param([st_(1)], [(1, [("status", (1,))])], id="single-status"),
    pytest.param(
        [upd(1, title="a"), upd(2, description="b"), upd(3, budgeted=True)],
        [(1, [("put", (1, 2, 3))])],
        id="three-updates-coalesce",
    ),
    pytest.param(
        [upd(1, title="a"), st_(2), upd(3, title="b")],
        [(1, [("put", (1,)), ("status", (2,)), ("put", (3,))])],
        id="status-is-barrier",
    ),
    pytest.param(
        [st_(1, key=310), st_(2, key=400)],
        [(1, [("status", (1,)), ("status", (2,))])],
        id="two-statuses-never-merged",
    ),
    pytest.param(
        [st_(1, key=310), st_(2, key=310)],
        [(1, [("status", (1,)), ("status", (2,))])],
        id="identical-statuses-never-merged",
    ),
    pytest.param(
        [
            upd(1, title="a"),
            upd(2, title="b"),
            st_(3),
            st_(4),
            upd(5, title="c"),
            upd(6, title="d"),
        ],
        [(1, [("put", (1, 2)), ("status", (3,)), ("status", (4,)), ("put", (5, 6))])],
        id="runs-around-two-barriers",
    ),
    pytest.param(
        [st_(1), upd(2, title="a")],
        [(1, [("status", (1,)), ("put", (2,))])],
        id="status-first",
    ),
    pytest.param(
        [upd(1, title="a"), st_(2)],
        [(1, [("put", (1,)), ("status", (2,))])],
        id="status-last",
    ),
    pytest.param(
        [upd(1, 10, title="a"), upd(2, 20, title="b"), upd(3, 10, title="c")],
        [(10, [("put", (1, 3))]), (20, [("put", (2,))])],
        id="interleaved-workspaces-coalesce-separately",
    ),
    pytest.param(
        [upd(1, 10, title="a"), st_(2, 20), upd(3, 10, title="b"), upd(4, 20, title="c")],
        [(10, [("put", (1, 3))]), (20, [("status", (2,)), ("put", (4,))])],
        id="barrier-in-other-workspace-does-not-split",
    ),
    pytest.param(
        [upd(5, 30, title="x"), upd(2, 20, title="y"), upd(9, 10, title="z")],
        [(20, [("put", (2,))]), (30, [("put", (5,))]), (10, [("put", (9,))])],
        id="workspaces-in-order-of-lowest-id",
    ),
    pytest.param(
        [upd(3, title="c"), st_(2), upd(1, title="a")],
        [(1, [("put", (1,)), ("status", (2,)), ("put", (3,))])],
        id="input-order-ignored-ids-rule",
    ),
    pytest.param(
        [upd(4, title="d"), upd(1, title="a"), upd(3, title="c"), upd(2, title="b")],
        [(1, [("put", (1, 2, 3, 4))])],
        id="unsorted-run-sorted",
    ),
    pytest.param(
        [upd(1, project_tracker_template_id=5), upd(2, project_tracker_template_id=6)],
        [(1, [("put", (1,)), ("put", (2,))])],
        id="two-templates-not-merged",
    ),
    pytest.param(
        [upd(1, project_tracker_template_id=5), upd(2, project_tracker_template_id=5)],
        [(1, [("put", (1,)), ("put", (2,))])],
        id="same-template-twice-not-merged",
    ),
    pytest.param(
        [
            upd(1, project_tracker_template_id=5),
            upd(2, title="a"),
            upd(3, project_tracker_template_id=6),
        ],
        [(1, [("put", (1, 2)), ("put", (3,))])],
        id="template-after-merged-run-splits",
    ),
    pytest.param(
        [upd(1, title="a"), upd(2, project_tracker_template_id=6), upd(3, title="b")],
        [(1, [("put", (1, 2, 3))])],
        id="one-template-merges",
    ),
    pytest.param(
        [
            upd(
                1,
                external_reference={
                    "service_name": "crm",
                    "service_model": "m",
                    "service_model_ref": "1",
                },
            ),
            upd(
                2,
                external_reference={
                    "service_name": "erp",
                    "service_model": "m",
                    "service_model_ref": "2",
                },
            ),
        ],
        [(1, [("put", (1,)), ("put", (2,))])],
        id="external-refs-of-different-services-not-merged",
    ),
    pytest.param(
        [
            upd(
                1,
                external_reference={
                    "service_name": "crm",
                    "service_model": "m",
                    "service_model_ref": "1",
                },
            ),
            upd(
                2,
                external_reference={
                    "service_name": "crm",
                    "service_model": "m",
                    "service_model_ref": "2",
                },
            ),
        ],
        [(1, [("put", (1, 2))])],
        id="external-refs-of-same-service-merged",
    ),
    pytest.param(
        [
            upd(
                1,
                external_reference={
                    "service_name": "crm",
                    "service_model": "m",
                    "service_model_ref": "1",
                },
            ),
            upd(2, title="t"),
            upd(
                3,
                external_reference={
                    "service_name": "erp",
                    "service_model": "m",
                    "service_model_ref": "2",
                },
            ),
        ],
        [(1, [("put", (1, 2)), ("put", (3,))])],
        id="external-ref-conflict-after-merged-run",
    ),
    pytest.param(
        [
            upd(1, project_tracker_template_id=5),
            st_(2),
            upd(3, project_tracker_template_id=6),
        ],
        [(1, [("put", (1,)), ("status", (2,)), ("put", (3,))])],
        id="template-split-by-barrier-anyway",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), SHAPES)
def test_step_shapes(changes: list[Change], expected: list[Any]) -> None:
    assert shape(plan(changes)) == expected


# --------------------------------------------------------------------------- merged fields

FIELDS = [
    pytest.param(
        [{"title": "a"}, {"title": "b"}],
        {"title": "b"},
        id="later-wins",
    ),
    pytest.param(
        [{"title": "a", "budgeted": True}, {"description": "d"}],
        {"title": "a", "budgeted": True, "description": "d"},
        id="disjoint-union",
    ),
    pytest.param(
        [{"budgeted": True}, {"budgeted": False}],
        {"budgeted": False},
        id="later-false-wins",
    ),
    pytest.param(
        [{"title": "a"}, {"description": "x"}, {"title": "c"}],
        {"title": "c", "description": "x"},
        id="later-wins-across-three",
    ),
    pytest.param(
        [
            {"custom_fields": [{"custom_field_id": 7, "value": "a"}]},
            {"custom_fields": [{"custom_field_id": 8, "value": "b"}]},
        ],
        {
            "custom_fields": [
                {"custom_field_id": 7, "value": "a"},
                {"custom_field_id": 8, "value": "b"},
            ]
        },
        id="custom-fields-union",
    ),
    pytest.param(
        [
            {
                "custom_fields": [
                    {"custom_field_id": 7, "value": "a"},
                    {"custom_field_id": 8, "value": "b"},
                ]
            },
            {"custom_fields": [{"custom_field_id": 7, "value": "c"}]},
        ],
        {
            "custom_fields": [
                {"custom_field_id": 7, "value": "c"},
                {"custom_field_id": 8, "value": "b"},
            ]
        },
        id="custom-fields-same-id-later-wins",
    ),
    pytest.param(
        [
            {"custom_fields": [{"custom_field_id": 7, "value": "a"}]},
            {"title": "t"},
            {
                "custom_fields": [
                    {"custom_field_id": 7, "value": "z"},
                    {"custom_field_id": 9, "value": "n"},
                ]
            },
        ],
        {
            "custom_fields": [
                {"custom_field_id": 7, "value": "z"},
                {"custom_field_id": 9, "value": "n"},
            ],
            "title": "t",
        },
        id="custom-fields-merge-across-unrelated-update",
    ),
    pytest.param(
        [{"title": "t"}, {"custom_fields": [{"custom_field_id": 3, "value": "v"}]}],
        {"title": "t", "custom_fields": [{"custom_field_id": 3, "value": "v"}]},
        id="custom-fields-only-in-later",
    ),
    pytest.param(
        [
            {"invoice_preference": {"project_code": "P1", "purchase_order": "PO1"}},
            {"invoice_preference": {"purchase_order": "PO2"}},
        ],
        {"invoice_preference": {"project_code": "P1", "purchase_order": "PO2"}},
        id="invoice-preference-merged-by-key",
    ),
    pytest.param(
        [{"external_link": {"text": "t"}}, {"external_link": {"url": "https://x"}}],
        {"external_link": {"text": "t", "url": "https://x"}},
        id="external-link-merged-by-key",
    ),
    pytest.param(
        [
            {
                "external_reference": {
                    "service_name": "crm",
                    "service_model": "a",
                    "service_model_ref": "1",
                }
            },
            {
                "external_reference": {
                    "service_name": "crm",
                    "service_model": "b",
                    "service_model_ref": "2",
                }
            },
        ],
        {
            "external_reference": {
                "service_name": "crm",
                "service_model": "b",
                "service_model_ref": "2",
            }
        },
        id="external-reference-same-service-later-replaces",
    ),
    pytest.param(
        [{"workspace_group_ids": [1, 2]}, {"workspace_group_ids": [3]}],
        {"workspace_group_ids": [3]},
        id="lists-other-than-custom-fields-replace",
    ),
    pytest.param(
        [{"project_tracker_template_id": 4}, {"title": "x"}],
        {"project_tracker_template_id": 4, "title": "x"},
        id="single-template-kept",
    ),
]


@pytest.mark.parametrize(("payloads", "expected"), FIELDS)
def test_merged_fields(payloads: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    changes = [upd(i + 1, 1, **p) for i, p in enumerate(payloads)]
    [workspace] = plan(changes)
    [step] = workspace.steps
    assert isinstance(step, PutStep)
    assert step.fields == expected
    assert step.change_ids == tuple(range(1, len(payloads) + 1))
    assert step.workspace_id == 1


def test_merge_does_not_mutate_payloads() -> None:
    payloads = [
        {"custom_fields": [{"custom_field_id": 1, "value": "a"}], "invoice_preference": {"a": "1"}},
        {"custom_fields": [{"custom_field_id": 1, "value": "b"}], "invoice_preference": {"b": "2"}},
    ]
    before = copy.deepcopy(payloads)
    plan([upd(i + 1, **p) for i, p in enumerate(payloads)])
    assert payloads == before


def test_status_step_carries_key_and_change() -> None:
    change = st_(7, ws=42, key=610)
    [workspace] = plan([change])
    [step] = workspace.steps
    assert isinstance(step, StatusStep)
    assert (step.workspace_id, step.to_status_key, step.change) == (42, 610, change)
    assert step.changes == (change,)
    assert step.change_ids == (7,)


def test_put_step_keeps_the_change_objects_in_order() -> None:
    changes = [upd(3, title="c"), upd(1, title="a"), upd(2, title="b")]
    [workspace] = plan(changes)
    [step] = workspace.steps
    assert isinstance(step, PutStep)
    assert [c.id for c in step.changes] == [1, 2, 3]
    assert step.changes[0] is changes[1]


def test_plan_accepts_any_iterable() -> None:
    assert shape(plan(iter([upd(1, title="a"), st_(2)]))) == [
        (1, [("put", (1,)), ("status", (2,))])
    ]


# --------------------------------------------------------------------------- property

WORKSPACES = (1, 2, 3)


def _ref(service: str, ref: str) -> dict[str, str]:
    return {"service_name": service, "service_model": "Deal", "service_model_ref": ref}


small_text = st.text(alphabet="abc", min_size=1, max_size=2)
custom_field = st.fixed_dictionaries({"custom_field_id": st.integers(1, 3), "value": small_text})
update_field = st.one_of(
    st.tuples(st.just("title"), small_text),
    st.tuples(st.just("description"), small_text),
    st.tuples(st.just("budgeted"), st.booleans()),
    st.tuples(st.just("custom_fields"), st.lists(custom_field, min_size=1, max_size=3)),
    st.tuples(
        st.just("invoice_preference"),
        st.dictionaries(
            st.sampled_from(["project_code", "purchase_order"]), small_text, min_size=1
        ),
    ),
    st.tuples(
        st.just("external_link"),
        st.dictionaries(st.sampled_from(["text", "url"]), small_text, min_size=1),
    ),
    st.tuples(st.just("project_tracker_template_id"), st.integers(1, 3)),
    st.tuples(
        st.just("external_reference"),
        st.builds(_ref, st.sampled_from(["crm", "erp"]), small_text),
    ),
)
update_payload = st.lists(update_field, min_size=1, max_size=3).map(dict)
change_spec = st.tuples(
    st.sampled_from(WORKSPACES),
    st.one_of(
        st.tuples(st.just(Kind.WORKSPACE_UPDATE), update_payload),
        st.tuples(
            st.just(Kind.STATUS_CHANGE),
            st.sampled_from([100, 310, 400, 600]).map(lambda k: {"to_status_key": k}),
        ),
    ),
)


class Model:
    """What Kantata would hold after each request, as the planner assumes it behaves."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.custom: dict[int, str] = {}
        self.templates: list[int] = []
        self.references: dict[str, dict[str, str]] = {}
        self.statuses: list[tuple[int, Any]] = []

    def put(self, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if name == "custom_fields":
                for item in value:
                    self.custom[item["custom_field_id"]] = item["value"]
            elif name in ("invoice_preference", "external_link"):
                self.fields[name] = {**self.fields.get(name, {}), **value}
            elif name == "project_tracker_template_id":
                self.templates.append(value)  # an action: applied once per request
            elif name == "external_reference":
                self.references[value["service_name"]] = value
            else:
                self.fields[name] = value

    def status(self, key: int) -> None:
        self.statuses.append((key, self.snapshot_without_statuses()))

    def snapshot_without_statuses(self) -> Any:
        return copy.deepcopy((self.fields, self.custom, self.templates, self.references))

    def snapshot(self) -> Any:
        return (self.snapshot_without_statuses(), list(self.statuses))


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(change_spec, max_size=25),
    order=st.randoms(use_true_random=False),
)
def test_plan_is_equivalent_to_one_by_one(specs: list[Any], order: Any) -> None:
    changes = [
        Change(i + 1, ws, kind, payload, attempts=0, lease_token=1)
        for i, (ws, (kind, payload)) in enumerate(specs)
    ]
    shuffled = list(changes)
    order.shuffle(shuffled)

    expected = {ws: Model() for ws in WORKSPACES}
    for change in changes:
        if change.kind is Kind.STATUS_CHANGE:
            expected[change.workspace_id].status(change.payload["to_status_key"])
        else:
            expected[change.workspace_id].put(change.payload)

    plans = plan(shuffled)
    actual = {ws: Model() for ws in WORKSPACES}
    for workspace in plans:
        previous: PutStep | StatusStep | None = None
        for step in workspace.steps:
            assert step.workspace_id == workspace.workspace_id
            assert all(c.workspace_id == workspace.workspace_id for c in step.changes)
            if isinstance(step, StatusStep):
                assert step.change.kind is Kind.STATUS_CHANGE
                actual[workspace.workspace_id].status(step.to_status_key)
            else:
                assert all(c.kind is Kind.WORKSPACE_UPDATE for c in step.changes)
                if isinstance(previous, PutStep):
                    # Two PUTs in a row only when merging would change the effect.
                    nxt = step.changes[0].payload
                    ref_a = previous.fields.get("external_reference")
                    ref_b = nxt.get("external_reference")
                    assert (
                        "project_tracker_template_id" in previous.fields
                        and "project_tracker_template_id" in nxt
                    ) or (ref_a and ref_b and ref_a["service_name"] != ref_b["service_name"])
                actual[workspace.workspace_id].put(step.fields)
            previous = step

    for ws in WORKSPACES:
        assert actual[ws].snapshot() == expected[ws].snapshot()

    # Every change appears exactly once, in ascending ID order per workspace.
    for workspace in plans:
        ids = [cid for step in workspace.steps for cid in step.change_ids]
        assert ids == sorted(c.id for c in changes if c.workspace_id == workspace.workspace_id)
    assert sorted(cid for p in plans for s in p.steps for cid in s.change_ids) == [
        c.id for c in changes
    ]
    assert len({p.workspace_id for p in plans}) == len(plans)


# --------------------------------------------------------------------------- one status change

SPLITS = [
    pytest.param([upd(1, title="a")], [("put", (1,))], [], id="no-status"),
    pytest.param([st_(1)], [("status", (1,))], [], id="one-status"),
    pytest.param(
        [upd(1, title="a"), st_(2), upd(3, title="b")],
        [("put", (1,)), ("status", (2,)), ("put", (3,))],
        [],
        id="updates-around-one-status-stay",
    ),
    pytest.param(
        [st_(1, key=310), st_(2, key=100)],
        [("status", (1,))],
        [("status", (2,))],
        id="second-status-waits",
    ),
    pytest.param(
        [upd(1, title="a"), st_(2, key=310), upd(3, title="b"), st_(4, key=100), upd(5, title="c")],
        [("put", (1,)), ("status", (2,)), ("put", (3,))],
        [("status", (4,)), ("put", (5,))],
        id="the-rest-waits-whole",
    ),
    pytest.param(
        [st_(1, key=310), upd(2, status_key=100)],
        [("status", (1,))],
        [("put", (2,))],
        id="a-put-carrying-a-status-counts",
    ),
    pytest.param(
        [upd(1, status_key=310), upd(2, title="x"), st_(3, key=100)],
        [("put", (1, 2))],
        [("status", (3,))],
        id="merged-put-with-status-then-status",
    ),
]


@pytest.mark.parametrize(("changes", "now", "later"), SPLITS)
def test_a_plan_runs_at_most_one_status_change(
    changes: list[Change], now: list[Any], later: list[Any]
) -> None:
    [workspace_plan] = plan(changes)
    head, rest = one_status_change(workspace_plan)
    assert shape([head]) == [(1, now)]
    assert [("put" if isinstance(s, PutStep) else "status", s.change_ids) for s in rest] == later
    assert head.steps + rest == workspace_plan.steps
    assert sum(step.sets_status for step in head.steps) <= 1
