"""A Number or ShortCode is digits, or a 2002 (issue 11 #9): what is not a
number can never become an envelope address of its own making."""

from __future__ import annotations

import pytest

from mm7tx.gateway.processors import AddressRules, EmailProcessor
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from mm7tx.mm7.errors import MM7Error
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


def _decoded_sender(element: str) -> m.Address | None:
    ns = "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"
    body = (
        '<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        f'<SubmitReq xmlns="{ns}"><MM7Version>6.8.0</MM7Version>'
        f"<SenderIdentification><SenderAddress>{element}</SenderAddress>"
        "</SenderIdentification>"
        f"<Recipients><To>{element}</To></Recipients></SubmitReq></e:Body></e:Envelope>"
    ).encode()
    message = codec.decode("text/xml", body).message
    assert isinstance(message, m.SubmitReq)
    assert message.recipients.to == (message.sender_address,)
    return message.sender_address


@pytest.mark.parametrize(
    ("element", "address"),
    [
        # Mbuni's mmsbox: a number without /TYPE=PLMN written as an RFC2822Address.
        ("<RFC2822Address>7255</RFC2822Address>", m.Address("7255")),
        ("<RFC2822Address> +15551234567 </RFC2822Address>", m.Address("+15551234567")),
        ("<RFC2822Address>7255/TYPE=PLMN</RFC2822Address>", m.Address("7255/TYPE=PLMN")),
        # instantcom-mm7 names the element after RFC 822.
        ("<RFC822Address>a@b.example</RFC822Address>", m.Address("a@b.example", "RFC2822Address")),
        ("<RFC822Address>7255</RFC822Address>", m.Address("7255")),
        # Anything else stays an RFC2822Address (and is mapped, or refused, as one).
        ("<RFC2822Address>7255@x.example</RFC2822Address>", m.Address("7255@x.example", "RFC2822Address")),
        ("<RFC2822Address>72 55</RFC2822Address>", m.Address("72 55", "RFC2822Address")),
        ("<RFC2822Address>+</RFC2822Address>", m.Address("+", "RFC2822Address")),
        ("<RFC2822Address>٣٤٥</RFC2822Address>", m.Address("٣٤٥", "RFC2822Address")),
        ('<Number displayOnly="true">1</Number>', m.Address("1", display_only=True)),
    ],
)  # fmt: skip
def test_addresses_as_peers_write_them(element, address):
    assert _decoded_sender(element) == address


def test_a_digits_only_rfc2822_address_is_mapped_as_a_number():
    processor = EmailProcessor(FakeMailSender(), WITH_DOMAINS)
    sender = _decoded_sender("<RFC2822Address>7255</RFC2822Address>")
    assert processor.sender_address(sender) == "7255@from.example"
    assert processor.recipient_address(sender) == "7255@to.example"
