"""Run the sandbox in-process on a free local port, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from .app import API_PREFIX, SANDBOX_KEY, Sandbox, create_app
from .config import FaultConfig, SandboxConfig
from .faults import FaultInjector
from .state import SandboxState

SHUTDOWN_TIMEOUT = 0.5
"""Seconds a stopping sandbox waits for hanging handlers before cancelling them."""


@dataclass(frozen=True, slots=True)
class SandboxHandle:
    """A running sandbox: where it listens and its live in-process objects."""

    url: str
    origin: str
    sandbox: Sandbox

    @property
    def state(self) -> SandboxState:
        """The live account, statistics included."""
        return self.sandbox.state

    @property
    def config(self) -> SandboxConfig:
        """The configuration it was started with."""
        return self.sandbox.config

    @property
    def faults(self) -> FaultInjector:
        """The live fault injector."""
        return self.sandbox.faults

    def set_faults(self, config: FaultConfig) -> None:
        """Replace the fault configuration, as ``POST /__sandbox__/faults`` does."""
        self.sandbox.faults.replace(config)


@asynccontextmanager
async def running_sandbox(config: SandboxConfig | None = None) -> AsyncIterator[SandboxHandle]:
    """Serve a sandbox on 127.0.0.1 on a free port for the duration of the block."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        origin = f"http://127.0.0.1:{port}"
        yield SandboxHandle(f"{origin}{API_PREFIX}", origin, app[SANDBOX_KEY])
    finally:
        await runner.cleanup()
