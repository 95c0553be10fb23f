"""The README's example test of a processor, run as it is written there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- tests/test_readme_example.py runs this block -->"


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(re.escape(MARK) + r"\n```python\n(.*?)```", text, re.S)
    assert found, f"README.md has no python block after {MARK}"
    return found.group(1)


def test_the_readme_example_runs_and_passes():
    source = readme_example()
    assert len(source.strip().splitlines()) <= 30
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()
