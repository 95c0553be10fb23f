"""The MM7 transactions as small immutable values, named after their elements.

These are pure data: the codec turns them into SOAP and back, processors receive
and return them.  Optional elements are ``None`` (or empty) when absent.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import FrozenInstanceError, dataclass, field
from typing import Literal, TypeAlias

from mm7tx.mm7.status import StatusCode

DEFAULT_MM7_VERSION = "6.8.0"
DEFAULT_NAMESPACE = (
    "http://www.3gpp.org/ftp/Specs/archive/23_series/23.140/schema/REL-6-MM7-1-4"
)

# The MM7Version mm7tx sends with a namespace of a release (REL-5-MM7-1-x,
# REL-6-MM7-1-x) when the version it was given is of another release: the
# one real peers pair with that release's namespaces (see version_for).
RELEASE_VERSIONS = {"5": "5.3.0", "6": "6.8.0"}
_RELEASE = re.compile(r"/REL-(\d{1,2})-MM7-\d{1,2}-\d{1,2}$")

AddressKind = Literal["RFC2822Address", "Number", "ShortCode"]
ADDRESS_KINDS: tuple[AddressKind, ...] = ("RFC2822Address", "Number", "ShortCode")

# The schema's spellings of the enumerated elements (3GPP TS 23.140 Rel-5/6):
# a delivery report's MMStatus as the standard has it, and as read, plus the
# vendor values of mm7-reference's status tables.
STANDARD_DELIVERY_MM_STATUS = (
    "Expired",
    "Retrieved",
    "Rejected",
    "Deferred",
    "Unrecognised",
    "Indeterminate",
    "Forwarded",
    "Unreachable",
    "DeliveryConditionNotMet",
)
DELIVERY_MM_STATUS = (*STANDARD_DELIVERY_MM_STATUS, "NotSupported")
READ_MM_STATUS = ("Read", "Deleted", "Indeterminate")
PRIORITIES = ("Normal", "High", "Low")
MESSAGE_CLASSES = ("Personal", "Informational", "Advertisement", "Auto")

# Where a ``/TYPE=...`` suffix starts (found, then cut: ``/TYPE=.*$`` with
# ``sub`` is tried at every "/TYPE=" of a value and runs to its line end).
_TYPE_SUFFIX = re.compile(r"/TYPE=", re.IGNORECASE)
_NOT_DIGIT = re.compile(r"[\s+\-().]")


def version_for(namespace: str, version: str) -> str:
    """An MM7Version consistent with ``namespace``: ``version`` itself when
    it is of the namespace's release (``5.x.y`` for ``REL-5-MM7-1-x``), else
    the usual one of that release (:data:`RELEASE_VERSIONS`), so that a
    REL-5 request never says 6.8.0.  Other namespaces keep ``version``."""
    match = _RELEASE.search(namespace)
    if match is None or version.split(".")[0] == match.group(1):
        return version
    return RELEASE_VERSIONS.get(match.group(1), version)


@dataclass(frozen=True, slots=True)
class Address:
    """One MM7 address: an ``RFC2822Address``, a ``Number`` or a ``ShortCode``."""

    value: str
    kind: AddressKind = "Number"
    display_only: bool = False

    @classmethod
    def guess(cls, text: str) -> Address:
        """An address given as bare text (Huawei style): email if it has an ``@``."""
        text = text.strip()
        if "@" in text and not text.upper().endswith("/TYPE=PLMN"):
            return cls(text, "RFC2822Address")
        return cls(text, "Number")

    @property
    def is_email(self) -> bool:
        return self.kind == "RFC2822Address"

    @property
    def digits(self) -> str:
        """The number without ``+``, spaces, dashes or a ``/TYPE=...`` suffix."""
        suffix = _TYPE_SUFFIX.search(self.value)
        value = self.value[: suffix.start()] if suffix else self.value
        return _NOT_DIGIT.sub("", value)


@dataclass(frozen=True, slots=True)
class Recipients:
    """The ``Recipients`` element: To, Cc and Bcc address lists."""

    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()

    @property
    def all(self) -> tuple[Address, ...]:
        return self.to + self.cc + self.bcc


@dataclass(frozen=True, slots=True)
class Status:
    """The ``Status`` element of every response and fault."""

    code: int
    text: str
    details: str | None = None

    @classmethod
    def of(
        cls, code: StatusCode, text: str | None = None, details: str | None = None
    ) -> Status:
        return cls(int(code), text or code.text, details)

    @property
    def is_success(self) -> bool:
        return 1000 <= self.code < 2000


class ContentPart:
    """One leaf of the multimedia content, its bytes decoded from any encoding.

    Immutable, compared and hashed by its fields, like the dataclasses here.
    A part received as valid base64 (:func:`from_base64`) keeps the text it
    came as and decodes it only when ``data`` is first read, so that the
    email can carry the same text without decoding and encoding it again;
    once decoded, the text is dropped (one copy alive, never both).
    """

    __slots__ = (
        "_base64",
        "_data",
        "content_id",
        "content_location",
        "media_type",
        "params",
    )
    __match_args__ = ("media_type", "data", "params", "content_id", "content_location")
    media_type: str
    params: tuple[tuple[str, str], ...]
    content_id: str | None
    content_location: str | None
    _data: bytes | None
    _base64: bytes | None

    def __init__(
        self,
        media_type: str,
        data: bytes = b"",
        params: tuple[tuple[str, str], ...] = (),
        content_id: str | None = None,
        content_location: str | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "media_type", media_type)
        init(self, "params", params)
        init(self, "content_id", content_id)
        init(self, "content_location", content_location)
        init(self, "_data", data)
        init(self, "_base64", None)

    @classmethod
    def from_base64(
        cls,
        media_type: str,
        lines: bytes,
        params: tuple[tuple[str, str], ...] = (),
        content_id: str | None = None,
        content_location: str | None = None,
    ) -> ContentPart:
        """A part whose bytes are ``lines`` decoded: base64 lines of at most
        76 characters, each ending in LF, as valid MIME base64 (checked by
        the codec, :func:`mm7tx.codec.mime.mime_base64`)."""
        part = cls(media_type, b"", params, content_id, content_location)
        object.__setattr__(part, "_data", None)
        object.__setattr__(part, "_base64", lines)
        return part

    @property
    def data(self) -> bytes:
        data = self._data
        if data is None:
            data = binascii.a2b_base64(self._base64 or b"")
            object.__setattr__(self, "_data", data)
            object.__setattr__(self, "_base64", None)
        return data

    @property
    def base64(self) -> bytes | None:
        """The base64 lines (LF ends) the part came as, while ``data`` has
        not been read; else None."""
        return self._base64

    def _key(self) -> tuple[object, ...]:
        return (
            self.media_type,
            self.data,
            self.params,
            self.content_id,
            self.content_location,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ContentPart(media_type={self.media_type!r}, data={self.data!r}, "
            f"params={self.params!r}, content_id={self.content_id!r}, "
            f"content_location={self.content_location!r})"
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def param(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key.lower() == name:
                return value
        return None

    @property
    def charset(self) -> str | None:
        return self.param("charset")

    @property
    def filename(self) -> str | None:
        return self.param("name") or self.content_location

    @property
    def is_smil(self) -> bool:
        return self.media_type == "application/smil"


Content: TypeAlias = tuple[ContentPart, ...]


# Requests ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliverReq:
    """MM7_deliver.REQ: the MMSC delivers a message from a handset to the VASP."""

    mm7_version: str = DEFAULT_MM7_VERSION
    mms_relay_server_id: str | None = None
    vasp_id: str | None = None
    vas_id: str | None = None
    linked_id: str | None = None
    sender: Address | None = None
    recipients: Recipients = field(default_factory=Recipients)
    timestamp: str | None = None
    reply_charging_id: str | None = None
    priority: str | None = None
    subject: str | None = None
    applic_id: str | None = None
    reply_applic_id: str | None = None
    aux_applic_info: str | None = None
    content: Content = ()


@dataclass(frozen=True, slots=True)
class DeliveryReportReq:
    """MM7_delivery_report.REQ: what became of a message the VASP submitted."""

    mm7_version: str = DEFAULT_MM7_VERSION
    mms_relay_server_id: str | None = None
    message_id: str | None = None
    recipient: Address | None = None
    sender: Address | None = None
    date: str | None = None
    mm_status: str | None = None
    status_text: str | None = None
    applic_id: str | None = None
    reply_applic_id: str | None = None
    aux_applic_info: str | None = None


@dataclass(frozen=True, slots=True)
class ReadReplyReq:
    """MM7_read_reply.REQ: the handset read (or deleted) a submitted message."""

    mm7_version: str = DEFAULT_MM7_VERSION
    mms_relay_server_id: str | None = None
    message_id: str | None = None
    recipient: Address | None = None
    sender: Address | None = None
    timestamp: str | None = None
    mm_status: str | None = None
    status_text: str | None = None
    applic_id: str | None = None
    reply_applic_id: str | None = None
    aux_applic_info: str | None = None


@dataclass(frozen=True, slots=True)
class SubmitReq:
    """MM7_submit.REQ: a VASP submits a message for its recipients."""

    mm7_version: str = DEFAULT_MM7_VERSION
    vasp_id: str | None = None
    vas_id: str | None = None
    sender_address: Address | None = None
    recipients: Recipients = field(default_factory=Recipients)
    service_code: str | None = None
    linked_id: str | None = None
    message_class: str | None = None
    timestamp: str | None = None
    earliest_delivery_time: str | None = None
    expiry_date: str | None = None
    delivery_report: bool | None = None
    read_reply: bool | None = None
    priority: str | None = None
    subject: str | None = None
    charged_party: str | None = None
    distribution_indicator: bool | None = None
    applic_id: str | None = None
    reply_applic_id: str | None = None
    aux_applic_info: str | None = None
    content: Content = ()


@dataclass(frozen=True, slots=True)
class CancelReq:
    """MM7_cancel.REQ: a VASP asks to recall a submitted message."""

    mm7_version: str = DEFAULT_MM7_VERSION
    vasp_id: str | None = None
    vas_id: str | None = None
    sender_address: Address | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReplaceReq:
    """MM7_replace.REQ: a VASP replaces the content of a submitted message."""

    mm7_version: str = DEFAULT_MM7_VERSION
    vasp_id: str | None = None
    vas_id: str | None = None
    sender_address: Address | None = None
    message_id: str | None = None
    service_code: str | None = None
    timestamp: str | None = None
    earliest_delivery_time: str | None = None
    read_reply: bool | None = None
    distribution_indicator: bool | None = None
    content: Content = ()


# Responses -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliverRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION
    service_code: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReportRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


@dataclass(frozen=True, slots=True)
class ReadReplyRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


@dataclass(frozen=True, slots=True)
class SubmitRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


@dataclass(frozen=True, slots=True)
class ReplaceRsp:
    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


@dataclass(frozen=True, slots=True)
class VASPErrorRsp:
    """The fault detail a VASP answers with."""

    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


@dataclass(frozen=True, slots=True)
class RSErrorRsp:
    """The fault detail an MMSC (relay/server) answers with."""

    status: Status
    mm7_version: str = DEFAULT_MM7_VERSION


Request: TypeAlias = (
    DeliverReq | DeliveryReportReq | ReadReplyReq | SubmitReq | CancelReq | ReplaceReq
)
Response: TypeAlias = (
    DeliverRsp
    | DeliveryReportRsp
    | ReadReplyRsp
    | SubmitRsp
    | CancelRsp
    | ReplaceRsp
    | VASPErrorRsp
    | RSErrorRsp
)

RESPONSE_FOR: dict[type[Request], type[Response]] = {
    DeliverReq: DeliverRsp,
    DeliveryReportReq: DeliveryReportRsp,
    ReadReplyReq: ReadReplyRsp,
    SubmitReq: SubmitRsp,
    CancelReq: CancelRsp,
    ReplaceReq: ReplaceRsp,
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A whole MM7 message: the SOAP header's TransactionID, the MM7 namespace
    the peer used, and the request or response in the body.

    ``mm7_version`` is the text of the message's MM7Version element as
    received, None when it had none (the message's own ``mm7_version`` then
    holds the default); it is not read when encoding."""

    transaction_id: str
    message: Request | Response
    namespace: str = DEFAULT_NAMESPACE
    fault_code: str | None = None
    fault_string: str | None = None
    content_href: str | None = None
    mm7_version: str | None = None

    @property
    def is_fault(self) -> bool:
        return isinstance(self.message, (VASPErrorRsp, RSErrorRsp))
