"""Replies both ways (:class:`Conversations`), by two records in the store.

A mail the MMSC took for a handset (:class:`~mm7tx.gateway.mail_in.MailToMMS`)
leaves a :class:`Conversation` under (the short code the handset sees as
sender, the handset) and under the MMSC's MessageID: a DeliverReq from that
handset to that short code within ``mm7_reply_window`` is mailed to that
mail's author as a reply to it (by its LinkedID first, when it has one).
The latest mail to a handset through a short code wins.

A mail made from a DeliverReq leaves a :class:`MailedMMS` under its
Message-ID: a mail whose In-Reply-To or References names it becomes a
SubmitReq to that handset with the DeliverReq's LinkedID.

A store that fails, or does not answer within 2 s, is logged once per
outage (never a key: keys hold numbers and Message-IDs).  For a
DeliverReq it counts as no conversation: the mail goes where it went
before replies existed.  For a mail, :meth:`Conversations.for_mail` raises
:class:`StoreFailed`: the listener then lets the sending MTA try again
rather than refuse a reply it could not look up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from email.utils import getaddresses
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mm7tx.gateway.envelopes import digits
from mm7tx.gateway.store_calls import Outage, StoreFailed, bounded
from mm7tx.interfaces import IRecordStore
from mm7tx.mail.compose import Mail
from mm7tx.mm7 import messages as m
from mm7tx.transaction import Transaction

log = Logger(namespace="mm7tx.conversations")

# How long a conversation is kept (``mm7_reply_window``): a week.
DEFAULT_REPLY_WINDOW = 604800.0

# The most Message-IDs of a mail's In-Reply-To and References looked up.
MAX_REFERENCES = 8

# The longest value kept of any field (a Message-ID, an address, an ID).
MAX_FIELD = 998

_MSGID = re.compile(r"<([^<>\s]{1,998})>")


def party(value: str | None) -> str:
    """What names a party in a key: a number's digits, an address
    lowercased (a short code, a handset, or the mail address a handset
    saw as sender)."""
    if not value:
        return ""
    value = value.strip()
    if "@" in value:
        return value.lower()
    return digits(value)


def conversation_key(short_code: str | None, handset: str | None) -> str:
    """The key of the conversation of ``handset`` with ``short_code``."""
    return f"conversation:{party(short_code)}:{party(handset)}"


def conversation_id_key(message_id: str) -> str:
    """The key of the conversation the MMSC's ``message_id`` started."""
    return f"conversation-id:{message_id}"


def mailed_key(mail_message_id: str) -> str:
    """The key of the DeliverReq mailed as ``mail_message_id`` (no ``<>``)."""
    return f"mailed-mms:{mail_message_id}"


def message_ids(value: object) -> list[str]:
    """The Message-IDs in a header's value, without their ``<>``."""
    return _MSGID.findall(str(value)) if value is not None else []


def referenced(headers: Any) -> list[str]:
    """The Message-IDs a mail answers: its In-Reply-To, then its
    References from the latest back, at most :data:`MAX_REFERENCES`."""
    found = message_ids(headers.get("In-Reply-To"))
    found += reversed(message_ids(headers.get("References")))
    return list(dict.fromkeys(found))[:MAX_REFERENCES]


def reply_address(headers: Any, envelope_sender: str) -> str:
    """Where a handset's reply to a mail goes: its Reply-To, else its
    From, else its envelope sender (as a mail program's reply does)."""
    for name in ("Reply-To", "From"):
        value = headers.get(name)
        if value is None:
            continue
        for _, address in getaddresses([str(value)]):
            if "@" in address and len(address) <= MAX_FIELD:
                return address
    return envelope_sender


def _bounded(value: str | None) -> str | None:
    return value if value and len(value) <= MAX_FIELD else None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A mail the MMSC ``mmsc`` took for ``handset`` from ``short_code``
    (the sender the handset sees) as ``message_id``: a reply goes to
    ``reply_to``, answering ``mail_message_id`` (without ``<>``).
    ``linked_id`` is the SubmitReq's LinkedID, if it had one."""

    short_code: str
    handset: str
    reply_to: str
    mmsc: str
    message_id: str | None = None
    mail_message_id: str | None = None
    linked_id: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> Conversation:
        """The record in ``data``; ValueError if it is not one."""
        try:
            return cls(**json.loads(data))
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a conversation record: {e}") from e


@dataclass(frozen=True, slots=True)
class MailedMMS:
    """A DeliverReq from ``handset`` (its Sender, of ``kind``) to
    ``short_code`` (its first recipient), mailed: a mail answering it
    becomes a SubmitReq to ``handset`` with ``linked_id`` (the DeliverReq's
    LinkedID), to the MMSC ``mmsc`` that delivered it when it is known."""

    handset: str
    kind: str = "Number"
    short_code: str | None = None
    short_code_kind: str = "ShortCode"
    linked_id: str | None = None
    mmsc: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> MailedMMS:
        """The record in ``data``; ValueError if it is not one."""
        try:
            return cls(**json.loads(data))
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a mailed-MMS record: {e}") from e

    def request(self, request: m.SubmitReq) -> m.SubmitReq:
        """``request`` as the reply: to the handset alone, from the short
        code it wrote to, with the DeliverReq's LinkedID."""
        sender = request.sender_address
        if self.short_code:
            sender = m.Address(self.short_code, self.short_code_kind)  # type: ignore[arg-type]
        return replace(
            request,
            sender_address=sender,
            recipients=m.Recipients(to=(m.Address(self.handset, self.kind),)),  # type: ignore[arg-type]
            linked_id=self.linked_id or request.linked_id,
        )


def conversations_of(
    request: m.SubmitReq,
    headers: Any,
    envelope_sender: str,
    mmsc: str,
    message_id: str,
) -> list[Conversation]:
    """One conversation per handset of a SubmitReq made from a mail (its
    ``headers``) that the MMSC ``mmsc`` took as ``message_id``."""
    sender = request.sender_address
    short_code = sender.value if sender is not None else ""
    mail_ids = message_ids(headers.get("Message-ID"))
    reply_to = reply_address(headers, envelope_sender)
    if not reply_to:
        return []
    recipients = request.recipients
    return [
        Conversation(
            short_code=short_code,
            handset=address.value,
            reply_to=reply_to,
            mmsc=mmsc,
            message_id=message_id,
            mail_message_id=mail_ids[0] if mail_ids else None,
            linked_id=request.linked_id,
        )
        for address in recipients.to + recipients.cc + recipients.bcc
        if not address.is_email
    ]


class Conversations:
    """The conversations in ``store``, each kept for ``window`` seconds;
    each store call bounded on ``clock``."""

    def __init__(
        self,
        store: IRecordStore,
        window: float = DEFAULT_REPLY_WINDOW,
        *,
        clock: IReactorTime,
    ) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        self.outage = Outage(
            log,
            "Replies: the state store failed ({error}); replies go as without "
            "a store, replies by mail to a name wait, until it answers again",
            "Replies: the state store answers again",
        )

    async def _lookup(self, key: str) -> bytes | None:
        """The record under ``key``; :class:`StoreFailed` if the store
        failed or took too long (logged once per outage)."""
        try:
            data = await bounded(self.store.get(key), self.clock)
        except Exception as e:
            self.outage.failed(e)
            raise StoreFailed(str(e) or type(e).__name__) from e
        self.outage.answered()
        return data

    async def _get(self, key: str) -> bytes | None:
        """The record under ``key``; None if none or the store failed."""
        try:
            return await self._lookup(key)
        except StoreFailed:
            return None

    async def _put(self, key: str, value: bytes) -> None:
        try:
            await bounded(self.store.put(key, value, self.window), self.clock)
        except Exception as e:
            self.outage.failed(e)
            return
        self.outage.answered()

    # Mail → handset, and the handset's reply.

    async def started(self, conversations: Iterable[Conversation]) -> None:
        """Keep each conversation under its short code and handset (the
        latest wins) and under its MessageID."""
        for conversation in conversations:
            data = conversation.to_bytes()
            await self._put(
                conversation_key(conversation.short_code, conversation.handset), data
            )
            if conversation.message_id:
                await self._put(conversation_id_key(conversation.message_id), data)

    async def _conversation(self, key: str) -> Conversation | None:
        data = await self._get(key)
        if data is None:
            return None
        try:
            return Conversation.from_bytes(data)
        except ValueError as e:
            log.warn("Record {key} unreadable: {error}", key=key, error=str(e))
            return None

    async def for_deliver(self, request: m.DeliverReq) -> Conversation | None:
        """The conversation a handset's DeliverReq answers: the one its
        LinkedID names (when it is this handset's), else the latest to
        this handset through one of its recipients."""
        handset = party(request.sender.value if request.sender else None)
        if not handset:
            return None
        linked = _bounded(request.linked_id)
        if linked:
            found = await self._conversation(conversation_id_key(linked))
            if found is not None and party(found.handset) == handset:
                return found
        recipients = request.recipients
        for recipient in recipients.to + recipients.cc + recipients.bcc:
            found = await self._conversation(conversation_key(recipient.value, handset))
            if found is not None:
                return found
        return None

    def deliver(
        self,
        request: m.DeliverReq,
        transaction: Transaction,
        build: Callable[[m.DeliverReq, Transaction], Mail],
        send: Callable[[Mail, Transaction], defer.Deferred[m.Status]],
    ) -> defer.Deferred[m.Status]:
        """Mail a DeliverReq (``build`` makes the mail, ``send`` sends it):
        to the conversation it answers, if any, as a reply; once sent, its
        Message-ID is kept for a mail answering it."""
        return defer.ensureDeferred(self._deliver(request, transaction, build, send))

    async def _deliver(
        self,
        request: m.DeliverReq,
        transaction: Transaction,
        build: Callable[[m.DeliverReq, Transaction], Mail],
        send: Callable[[Mail, Transaction], defer.Deferred[m.Status]],
    ) -> m.Status:
        mail = build(request, transaction)
        conversation = await self.for_deliver(request)
        if conversation is not None:
            mail = as_reply(mail, conversation)
            transaction.outcome.returned = (
                "reply in a conversation",
                mail.recipients[0],
            )
        status = await send(mail, transaction)
        await self._mailed(mail, request, transaction)
        return status

    # Handset → mail, and the mail's reply.

    async def _mailed(
        self, mail: Mail, request: m.DeliverReq, transaction: Transaction
    ) -> None:
        handset = request.sender
        if handset is None or handset.is_email or not _bounded(handset.value):
            return  # a reply to an email sender goes to it, not through us
        ids = message_ids(mail.message.get("Message-ID"))
        if not ids:
            return
        to = request.recipients.to + request.recipients.cc
        short_code = to[0] if to and _bounded(to[0].value) else None
        account = transaction.account
        record = MailedMMS(
            handset=handset.value,
            kind=handset.kind,
            short_code=short_code.value if short_code else None,
            short_code_kind=short_code.kind if short_code else "ShortCode",
            linked_id=_bounded(request.linked_id),
            mmsc=account.name if account is not None else None,
        )
        await self._put(mailed_key(ids[0]), record.to_bytes())

    async def for_mail(self, headers: Any) -> MailedMMS | None:
        """The DeliverReq a mail answers, by its In-Reply-To, then its
        References (the latest first).  :class:`StoreFailed` when none was
        found and the store failed a lookup: whether the mail answers an MMS
        is then not known."""
        failed: StoreFailed | None = None
        for mail_id in referenced(headers):
            try:
                data = await self._lookup(mailed_key(mail_id))
            except StoreFailed as e:
                failed = e
                continue
            if data is None:
                continue
            try:
                return MailedMMS.from_bytes(data)
            except ValueError as e:
                log.warn("Record of {id} unreadable: {error}", id=mail_id, error=str(e))
        if failed is not None:
            raise failed
        return None


def as_reply(mail: Mail, conversation: Conversation) -> Mail:
    """``mail`` to the conversation's mail sender, as a reply to its mail."""
    msg = mail.message
    del msg["To"]
    del msg["Cc"]
    msg["To"] = conversation.reply_to
    if conversation.mail_message_id:
        reference = f"<{conversation.mail_message_id}>"
        del msg["In-Reply-To"]
        del msg["References"]
        msg["In-Reply-To"] = reference
        msg["References"] = reference
    return Mail(mail.sender, [conversation.reply_to], msg)
