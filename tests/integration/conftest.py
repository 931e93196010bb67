"""Fixtures that run the Kantata OX sandbox in-process on a real socket."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from worker.sandbox import SandboxConfig, running_sandbox
from worker.sandbox.testing import SandboxHandle

SandboxFactory = Callable[..., AbstractAsyncContextManager[SandboxHandle]]


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxHandle]:
    """A running default sandbox with the inspection routes on."""
    async with running_sandbox(SandboxConfig(inspect=True)) as handle:
        yield handle


@pytest.fixture
def sandbox_factory() -> SandboxFactory:
    """``async with sandbox_factory(config_or_none, **overrides) as handle``.

    Without a config the overrides apply to a default config with inspection on.
    """

    def factory(
        config: SandboxConfig | None = None, **overrides: Any
    ) -> AbstractAsyncContextManager[SandboxHandle]:
        base = config if config is not None else SandboxConfig(inspect=True)
        return running_sandbox(dataclasses.replace(base, **overrides) if overrides else base)

    return factory
