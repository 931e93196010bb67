"""The worker's payload validation knows exactly the fields Kantata's API description documents."""

from __future__ import annotations

from worker.validation import WorkspaceFields

from ..kantata_api import workspace_request_fields


def test_workspace_fields_match_the_documented_put_workspace_body() -> None:
    documented = workspace_request_fields()
    known = {field.alias or name for name, field in WorkspaceFields.model_fields.items()}
    assert documented, "the spec documents no workspace request fields"
    assert not documented - known, f"documented but unknown to the worker: {documented - known}"
    assert not known - documented, f"known to the worker but undocumented: {known - documented}"
