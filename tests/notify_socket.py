"""A stand-in for systemd's notify socket, shared by the daemon's tests."""

from __future__ import annotations

import socket
import threading


class NotifySocket:
    """A bound unix datagram socket read by a thread, as systemd reads its notify socket.

    The kernel queues only a few datagrams (net.unix.max_dgram_qlen, often 10) before the
    sender gets EAGAIN, so the socket must be drained all the time.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append(data.decode())

    def poll(self) -> list[str]:
        """Every message received so far."""
        with self._lock:
            return list(self.messages)

    def take(self) -> list[str]:
        """The messages received since the last call."""
        with self._lock:
            taken, self.messages = self.messages, []
        return taken

    def seen(self, prefix: str) -> bool:
        return any(text.startswith(prefix) for text in self.poll())

    def index(self, prefix: str) -> int:
        return next(i for i, text in enumerate(self.poll()) if text.startswith(prefix))

    def close(self) -> None:
        self._closed.set()
        self._reader.join()
        self.sock.close()
