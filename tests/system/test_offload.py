"""Work over a megabyte goes to a thread (mm7tx.offload): the decoding of a
large request, the SMTP data of a large mail, every Maildir write.

The thread pool here runs each piece of work when the test says so, on the
test's thread, so that what goes to it, in what order and with what result
is seen without a thread or a sleep.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.web.server import Site
from zope.interface import implementer

from mm7tx.gateway.processors import EmailProcessor
from mm7tx.http.resource import MM7Resource, build_root
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.offload import OFFLOAD_SIZE, in_threads, inline
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.smtp.settings import SMTPSettings
from mm7tx.smtp.stuffing import smtp_pieces
from mm7tx.testing import (
    FakeMailSender,
    MemoryAgent,
    MemoryReactor,
    MemorySMTPRelay,
    http_post,
    post,
    result_of,
)
from tests.http.test_hostile import RULES
from tests.smtp.test_smtp import message


class Pool:
    """A thread pool that keeps each piece of work until :meth:`run`."""

    def __init__(self) -> None:
        self.work: list[tuple[Callable[..., Any], Any, tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Any, function: Any, *args: Any):
        self.work.append((on_result, function, args))

    def run(self) -> str:
        """Run the oldest piece of work; its function's name."""
        on_result, function, args = self.work.pop(0)
        try:
            result = function(*args)
        except Exception:
            from twisted.python.failure import Failure

            on_result(False, Failure())
        else:
            on_result(True, result)
        return getattr(function, "__name__", repr(function))


@implementer(IReactorThreads, IReactorFromThreads)
class ThreadedReactor(MemoryReactor):
    """The in-memory reactor, with :class:`Pool` as its thread pool."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool()

    def getThreadPool(self) -> Pool:  # type: ignore[override]
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:  # type: ignore[override]
        f(*args, **kw)


def _deliver(size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    request = m.DeliverReq(
        sender=m.Address("+15551234567"),
        recipients=m.Recipients(to=(m.Address("7255", "ShortCode"),)),
        subject="big",
        content=(m.ContentPart("image/jpeg", data, (), "big"),),
    )
    return codec.encode(m.Envelope("t-1", request))


def posting(root: Any, body: bytes, ctype: str) -> tuple[MemoryReactor, Any]:
    """POST in memory, the answer left to come: (the HTTP side's reactor,
    the Deferred of the answer)."""
    http = MemoryReactor()
    http.listenTCP(80, Site(root, reactor=http), interface="mm7tx.test")
    answer = post(
        MemoryAgent(http, "127.0.0.1"),
        "http://mm7tx.test/vasp/",
        body,
        {"Content-Type": ctype},
    )
    http.flush()
    return http, answer


def _status(answer: Any) -> int:
    message: Any = codec.decode(answer.headers["content-type"], answer.body).message
    return int(message.status.code)


def test_a_reactor_without_threads_works_inline():
    from twisted.internet.task import Clock

    assert in_threads(Clock()) is inline


def _root(reactor: ThreadedReactor, sender: Any) -> Any:
    resource = MM7Resource(
        EmailProcessor(sender, RULES), "/vasp/", offload=in_threads(reactor)
    )
    return build_root({"/vasp/": resource})


def test_a_large_request_is_decoded_in_the_thread_pool():
    reactor, sender = ThreadedReactor(), FakeMailSender()
    root = _root(reactor, sender)
    ctype, small = _deliver(1000)
    assert _status(http_post(root, "/vasp/", small, {"Content-Type": ctype})) == 1000
    assert reactor.pool.work == []  # small: on the reactor thread
    ctype, big = _deliver(OFFLOAD_SIZE)
    http, answering = posting(root, big, ctype)
    assert not answering.called
    assert reactor.pool.run() == "decode"
    http.flush()
    assert _status(result_of(answering)) == 1000
    [attachment] = list(sender.sent[-1].message.iter_attachments())
    assert attachment.get_content() == codec.decode(ctype, big).message.content[0].data


def test_a_large_request_refused_in_the_thread_is_a_fault_not_a_hang():
    reactor, sender = ThreadedReactor(), FakeMailSender()
    root = _root(reactor, sender)
    ctype, big = _deliver(OFFLOAD_SIZE)
    broken = big.replace(b"<DeliverReq", b"<Unknown", 1)
    http, answering = posting(root, broken, ctype)
    reactor.pool.run()
    http.flush()
    assert _status(result_of(answering)) in (4003, 4004, 2007)
    assert sender.sent == []


def test_a_bug_in_the_thread_is_a_4000_not_a_hang(monkeypatch):
    reactor, sender = ThreadedReactor(), FakeMailSender()
    root = _root(reactor, sender)
    ctype, big = _deliver(OFFLOAD_SIZE)

    decode = codec.decode

    def broken(ctype: str, body: bytes, *rest: Any) -> Any:
        if len(body) > OFFLOAD_SIZE:
            raise RuntimeError("a bug")
        return decode(ctype, body, *rest)

    monkeypatch.setattr(codec, "decode", broken)
    http, answering = posting(root, big, ctype)
    reactor.pool.run()
    http.flush()
    assert _status(result_of(answering)) == 4000


def test_one_piece_of_work_at_a_time():
    reactor = ThreadedReactor()
    offload = in_threads(reactor)
    first, second = offload(lambda: 1), offload(lambda: 2)
    assert len(reactor.pool.work) == 1  # the second waits its turn
    reactor.pool.run()
    assert result_of(first) == 1
    assert len(reactor.pool.work) == 1
    reactor.pool.run()
    assert result_of(second) == 2


def test_a_large_mail_is_made_smtp_data_in_the_thread_pool():
    reactor = ThreadedReactor()
    relay = MemorySMTPRelay(reactor)
    sender = ESMTPSender(
        reactor,
        SMTPSettings(endpoint=relay.endpoint, starttls="off"),
        offload=in_threads(reactor),
    )
    small = sender.send("a@from.example", ["b@to.example"], message())
    assert reactor.pool.work == []
    big_message = message(os.urandom(OFFLOAD_SIZE))
    big = sender.send("a@from.example", ["b@to.example"], big_message)
    assert reactor.pool.run() == "_smtp_pieces"
    reactor.flush()
    result_of(small), result_of(big)
    [attachment] = list(relay.accepted[-1].message.iter_attachments())
    assert attachment.get_content() == big_message.get_payload()[1].get_content()


def test_every_maildir_write_is_in_the_thread_pool(tmp_path):
    reactor = ThreadedReactor()
    sender = MaildirSender(str(tmp_path / "Maildir"), offload=in_threads(reactor))
    d = sender.send("a@from.example", ["b@to.example"], message())
    assert len(reactor.pool.work) == 1
    assert os.listdir(tmp_path / "Maildir" / "new") == []
    assert reactor.pool.run() == "write"
    assert result_of(d).reply.startswith("stored as new/")
    assert len(os.listdir(tmp_path / "Maildir" / "new")) == 1


def test_a_maildir_write_refused_in_the_thread_is_4006(tmp_path, monkeypatch):
    import mm7tx.smtp.maildir

    reactor = ThreadedReactor()
    sender = MaildirSender(str(tmp_path / "Maildir"), offload=in_threads(reactor))

    def full(*_: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mm7tx.smtp.maildir, "_deliver", full)
    d = sender.send("a@from.example", ["b@to.example"], message())
    reactor.pool.run()
    with pytest.raises(Exception) as refused:
        result_of(d)
    assert refused.value.status.code == 4006  # type: ignore[attr-defined]
    assert "No space left" in str(refused.value.status.details)  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [1, 3, 7, 1000, -1])
def test_the_pieces_read_as_the_joined_bytes_would(size):
    from io import BytesIO

    from mm7tx.smtp.stuffing import Pieces

    pieces = [b"abc", b"", b"defgh", b"i" * 2000, b"j"]
    ours, theirs = Pieces(pieces), BytesIO(b"".join(pieces))
    while True:
        chunk = theirs.read(size)
        assert ours.read(size) == chunk
        if not chunk:
            break


@pytest.mark.parametrize("size", [0, 10, OFFLOAD_SIZE, 3 * OFFLOAD_SIZE + 5])
def test_smtp_data_made_as_it_is_written_is_the_whole_stuffed(size):
    from email.message import EmailMessage

    from mm7tx.gateway.processors import BUILD_POLICY
    from mm7tx.mail.wire import wire_bytes
    from mm7tx.smtp.stuffing import stuffed

    text = EmailMessage(policy=BUILD_POLICY)
    text["Subject"] = "dots"
    text.set_content((".dot\n..two\nplain\n" * (size // 18 + 1))[:size] or "x")
    for made in (text, message(os.urandom(size))):
        assert b"".join(smtp_pieces(made)) == stuffed(wire_bytes(made))


def test_a_mail_made_in_the_thread_after_the_sender_closed_fails_at_once():
    reactor = ThreadedReactor()
    relay = MemorySMTPRelay(reactor)
    sender = ESMTPSender(
        reactor,
        SMTPSettings(endpoint=relay.endpoint, starttls="off"),
        offload=in_threads(reactor),
    )
    big = sender.send(
        "a@from.example", ["b@to.example"], message(os.urandom(OFFLOAD_SIZE))
    )
    closing = sender.close()
    reactor.pool.run()
    with pytest.raises(Exception) as refused:
        result_of(big)
    assert refused.value.status.code == 4006  # type: ignore[attr-defined]
    result_of(closing)
    assert relay.accepted == []


def test_a_multipart_with_an_empty_boundary_is_written_as_the_standard_generator_does():
    import copy
    from email.generator import BytesGenerator
    from io import BytesIO

    from mm7tx.mail.wire import WIRE_POLICY, wire_bytes

    made = message(b"data")
    made.set_boundary("")
    ours = wire_bytes(copy.deepcopy(made))  # each writes a boundary of its own
    standard = BytesIO()
    BytesGenerator(standard, policy=WIRE_POLICY).flatten(made)
    pattern = rb"=+[0-9]+=+"
    assert re.sub(pattern, b"B", ours) == re.sub(pattern, b"B", standard.getvalue())
