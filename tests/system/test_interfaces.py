"""Every provider in mm7tx checked against its interfaces with verifyObject.

``PROVIDERS`` builds one instance of each class that declares
``@implementer`` in the package; a companion test walks the package and
fails when a declaring class appears that the list does not cover.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.mail import smtp
from zope.interface import implementedBy
from zope.interface.verify import verifyObject

import mm7tx
from mm7tx import testing
from mm7tx.gateway.mail_in import MailToMMS, VASPSubmitter, _SubmitterRealm
from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.http.auth import (
    Account,
    AccountRealm,
    IPAddressCredentials,
    IPChecker,
    MMSCAvatar,
    PasswordChecker,
    VASPAvatar,
)
from mm7tx.http.client import _Body
from mm7tx.interfaces import IMailSender
from mm7tx.offload import inline
from mm7tx.smtp.esmtp import ESMTPSender
from mm7tx.smtp.maildir import MaildirSender
from mm7tx.smtp.server import Session
from mm7tx.smtp.settings import MailInSettings, SMTPSettings
from mm7tx.store.memory import MemoryStore
from mm7tx.store.redis import RedisStore
from mm7tx.store.resp import RedisProtocol
from mm7tx.store.spec import StoreSpec
from mm7tx.store.sqlite import SQLiteStore
from mm7tx.testing.http import _MemoryEndpoints
from mm7tx.testing.reactor import _MemoryConnector, _MemoryPort
from mm7tx.testing.smtp import _DeliveryRealm, _Message, _Passwords

ACCOUNTS = {"v": Account("v", "p")}
RULES = AddressRules("f@from.example", "from.example", "t@to.example", "to.example")


def _maildir(tmp_path: Any) -> MaildirSender:
    return MaildirSender(str(tmp_path / "Maildir"))


def _message(tmp_path: Any) -> Any:
    user = smtp.User(b"a@b.example", b"helo", None, smtp.Address(b"c@d.example"))
    return _Message(testing.RecordingDelivery(), user)


# class -> a factory taking pytest's tmp_path
PROVIDERS: dict[type, Callable[[Any], object]] = {
    EmailProcessor: lambda _: EmailProcessor(testing.FakeMailSender(), RULES),
    ESMTPSender: lambda _: ESMTPSender(
        MemoryReactorClock(),  # type: ignore[arg-type]
        SMTPSettings(endpoint="tcp:127.0.0.1:25", starttls="off"),
    ),
    MaildirSender: _maildir,
    RedisProtocol: lambda _: RedisProtocol(),
    Session: lambda _: Session("192.0.2.1"),
    testing.FakeMailSender: lambda _: testing.FakeMailSender(),
    _Message: _message,
    testing.RecordingDelivery: lambda _: testing.RecordingDelivery(),
    _DeliveryRealm: lambda _: _DeliveryRealm(testing.RecordingDelivery()),
    _Passwords: lambda _: _Passwords({b"u": b"p"}),
    PasswordChecker: lambda _: PasswordChecker(ACCOUNTS, MemoryReactorClock()),  # type: ignore[arg-type]
    IPChecker: lambda _: IPChecker(ACCOUNTS),
    AccountRealm: lambda _: AccountRealm(ACCOUNTS),
    VASPAvatar: lambda _: VASPAvatar(ACCOUNTS["v"]),
    MMSCAvatar: lambda _: MMSCAvatar(ACCOUNTS["v"]),
    IPAddressCredentials: lambda _: IPAddressCredentials("192.0.2.1"),
    MailToMMS: lambda _: MailToMMS(MailInSettings(), [], MemoryReactorClock()),
    VASPSubmitter: lambda _: VASPSubmitter(ACCOUNTS["v"]),
    _SubmitterRealm: lambda _: _SubmitterRealm(ACCOUNTS),
    _Body: lambda _: _Body(b"<x/>"),
    testing.MemoryReactor: lambda _: testing.MemoryReactor(),
    testing.MemoryAgent: lambda _: testing.MemoryAgent(testing.MemoryReactor()),
    _MemoryPort: lambda _: _MemoryPort(
        testing.MemoryReactor(), ("127.0.0.1", 80), testing.FakeMailSender()
    ),
    _MemoryConnector: lambda _: _MemoryConnector(
        IPv4Address("TCP", "127.0.0.1", 80), None
    ),
    _MemoryEndpoints: lambda _: _MemoryEndpoints(testing.MemoryReactor(), "127.0.0.1"),
    MemoryStore: lambda _: MemoryStore(MemoryReactorClock()),  # type: ignore[arg-type]
    SQLiteStore: lambda tmp_path: SQLiteStore(
        str(tmp_path / "s.sqlite3"),
        MemoryReactorClock(),  # type: ignore[arg-type]
        inline,
    ),
    RedisStore: lambda _: RedisStore(
        StoreSpec("redis", host="127.0.0.1"), MemoryReactorClock()
    ),
}


def declaring_classes() -> set[type]:
    """Every class defined in mm7tx that declares interfaces itself."""
    found = set()
    modules = [mm7tx] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(mm7tx.__path__, "mm7tx.")
    ]
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and implementedBy(cls).declared:
                found.add(cls)
    return found


def test_every_declaring_class_is_verified():
    assert declaring_classes() == set(PROVIDERS)


@pytest.mark.parametrize("cls", PROVIDERS, ids=lambda c: c.__qualname__)
def test_verify_object(cls, tmp_path):
    provider = PROVIDERS[cls](tmp_path)
    assert type(provider) is cls
    interfaces = list(implementedBy(cls))
    assert interfaces
    for interface in interfaces:
        assert verifyObject(interface, provider)


def test_mail_senders_have_send_and_close():
    assert set(IMailSender.names()) >= {"send", "close"}
    senders = [c for c in PROVIDERS if IMailSender.implementedBy(c)]
    assert set(senders) == {ESMTPSender, MaildirSender, testing.FakeMailSender}
