"""The /metrics, /healthz, /readyz listener when the kernel lets it bind nothing."""

from __future__ import annotations

import errno
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from worker.exceptions import ConfigError
from worker.health import DatabaseProbe, HealthState, HttpListener
from worker.metrics import Metrics

REAL_SOCKET = socket.socket


class _NoInternet(REAL_SOCKET):
    """``socket.socket`` as under systemd's ``RestrictAddressFamilies=AF_UNIX``."""

    def __init__(self, family: Any = -1, *args: Any, **kwargs: Any) -> None:
        if family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


@pytest.fixture
async def probe(tmp_path: Any) -> AsyncIterator[DatabaseProbe]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        yield DatabaseProbe(engine)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
async def test_a_listener_that_binds_nothing_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, probe: DatabaseProbe, host: str
) -> None:
    listener = HttpListener(host, 0, Metrics(), HealthState(stale_after=60), probe)
    monkeypatch.setattr(socket, "socket", _NoInternet)
    with pytest.raises(ConfigError) as info:
        await listener.start()
    monkeypatch.undo()
    assert str(info.value).startswith(f"http_host: cannot listen on {host}:0: no socket")
    assert "RestrictAddressFamilies=" in str(info.value)
    assert listener.url == ""
    await listener.stop()  # nothing to stop, and no error either


async def test_a_listener_that_binds_serves(probe: DatabaseProbe) -> None:
    listener = HttpListener("127.0.0.1", 0, Metrics(), HealthState(stale_after=60), probe)
    url = await listener.start()
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
    finally:
        await listener.stop()
