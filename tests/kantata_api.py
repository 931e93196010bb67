"""Kantata's API description, kept in the repository at docs/kantata-api/, for the tests."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "kantata-api" / "openapi-subset.yml"


@functools.cache
def spec() -> dict[str, Any]:
    """The parsed OpenAPI document (cached: do not mutate it)."""
    assert SPEC.is_file(), f"the Kantata API reference is missing: {SPEC}"
    data: dict[str, Any] = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return data


def workspace_request_fields() -> set[str]:
    """The fields documented for the ``workspace`` object of the PUT /workspaces/{id} body."""
    body = spec()["paths"]["/workspaces/{id}"]["put"]["requestBody"]["content"]
    workspace = body["application/json"]["schema"]["properties"]["workspace"]
    return set(workspace["properties"])
