"""Mail to MMS: the ESMTP listener's policy (:class:`MailToMMS`).

Mail to ``<number>@<mms domain>`` from ``mms_relay_networks`` (or after
AUTH as a VASP account) becomes a SubmitReq to the upstream MMSC that
serves the number; the sending MTA gets its reply to the final dot only
once that MMSC has answered: 250 for 1000/1100, 4xx where the mail should
wait in the sender's queue, 5xx where it can never be taken
(:data:`STATUS_REPLIES`).  The sending MTA is the durable queue; with a
state store, the envelope of a mail the MMSC took is kept for the way back
(DSN and MDN to its sender: :mod:`mm7tx.gateway.return_path`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from functools import partial
from typing import Any, Protocol

from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mm7tx.gateway.conversations import Conversations, MailedMMS, conversations_of
from mm7tx.gateway.envelopes import (
    disposition_notification_to,
    header_section,
    sent_mail,
    wants_delivery_report,
)
from mm7tx.gateway.mail_once import dedup_key, transaction_id_for
from mm7tx.gateway.store_calls import StoreFailed
from mm7tx.http.auth import Account, PasswordChecker
from mm7tx.http.client import (
    HTTPError,
    MM7ClientError,
    MM7Fault,
    TimedOut,
    Unreachable,
)
from mm7tx.http.limits import RateLimiter, TransactionGate
from mm7tx.http.settings import SubmitSettings
from mm7tx.interfaces import (
    Envelope,
    IMailPolicy,
    IRecordStore,
    ISMTPSession,
    ISMTPSubmitter,
    MailParameters,
    RecipientParameters,
    SMTPReply,
)
from mm7tx.logs import mask_address
from mm7tx.mail.to_mms import MailRefused, mail_to_mms
from mm7tx.mm7 import messages as m
from mm7tx.mm7.peers import address_in
from mm7tx.offload import Offload, inline
from mm7tx.smtp.settings import MailInSettings

log = Logger(namespace="mm7tx.mail_in")

# The headers every mail mm7tx makes from an MMS carries
# (mm7tx.gateway.processors): such a mail coming back is a loop.
MARKER_HEADERS = ("X-MM7-Path", "X-MM7-TransactionID")

# A recipient's local part: a number (``+`` and digits) or a short code.
_NUMBER = re.compile(r"\+?[0-9]{3,20}")
# Numbers up to this many digits (without ``+``) are short codes.
SHORT_CODE_DIGITS = 8


# The reply to the final dot for each MM7 status the MMSC answers: 2xx
# taken, 4xx the sending MTA keeps the mail and tries again, 5xx the mail
# can never be taken (a bounce).  The README's table is this one.
STATUS_REPLIES: dict[int, tuple[int, str]] = {
    1000: (250, "2.0.0"),  # Success
    1100: (250, "2.0.0"),  # Partial success
    2000: (554, "5.6.0"),  # Client error
    2001: (550, "5.7.1"),  # Operation restricted
    2002: (550, "5.1.1"),  # Address error
    2003: (550, "5.1.1"),  # Address not found
    2004: (554, "5.6.0"),  # Multimedia content refused
    2005: (554, "5.6.0"),  # Message ID not found
    2006: (554, "5.6.0"),  # Linked ID not found
    2007: (554, "5.6.0"),  # Message format corrupt
    2008: (554, "5.6.0"),  # Application ID not found
    2009: (554, "5.6.0"),  # Reply application ID not found
    3000: (451, "4.3.0"),  # Server error
    3001: (554, "5.3.0"),  # Not possible
    3002: (554, "5.7.1"),  # Message rejected
    3003: (554, "5.5.3"),  # Multiple addresses not supported
    3004: (554, "5.3.0"),  # Application addressing not supported
    4000: (451, "4.3.0"),  # General service error
    4001: (451, "4.7.0"),  # Improper identification: our credentials
    4002: (554, "5.3.3"),  # Unsupported version
    4003: (554, "5.3.3"),  # Unsupported operation
    4004: (554, "5.6.0"),  # Validation error
    4005: (451, "4.3.0"),  # Service error
    4006: (451, "4.4.5"),  # Service unavailable (throttled)
    4007: (550, "5.7.1"),  # Service denied
    4008: (550, "5.7.1"),  # Application denied
}
# How long the envelope of a mail the MMSC took is kept for its reports
# (``mm7_report_window``): a week, as long as MMSCs keep trying a handset.
DEFAULT_REPORT_WINDOW = 604800.0

# When the MMSC gave no MM7 status: 4xx, the mail waits in the sender's queue.
UNREACHABLE = (451, "4.4.1")
LOOP_REPLY = 554  # to a mail mm7tx made (the automatic ones get 550)
TIMED_OUT = (451, "4.4.2")
NO_MM7_ANSWER = (451, "4.3.0")  # an HTTP error, an answer that is not MM7
# Our own credentials refused (4001, or HTTP 401): the operator's fault.
CREDENTIALS_REFUSED = 4001


def reply_for_status(code: int) -> tuple[int, str]:
    """The SMTP reply code and enhanced code for MM7 status ``code``; a
    status not in the table by its class (1xxx taken, 2xxx refused, 3xxx
    and 4xxx tried again)."""
    if code in STATUS_REPLIES:
        return STATUS_REPLIES[code]
    return {1: (250, "2.0.0"), 2: (554, "5.6.0")}.get(code // 1000, (451, "4.3.0"))


class SubmitClient(Protocol):
    """What submits a SubmitReq: :class:`~mm7tx.http.client.MM7Client`."""

    def send(
        self, request: m.Request, transaction_id: str | None = None
    ) -> defer.Deferred[m.Response]: ...


@dataclass(frozen=True, slots=True)
class Upstream:
    """An upstream MMSC: its submit settings and the client that posts to it."""

    settings: SubmitSettings
    client: SubmitClient

    @property
    def name(self) -> str:
        return self.settings.name


class Dedup(Protocol):
    """Exactly once across the sending MTA's retries (``StoredDedup``):
    ``seen`` fires with the MessageID the MMSC gave for ``key`` (``dedup_key``:
    Message-ID, envelope sender, MMS recipients, body digest) if it was
    submitted already, ``taken`` records it once the MMSC took it."""

    def seen(self, key: str) -> defer.Deferred[str | None]: ...

    def taken(self, key: str, message_id: str) -> defer.Deferred[None]: ...


def _network_of(address: str) -> str:
    """The network a client address counts in for the rate: its /24 (IPv4)
    or /64 (IPv6)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower().rstrip(".")


@implementer(IMailPolicy)
class MailToMMS:
    """The ESMTP listener's :class:`~mm7tx.interfaces.IMailPolicy`.

    ``settings`` says what mail is taken, ``upstreams`` where it goes (by
    their ``numbers``, longest prefix first; one without numbers takes the
    rest).  ``limiter`` holds the rates' buckets (shared with the HTTP
    side: a VASP's ``rate`` counts its mails and its requests together),
    ``gate`` the transactions in flight (closed: the service drains; a
    mail is then answered 421 4.3.2).  ``offload`` runs the conversion of
    the mail off the reactor.  ``dedup`` is the hook for exactly once.
    ``store`` keeps the envelope of each mail the MMSC took for
    ``report_window`` seconds, for the DSN and MDN back to its sender
    (None: none are sent, no read reply is asked for).  ``conversations``
    keeps, for each mail the MMSC took, the conversation a handset's reply
    goes back by, and turns a mail answering one made from an MMS into a
    SubmitReq to its handset (None: no replies either way).
    """

    def __init__(
        self,
        settings: MailInSettings,
        upstreams: Sequence[Upstream],
        clock: IReactorTime,
        *,
        limiter: RateLimiter | None = None,
        gate: TransactionGate | None = None,
        offload: Offload = inline,
        metrics: Any = None,
        dedup: Dedup | None = None,
        log_addresses: str = "masked",
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:16].upper(),
        store: IRecordStore | None = None,
        report_window: float = DEFAULT_REPORT_WINDOW,
        conversations: Conversations | None = None,
    ) -> None:
        self.settings = settings
        self.upstreams = tuple(upstreams)
        self.clock = clock
        self.limiter = limiter if limiter is not None else RateLimiter(clock)
        self.gate = gate if gate is not None else TransactionGate()
        self.offload = offload
        self.metrics = metrics
        self.dedup = dedup
        self.log_addresses = log_addresses
        self.new_id = new_id
        self.store = store
        self.report_window = report_window
        self.conversations = conversations

    # -- the envelope ---------------------------------------------------------

    def helo(self, session: ISMTPSession) -> SMTPReply:
        return SMTPReply(250, "2.0.0", "OK")

    def mail_from(
        self, session: ISMTPSession, address: str, parameters: MailParameters
    ) -> SMTPReply:
        if self.gate.closed:
            return SMTPReply(421, "4.3.2", "Shutting down, try again later")
        account = self._account(session)
        if account is None and not address_in(
            session.peer, self.settings.relay_networks
        ):
            return SMTPReply(
                530, "5.7.0", "Authentication required: AUTH as a VASP account"
            )
        if not address:
            return SMTPReply(
                550, "5.7.1", "Automatic mail (null sender) is not sent as MMS"
            )
        per_minute = self.settings.rate / 60.0
        for key in (
            f"mail-from:{address.lower()}",
            f"mail-net:{_network_of(session.peer)}",
        ):
            if not self.limiter.allow(key, per_minute, burst=self.settings.rate):
                return SMTPReply(
                    450,
                    "4.7.1",
                    f"Rate limit of {self.settings.rate:g} mails a minute exceeded, "
                    "try again later",
                )
        rate = getattr(account, "rate", None)
        if rate is not None and not self.limiter.allow(account.name, rate):
            return SMTPReply(
                450, "4.7.1", f"Rate limit of {rate:g} requests/s exceeded"
            )
        return SMTPReply(250, "2.1.0", "Sender OK")

    def rcpt_to(
        self,
        session: ISMTPSession,
        envelope: Envelope,
        address: str,
        parameters: RecipientParameters,
    ) -> SMTPReply:
        local, domain = _split(address)
        if domain not in self.settings.domains:
            return SMTPReply(
                550, "5.7.1", f"Relaying denied: {domain or 'no domain'} is not ours"
            )
        if not _NUMBER.fullmatch(local):
            if self.conversations is None:
                return SMTPReply(
                    550, "5.1.1", "No such recipient: the local part must be a number"
                )
            # A reply to a mail made from an MMS: its In-Reply-To names
            # the handset (checked at DATA), in a transaction of its own.
            if envelope.recipients:
                return _ALONE
            return SMTPReply(250, "2.1.5", "Recipient OK (a reply)")
        upstream = self.route(local)
        if upstream is None:
            return SMTPReply(550, "5.4.4", "No MMSC serves this number")
        if envelope.recipients:
            first_local = _split(envelope.recipients[0][0])[0]
            if not _NUMBER.fullmatch(first_local):
                return _ALONE
            if self.route(first_local) is not upstream:
                return _ALONE
        limit = upstream.settings.max_recipients
        account_limit = getattr(self._account(session), "max_recipients", None)
        if account_limit is not None:
            limit = min(limit, account_limit)
        if len(envelope.recipients) >= limit:
            return SMTPReply(
                452, "4.5.3", f"Too many recipients: at most {limit} per mail"
            )
        return SMTPReply(250, "2.1.5", "Recipient OK")

    def route(self, local: str) -> Upstream | None:
        """The upstream for a recipient's number: the longest ``numbers``
        prefix it starts with, else an upstream without ``numbers``."""
        digits = local.lstrip("+")
        best, length = None, -1
        for upstream in self.upstreams:
            found = upstream.settings.longest_prefix(digits)
            if found > length:
                best, length = upstream, found
        if best is not None:
            return best
        return next((u for u in self.upstreams if not u.settings.numbers), None)

    @staticmethod
    def _account(session: ISMTPSession) -> Any:
        avatar = session.avatar
        return getattr(avatar, "account", None) if avatar is not None else None

    # -- the message ----------------------------------------------------------

    def message(
        self, session: ISMTPSession, envelope: Envelope, pieces: tuple[bytes, ...]
    ) -> defer.Deferred[SMTPReply]:
        return defer.ensureDeferred(self._message(session, envelope, pieces))

    async def _message(
        self, session: ISMTPSession, envelope: Envelope, pieces: tuple[bytes, ...]
    ) -> SMTPReply:
        queue_id = self.new_id()
        started = time.monotonic()
        outcome = _Outcome(queue_id)
        try:
            reply = await self._submit(session, envelope, pieces, outcome)
        finally:
            outcome.ms = round((time.monotonic() - started) * 1000)
        self._record(envelope, outcome, reply)
        return reply

    async def _submit(
        self,
        session: ISMTPSession,
        envelope: Envelope,
        pieces: tuple[bytes, ...],
        outcome: _Outcome,
    ) -> SMTPReply:
        raw = b"".join(pieces)
        headers = _headers(raw)
        refused = _automatic_or_loop(headers)
        if refused is not None:
            outcome.status = "loop" if refused.code == LOOP_REPLY else "automatic"
            return refused
        numbers = [_split(address)[0] for address, _ in envelope.recipients]
        reply = None
        if self.conversations is not None:
            try:
                reply = await self.conversations.for_mail(headers)
            except StoreFailed:
                if not _NUMBER.fullmatch(numbers[0]):
                    # Not known to answer no MMS: a 5xx would bounce it for good.
                    return SMTPReply(451, "4.3.0", "Try again later: store down")
            if reply is not None:
                # The recipient comes from the record, whatever address in
                # mms_domains the reply was sent to.
                numbers = [reply.handset] * len(numbers)
            elif not _NUMBER.fullmatch(numbers[0]):
                return SMTPReply(
                    550, "5.1.1", "No such recipient: this mail answers no MMS we know"
                )
        upstream = self._upstream(reply, numbers[0])
        if upstream is None:  # the recipients were routed at RCPT
            return SMTPReply(451, "4.3.0", "No MMSC serves this number")
        outcome.mmsc = upstream.name
        why = self.gate.enter()
        if why is not None:
            closing = self.gate.closed
            return SMTPReply(
                421 if closing else 451, "4.3.2", f"Try again later: {why}"
            )
        try:
            key = dedup_key(headers, envelope.sender, raw, numbers)
            if self.dedup is not None and key is not None:
                given = await self.dedup.seen(key)
                if given is not None:
                    outcome.status, outcome.message_id = "MM7 1000", given
                    outcome.deduplicated = True
                    if self.metrics is not None:
                        self.metrics.dedup_hit("Mail")
                    return _taken(outcome.queue_id, given, upstream.name)
            try:
                content = await self.offload(
                    partial(
                        mail_to_mms,
                        max_size=upstream.settings.max_size,
                        refuse_unsupported=self.settings.refuse_unsupported,
                    ),
                    raw,
                )
            except MailRefused as e:
                outcome.status = "refused"
                return SMTPReply(e.code, e.enhanced, e.text)
            for dropped in content.dropped:
                log.info(
                    "Mail {queue_id}: left out {part}",
                    queue_id=outcome.queue_id,
                    part=str(dropped),
                )
            request = content.submit_req(self._request(upstream, envelope, numbers))
            if reply is not None:
                request = reply.request(request)
            if self.store is not None and disposition_notification_to(headers):
                request = dataclasses.replace(request, read_reply=True)
            asked = self.clock.seconds()
            try:
                response = await upstream.client.send(
                    request,
                    transaction_id=transaction_id_for(key) if key else None,
                )
            except MM7ClientError as e:
                return self._failed(upstream, e, outcome)
            finally:
                if self.metrics is not None:
                    self.metrics.mail_in_upstream(self.clock.seconds() - asked)
            status = getattr(response, "status", None)
            code = int(getattr(status, "code", 0))
            outcome.status = f"MM7 {code}"
            outcome.message_id = getattr(response, "message_id", None)
            if reply_for_status(code)[0] == 250:
                message_id = outcome.message_id or "-"
                if self.dedup is not None and key is not None:
                    try:
                        await self.dedup.taken(key, message_id)
                    except Exception:
                        log.failure(
                            "Mail {queue_id}: recording it", queue_id=outcome.queue_id
                        )
                if outcome.message_id:
                    await self._keep_envelope(
                        envelope, raw, headers, numbers, upstream, outcome
                    )
                    if self.conversations is not None:
                        await self.conversations.started(
                            conversations_of(
                                request,
                                headers,
                                envelope.sender,
                                upstream.name,
                                outcome.message_id,
                            )
                        )
                return _taken(outcome.queue_id, message_id, upstream.name)
            return self._status_reply(upstream, code, str(getattr(status, "text", "")))
        finally:
            self.gate.leave()

    def _upstream(self, reply: MailedMMS | None, number: str) -> Upstream | None:
        """The MMSC a mail goes to: the one that delivered the MMS it
        answers, if that is an upstream, else the one serving ``number``."""
        if reply is not None and reply.mmsc is not None:
            for upstream in self.upstreams:
                if upstream.name == reply.mmsc:
                    return upstream
        return self.route(number)

    def _request(
        self, upstream: Upstream, envelope: Envelope, numbers: list[str]
    ) -> m.SubmitReq:
        s = upstream.settings
        sender = None
        if s.sender_from_mail and envelope.sender:
            sender = m.Address(envelope.sender, "RFC2822Address")
        elif s.sender_address:
            sender = m.Address(s.sender_address, _kind(s.sender_address))
        return m.SubmitReq(
            vasp_id=s.vasp_id,
            vas_id=s.vas_id,
            service_code=s.service_code,
            sender_address=sender,
            recipients=m.Recipients(to=tuple(m.Address(n, _kind(n)) for n in numbers)),
            delivery_report=wants_delivery_report(envelope),
        )

    async def _keep_envelope(
        self,
        envelope: Envelope,
        raw: bytes,
        headers: Any,
        numbers: list[str],
        upstream: Upstream,
        outcome: _Outcome,
    ) -> None:
        """Keep the envelope of a mail the MMSC took, for its reports; a
        store that fails is logged (the mail is taken all the same, its
        reports are mailed as any other)."""
        if self.store is None or outcome.message_id is None:
            return
        record = sent_mail(
            envelope,
            raw,
            headers,
            numbers,
            mmsc=upstream.name,
            message_id=outcome.message_id,
            now=self.clock.seconds(),
            window=self.report_window,
        )
        try:
            await self.store.put(record.key, record.to_bytes(), self.report_window)
        except Exception:
            log.failure(
                "Mail {queue_id}: keeping its envelope", queue_id=outcome.queue_id
            )

    def _status_reply(self, upstream: Upstream, code: int, text: str) -> SMTPReply:
        reply_code, enhanced = reply_for_status(code)
        if code == CREDENTIALS_REFUSED:
            log.error(
                "MMSC {mmsc} refused our credentials (4001): check submit_user, "
                "submit_password and vasp_id; mail waits in the senders' queues",
                mmsc=upstream.name,
            )
        said = _one_line(text)[:200]
        return SMTPReply(
            reply_code, enhanced, f"MMSC {upstream.name} answered {code} {said}".strip()
        )

    def _failed(
        self, upstream: Upstream, error: MM7ClientError, outcome: _Outcome
    ) -> SMTPReply:
        if isinstance(error, MM7Fault):
            outcome.status = f"MM7 {error.status.code}"
            return self._status_reply(upstream, error.status.code, error.status.text)
        # The error names the MMSC's URL: the log has it, the reply only
        # the MMSC's name.
        said = _one_line(str(error))[:200]
        log.warn("Mail {queue_id}: {error}", queue_id=outcome.queue_id, error=said)
        if isinstance(error, HTTPError) and error.code == 401:
            outcome.status = "HTTP 401"
            return self._status_reply(upstream, CREDENTIALS_REFUSED, "HTTP 401")
        if isinstance(error, Unreachable):
            outcome.status, (code, enhanced) = "unreachable", UNREACHABLE
            text = "unreachable"
        elif isinstance(error, TimedOut):
            outcome.status, (code, enhanced) = "timeout", TIMED_OUT
            text = "no answer in time"
        else:
            code, enhanced = NO_MM7_ANSWER
            text = "no MM7 answer"
            if isinstance(error, HTTPError):
                text += f" (HTTP {error.code})"
            outcome.status = text
        return SMTPReply(code, enhanced, f"MMSC {upstream.name}: {text}")

    def _record(self, envelope: Envelope, outcome: _Outcome, reply: SMTPReply) -> None:
        if reply.positive:
            kind = "accepted"
        else:
            kind = "deferred" if reply.code < 500 else "refused"
        if self.metrics is not None:
            self.metrics.mail_in(kind)
        sender = envelope.sender
        if self.log_addresses == "masked" and sender:
            sender = mask_address(sender)
        elif self.log_addresses == "none":
            sender = "-"
        extra = {"deduplicated": True} if outcome.deduplicated else {}
        log.info(
            "Mail {queue_id} from <{mail_from}> to {recipients} recipients via "
            "{mmsc}: {status}, MessageID {message_id}, {reply_code} in {ms} ms"
            + (" (sent before: not submitted again)" if outcome.deduplicated else ""),
            queue_id=outcome.queue_id,
            mail_from=sender,
            recipients=len(envelope.recipients),
            mmsc=outcome.mmsc or "-",
            status=outcome.status or "-",
            message_id=outcome.message_id or "-",
            reply_code=reply.code,
            ms=outcome.ms,
            mail_in=kind,
            **extra,
        )


@dataclass(slots=True)
class _Outcome:
    """What the transaction event says of one mail."""

    queue_id: str
    mmsc: str | None = None
    status: str | None = None
    message_id: str | None = None
    ms: int = 0
    # Sent before: answered with the MessageID the MMSC gave then.
    deduplicated: bool = False


_ALONE = SMTPReply(
    452, "4.5.3", "Send mail to this address in a transaction of its own"
)


def _kind(number: str) -> m.AddressKind:
    digits = number.lstrip("+")
    return (
        "ShortCode"
        if len(digits) <= SHORT_CODE_DIGITS and not number.startswith("+")
        else "Number"
    )


def _taken(queue_id: str, message_id: str, mmsc: str) -> SMTPReply:
    return SMTPReply(
        250,
        "2.0.0",
        f"Ok: queued as {queue_id}; MMSC {mmsc} MessageID {_one_line(message_id)[:200]}",
    )


def _one_line(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()


def _headers(raw: bytes) -> Any:
    """The mail's header section, parsed alone (the body is not read)."""
    head = header_section(raw)
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def _automatic_or_loop(headers: Any) -> SMTPReply | None:
    """554 5.4.6 for a mail mm7tx made (a loop), 550 5.7.1 for automatic
    mail (RFC 3834's Auto-Submitted, Precedence bulk/list/junk)."""
    for name in MARKER_HEADERS:
        if headers.get(name) is not None:
            return SMTPReply(
                LOOP_REPLY,
                "5.4.6",
                f"Loop: this mail was made by mm7tx from an MMS ({name})",
            )
    auto = str(headers.get("Auto-Submitted", "no")).split(";")[0].strip().lower()
    if auto and auto != "no":
        return SMTPReply(
            550,
            "5.7.1",
            f"Automatic mail (Auto-Submitted: {auto[:40]}) is not sent as MMS",
        )
    precedence = str(headers.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return SMTPReply(
            550,
            "5.7.1",
            f"Automatic mail (Precedence: {precedence}) is not sent as MMS",
        )
    return None


@implementer(ISMTPSubmitter)
@dataclass(frozen=True, slots=True)
class VASPSubmitter:
    """A VASP account authenticated by SMTP AUTH: it may submit by mail as
    by MM7, within its limits (``rate``, ``max_recipients``)."""

    account: Account

    @property
    def name(self) -> str:
        return self.account.name


@implementer(IRealm)
class _SubmitterRealm:
    def __init__(self, accounts: dict[str, Account]) -> None:
        self.accounts = accounts

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if ISMTPSubmitter not in interfaces:
            raise NotImplementedError("only ISMTPSubmitter")
        return ISMTPSubmitter, VASPSubmitter(self.accounts[avatarId]), lambda: None


def smtp_portal_for(
    accounts: Sequence[Account],
    reactor: IReactorThreads,
    scrypt: defer.DeferredSemaphore | None = None,
) -> Portal:
    """A Portal for SMTP AUTH over the VASP accounts with a password,
    checked as on HTTP (:class:`~mm7tx.http.auth.PasswordChecker`: hashes
    in the thread pool, within ``scrypt``'s bound)."""
    by_name = {a.name: a for a in accounts if a.password is not None}
    return Portal(_SubmitterRealm(by_name), [PasswordChecker(by_name, reactor, scrypt)])
