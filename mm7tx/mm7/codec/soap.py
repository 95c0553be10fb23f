"""The SOAP 1.1 envelope of MM7 coming in: XML bytes to message values.
Writing one is :mod:`mm7tx.mm7.codec.soap_writer`'s, the schema tables are
:mod:`mm7tx.mm7.codec.schema`'s: their names import from here too.

Elements are matched by local name, whatever their prefix or namespace, because
real MMSCs qualify them in every way (Nokia prefixes every element, others leave
children unqualified).  The parser never loads a DTD, resolves an entity or
touches the network; a document with a DTD is refused outright.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from lxml import etree

from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec.schema import BY_NAME as BY_NAME
from mm7tx.mm7.codec.schema import ENUMERATED, FIELDS, SID, SPELLINGS
from mm7tx.mm7.codec.schema import FAULT_DETAILS as FAULT_DETAILS
from mm7tx.mm7.codec.schema import MANDATORY as MANDATORY
from mm7tx.mm7.codec.schema import SCHEMAS as SCHEMAS
from mm7tx.mm7.codec.schema import SOAP_ENV as SOAP_ENV
from mm7tx.mm7.codec.schema import Kind as Kind
from mm7tx.mm7.codec.schema import Spec as Spec
from mm7tx.mm7.codec.soap_writer import build_body as build_body
from mm7tx.mm7.codec.soap_writer import build_envelope as build_envelope
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode

_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
}
# How much of a document the parser is fed at a time: its elements are
# counted between feeds, so at most this much is parsed past a limit.
_FEED = 64 * 1024


def _local(el: etree._Element) -> str:
    tag = el.tag  # "{namespace}name" or "name"
    return tag[tag.rfind("}") + 1 :]  # type: ignore[union-attr, return-value]


def _namespace(el: etree._Element) -> str | None:
    return etree.QName(el).namespace


def _children(el: etree._Element) -> Iterator[etree._Element]:
    for child in el:
        if isinstance(child.tag, str):
            yield child


def _child(el: etree._Element, name: str) -> etree._Element | None:
    for child in _children(el):
        if _local(child) == name:
            return child
    return None


def _text(el: etree._Element) -> str:
    if len(el) == 0:  # a leaf, as most MM7 elements are: its text is all of it
        return (el.text or "").strip()
    return "".join(el.itertext()).strip()  # type: ignore[arg-type]  # always str


def _attribute(el: etree._Element, name: str) -> str | None:
    """An attribute by local name, qualified or not (``mm7:href`` is seen)."""
    for key, value in el.attrib.items():
        key = key.decode() if isinstance(key, bytes) else key
        if key == name or key.endswith("}" + name):
            return str(value)
    return None


@dataclass(frozen=True, slots=True)
class XMLLimits:
    """How deep and how big a SOAP document may be.  MM7 needs about eight
    levels and a few dozen elements per recipient."""

    max_depth: int = 32
    max_elements: int = 10000


def _too_many(limits: XMLLimits) -> MM7Error:
    return MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"the SOAP document has more than {limits.max_elements} elements",
    )


def _too_deep(limits: XMLLimits) -> MM7Error:
    return MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"the SOAP document is nested deeper than {limits.max_depth}",
    )


def parse_xml(data: bytes, limits: XMLLimits | None = None) -> etree._Element:
    """Parse a SOAP document safely: no DTD, no entities, no network, and
    within ``limits``, counted as it is parsed (a chunk at a time), so that
    a document of a million elements is refused after the first ten
    thousand, not once all are built.  A parser of its own each time: lxml
    lets one parser parse in one thread at a time, and large requests are
    parsed in a thread (mm7tx.offload) while small ones are on the
    reactor."""
    limits = limits or XMLLimits()
    head = data[:4096] if len(data) > 4096 else data
    if b"<!DOCTYPE" in head or b"<!ENTITY" in data:
        raise MM7Error(
            StatusCode.MESSAGE_FORMAT_CORRUPT,
            details="a DTD or entity declaration is not allowed in SOAP",
        )
    parser = etree.XMLPullParser(events=("start", "end"), **_PARSER_OPTIONS)
    count = depth = 0
    try:
        for at in range(0, max(len(data), 1), _FEED):
            parser.feed(data[at : at + _FEED])
            for event, _ in parser.read_events():
                if event == "end":
                    depth -= 1
                    continue
                count += 1
                depth += 1
                if count > limits.max_elements:
                    raise _too_many(limits)
                if depth > limits.max_depth:
                    raise _too_deep(limits)
        root = parser.close()
    except etree.XMLSyntaxError as e:
        raise MM7Error(
            StatusCode.MESSAGE_FORMAT_CORRUPT, details=f"XML is not well formed: {e}"
        ) from None
    if getattr(root.getroottree().docinfo, "doctype", None):
        raise MM7Error(
            StatusCode.MESSAGE_FORMAT_CORRUPT,
            details="a DTD is not allowed in SOAP",
        )
    return root


# Parsing -------------------------------------------------------------------

# instantcom-mm7 names the element after RFC 822.
_ADDRESS_ALIASES = {"RFC822Address": "RFC2822Address"}
# Mbuni's mmsbox writes a number without /TYPE=PLMN as an RFC2822Address.
_DIGITS_ONLY = re.compile(r"\+?[0-9]+(?:/TYPE=PLMN)?", re.IGNORECASE)


def _address_of(child: etree._Element) -> m.Address | None:
    """The address an ``RFC2822Address``, ``Number`` or ``ShortCode`` (or
    ``RFC822Address``) element holds; None for any other element or an
    empty one.  A digits-only RFC2822Address is a Number."""
    kind = _local(child)
    kind = _ADDRESS_ALIASES.get(kind, kind)
    text = _text(child)
    if kind not in m.ADDRESS_KINDS or not text:
        return None
    if kind == "RFC2822Address" and _DIGITS_ONLY.fullmatch(text):
        kind = "Number"
    display = (_attribute(child, "displayOnly") or "").lower() in ("true", "1")
    return m.Address(text, kind, display)  # type: ignore[arg-type]


def _address(el: etree._Element) -> m.Address | None:
    for child in _children(el):
        address = _address_of(child)
        if address is not None:
            return address
    text = _text(el)
    return m.Address.guess(text) if text else None


def _addresses(el: etree._Element | None) -> tuple[m.Address, ...]:
    if el is None:
        return ()
    found = [a for a in map(_address_of, _children(el)) if a is not None]
    if not found and _text(el):
        found.append(m.Address.guess(_text(el)))
    return tuple(found)


def _recipients(blocks: list[etree._Element]) -> m.Recipients:
    """Every address of every To, Cc and Bcc, in document order: the schema
    lets each of them repeat, and a peer that repeats ``Recipients`` itself
    loses no one either."""
    found: dict[str, list[m.Address]] = {"To": [], "Cc": [], "Bcc": []}
    for block in blocks:
        for child in _children(block):
            kind = found.get(_local(child))
            if kind is not None:
                kind.extend(_addresses(child))
    return m.Recipients(
        to=tuple(found["To"]), cc=tuple(found["Cc"]), bcc=tuple(found["Bcc"])
    )


def _bool(el: etree._Element) -> bool:
    text = _text(el).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise MM7Error(
        StatusCode.MESSAGE_FORMAT_CORRUPT,
        details=f"{_local(el)} must be true or false, not {text[:40]!r}",
    )


def _enumerated(cls: type[Any], el: etree._Element, text: str) -> str:
    """``text`` in the schema's spelling, if ``el`` is an enumerated element
    of ``cls``: any case is read (``retrieved``), anything else is a 2007."""
    spellings = SPELLINGS.get((cls, _local(el)))
    if spellings is None:
        return text
    spelling = spellings.get(text.lower())
    if spelling is None:
        values = ENUMERATED[cls, _local(el)]
        raise MM7Error(
            StatusCode.MESSAGE_FORMAT_CORRUPT,
            details=f"{_local(el)} must be one of {', '.join(values)}, "
            f"not {text[:40]!r}",
        )
    return spelling


# Java's Date.toString(), as instantcom-mm7 writes a DeliverReq's TimeStamp:
# "Tue Nov 14 22:13:20 UTC 2023", in the JVM's time zone.
_MONTHS = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
)  # fmt: skip
_JAVA_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
    rf"({'|'.join(_MONTHS)}) +(\d{{1,2}}) "
    r"(\d\d):(\d\d):(\d\d) ([A-Za-z]{1,5}|GMT[+-]\d\d:\d\d) (\d{4})"
)
# The zone names Java prints, as hours from UTC (CST is North America's,
# not China's; an unknown name leaves the date as it is).
_ZONES = {
    "UTC": 0, "GMT": 0, "UT": 0, "Z": 0, "WET": 0, "WEST": 1, "BST": 1,
    "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "HKT": 8, "SGT": 8, "JST": 9, "KST": 9, "AEST": 10, "AEDT": 11,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6,
    "PST": -8, "PDT": -7, "AKST": -9, "AKDT": -8, "HST": -10,
}  # fmt: skip
_DATE_ELEMENTS = frozenset({"TimeStamp", "Date", "EarliestDeliveryTime", "ExpiryDate"})


def _date(text: str) -> str:
    """A Java ``Date.toString()`` date as xsd:dateTime (``2023-11-14T22:13:20
    +00:00``); any other text (xsd:dateTime, a relative ``P1D``, a zone we do
    not know) as it is."""
    match = _JAVA_DATE.fullmatch(text)
    if match is None:
        return text
    month, day, hour, minute, second, zone, year = match.groups()
    if zone.startswith("GMT") and len(zone) > 3:
        sign = 1 if zone[3] == "+" else -1
        offset = sign * timedelta(hours=int(zone[4:6]), minutes=int(zone[7:9]))
    elif zone.upper() in _ZONES:
        offset = timedelta(hours=_ZONES[zone.upper()])
    else:
        return text
    try:
        when = datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=timezone(offset),
        )
    except ValueError:  # Feb 30, 25:00 ...
        return text
    return when.isoformat()


def _check_mandatory(cls: type[Any], values: dict[str, Any]) -> None:
    """4004 naming every element in :data:`MANDATORY` that ``values`` lacks."""
    wanted = MANDATORY.get(cls, ())
    if not wanted:
        return
    attrs = {element: attr for element, attr, _, _ in SCHEMAS[cls]}
    missing = [e for e in wanted if values.get(attrs[e]) is None]
    if missing:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details=f"{cls.__name__} has no {', '.join(missing)}",
        )


def _status(el: etree._Element) -> m.Status:
    code = _child(el, "StatusCode")
    text = _child(el, "StatusText")
    details = _child(el, "Details")
    try:
        number = int(_text(code)) if code is not None else None
    except ValueError:
        number = None
    if number is None:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR, details="Status has no numeric StatusCode"
        )
    return m.Status(
        number,
        _text(text) if text is not None else "",
        _text(details) if details is not None else None,
    )


def parse_body(el: etree._Element) -> tuple[Any, str | None]:
    """The message value in a SOAP Body element, and its Content href if any.

    The content itself lives in other MIME parts: the caller resolves the
    href and replaces the ``content`` field.
    """
    cls = BY_NAME[_local(el)]
    index: dict[str, etree._Element] = {}
    recipients: list[etree._Element] = []
    for child in _children(el):
        name = _local(child)
        if name == SID:
            for grandchild in _children(child):
                index.setdefault(_local(grandchild), grandchild)
        else:
            index.setdefault(name, child)
            if name == "Recipients":
                recipients.append(child)
    values: dict[str, Any] = {}
    href = None
    for element, attr, kind, _ in SCHEMAS[cls]:
        found = index.get(element)
        if found is None:
            continue
        if kind is Kind.TEXT:
            text = _text(found)
            if text and element in _DATE_ELEMENTS:
                text = _date(text)
            if text:
                values[attr] = _enumerated(cls, found, text)
        elif kind is Kind.BOOL:
            values[attr] = _bool(found)
        elif kind is Kind.ADDRESS:
            values[attr] = _address(found)
        elif kind is Kind.RECIPIENTS:
            values[attr] = _recipients(recipients)
        elif kind is Kind.STATUS:
            values[attr] = _status(found)
        elif kind is Kind.CONTENT:
            href = (_attribute(found, "href") or "").strip()
    if "status" in FIELDS[cls] and "status" not in values:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR, details=f"{cls.__name__} has no Status"
        )
    _check_mandatory(cls, values)
    return cls(**values), href


# XML starts with "<" after any white space and UTF-8 byte-order mark, or
# with a UTF-16 byte-order mark.
_LOOKS_XML = re.compile(rb"\s*(?:\xef\xbb\xbf\s*)?<|\xff\xfe|\xfe\xff")


def parse_envelope(
    data: bytes, limits: XMLLimits | None = None
) -> tuple[m.Envelope, str | None]:
    """Parse a SOAP envelope holding an MM7 request, response or fault.

    Returns the envelope (content not yet resolved) and the Content href.
    Text that is not XML at all is not an envelope (4004); XML that is not
    well formed is a corrupt one (2007).
    """
    if _LOOKS_XML.match(data) is None:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details="the SOAP part is not XML, so not a SOAP Envelope",
        )
    root = parse_xml(data, limits)
    if _local(root) != "Envelope":
        raise MM7Error(
            StatusCode.VALIDATION_ERROR,
            details=f"the SOAP part is a {_local(root)}, not a SOAP Envelope",
        )
    header = _child(root, "Header")
    body = _child(root, "Body")
    if body is None:
        raise MM7Error(
            StatusCode.VALIDATION_ERROR, details="the SOAP Envelope has no Body"
        )
    transaction = _child(header, "TransactionID") if header is not None else None
    transaction_id = _text(transaction) if transaction is not None else ""
    payload = next(_children(body), None)
    if payload is None:
        raise MM7Error(StatusCode.VALIDATION_ERROR, details="the SOAP Body is empty")
    fault_code = fault_string = None
    if _local(payload) == "Fault":
        code_el = _child(payload, "faultcode")
        string_el = _child(payload, "faultstring")
        fault_code = _text(code_el) if code_el is not None else None
        fault_string = _text(string_el) if string_el is not None else None
        detail = _child(payload, "detail")
        inner = None
        if detail is not None:
            inner = next(
                (c for c in _children(detail) if _local(c) in FAULT_DETAILS), None
            )
        if inner is None:
            raise MM7Error(
                StatusCode.VALIDATION_ERROR,
                details=f"SOAP fault without an MM7 detail: {fault_code} {fault_string}",
            )
        payload = inner
    name = _local(payload)
    if name not in BY_NAME:
        raise MM7Error(
            StatusCode.UNSUPPORTED_OPERATION,
            details=f"{name} is not an MM7 operation this server knows",
        )
    namespace = (
        _namespace(payload)
        or (_namespace(transaction) if transaction is not None else None)
        or root.nsmap.get(None)
        or m.DEFAULT_NAMESPACE
    )
    if namespace == SOAP_ENV:
        namespace = m.DEFAULT_NAMESPACE
    message, href = parse_body(payload)
    version = _child(payload, "MM7Version")
    envelope = m.Envelope(
        transaction_id=transaction_id,
        message=message,
        namespace=namespace,
        fault_code=fault_code,
        fault_string=fault_string,
        mm7_version=_text(version) if version is not None else None,
    )
    return envelope, href
