"""The README's processor examples, run as they are written there.

Every ``python`` block from "Writing a processor" to "Co-hosting" follows a
mark: ``runs this block`` (executed; its ``test_`` functions are run as
pytest would, with their ``parametrize`` marks and a ``tmp_path``), or
``this block is FILE`` (a module that ships, whose text holds the block as
it is; other tests use the module).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNS = "<!-- tests/system/test_readme_example.py runs this block -->"
SHIPPED = re.compile(
    r"<!-- tests/system/test_readme_example.py: this block is (\S+) -->"
)
FIRST, END = "## Writing a processor\n", "## Co-hosting\n"


def processor_sections() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(FIRST) : text.index(END)]


def blocks() -> list[tuple[str, str]]:
    """Each python block of the processor sections: (the line before, code)."""
    found = re.findall(
        r"([^\n]*)\n```python\n(.*?)```", processor_sections(), flags=re.S
    )
    assert found, "README.md has no python block in its processor sections"
    return found


def run_blocks() -> list[str]:
    return [code for mark, code in blocks() if mark == RUNS]


def test_every_processor_example_is_run_or_ships() -> None:
    for mark, code in blocks():
        assert mark == RUNS or SHIPPED.fullmatch(mark), (
            f"README block without a mark of tests/system/test_readme_example.py:\n{code}"
        )
    assert len(run_blocks()) >= 4


def calls(test: Callable[..., Any]) -> list[dict[str, Any]]:
    """The arguments pytest would call ``test`` with: one dict per
    combination of its ``parametrize`` marks."""
    combinations: list[dict[str, Any]] = [{}]
    for mark in getattr(test, "pytestmark", []):
        assert mark.name == "parametrize", f"unexpected mark {mark.name}"
        names, values = mark.args
        names = (
            [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        )
        rows = [v if len(names) > 1 else (v,) for v in values]
        combinations = [
            {**combination, **dict(zip(names, row, strict=True))}
            for combination in combinations
            for row in rows
        ]
    return combinations


@pytest.mark.parametrize("index", range(len(run_blocks())))
def test_a_readme_example_runs_and_its_tests_pass(
    index: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = run_blocks()[index]
    assert len(source.strip().splitlines()) <= 60
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(source, str(README), "exec"), namespace)
    for name, test in namespace.items():
        if not name.startswith("test_"):
            continue
        for arguments in calls(test):
            if "tmp_path" in inspect.signature(test).parameters:
                arguments["tmp_path"] = tmp_path_factory.mktemp(name)
            test(**arguments)


def test_a_shipped_example_is_the_readme_block_as_written() -> None:
    shipped = [
        (found.group(1), code)
        for mark, code in blocks()
        if (found := SHIPPED.fullmatch(mark))
    ]
    assert shipped
    for module, code in shipped:
        assert code in (ROOT / module).read_text(encoding="utf-8")


def test_the_runner_runs_every_parametrized_case() -> None:
    seen: list[tuple[int, str]] = []

    @pytest.mark.parametrize("reply, status", [(550, "a"), (451, "b")])
    @pytest.mark.parametrize("n", [1])
    def test(n: int, reply: int, status: str) -> None:
        seen.append((reply, status))

    for arguments in calls(test):
        test(**arguments)
    assert seen == [(550, "a"), (451, "b")]


def test_the_hooks_are_listed_with_their_real_signatures() -> None:
    from mm7tx import interfaces
    from mm7tx.gateway.processors import EmailProcessor

    text = processor_sections()
    methods: dict[str, Any] = {
        name: getattr(EmailProcessor, name)
        for name in (
            "sender_address",
            "recipient_address",
            "deliver_message",
            "submit_message",
            "delivery_report_message",
            "read_reply_message",
        )
    }
    for interface in (
        interfaces.IDeliverProcessor,
        interfaces.IDeliveryReportProcessor,
        interfaces.IReadReplyProcessor,
        interfaces.ISubmitProcessor,
        interfaces.ICancelProcessor,
        interfaces.IReplaceProcessor,
    ):
        [name] = list(interface)
        methods[name] = interface[name]
        assert f"| `{interface.__name__}` | `{name}(" in text
    for name, method in methods.items():
        if hasattr(method, "getSignatureInfo"):  # a zope.interface method
            info = method.getSignatureInfo()
            parameters = list(info["positional"])
        else:
            parameters = list(inspect.signature(method).parameters)[1:]
            annotations = inspect.get_annotations(method)
        written = re.search(rf"`{name}\(([^)]*)\) -> ([^`]*)`", text)
        assert written, f"README lists no signature for {name}"
        assert [p.split(":")[0] for p in written.group(1).split(", ")] == parameters
        if not hasattr(method, "getSignatureInfo"):
            assert written.group(2) == annotations["return"]
            for parameter in written.group(1).split(", "):
                key, annotation = parameter.split(": ")
                assert annotations[key] == annotation
