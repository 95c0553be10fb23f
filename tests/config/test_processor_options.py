"""A processor's own options, set in its ``Path`` scope, and the load
errors of processors: checked at load with file and line, and given to
the processor as ``options``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mm7tx.app.service import make_processor
from mm7tx.config import ConfigError, load
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.mm7 import messages as m
from mm7tx.testing import FakeMailSender, MemoryGateway
from mm7tx.transaction import Transaction


class Tuned(EmailProcessor):
    """Declares one option of every kind a configuration can give."""

    @dataclass(frozen=True)
    class Options:
        label: str
        copies: int = 1
        ratio: float = 0.5
        strict: bool = False
        tags: tuple[str, ...] = ()
        note: str | None = None


class Plain(EmailProcessor):
    """Declares no options: called as processors always were."""


class OldStyle:
    """A processor of before options: its own ``__init__``, no ``options``."""

    def __init__(
        self,
        sender: Any,
        rules: Any,
        mm7_version: str = "6.8.0",
        keep_smil: bool = False,
        reporter: Any = None,
    ) -> None:
        self.sender = sender


class Unreadable(EmailProcessor):
    """Declares an option no configuration value can be."""

    @dataclass(frozen=True)
    class Options:
        when: complex = 0j


class NotADataclass(EmailProcessor):
    class Options:
        label: str = ""


TUNED = "tests.config.test_processor_options.Tuned"


def config(path_scope: str, extra: str = "") -> str:
    return (
        "mm7_serv {\n"
        '  mm7_vasp_uri_paths = ("/vasp/")\n'
        '  mm7_server_default_email_from_domain = "from.example"\n'
        '  mm7_server_default_email_to_domain = "to.example"\n'
        f"{extra}"
        f"  {path_scope}\n"
        "}\n"
    )


def test_path_options_are_converted_to_the_declared_types() -> None:
    loaded = load(
        config(
            f'Path "/vasp/" {{ processor = "{TUNED}"\n'
            '    label = "x" copies = 3 ratio = 0.25 strict = yes\n'
            '    tags = ("a" "b") note = "n" }'
        )
    )
    assert loaded.options_for("/vasp/") == {
        "label": "x",
        "copies": 3,
        "ratio": 0.25,
        "strict": True,
        "tags": ("a", "b"),
        "note": "n",
    }
    processor = make_processor(
        loaded.processor_for("/vasp/"),
        loaded,
        FakeMailSender(),
        options=loaded.options_for("/vasp/"),
    )
    assert isinstance(processor, Tuned)
    assert processor.options == Tuned.Options("x", 3, 0.25, True, ("a", "b"), "n")


def test_the_options_reach_the_processor_of_a_running_gateway(tmp_path: Path) -> None:
    folder = tmp_path / "parts"
    gateway = MemoryGateway(
        config(
            'Path "/vasp/" {\n'
            '    processor = "mm7tx.examples.attachments.SaveAttachments"\n'
            f'    save_dir = "{folder}"\n'
            "  }"
        )
    )
    entry = m.DeliverReq(
        sender=m.Address("+447700900123"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
        content=(m.ContentPart("image/jpeg", b"\xff\xd8 a photo"),),
    )
    answer = gateway.result(gateway.client("/vasp/").deliver(entry))
    assert answer.status.code == 1000
    [saved] = folder.iterdir()
    assert saved.read_bytes() == b"\xff\xd8 a photo"
    # The MMSC retries: the same request again leaves the same one file.
    gateway.result(gateway.client("/vasp/").deliver(entry))
    assert [p.name for p in folder.iterdir()] == [saved.name]
    assert len(gateway.relay.accepted) == 2


def test_a_processor_without_options_is_called_as_before() -> None:
    for name in ("tests.config.test_processor_options.Plain", None):
        loaded = load(config(f'Path "/vasp/" {{ processor = "{TUNED}" label = "x" }}'))
        processor: Any = make_processor(name, loaded, FakeMailSender())
        assert processor.options is None
    old = make_processor(
        "tests.config.test_processor_options.OldStyle", loaded, FakeMailSender()
    )
    assert isinstance(old, OldStyle)


def test_all_defaults_apply_without_a_path_scope() -> None:
    class Defaults(EmailProcessor):
        @dataclass(frozen=True)
        class Options:
            copies: int = 2

    gateway = MemoryGateway(processor=Defaults)
    resource: Any = gateway.root.children[b"vasp"]
    assert resource.processor.options == Defaults.Options(2)
    gateway = MemoryGateway(processor=Defaults, processor_options={"copies": 5})
    resource = gateway.root.children[b"vasp"]
    assert resource.processor.options == Defaults.Options(5)


@pytest.mark.parametrize(
    "scope, line, words",
    [
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n colour = "red" }}',
            7,
            f"{TUNED} has no option 'colour' (its options: label, copies, ratio, "
            "strict, tags, note)",
        ),
        (
            'Path "/vasp/" { processor = "tests.config.test_processor_options.Plain"\n'
            ' label = "x" }',
            6,
            "tests.config.test_processor_options.Plain has no option 'label' (it declares "
            "no Options)",
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n copies = many }}',
            7,
            f"option copies of {TUNED} must be a whole number, not 'many'",
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n ratio = half }}',
            7,
            f"option ratio of {TUNED} must be a number, not 'half'",
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n strict = maybe }}',
            7,
            f"option strict of {TUNED} must be true or false, not 'maybe'",
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = ("x" "y") }}',
            6,
            f"option label of {TUNED} takes one value, not a list",
        ),
        (
            f'Path "/vasp/" {{\n processor = "{TUNED}" }}',
            5,
            f"{TUNED} needs option label in its Path scope",
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n label = "y" }}',
            7,
            "label is set twice (first on line 6); keep one",
        ),
        (
            'Path "/vasp/" {\n label = "x" }',
            5,
            'Path "/vasp/" has options but no processor',
        ),
        (
            f'Path "/vasp/" {{ processor = "{TUNED}"\n label = "x"\n'
            f' processor = "{TUNED}" }}',
            7,
            "processor is set twice (first on line 5); keep one",
        ),
        (
            'Path "/vasp/" { processor = "tests.config.test_processor_options.Unreadable" }',
            5,
            "option when of tests.config.test_processor_options.Unreadable is declared "
            "complex: a configuration gives only str, int, float, bool or "
            "tuple[str, ...]",
        ),
        (
            'Path "/vasp/" {\n'
            ' processor = "tests.config.test_processor_options.NotADataclass" }',
            6,
            "Options of tests.config.test_processor_options.NotADataclass is not a dataclass",
        ),
    ],
)
def test_option_errors_name_file_line_option_and_processor(
    scope: str, line: int, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(scope), "my.conf")
    assert str(caught.value) == f"my.conf, line {line}: {words}"


def test_a_processor_for_every_path_cannot_take_required_options() -> None:
    with pytest.raises(ConfigError) as caught:
        load(config("", f'  mm7_processor = "{TUNED}"\n'), "my.conf")
    assert str(caught.value) == (
        f"my.conf, line 5: {TUNED} needs option label: bind it in a "
        'Path "/p/" { processor = "…" label = "…" } scope'
    )


def test_a_processor_not_on_the_import_path_says_where_python_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The author's module in the current folder, which twistd does not
    # put on sys.path.
    (tmp_path / "attachsaver_mm7tx_test.py").write_text("class SaveAttachments: pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    with pytest.raises(ConfigError) as caught:
        load(
            config(
                'Path "/vasp/" {\n'
                ' processor = "attachsaver_mm7tx_test.SaveAttachments" }'
            ),
            "my.conf",
        )
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "my.conf, line 6: cannot load processor "
        "'attachsaver_mm7tx_test.SaveAttachments': no module "
        "'attachsaver_mm7tx_test' on the import path ("
    )
    assert sys.path[0] in message  # where Python looked
    assert (
        f"attachsaver_mm7tx_test.py is in the current folder {tmp_path}, "
        "which twistd does not put on the import path: start it with "
        "PYTHONPATH=. or install the package" in message
    )


def test_a_module_nowhere_gets_the_hint_too() -> None:
    with pytest.raises(ConfigError) as caught:
        load(config('Path "/vasp/" { processor = "nowhere_at_all.Cls" }'), "my.conf")
    message = str(caught.value)
    assert message.startswith(
        "my.conf, line 5: cannot load processor 'nowhere_at_all.Cls': no module "
        "'nowhere_at_all' on the import path ("
    )
    assert message.endswith(
        "; twistd does not put the current folder on it: start it with "
        "PYTHONPATH=. or install the package)"
    )


@pytest.mark.parametrize(
    "name, words",
    [
        (
            "tests.config.test_processor_options.Missing",
            "cannot load processor 'tests.config.test_processor_options.Missing': module "
            "'tests.config.test_processor_options' has no Missing",
        ),
        (
            "mm7tx_no_such_thing",
            "cannot load processor 'mm7tx_no_such_thing': not a dotted name like "
            "package.module.Class",
        ),
    ],
)
def test_other_load_errors_say_what_is_missing(name: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(f'Path "/vasp/" {{ processor = "{name}" }}'), "my.conf")
    assert str(caught.value) == f"my.conf, line 5: {words}"


def test_a_transaction_runs_blocking_work_in_a_thread_or_at_once() -> None:
    ran: list[str] = []
    transaction = Transaction("t1", "/vasp/")
    d = transaction.in_thread(ran.append, "now")
    assert ran == ["now"]
    assert d.result is None


class Threaded(EmailProcessor):
    """Does its blocking work through ``transaction.in_thread``."""

    ran: list[str] = []

    def deliver(self, request: m.DeliverReq, transaction: Transaction) -> Any:
        work = transaction.in_thread(Threaded.ran.append, transaction.transaction_id)
        mail = super().deliver
        return work.addCallback(lambda _: mail(request, transaction))


def test_blocking_work_goes_to_the_reactors_thread_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Threaded.ran.clear()
    gateway = MemoryGateway(processor=Threaded)
    pool = gateway.reactor.getThreadPool()
    in_pool: list[Any] = []
    run = pool.callInThreadWithCallback

    def counted(*args: Any, **kwargs: Any) -> None:
        in_pool.append(args[1])
        run(*args, **kwargs)

    monkeypatch.setattr(pool, "callInThreadWithCallback", counted)
    entry = m.DeliverReq(
        sender=m.Address("+447700900123"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
    )
    client = gateway.client("/vasp/")
    assert gateway.result(client.deliver(entry)).status.code == 1000
    assert len(Threaded.ran) == 1
    assert Threaded.ran.append in in_pool


def test_a_module_that_fails_to_import_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_more_mm7tx_test.py").write_text("import not_installed_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        load(
            config('Path "/vasp/" { processor = "needs_more_mm7tx_test.Cls" }'),
            "my.conf",
        )
    assert str(caught.value) == (
        "my.conf, line 5: cannot load processor 'needs_more_mm7tx_test.Cls': "
        "importing 'needs_more_mm7tx_test' failed: No module named "
        "'not_installed_dep'"
    )
