"""Exactly once for mail in: a mail the sending MTA sends again is not
submitted twice.

The key is the mail's Message-ID, envelope sender, MMS recipients and a
digest of its body (:func:`dedup_key`).  Once the MMSC took the mail, the MessageID it gave is
kept under the key for ``mm7_dedup_window``: the same mail again gets the
250 with that MessageID, and no SubmitReq.  Where the MMSC took the mail but
its answer never reached us (our 4xx on a timeout, then the MTA's retry),
nothing was kept: the retry is submitted with the same TransactionID
(:func:`transaction_id_for`), so an MMSC that remembers its answers (as
mm7tx does) gives the first MessageID back rather than a second message.

A store that fails, or does not answer within 2 s, is logged once per
outage and the mail goes on as without a store: never refused for it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mm7tx.gateway.envelopes import header_section
from mm7tx.gateway.store_calls import Outage, bounded
from mm7tx.interfaces import IRecordStore

log = Logger(namespace="mm7tx.mail_in")


def dedup_key(
    headers: Any, sender: str | None, raw: bytes, numbers: list[str]
) -> str | None:
    """What makes a mail the same mail sent again: its Message-ID, envelope
    sender and MMS recipients, and a digest of its body (what follows the
    header section, which the sending MTA does not touch between attempts:
    the headers in front may gain a ``Received:``).  None without a
    Message-ID: such a mail is never taken for another."""
    message_id = str(headers.get("Message-ID", "")).strip()
    if not message_id:
        return None
    body = raw[len(header_section(raw)) :]
    digest = hashlib.sha256(body.replace(b"\r\n", b"\n")).hexdigest()
    parts = (message_id, sender or "", ",".join(sorted(numbers)), digest)
    return "mail-in:" + "\x00".join(parts)


def transaction_id_for(key: str) -> str:
    """The TransactionID of the SubmitReq made for the mail of ``key``: the
    same for every retry of that mail."""
    return "mm7tx-mail-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class StoredDedup:
    """:class:`mm7tx.gateway.mail_in.Dedup` on a state store's records,
    each call bounded on ``clock``."""

    def __init__(self, store: IRecordStore, window: float, clock: IReactorTime) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        self.outage = Outage(
            log,
            "Mail in: the state store failed ({error}); mail goes on "
            "without exactly once until it answers again",
            "Mail in: the state store answers again",
        )

    def seen(self, key: str) -> defer.Deferred[str | None]:
        """The MessageID kept for ``key``, or None (none, or no store)."""
        return defer.ensureDeferred(self._seen(key))

    def taken(self, key: str, message_id: str) -> defer.Deferred[None]:
        """Keep ``message_id`` for ``key`` for the window."""
        return defer.ensureDeferred(self._taken(key, message_id))

    async def _seen(self, key: str) -> str | None:
        try:
            value = await bounded(self.store.get(_record(key)), self.clock)
        except Exception as e:
            self.outage.failed(e)
            return None
        self.outage.answered()
        return value.decode("utf-8", "replace") if value is not None else None

    async def _taken(self, key: str, message_id: str) -> None:
        put = self.store.put(_record(key), message_id.encode("utf-8"), self.window)
        try:
            await bounded(put, self.clock)
        except Exception as e:
            self.outage.failed(e)
            return
        self.outage.answered()


def _record(key: str) -> str:
    return "mail-in:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
