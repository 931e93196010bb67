"""A deliberately odd Kantata OX: a real aiohttp server that answers each request as told.

Each scenario is one way an upstream can misbehave: JSON nested past any parser, numbers that
overflow, bodies far over any sane size (streamed, never built in memory), a gzip bomb, error
messages megabytes long, an echo of the ``Authorization`` header, odd ``Retry-After`` values.
The server records what it saw and how much of each answer it got out before the client left.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

MIB = 1024 * 1024
CHUNK = 64 * 1024
_FILLER = b"a" * CHUNK

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Sent:
    """How far one streamed answer got."""

    bytes: int = 0
    """Bytes handed to the socket (compressed ones, for the gzip bomb)."""
    finished: bool = False
    """The whole body went out: the client read (or buffered) every byte."""


@dataclass
class HostileServer:
    url: str = ""
    answer: Answer | None = None
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path, dict(request.headers)))
        await request.read()
        if self.answer is None:
            return web.json_response({"count": 0, "results": []})
        return await self.answer(request)

    # ------------------------------------------------------------------ scenarios

    def reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> HostileServer:
        """One fixed answer."""

        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(
                status=status,
                body=body,
                headers={"Content-Type": "application/json", **(headers or {})},
            )

        self.answer = answer
        return self

    def echo_authorization(self, status: int) -> HostileServer:
        """Kantata's error envelope quoting the request's Authorization header, everywhere."""

        async def answer(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ")
            escaped = token.replace("/", "\\/")
            message = f"bad header Authorization: {auth}; as JSON would escape it: {escaped}"
            body = (
                b'{"errors": [{"type": "oauth", "message": "'
                + message.encode()
                + b'", "field": "'
                + token.encode()
                + b'"}], "echo": {"'
                + token.encode()
                + b'": "'
                + "".join(f"\\u{ord(c):04x}" for c in token).encode()
                + b'"}}'
            )
            return web.Response(
                status=status,
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Request-Id": f"req-{token}",
                    "X-Echo-Authorization": auth,
                },
            )

        self.answer = answer
        return self

    def stream(
        self,
        total: int,
        *,
        declare_length: bool = False,
        status: int = 200,
    ) -> HostileServer:
        """A JSON string ``total`` bytes long, sent in chunks; optionally with Content-Length."""

        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                status=status, headers={"Content-Type": "application/json"}
            )
            if declare_length:
                response.content_length = total
            sent = Sent()
            self.sent.append(sent)
            await response.prepare(request)
            try:
                await response.write(b'{"x": "')
                sent.bytes += 7
                while sent.bytes + CHUNK <= total - 2:
                    await response.write(_FILLER)
                    sent.bytes += CHUNK
                tail = b"a" * (total - 2 - sent.bytes) + b'"}'
                await response.write(tail)
                sent.bytes += len(tail)
                await response.write_eof()
                sent.finished = True
            except (ConnectionError, RuntimeError):
                pass  # the client hung up, as it should
            return response

        self.answer = answer
        return self

    def gzip_bomb(self, inflated: int, *, declare_length: bool = False) -> HostileServer:
        """``Content-Encoding: gzip``: a few KB per inflated MiB of zeros, ``inflated`` in all.

        Built block by block with zlib: a full flush after each MiB resets the compressor, so
        every MiB after the first compresses to the same bytes and nothing big is ever built.
        """
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        zeros = bytes(MIB)
        block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
        final = compressor.flush(zlib.Z_FINISH)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        blocks = inflated // MIB
        length = len(header) + blocks * len(block) + len(final) + 8

        async def answer(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(
                status=200,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
            if declare_length:
                response.content_length = length
            sent = Sent()
            self.sent.append(sent)
            await response.prepare(request)
            try:
                await response.write(header)
                for _ in range(blocks):
                    await response.write(block)
                    sent.bytes += len(block)
                crc = 0
                for _ in range(blocks):
                    crc = zlib.crc32(zeros, crc)
                trailer = struct.pack("<II", crc, (blocks * MIB) & 0xFFFFFFFF)
                await response.write(final + trailer)
                await response.write_eof()
                sent.finished = True
            except (ConnectionError, RuntimeError):
                pass
            return response

        self.answer = answer
        return self


@asynccontextmanager
async def hostile_server() -> AsyncIterator[HostileServer]:
    """Serve on 127.0.0.1, port 0, for the duration of the block."""
    server = HostileServer()
    app = web.Application(client_max_size=MIB)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/api/v1"
    try:
        yield server
    finally:
        await runner.cleanup()
