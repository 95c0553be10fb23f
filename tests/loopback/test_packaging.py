"""The shipped configuration started by the real ``twistd`` from outside the
checkout (the rest of what ``pip install`` gives:
tests/system/test_packaging.py)."""

from __future__ import annotations

import signal
import subprocess

import mm7tx
from tests.processes import TWISTD, free_port, wait_for_port
from tests.system.test_packaging import ROOT


def test_the_shipped_config_starts_from_outside_the_checkout(tmp_path):
    """etc/mm7tx.conf binds mm7tx.examples.shortcode: the installed package has it."""
    conf = ROOT / "etc" / "mm7tx.conf"
    port = free_port()
    listen = f"tcp:{port}:interface=127.0.0.1"
    process = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "mm7", "--config", str(conf), "--listen", listen],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process)  # the log says what went wrong if not
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=30)
    assert (
        f"mm7tx {mm7tx.__version__} on {conf}: listening on {listen}, VASP paths" in log
    ), log
    assert "/photo_contest/" in log
    assert "Traceback" not in log, log
