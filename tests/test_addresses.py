"""A Number or ShortCode is digits, or a 2002 (issue 11 #9): what is not a
number can never become an envelope address of its own making."""

from __future__ import annotations

import pytest

from mm7tx import messages as m
from mm7tx.errors import MM7Error
from mm7tx.processors import AddressRules, EmailProcessor
from mm7tx.testing import FakeMailSender

WITH_DOMAINS = AddressRules("from@default", "from.example", "to@default", "to.example")
WITHOUT_DOMAINS = AddressRules("from@default", None, "to@default", None)

GOOD = [
    ("16175550123", "16175550123"),
    ("+385911111111", "385911111111"),
    ("+44 7700 900123", "447700900123"),
    ("88888/TYPE=PLMN", "88888"),
    ("+3859100010010/type=plmn", "3859100010010"),
    (" 7255 ", "7255"),
    ("+1 (617) 555-0123", "16175550123"),  # the separators Address.digits drops
]

BAD = [
    "<root@localhost>",
    "root@localhost/TYPE=PLMN",
    "7255@evil.example",
    "12<34>",
    "123,456",
    "123\r\nRCPT TO:<x@y>",
    "12345/TYPE=IPv4",
    "1+2",
    "+",
    "٣٤٥",  # digits, but not ASCII ones
    "abc",
]


@pytest.mark.parametrize("kind", ["Number", "ShortCode"])
@pytest.mark.parametrize(("value", "digits"), GOOD)
def test_a_number_maps_to_its_digits(kind, value, digits):
    processor = EmailProcessor(FakeMailSender(), WITH_DOMAINS)
    address = m.Address(value, kind)  # type: ignore[arg-type]
    assert processor.recipient_address(address) == f"{digits}@to.example"
    assert processor.sender_address(address) == f"{digits}@from.example"


@pytest.mark.parametrize("rules", [WITH_DOMAINS, WITHOUT_DOMAINS])
@pytest.mark.parametrize("kind", ["Number", "ShortCode"])
@pytest.mark.parametrize("value", BAD)
def test_anything_else_is_an_address_error(rules, kind, value):
    processor = EmailProcessor(FakeMailSender(), rules)
    address = m.Address(value, kind)  # type: ignore[arg-type]
    for mapping in (processor.recipient_address, processor.sender_address):
        with pytest.raises(MM7Error) as caught:
            mapping(address)
        assert caught.value.status.code == 2002
        assert "not a number" in (caught.value.status.details or "")


def test_no_address_still_takes_the_default():
    processor = EmailProcessor(FakeMailSender(), WITH_DOMAINS)
    assert processor.recipient_address(None) == "to@default"
    assert processor.sender_address(None) == "from@default"
