"""The last-moment lease check: a guarded request asks as its bytes are written, and a refusal
sends nothing at all, not even the headers (a real server on a real socket counts the bytes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from worker.client import KantataClient
from worker.exceptions import LeaseLost

BODY = b'{"count":1,"results":[{"key":"workspaces","id":"7"}],"workspaces":{"7":{"id":"7"}}}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
    + BODY
)


@dataclass
class CountingServer:
    """Answers every request with one fixed 200; keeps every byte it received."""

    url: str = ""
    received: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                self.received.append(data)
                writer.close()
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await reader.read(65536)
        self.received.append(head + b"\r\n\r\n" + body)
        writer.write(ANSWER)
        await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[CountingServer]:
    counting = CountingServer()
    listener = await asyncio.start_server(counting.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    counting.url = f"http://127.0.0.1:{port}/api/v1"
    async with listener:
        yield counting


async def test_a_guard_that_allows_sends_the_request(server: CountingServer) -> None:
    asked: list[int] = []

    def guard() -> str | None:
        asked.append(1)
        return None

    async with KantataClient(server.url, "tok-guard", timeout=10) as client:
        answer = await client.update_workspace(7, {"title": "x"}, guard=guard)
    assert answer.status == 200
    assert asked == [1]
    assert len(server.received) == 1 and b'"title":"x"' in server.received[0]


@pytest.mark.parametrize("call", ["update_workspace", "change_status"])
async def test_a_refusing_guard_sends_not_a_byte(server: CountingServer, call: str) -> None:
    def guard() -> str:
        return "PUT /workspaces/{id} not sent: the lease of change(s) 4 ran out"

    async with KantataClient(server.url, "tok-guard", timeout=10) as client:
        with pytest.raises(LeaseLost, match="lease of change"):
            if call == "update_workspace":
                await client.update_workspace(7, {"title": "stale"}, guard=guard)
            else:
                await client.change_status(7, 300, guard=guard)
        for _ in range(50):  # the server sees the connection close
            if server.received:
                break
            await asyncio.sleep(0.01)
        # The connection was opened and closed: no request line, no header, no body.
        assert server.received == [b""]
        # And the client is fine for the next request.
        answer = await client.update_workspace(7, {"title": "fresh"}, guard=lambda: None)
    assert answer.status == 200


async def test_the_guard_is_asked_when_the_bytes_go_out_not_when_the_call_starts(
    server: CountingServer,
) -> None:
    """The request is started, then the loop runs other work before the body task writes:
    a lease that runs out in that gap is caught."""
    allowed = True

    async def run_out() -> None:
        nonlocal allowed
        allowed = False

    def guard() -> str | None:
        return None if allowed else "ran out between the start and the write"

    async with KantataClient(server.url, "tok-guard", timeout=10) as client:
        request = asyncio.ensure_future(client.update_workspace(7, {"title": "y"}, guard=guard))
        await asyncio.sleep(0)  # the request starts: the connection is being opened
        await run_out()
        with pytest.raises(LeaseLost, match="ran out between"):
            await request
    assert all(b"title" not in got for got in server.received)
