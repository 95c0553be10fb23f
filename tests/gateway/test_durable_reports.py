"""Issue 22, item 3: durable delivery reports.  With a state store, a report
is written there before it is first posted, its attempts after each failed
one, and removed once answered; a restarted instance takes its reports over
at once, any other instance once the owner's lease passed; attempts count
across restarts.  In memory: the VASP is a ``Site`` on a ``MemoryReactor``,
whose clock the stores and reporters share; the store is in memory or an
SQLite file (worked on inline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import Site

from mm7tx.app.wiring import make_shared
from mm7tx.config import load
from mm7tx.gateway.report_record import StoredReport
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.auth import Account
from mm7tx.http.resource import build_root
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.offload import inline
from mm7tx.store import StoreError
from mm7tx.store.memory import MemoryStore
from mm7tx.store.sqlite import SQLiteStore
from mm7tx.testing import MemoryReactor, result_of

ACCOUNT = Account(
    "vasp1",
    "p",
    delivery_report_url="http://vasp.test:9000/dr/",  # every name is 127.0.0.1
    delivery_report_user="mmsc",
    delivery_report_password="s3cr3t",
)
ACCOUNTS = {"vasp1": ACCOUNT}
NS = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"


def report_req(message_id: str = "M-1") -> m.DeliveryReportReq:
    return m.DeliveryReportReq(
        message_id=message_id,
        recipient=m.Address("+15551234567"),
        sender=m.Address("7255", "ShortCode"),
        date="2024-01-02T03:04:05+00:00",
        mm_status="Forwarded",
    )


class VASP(Resource):
    """The delivery report endpoint: answers ``answer`` (1000, or 4006: try
    again), noting each post's time and MessageID; ``check`` runs first."""

    isLeaf = True

    def __init__(self, clock: MemoryReactor) -> None:
        super().__init__()
        self.clock = clock
        self.answer = 1000
        self.seen: list[tuple[float, str]] = []
        self.check: Callable[[], None] = lambda: None

    def render_POST(self, request: Any) -> bytes:
        self.check()
        envelope = codec.decode(
            request.getHeader("content-type"), request.content.read()
        )
        report = envelope.message
        assert isinstance(report, m.DeliveryReportReq)
        self.seen.append((self.clock.seconds(), report.message_id or "-"))
        request.setHeader(b"content-type", b"text/xml")
        answer: m.Response
        if self.answer == 1000:
            answer = m.DeliveryReportRsp(m.Status(1000, "Success"))
        else:
            request.setResponseCode(500)
            answer = m.VASPErrorRsp(m.Status(self.answer, "Service unavailable"))
        return codec.encode(m.Envelope(envelope.transaction_id, answer))[1]

    @property
    def times(self) -> list[float]:
        return [when for when, _ in self.seen]


class World:
    """A memory reactor with the VASP on it, and a store on its clock that
    a restarted process opens again (``reopen``)."""

    def __init__(self, kind: str, tmp_path: Any) -> None:
        self.reactor = MemoryReactor()
        self.reactor.advance(1000)
        self.vasp = VASP(self.reactor)
        site = Site(build_root({"/dr/": self.vasp}), reactor=self.reactor)
        self.reactor.listenTCP(9000, site, interface="127.0.0.1")
        self.kind = kind
        self.path = str(tmp_path / "state.sqlite3") if tmp_path else ""
        self.store = self.reopen()

    def reopen(self) -> Any:
        """The store as a new process opens it (the same one in memory)."""
        if self.kind == "memory":
            return getattr(self, "store", None) or MemoryStore(self.reactor)
        return SQLiteStore(self.path, self.reactor, inline)

    def reporter(
        self, instance: str = "host:/srv/mm7tx", store: Any = None, **kw: Any
    ) -> DeliveryReporter:
        return DeliveryReporter(
            self.reactor,  # type: ignore[arg-type]
            store=store if store is not None else self.store,
            accounts=ACCOUNTS,
            instance=instance,
            **kw,
        )

    def stored(self, owner: str = "someone else") -> list[Any]:
        """Every report the store holds (read as an owner whose lease
        passed: a second later than any lease)."""
        later = MemoryReactor()
        later.advance(self.reactor.seconds() + 3600)
        if self.kind == "memory":
            return list(self.store._reports.values())
        peek = SQLiteStore(self.path, later, inline)
        found = result_of(peek.due_reports(owner, 100))
        result_of(peek.close())
        return found


def crash(reporter: DeliveryReporter) -> None:
    """What ``kill -9`` leaves: the store as last written, and nothing of
    the reporter running any more (no poll, no retry, no post)."""
    if reporter._poll is not None and reporter._poll.running:
        reporter._poll.stop()
    reporter._closing = True
    for d in list(reporter.pending):
        d.cancel()


@pytest.fixture(params=["memory", "sqlite"])
def world(request, tmp_path) -> World:
    return World(request.param, tmp_path)


def test_a_report_is_in_the_store_before_it_is_first_posted(world):
    seen_then: list[Any] = []
    world.vasp.check = lambda: seen_then.append(world.stored())
    reporter = world.reporter()
    posted = reporter.report(ACCOUNT, report_req(), NS)
    world.reactor.flush()
    assert result_of(posted) is True
    [[kept]] = seen_then
    assert (kept.owner, kept.attempts) == (reporter.owner, 0)
    record = StoredReport.decode(kept.payload)
    assert record == StoredReport("vasp1", report_req(), NS)
    assert b"s3cr3t" not in kept.payload and b"mmsc" not in kept.payload
    # Answered 1000: gone from the store.
    assert world.stored() == []
    assert reporter.pending == {}


def test_each_failed_attempt_is_recorded_then_the_report_removed(world):
    world.vasp.answer = 4006
    reporter = world.reporter()
    start = world.reactor.seconds()
    posted = reporter.report(ACCOUNT, report_req(), NS)
    world.reactor.flush()
    [kept] = world.stored()
    assert (kept.attempts, kept.due) == (1, start + 1)
    world.reactor.advance(1)
    [kept] = world.stored()
    assert (kept.attempts, kept.due) == (2, start + 3)
    assert kept.lease_until == start + 3 + reporter.lease
    world.vasp.answer = 1000
    world.reactor.advance(2)
    assert result_of(posted) is True
    assert world.vasp.times == [start, start + 1, start + 3]
    assert world.stored() == []


def test_a_restarted_instance_posts_its_reports_at_once(world):
    world.vasp.answer = 4006
    first = world.reporter()
    start = world.reactor.seconds()
    first.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)  # attempts at 0 and 1; the next due at 3
    crash(first)
    world.reactor.advance(10)  # down for 10 s: the report is due meanwhile
    world.vasp.answer = 1000
    restarted_at = world.reactor.seconds()
    with capturedLogs() as events:
        second = world.reporter(store=world.reopen())
        world.reactor.flush()
    assert second.owner != first.owner
    assert world.vasp.times == [start, start + 1, restarted_at]  # at once
    assert world.stored() == []
    lines = [formatEvent(e) for e in events]
    assert "Taking over delivery report M-1 for vasp1 after 2 attempts" in lines


def test_attempts_count_across_restarts_and_the_give_up_is_logged(world):
    world.vasp.answer = 4006
    first = world.reporter(attempts=4)
    first.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)  # 2 of 4 attempts made
    crash(first)
    with capturedLogs() as events:
        second = world.reporter(attempts=4, store=world.reopen())
        world.reactor.advance(600)
    assert len(world.vasp.times) == 4  # 2 before the restart, 2 after
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if line.startswith("Gave up")] == [
        "Gave up on delivery report M-1 for vasp1 after 4 attempts: "
        "4006 Service unavailable"
    ]
    assert world.stored() == []
    assert second.pending == {}


def test_another_instance_takes_over_once_the_owners_lease_passed(world):
    world.vasp.answer = 4006
    dying = world.reporter(instance="host-a:/srv/mm7tx")
    other = world.reporter(instance="host-b:/srv/mm7tx")
    dying.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)  # the next attempt is due at +3
    died_at = world.reactor.seconds()
    crash(dying)
    world.vasp.answer = 1000
    for _ in range(600):
        world.reactor.advance(0.5)
        if len(world.vasp.times) == 3:
            break
    taken_at = world.vasp.times[-1]
    # Not while the lease ran (the owner might have been alive and posting),
    # and within 60 s of the owner's death.
    assert died_at + dying.lease < taken_at <= died_at + 60
    assert world.stored() == []
    assert other.pending == {}


def test_two_live_reporters_on_one_store_post_each_report_once(world):
    one = world.reporter(instance="host-a:/srv/mm7tx")
    two = world.reporter(instance="host-b:/srv/mm7tx")
    world.vasp.answer = 4006
    for n in range(5):
        one.report(ACCOUNT, report_req(f"A-{n}"), NS)
        two.report(ACCOUNT, report_req(f"B-{n}"), NS)
    # Failing for 150 s: the retries reach 64 s apart, each by its owner.
    world.reactor.advance(150)
    world.vasp.answer = 1000
    world.reactor.advance(600)
    posts: dict[str, int] = {}
    for _, message_id in world.vasp.seen:
        posts[message_id] = posts.get(message_id, 0) + 1
    # Attempts at 0, 1, 3, 7, 15, 31, 63, 127 and (answered) 255: once each.
    assert posts == {f"{x}-{n}": 8 for x in "AB" for n in range(5)}
    assert world.stored() == []


def test_reports_left_at_stop_are_posted_by_the_next_start(world):
    world.vasp.answer = 4006
    first = world.reporter()
    first.report(ACCOUNT, report_req(), NS)
    with capturedLogs() as events:
        first.stop(2)
        world.reactor.advance(2)
        late = first.report(ACCOUNT, report_req("M-2"), NS)
        world.reactor.flush()
    assert first.pending == {} and late.result is False
    lines = [formatEvent(e) for e in events]
    assert [line for line in lines if line.startswith(("Left", "Abandoned"))] == [
        "Left delivery report M-1 to http://vasp.test:9000/dr/ in the state "
        "store for the next start: still not answered when the service stopped",
        "Left delivery report M-2 to http://vasp.test:9000/dr/ in the state "
        "store for the next start: still not answered when the service stopped",
    ]
    assert not any("s3cr3t" in line for line in lines)
    assert len(world.stored()) == 2
    attempts = len(world.vasp.times)
    world.reactor.advance(600)
    assert len(world.vasp.times) == attempts  # the stopped one posts no more
    world.vasp.answer = 1000
    world.reporter(store=world.reopen())
    world.reactor.flush()
    # In due order: M-1 at its next retry (1 s after its first attempt
    # failed, when the stop left it), M-2 at once (2 s later).
    assert [mid for _, mid in world.vasp.seen[attempts:]] == ["M-1", "M-2"]
    assert world.stored() == []


class Broken(MemoryStore):
    """A store whose writes all fail."""

    def put_report(self, *args: Any, **kwargs: Any) -> Any:
        from twisted.internet import defer

        return defer.fail(StoreError("disk full"))


def test_a_failing_store_still_posts_from_memory_and_logs_once():
    world = World("memory", None)
    world.store = Broken(world.reactor)
    world.vasp.answer = 4006
    with capturedLogs() as events:
        reporter = world.reporter()
        one = reporter.report(ACCOUNT, report_req("M-1"), NS)
        two = reporter.report(ACCOUNT, report_req("M-2"), NS)
        world.reactor.advance(1.5)
        world.vasp.answer = 1000
        world.reactor.advance(2)
    assert result_of(one) is True and result_of(two) is True
    assert reporter.store_errors == 2
    lines = [formatEvent(e) for e in events]
    failed = [line for line in lines if line.startswith("The state store failed")]
    assert failed == [
        "The state store failed (disk full): serving without exactly once, "
        "and delivery reports are posted from memory, until it answers again"
    ]


def test_a_report_of_an_account_gone_from_the_configuration_is_dropped(world):
    world.vasp.answer = 4006
    first = world.reporter()
    first.report(ACCOUNT, report_req(), NS)
    world.reactor.flush()
    crash(first)
    with capturedLogs() as events:
        second = world.reporter(store=world.reopen())
        second.accounts = {}
        world.reactor.advance(10)
    lines = [formatEvent(e) for e in events]
    assert (
        "Dropped delivery report M-1 for vasp1: the account has no "
        "delivery_report_url any more"
    ) in lines
    assert world.stored() == []


def test_the_wiring_gives_the_reporter_the_store_and_the_accounts():
    reactor = MemoryReactor()
    config = load(
        "mm7_serv {\n"
        '  mm7_server_default_email_from_domain = "from.example"\n'
        '  mm7_server_default_email_to_domain = "to.example"\n'
        '  mm7_vasp_uri_paths = ("/vasp/")\n'
        '  mm7_mmsc_uri_paths = ("/mm7/")\n'
        "}\n"
        'VASP "v" { password = "p" delivery_report_url = "http://v.test/dr" }\n',
        "reports.conf",
    )
    store = MemoryStore(reactor)
    shared = make_shared(config, reactor, store=store)  # type: ignore[arg-type]
    reporter = shared.delivery_reporter(config)
    assert reporter.store is store
    assert list(reporter.accounts) == ["v"]
    stateless = make_shared(config, MemoryReactor(), store=None)  # type: ignore[arg-type]
    without = stateless.delivery_reporter(config)
    assert without.store is None


def test_a_running_sibling_keeps_its_reports(world):
    """Another process of the same instance (a worker in the same folder)
    that still runs keeps its reports: taken over only once its lease
    passed.  pid 1 always runs."""
    import json

    from mm7tx.gateway.reports import OWNERS_KEY

    sibling = "host:/srv/mm7tx#1.abcd"
    now = world.reactor.seconds()
    payload = StoredReport("vasp1", report_req(), NS).encode()
    result_of(world.store.put_report("r", payload, sibling, now, 45, 86400))
    owners = json.dumps([sibling]).encode()
    result_of(world.store.put(OWNERS_KEY + "host:/srv/mm7tx", owners, 86400))
    reporter = world.reporter()
    world.reactor.flush()
    assert world.vasp.times == []
    world.reactor.advance(50)
    assert len(world.vasp.times) == 1
    assert now + 45 <= world.vasp.times[0] <= now + 50
    assert reporter.pending == {}


def test_a_report_left_by_a_start_before_the_last_is_posted_at_once(world):
    """A left a report not yet due; B started and stopped before it was
    due; C, started after it is due, posts it at once, not once A's lease
    passed: B kept A among the instance's owners."""
    world.vasp.answer = 4006
    a = world.reporter()
    start = world.reactor.seconds()
    a.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)  # attempts at 0 and 1; the next due at +3
    a.stop(0)
    world.reactor.flush()
    [kept] = world.stored()
    assert (kept.owner, kept.due) == (a.owner, start + 3)
    b = world.reporter(store=world.reopen())
    world.reactor.advance(0.5)  # B runs before the report is due
    b.stop(0)
    world.reactor.advance(10)
    world.vasp.answer = 1000
    started = world.reactor.seconds()
    c = world.reporter(store=world.reopen())
    world.reactor.flush()
    assert world.vasp.times[2:] == [started]
    assert world.stored() == []
    assert c.pending == {}


def test_an_instance_still_knows_its_dead_owners_after_a_day(world):
    """The owners record outlives a day-long run: the record is refreshed
    while the process runs, so a start after a crash takes the reports over
    at once."""
    world.vasp.answer = 4006
    first = world.reporter()
    world.reactor.flush()  # its first poll writes the record
    # Two days an hour at a time: each jump runs the poll once (a
    # ``LoopingCall`` runs once for the intervals it missed), and the VASP
    # site's once-a-second log clock once, not 172,800 times.
    for _ in range(48):
        Clock.advance(world.reactor, 3600)
        world.reactor.flush()
    first.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)
    crash(first)
    world.reactor.advance(10)
    world.vasp.answer = 1000
    started = world.reactor.seconds()
    world.reporter(store=world.reopen())
    world.reactor.flush()
    assert world.vasp.times[-1] == started
    assert world.stored() == []


def test_stopping_leaves_a_report_waiting_for_its_retry_at_once(world):
    """With a store, the drain does not wait for a report's retries: one
    waiting for its next attempt is left in the store when the stop begins."""
    world.vasp.answer = 4006
    reporter = world.reporter()
    reporter.report(ACCOUNT, report_req(), NS)
    world.reactor.advance(1.5)  # waiting for its third attempt, due at +3
    stopped: list[object] = []
    with capturedLogs() as events:
        reporter.stop(30).addBoth(stopped.append)
        world.reactor.flush()
    assert stopped == [None]
    assert reporter.pending == {}
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "Left delivery report M-1 to http://vasp.test:9000/dr/ in the state "
        "store for the next start: still not answered when the service stopped"
    ]
    [kept] = world.stored()
    assert kept.attempts == 2
    world.reactor.advance(60)
    assert len(world.vasp.times) == 2  # no retry after the stop
