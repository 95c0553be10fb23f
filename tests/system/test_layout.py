"""The layout (README, "Layout"; CONTRIBUTING.md): no import cycle between
modules, no module over 700 lines but the listed ones, the old dotted names
still work; the tests mirror the packages, the loopback mark goes with the
folder tests/loopback/ and no other, and a test without it stays in memory."""

from __future__ import annotations

import ast
import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python.reflect import namedAny

import mm7tx
from tests import conftest

PACKAGE = Path(mm7tx.__file__).parent
TESTS = Path(__file__).resolve().parents[1]
MAX_LINES = 700

# Modules allowed over MAX_LINES (none now): a module that shrinks below the
# limit must leave this list, see the test.
TOO_LONG: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str) -> set[str]:
    """The mm7tx modules ``name`` imports anywhere in its text: at the top,
    in functions, under ``TYPE_CHECKING``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    found.add(f"{base}.{alias.name}")
                elif base in MODULES:
                    found.add(base)
                elif mm7tx.new_home(base) is not None:
                    found.add(base)  # an old name: test_no_module_uses_an_old_name
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles({name: imported(name) for name in MODULES}) == []


def test_no_module_uses_an_old_name() -> None:
    # The old names are for users; inside mm7tx every import names the new home.
    used = {
        name: sorted(other for other in imported(name) if other not in MODULES)
        for name in MODULES
    }
    assert {name: old for name, old in used.items() if old} == {}


def test_no_module_is_over_700_lines_but_the_known_ones() -> None:
    lines = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in MODULES.items()
    }
    assert sorted(n for n, count in lines.items() if count > MAX_LINES) == sorted(
        TOO_LONG
    )


@pytest.mark.parametrize("old", sorted(mm7tx.MOVED))
def test_an_old_module_name_is_the_module_at_its_new_home(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(mm7tx.MOVED[old])


@pytest.mark.parametrize(
    "name",
    [
        # Names that configurations, the README, etc/ and twistd options use.
        "mm7tx.processors.EmailProcessor",
        "mm7tx.examples.shortcode.ShortCodeMailboxes",
        "mm7tx.examples.attachments.SaveAttachments",
        "mm7tx.logs.json",
        "mm7tx.config.load_file",
        "mm7tx.service.build_service",
        "mm7tx.service.IMM7Reactor",
        "mm7tx.interfaces.IDeliverProcessor",
        "mm7tx.transaction.Transaction",
        "mm7tx.testing.MemoryGateway",
        "mm7tx.resource.build_root",
        "mm7tx.cohost.resource",
        "mm7tx.cohost.site_for",
        "mm7tx.client.MM7Client",
        "mm7tx.codec.mime.MAX_NESTING",
        "mm7tx.processors.AddressRules",
        "mm7tx.senders.SMTPSettings",
    ],
)
def test_a_name_users_give_still_resolves(name: str) -> None:
    assert namedAny(name) is not None


def test_a_submodule_by_its_old_name_is_the_one_module() -> None:
    old = importlib.import_module("mm7tx.codec.mime")
    assert old is importlib.import_module("mm7tx.mm7.codec.mime")
    assert old.__spec__ is not None
    assert old.__spec__.name == "mm7tx.mm7.codec.mime"
    assert namedAny("mm7tx.codec").mime is old


def test_a_test_without_the_loopback_mark_gets_no_real_socket_or_process() -> None:
    with socket.socket() as s, pytest.raises(AssertionError, match="loopback"):
        s.bind(("127.0.0.1", 0))
    with pytest.raises(AssertionError, match="loopback"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)


def test_a_test_without_the_loopback_mark_spawns_no_process_on_the_reactor() -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol

    with pytest.raises(AssertionError, match="loopback"):
        reactor.spawnProcess(  # type: ignore[attr-defined]
            ProcessProtocol(), sys.executable, [sys.executable, "-c", "pass"], env={}
        )


def test_the_tests_mirror_the_packages() -> None:
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name[0] != "_"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders - {"loopback", "system"} <= packages
    # Every folder a package (two may each hold a test_smtp.py); the top
    # level holds the shared helpers and conftest.py, no tests.
    assert [f for f in folders if not (TESTS / f / "__init__.py").is_file()] == []
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []


def test_no_test_outside_tests_loopback_carries_the_loopback_mark() -> None:
    marked = [
        str(path.relative_to(TESTS))
        for path in sorted(TESTS.rglob("*.py"))
        if path.name != "conftest.py"
        and path != Path(__file__).resolve()
        and "mark.loopback" in path.read_text(encoding="utf-8")
    ]
    assert marked == []  # the folder marks its tests (tests/conftest.py)


class _Item:
    """What of a collected test ``conftest.pytest_collection_modifyitems``
    reads and writes."""

    def __init__(self, path: Path, *marks: pytest.MarkDecorator) -> None:
        self.path = path
        self.nodeid = str(path.relative_to(TESTS))
        self.marks = [mark.mark for mark in marks]

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.marks.append(marker.mark)

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((mark for mark in self.marks if mark.name == name), None)


def test_every_test_under_tests_loopback_is_marked_loopback_and_no_other() -> None:
    inside = _Item(TESTS / "loopback" / "test_x.py")
    outside = _Item(TESTS / "smtp" / "test_x.py")
    conftest.pytest_collection_modifyitems(None, [inside, outside])  # type: ignore[arg-type, list-item]
    assert inside.get_closest_marker("loopback") is not None
    assert outside.get_closest_marker("loopback") is None
    astray = _Item(TESTS / "smtp" / "test_y.py", pytest.mark.loopback)
    with pytest.raises(pytest.UsageError, match=r"smtp/test_y\.py"):
        conftest.pytest_collection_modifyitems(None, [astray])  # type: ignore[arg-type, list-item]


def test_this_test_outside_tests_loopback_is_not_marked(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("loopback") is None


def test_every_interface_is_defined_in_mm7tx_interfaces():
    import ast
    from pathlib import Path

    root = Path(__file__).parents[2] / "mm7tx"
    elsewhere = []
    for path in root.rglob("*.py"):
        if path.name == "interfaces.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                (
                    isinstance(base, ast.Name)
                    and base.id in ("Interface", "ICredentials")
                )
                or (isinstance(base, ast.Attribute) and base.attr == "ICredentials")
                for base in node.bases
            ):
                elsewhere.append(f"{path.relative_to(root)}: {node.name}")
    assert elsewhere == []
