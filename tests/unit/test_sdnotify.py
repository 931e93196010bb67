"""sd_notify over a real unix datagram socket: paths, abstract names, failures, watchdog."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from worker.exceptions import ConfigError
from worker.sdnotify import Notifier, status_field, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short directory (AF_UNIX paths max out near 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ks-") as directory:
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield sock, path
        finally:
            sock.close()


def test_without_a_socket_every_call_is_a_no_op() -> None:
    for address in (None, ""):
        notifier = Notifier(address)
        assert not notifier.enabled
        assert notifier.ready("idle") is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
        notifier.close()


def test_messages_arrive_as_one_datagram_each(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.ready("idle; 0 pending")
    assert notifier.watchdog()
    assert notifier.status("syncing;\n3 pending")
    assert notifier.stopping("stopping; draining")
    notifier.close()
    assert [sock.recv(4096).decode() for _ in range(4)] == [
        "READY=1\nSTATUS=idle; 0 pending",
        "WATCHDOG=1",
        "STATUS=syncing; 3 pending",
        "STOPPING=1\nSTATUS=stopping; draining",
    ]


def test_an_abstract_socket_name_starts_with_an_at_sign() -> None:
    name = f"kantata-sync-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        notifier = Notifier("@" + name)
        assert notifier.watchdog()
        notifier.close()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_a_vanished_socket_is_logged_once_and_never_raises(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier(path)
    sock.close()
    os.unlink(path)
    with capture_logs() as logs:
        assert notifier.watchdog() is False
        assert notifier.status("still here") is False
    notifier.close()
    assert [entry["event"] for entry in logs] == ["sdnotify.failed"]
    assert logs[0]["socket"] == path


@pytest.mark.parametrize("bad", ["READY", "STATUS=a\nREADY=1"])
def test_a_malformed_field_is_a_programming_error(
    listener: tuple[socket.socket, str], bad: str
) -> None:
    notifier = Notifier(listener[1])
    with pytest.raises(ValueError, match="KEY=value"):
        notifier.notify(bad)
    notifier.close()


def test_a_relative_socket_path_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_SOCKET"):
        Notifier("run/notify")


def test_status_field_keeps_one_line() -> None:
    assert status_field("a\nb\r\n  c") == "STATUS=a b c"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("500000", None, 0.25),
        ("30000000", None, 15.0),
        ("500000", "4242", 0.25),
        ("500000", "4243", None),
        ("0", None, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    usec: str | None, pid: str | None, expected: float | None
) -> None:
    assert watchdog_interval(usec, pid, own_pid=4242) == expected


@pytest.mark.parametrize(("usec", "pid"), [("soon", None), ("500000", "me")])
def test_watchdog_variables_that_are_not_numbers_are_configuration_errors(
    usec: str, pid: str | None
) -> None:
    with pytest.raises(ConfigError, match="WATCHDOG_"):
        watchdog_interval(usec, pid, own_pid=1)
