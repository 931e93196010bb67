"""systemd's notify protocol (sd_notify) with the standard library, no libsystemd.

A ``Type=notify`` service tells systemd it is ready (``READY=1``), alive (``WATCHDOG=1``),
what it is doing (``STATUS=...``) and that it is shutting down (``STOPPING=1``) by sending
datagrams to the unix socket named in ``$NOTIFY_SOCKET``. The CLI reads that variable and
``$WATCHDOG_USEC``/``$WATCHDOG_PID`` and passes them in; nothing here reads the environment.
Without a socket every call is a no-op, so the same code runs under systemd, in a terminal and
in tests (which bind their own datagram socket and read what arrives).
"""

from __future__ import annotations

import socket

from .exceptions import ConfigError
from .logging import get_logger


class Notifier:
    """Sends sd_notify messages to one socket; never raises once constructed.

    ``address`` is the value of ``$NOTIFY_SOCKET``: a filesystem path, or an abstract socket
    name starting with ``@``. None or empty turns every call into a no-op.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._target: str | bytes | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if self.address is None:
            return
        if self.address.startswith("@"):
            self._target = b"\0" + self.address[1:].encode()
        elif self.address.startswith("/"):
            self._target = self.address
        else:
            raise ConfigError(
                f"NOTIFY_SOCKET: {self.address!r} is neither an absolute path nor an "
                "abstract socket name (@...)"
            )
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=value`` fields in one datagram; True if it was sent.

        A full or vanished socket is logged once and otherwise ignored: a lost notification
        must not take the service down (a lost watchdog ping is what the watchdog is for).
        """
        if self._sock is None or self._target is None or not fields:
            return False
        for item in fields:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a KEY=value notification field: {item!r}")
        message = "\n".join(fields)
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self._target)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                get_logger().warning(
                    "sdnotify.failed", socket=self.address, error=exc.strerror or str(exc)
                )
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", status_field(status))

    def status(self, status: str) -> bool:
        return self.notify(status_field(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", status_field(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def status_field(text: str) -> str:
    """A ``STATUS=`` field; newlines would start a new field, so they become spaces."""
    return "STATUS=" + " ".join(text.split())


def watchdog_interval(
    watchdog_usec: str | None, watchdog_pid: str | None, own_pid: int
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout, as systemd advises), or None.

    Mirrors ``sd_watchdog_enabled()``: no watchdog unless ``$WATCHDOG_USEC`` is a positive
    integer, and none if ``$WATCHDOG_PID`` names another process.
    """
    if not watchdog_usec:
        return None
    if watchdog_pid:
        try:
            if int(watchdog_pid) != own_pid:
                return None
        except ValueError:
            raise ConfigError(f"WATCHDOG_PID: {watchdog_pid!r} is not a process ID") from None
    try:
        usec = int(watchdog_usec)
    except ValueError:
        raise ConfigError(f"WATCHDOG_USEC: {watchdog_usec!r} is not an integer") from None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
