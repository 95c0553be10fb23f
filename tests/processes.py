"""For the few end-to-end tests that run real processes on loopback: a free
port, and waiting (in real time: another process has no Clock) until the
process listens, or until anything else it does shows."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import samples

# The twistd of this interpreter's environment.
TWISTD = str(Path(sys.executable).parent / "twistd")


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


def wait_until(
    condition: Callable[[], object], timeout: float = 10, interval: float = 0.05
) -> bool:
    """Whether ``condition()`` comes true within ``timeout`` seconds, asked
    every ``interval`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def post_sample(
    port: int,
    path: str,
    sample: str = "instantcom-mm7/deliver-req2.txt",
    timeout: float = 10,
) -> bytes:
    """POST a reference sample to ``path`` on ``port`` of 127.0.0.1; the
    answer's body."""
    ctype, body = samples.body_sample(sample)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": ctype}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return bytes(answer.read())
