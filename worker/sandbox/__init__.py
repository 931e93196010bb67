"""A faithful local stand-in for the Kantata OX API, for the demo, tests and benchmarks."""

from __future__ import annotations

from .app import create_app
from .config import ApplyThenFailMode, FaultConfig, SandboxConfig
from .ratelimit import RateSchedule
from .testing import SandboxHandle, running_sandbox

__all__ = [
    "ApplyThenFailMode",
    "FaultConfig",
    "RateSchedule",
    "SandboxConfig",
    "SandboxHandle",
    "create_app",
    "running_sandbox",
]
