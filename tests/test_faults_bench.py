"""bench/faults.py, shortened: real processes, real faults, nothing lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_fault_injection_loses_no_message():
    out = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--seconds", "22", "--concurrency", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "1000 with no email (LOST):        0" in lines
    assert "1000 with more than one email:    0" in lines
    assert "failures that were not transient: 0" in lines
    assert lines[-1] == "RESULT: no message lost"
    confirmed = next(line for line in lines if line.startswith("  answered 1000"))
    assert int(confirmed.split()[-1]) > 50
