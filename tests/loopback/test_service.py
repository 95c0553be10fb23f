"""The service in a fresh interpreter: importing mm7tx installs no reactor (in
memory: tests/app/test_service.py)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_mm7tx_leaves_the_reactor_to_the_application() -> None:
    """``twisted.mail.smtp`` installs the default reactor as it is imported;
    mm7tx imports it only when a relay needs the ESMTP sender, so an
    application can still install the reactor it wants after importing us."""
    code = (
        "import sys\n"
        "import mm7tx.cli, mm7tx.config, mm7tx.service, mm7tx.tap\n"
        "from twisted.internet import asyncioreactor\n"
        "asyncioreactor.install()\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "AsyncioSelectorReactor"
