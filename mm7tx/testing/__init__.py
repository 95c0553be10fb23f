"""Fakes and an in-memory gateway for testing mm7tx and processors built on it.

The whole gateway runs in memory, on one fake reactor, in milliseconds:

- :class:`MemoryGateway`: the real resource tree, processors, pooled ESMTP
  sender and ``MM7Site`` built from a :class:`~mm7tx.config.Config`, with an
  in-memory SMTP relay behind it and a clock the test advances.
- :class:`MemoryReactor`: a ``Clock`` and ``IReactorTCP`` whose connections
  are made in memory (``twisted.test.iosim`` transports) to whatever listens
  on it, with a synchronous stand-in thread pool.  ``flush()`` moves bytes
  until every connection is quiet; ``advance(seconds)`` moves time, timer by
  timer, flushing after each.
- :class:`MemoryAgent`: an ``IAgent`` over that reactor, for ``MM7Client`` or
  any Twisted HTTP code; :func:`http_post` a one-shot POST to a resource.
- :class:`MemorySMTPRelay`: Twisted's own ESMTP server on that reactor,
  recording every transaction, told to refuse, hang or drop at any stage.
- :class:`FakeMailSender`: an :class:`IMailSender` that records mail, or fails.
- :class:`RecordingDelivery` and :func:`smtp_server_factory`: the same real
  ESMTP server, to listen on loopback.

Each lives in a module of its own (``reactor``, ``http``, ``smtp``,
``relay``, ``sender``, ``gateway``); this package gives them all.
"""

from mm7tx.testing.gateway import MemoryGateway
from mm7tx.testing.http import HTTPResponse, MemoryAgent, get, http_post, post
from mm7tx.testing.reactor import (
    MemoryReactor,
    SynchronousThreadPool,
    fired,
    result_of,
)
from mm7tx.testing.relay import Action, MemorySMTPRelay, SMTPFault, Stage
from mm7tx.testing.sender import FakeMailSender, SentMail
from mm7tx.testing.smtp import ReceivedMail, RecordingDelivery, smtp_server_factory

__all__ = [
    "Action",
    "FakeMailSender",
    "HTTPResponse",
    "MemoryAgent",
    "MemoryGateway",
    "MemoryReactor",
    "MemorySMTPRelay",
    "ReceivedMail",
    "RecordingDelivery",
    "SMTPFault",
    "SentMail",
    "Stage",
    "SynchronousThreadPool",
    "fired",
    "get",
    "http_post",
    "post",
    "result_of",
    "smtp_server_factory",
]
