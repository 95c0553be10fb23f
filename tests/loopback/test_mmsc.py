"""The ``mm7tx hash-password`` command, run for real (the MMSC side in memory:
tests/http/test_mmsc.py)."""

from __future__ import annotations

from mm7tx.gateway.processors import EmailProcessor
from mm7tx.http.auth import (
    Account,
    password_matches,
    portal_for,
)
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.testing import FakeMailSender
from tests.http.test_mmsc import RULES, ThreadedReactor, submit


def test_hash_password_command_makes_a_hash_the_config_accepts():
    import subprocess
    import sys
    from pathlib import Path

    mm7tx = str(Path(sys.executable).parent / "mm7tx")
    out = subprocess.run(
        [mm7tx, "hash-password"],
        input="s3cret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    stored = out.stdout.strip()
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert password_matches(stored, "s3cret")
    resource = MM7Resource(
        EmailProcessor(FakeMailSender(), RULES),
        "/mm7/",
        "mmsc",
        portal=portal_for((Account("v", stored),), ThreadedReactor()),  # type: ignore[arg-type]
    )
    _, env = submit(build_root({"/mm7/": resource}), "/mm7/v=s3cret")
    assert env.message.status.code == 1000  # type: ignore[union-attr]
