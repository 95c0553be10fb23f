"""bench/faults.py, shortened: real processes, real faults, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("pipelining", [True, False])
def test_fault_injection_loses_no_message(pipelining):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.faults",
            "--seconds",
            "22",
            "--concurrency",
            "3",
            *([] if pipelining else ["--no-pipelining"]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    offered = "yes" if pipelining else "no"
    assert f"SMTP server offers PIPELINING: {offered}" in lines
    assert "1000 with no email (LOST):        0" in lines
    assert "1000 with more than one email:    0" in lines
    assert "failures that were not transient: 0" in lines
    assert lines[-1] == "RESULT: no message lost"
    confirmed = next(line for line in lines if line.startswith("  answered 1000"))
    assert int(confirmed.split()[-1]) > 50
