"""A Kantata stand-in that is never the bottleneck: a raw asyncio HTTP/1.1 server (uvloop).

It answers ``PUT /api/v1/workspaces/{id}`` and ``POST /api/v1/workspace_status_changes`` with
200 and a small body in Kantata's envelope (``results`` pointing into ``workspaces``, with the
workspace's ``status`` and ``updated_at``: what the worker reads from a success), after an
optional fixed delay. It validates nothing and keeps no state beyond a request counter:
``GET /__fast__/stats`` answers ``{"total": N}`` and ``POST /__fast__/reset_stats`` zeroes it.
Anything else gets 404. Keep-alive, ``Content-Length`` bodies only (what aiohttp sends).

Run as ``python tests/bench/fastserver.py [--port 0] [--delay-ms 0]``; it prints
``fast server listening on http://127.0.0.1:PORT/api/v1`` once it listens. The benches start
it through :func:`fast_server`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import Served, serving  # this directory is on the path run alone too

PREFIX = b"/api/v1/"
UPDATED_AT = "2026-12-07T00:00:00.000000+00:00"


def _envelope(key: str, ident: str, obj: dict[str, Any], workspace_id: str) -> bytes:
    workspace = {
        "id": workspace_id,
        "status": {"color": "green", "key": "310", "message": "Active"},
        "updated_at": UPDATED_AT,
    }
    body: dict[str, Any] = {"count": 1, "results": [{"key": key, "id": ident}]}
    if key != "workspaces":
        body[key] = {ident: obj}
    body["workspaces"] = {workspace_id: workspace}
    body["meta"] = {"count": 1, "page_count": 1, "page_number": 1, "page_size": 20}
    return json.dumps(body, separators=(",", ":")).encode()


def _response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_STATUS_CHANGE = _response(
    b"200 OK",
    _envelope(
        "workspace_status_changes",
        "1",
        {"id": "1", "from_status_key": "100", "to_status_key": "310", "workspace_id": "1"},
        "1",
    ),
)
_NOT_FOUND = _response(b"404 Not Found", b'{"errors":[{"type":"not_found","message":"no"}]}')
_OK = _response(b"200 OK", b"{}")


def _update(workspace_id: bytes) -> bytes:
    ident = workspace_id.decode("ascii", "replace")
    return _response(b"200 OK", _envelope("workspaces", ident, {}, ident))


class Server:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.total = 0

    def answer(self, method: bytes, target: bytes) -> bytes:
        path = target.split(b"?", 1)[0]
        if path.startswith(PREFIX):
            rest = path[len(PREFIX) :]
            if method == b"PUT" and rest.startswith(b"workspaces/"):
                self.total += 1
                return _update(rest[len(b"workspaces/") :])
            if method == b"POST" and rest == b"workspace_status_changes":
                self.total += 1
                return _STATUS_CHANGE
        if path == b"/__fast__/stats":
            return _response(b"200 OK", json.dumps({"total": self.total}).encode())
        if path == b"/__fast__/reset_stats":
            self.total = 0
            return _OK
        return _NOT_FOUND


class Connection(asyncio.Protocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            method, target, _ = lines[0].split(b" ", 2)
            reply = self.server.answer(method, target)
            if self.server.delay:
                asyncio.get_running_loop().call_later(self.server.delay, self._send, reply)
            else:
                self._send(reply)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, delay: float) -> None:
    server = Server(delay)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Connection(server), "127.0.0.1", port, backlog=512)
    bound = listener.sockets[0].getsockname()[1]
    print(f"fast server listening on http://127.0.0.1:{bound}/api/v1", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fixed delay per answer")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(serve(args.port, args.delay_ms / 1000))


# --- for the benches ---------------------------------------------------------------------------


@dataclass
class FastServer(Served):
    """A running fast server subprocess."""

    def total(self) -> int:
        return int(self._call("GET", "/__fast__/stats")["total"])

    def reset_stats(self) -> None:
        self._call("POST", "/__fast__/reset_stats")

    def cpu_seconds(self) -> float:
        from processes import proc_cpu_seconds

        return proc_cpu_seconds(self.process.pid)


@contextlib.contextmanager
def fast_server(delay_ms: float = 0.0) -> Iterator[FastServer]:
    """Start the fast server in its own process (the bench's interpreter) and stop it after."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--delay-ms", f"{delay_ms:g}"]
    with serving(argv, "fast server") as (url, process):
        yield FastServer(url, url.removesuffix("/api/v1"), process)


if __name__ == "__main__":
    main()
