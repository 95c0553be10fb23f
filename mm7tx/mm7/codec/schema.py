"""Which element of the MM7 schema holds which field of which message: the
tables the SOAP reader (:mod:`mm7tx.mm7.codec.soap`) and writer
(:mod:`mm7tx.mm7.codec.soap_writer`) both follow."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum, auto
from typing import Any

from mm7tx.mm7 import messages as m

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


class Kind(Enum):
    TEXT = auto()
    BOOL = auto()
    ADDRESS = auto()
    RECIPIENTS = auto()
    CONTENT = auto()
    STATUS = auto()


# (element, attribute, kind, wrapper element or None), in schema order.
Spec = tuple[str, str, Kind, str | None]
_T, _B, _A, _R, _C, _S = (
    Kind.TEXT,
    Kind.BOOL,
    Kind.ADDRESS,
    Kind.RECIPIENTS,
    Kind.CONTENT,
    Kind.STATUS,
)
SID = "SenderIdentification"

_APPLIC: tuple[Spec, ...] = (
    ("ApplicID", "applic_id", _T, None),
    ("ReplyApplicID", "reply_applic_id", _T, None),
    ("AuxApplicInfo", "aux_applic_info", _T, None),
)
_SENDER_ID: tuple[Spec, ...] = (
    ("VASPID", "vasp_id", _T, SID),
    ("VASID", "vas_id", _T, SID),
    ("SenderAddress", "sender_address", _A, SID),
)

SCHEMAS: dict[type[Any], tuple[Spec, ...]] = {
    m.DeliverReq: (
        ("MM7Version", "mm7_version", _T, None),
        ("MMSRelayServerID", "mms_relay_server_id", _T, None),
        ("VASPID", "vasp_id", _T, None),
        ("VASID", "vas_id", _T, None),
        ("LinkedID", "linked_id", _T, None),
        ("Sender", "sender", _A, None),
        ("Recipients", "recipients", _R, None),
        ("TimeStamp", "timestamp", _T, None),
        ("ReplyChargingID", "reply_charging_id", _T, None),
        ("Priority", "priority", _T, None),
        ("Subject", "subject", _T, None),
        *_APPLIC,
        ("Content", "content", _C, None),
    ),
    m.DeliveryReportReq: (
        ("MM7Version", "mm7_version", _T, None),
        ("MMSRelayServerID", "mms_relay_server_id", _T, None),
        ("MessageID", "message_id", _T, None),
        ("Recipient", "recipient", _A, None),
        ("Sender", "sender", _A, None),
        ("Date", "date", _T, None),
        ("MMStatus", "mm_status", _T, None),
        ("StatusText", "status_text", _T, None),
        *_APPLIC,
    ),
    m.ReadReplyReq: (
        ("MM7Version", "mm7_version", _T, None),
        ("MMSRelayServerID", "mms_relay_server_id", _T, None),
        ("MessageID", "message_id", _T, None),
        ("Recipient", "recipient", _A, None),
        ("Sender", "sender", _A, None),
        ("TimeStamp", "timestamp", _T, None),
        ("MMStatus", "mm_status", _T, None),
        ("StatusText", "status_text", _T, None),
        *_APPLIC,
    ),
    m.SubmitReq: (
        ("MM7Version", "mm7_version", _T, None),
        *_SENDER_ID,
        ("Recipients", "recipients", _R, None),
        ("ServiceCode", "service_code", _T, None),
        ("LinkedID", "linked_id", _T, None),
        ("MessageClass", "message_class", _T, None),
        ("TimeStamp", "timestamp", _T, None),
        ("EarliestDeliveryTime", "earliest_delivery_time", _T, None),
        ("ExpiryDate", "expiry_date", _T, None),
        ("DeliveryReport", "delivery_report", _B, None),
        ("ReadReply", "read_reply", _B, None),
        ("Priority", "priority", _T, None),
        ("Subject", "subject", _T, None),
        ("ChargedParty", "charged_party", _T, None),
        ("DistributionIndicator", "distribution_indicator", _B, None),
        *_APPLIC,
        ("Content", "content", _C, None),
    ),
    m.CancelReq: (
        ("MM7Version", "mm7_version", _T, None),
        *_SENDER_ID,
        ("MessageID", "message_id", _T, None),
    ),
    m.ReplaceReq: (
        ("MM7Version", "mm7_version", _T, None),
        *_SENDER_ID,
        ("MessageID", "message_id", _T, None),
        ("ServiceCode", "service_code", _T, None),
        ("TimeStamp", "timestamp", _T, None),
        ("EarliestDeliveryTime", "earliest_delivery_time", _T, None),
        ("ReadReply", "read_reply", _B, None),
        ("DistributionIndicator", "distribution_indicator", _B, None),
        ("Content", "content", _C, None),
    ),
    m.DeliverRsp: (
        ("MM7Version", "mm7_version", _T, None),
        ("Status", "status", _S, None),
        ("ServiceCode", "service_code", _T, None),
    ),
    m.SubmitRsp: (
        ("MM7Version", "mm7_version", _T, None),
        ("Status", "status", _S, None),
        ("MessageID", "message_id", _T, None),
    ),
}
for _cls in (
    m.DeliveryReportRsp,
    m.ReadReplyRsp,
    m.CancelRsp,
    m.ReplaceRsp,
    m.VASPErrorRsp,
    m.RSErrorRsp,
):
    SCHEMAS[_cls] = (
        ("MM7Version", "mm7_version", _T, None),
        ("Status", "status", _S, None),
    )

# What a request means nothing without (mm7-reference/information-elements.md):
# refused with 4004 naming the missing elements.  The other mandatory ones
# fall back (README, "What is refused and what falls back"): a report's
# Sender and a DeliverReq's Sender to the default address, a report's Date
# or TimeStamp to the time it arrived; a SubmitReq without recipients is the
# resource's 2002 "No recipient".
MANDATORY: dict[type[Any], tuple[str, ...]] = {
    m.DeliveryReportReq: ("MessageID", "Recipient", "MMStatus"),
    m.ReadReplyReq: ("MessageID", "Recipient", "MMStatus"),
    m.CancelReq: ("MessageID",),
    m.ReplaceReq: ("MessageID",),
}

# Enumerated elements, by request and element: any case is read, the
# schema's spelling kept; anything else is a 2007.
ENUMERATED: dict[tuple[type[Any], str], tuple[str, ...]] = {
    (m.DeliveryReportReq, "MMStatus"): m.DELIVERY_MM_STATUS,
    (m.ReadReplyReq, "MMStatus"): m.READ_MM_STATUS,
    (m.DeliverReq, "Priority"): m.PRIORITIES,
    (m.SubmitReq, "Priority"): m.PRIORITIES,
    (m.SubmitReq, "MessageClass"): m.MESSAGE_CLASSES,
}
SPELLINGS: dict[tuple[type[Any], str], dict[str, str]] = {
    key: {value.lower(): value for value in values}
    for key, values in ENUMERATED.items()
}
# The American spelling vendors send (mm7-mmstatus-values.tsv).
SPELLINGS[m.DeliveryReportReq, "MMStatus"]["unrecognized"] = "Unrecognised"

BY_NAME: dict[str, type[Any]] = {cls.__name__: cls for cls in SCHEMAS}
FIELDS = {cls: frozenset(f.name for f in fields(cls)) for cls in SCHEMAS}
FAULT_DETAILS = ("VASPErrorRsp", "RSErrorRsp")
