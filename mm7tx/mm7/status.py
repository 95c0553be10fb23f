"""MM7 request status codes (3GPP TS 23.140 table, with the texts Mbuni uses)."""

from __future__ import annotations

from enum import IntEnum


class StatusCode(IntEnum):
    """The request status codes of 3GPP TS 23.140, named after their texts."""

    SUCCESS = 1000
    PARTIAL_SUCCESS = 1100
    CLIENT_ERROR = 2000
    OPERATION_RESTRICTED = 2001
    ADDRESS_ERROR = 2002
    ADDRESS_NOT_FOUND = 2003
    MULTIMEDIA_CONTENT_REFUSED = 2004
    MESSAGE_ID_NOT_FOUND = 2005
    LINKED_ID_NOT_FOUND = 2006
    MESSAGE_FORMAT_CORRUPT = 2007
    APPLICATION_ID_NOT_FOUND = 2008
    REPLY_APPLICATION_ID_NOT_FOUND = 2009
    SERVER_ERROR = 3000
    NOT_POSSIBLE = 3001
    MESSAGE_REJECTED = 3002
    MULTIPLE_ADDRESSES_NOT_SUPPORTED = 3003
    APPLICATION_ADDRESSING_NOT_SUPPORTED = 3004
    GENERAL_SERVICE_ERROR = 4000
    IMPROPER_IDENTIFICATION = 4001
    UNSUPPORTED_VERSION = 4002
    UNSUPPORTED_OPERATION = 4003
    VALIDATION_ERROR = 4004
    SERVICE_ERROR = 4005
    SERVICE_UNAVAILABLE = 4006
    SERVICE_DENIED = 4007
    APPLICATION_DENIED = 4008

    @property
    def text(self) -> str:
        """The standard StatusText for this code."""
        return _TEXTS[self]

    @property
    def is_success(self) -> bool:
        return self.value < 2000


_TEXTS = {
    StatusCode.SUCCESS: "Success",
    StatusCode.PARTIAL_SUCCESS: "Partial success",
    StatusCode.CLIENT_ERROR: "Client error",
    StatusCode.OPERATION_RESTRICTED: "Operation restricted",
    StatusCode.ADDRESS_ERROR: "Address Error",
    StatusCode.ADDRESS_NOT_FOUND: "Address Not Found",
    StatusCode.MULTIMEDIA_CONTENT_REFUSED: "Multimedia content refused",
    StatusCode.MESSAGE_ID_NOT_FOUND: "Message ID Not found",
    StatusCode.LINKED_ID_NOT_FOUND: "LinkedID not found",
    StatusCode.MESSAGE_FORMAT_CORRUPT: "Message format corrupt",
    StatusCode.APPLICATION_ID_NOT_FOUND: "Application ID not found",
    StatusCode.REPLY_APPLICATION_ID_NOT_FOUND: "Reply Application ID not found",
    StatusCode.SERVER_ERROR: "Server Error",
    StatusCode.NOT_POSSIBLE: "Not Possible",
    StatusCode.MESSAGE_REJECTED: "Message rejected",
    StatusCode.MULTIPLE_ADDRESSES_NOT_SUPPORTED: "Multiple addresses not supported",
    StatusCode.APPLICATION_ADDRESSING_NOT_SUPPORTED: (
        "Application Addressing not supported"
    ),
    StatusCode.GENERAL_SERVICE_ERROR: "General service error",
    StatusCode.IMPROPER_IDENTIFICATION: "Improper identification",
    StatusCode.UNSUPPORTED_VERSION: "Unsupported version",
    StatusCode.UNSUPPORTED_OPERATION: "Unsupported operation",
    StatusCode.VALIDATION_ERROR: "Validation error",
    StatusCode.SERVICE_ERROR: "Service error",
    StatusCode.SERVICE_UNAVAILABLE: "Service unavailable",
    StatusCode.SERVICE_DENIED: "Service denied",
    StatusCode.APPLICATION_DENIED: "Application denied",
}
