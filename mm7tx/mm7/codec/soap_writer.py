"""The SOAP 1.1 envelope of MM7 going out: message values to XML bytes."""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from mm7tx.mm7 import messages as m
from mm7tx.mm7.codec.schema import SCHEMAS, SOAP_ENV, Kind


def _sub(
    parent: etree._Element, ns: str, name: str, text: str | None = None
) -> etree._Element:
    el = etree.SubElement(parent, f"{{{ns}}}{name}")
    if text is not None:
        # What XML 1.0 cannot carry (control characters, lone surrogates,
        # U+FFFE/U+FFFF; lxml raises on them) becomes U+FFFD.
        el.text = _NOT_XML.sub("\ufffd", text)
    return el


_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _build_address(parent: etree._Element, ns: str, address: m.Address) -> None:
    el = _sub(parent, ns, address.kind, address.value)
    if address.display_only:
        el.set("displayOnly", "true")


def build_body(
    parent: etree._Element, ns: str, message: Any, content_href: str | None = None
) -> etree._Element:
    """Append the element for ``message`` (request or response) to ``parent``."""
    cls = type(message)
    # The message element declares the MM7 namespace as its default, as the
    # 3GPP examples do, so that its children read unprefixed.
    nsmap: Any = {None: ns}
    root = etree.SubElement(parent, f"{{{ns}}}{cls.__name__}", nsmap=nsmap)
    groups: dict[str, etree._Element] = {}
    for element, attr, kind, group in SCHEMAS[cls]:
        value = getattr(message, attr)
        if kind is Kind.CONTENT:
            if content_href is not None:
                _sub(root, ns, "Content").set("href", content_href)
            continue
        if value is None or (kind is Kind.RECIPIENTS and not value.all):
            continue
        target = root
        if group is not None:
            if group not in groups:
                groups[group] = _sub(root, ns, group)
            target = groups[group]
        if kind is Kind.TEXT:
            _sub(target, ns, element, value)
        elif kind is Kind.BOOL:
            _sub(target, ns, element, "true" if value else "false")
        elif kind is Kind.ADDRESS:
            _build_address(_sub(target, ns, element), ns, value)
        elif kind is Kind.RECIPIENTS:
            recipients = _sub(target, ns, element)
            for name, addresses in (
                ("To", value.to),
                ("Cc", value.cc),
                ("Bcc", value.bcc),
            ):
                if addresses:
                    holder = _sub(recipients, ns, name)
                    for address in addresses:
                        _build_address(holder, ns, address)
        elif kind is Kind.STATUS:
            status = _sub(target, ns, element)
            _sub(status, ns, "StatusCode", str(value.code))
            _sub(status, ns, "StatusText", value.text)
            if value.details:
                _sub(status, ns, "Details", value.details)
    return root


def build_envelope(
    envelope: m.Envelope,
    content_href: str | None = None,
) -> bytes:
    """Serialise an envelope; a ``VASPErrorRsp``/``RSErrorRsp`` becomes a Fault."""
    ns = envelope.namespace
    root = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap={"env": SOAP_ENV})
    header = etree.SubElement(root, f"{{{SOAP_ENV}}}Header")
    transaction = etree.SubElement(header, f"{{{ns}}}TransactionID", nsmap={"mm7": ns})
    transaction.set(f"{{{SOAP_ENV}}}mustUnderstand", "1")
    transaction.text = envelope.transaction_id
    body = etree.SubElement(root, f"{{{SOAP_ENV}}}Body")
    message = envelope.message
    if isinstance(message, (m.VASPErrorRsp, m.RSErrorRsp)):
        fault = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
        code = message.status.code
        side = (
            "Client" if 2000 <= code < 3000 or code in (4001, 4003, 4004) else "Server"
        )
        etree.SubElement(fault, "faultcode").text = envelope.fault_code or f"env:{side}"
        etree.SubElement(fault, "faultstring").text = (
            envelope.fault_string or message.status.text or side + " error"
        )
        parent = etree.SubElement(fault, "detail")
    else:
        parent = body
    build_body(parent, ns, message, content_href)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))
