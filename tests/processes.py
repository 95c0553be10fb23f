"""For the few end-to-end tests that run real processes on loopback: a free
port, and waiting (in real time: another process has no Clock) until the
process listens, or until anything else it does shows."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[Any], timeout: float = 30
) -> bool:
    """Whether ``process`` listens on ``port`` within ``timeout`` seconds
    (False at once if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def wait_until(condition: Callable[[], object], timeout: float = 10) -> bool:
    """Whether ``condition()`` comes true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
