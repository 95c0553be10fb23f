"""The one exception that carries an MM7 status to the peer."""

from __future__ import annotations

from mm7tx.mm7.messages import Status
from mm7tx.mm7.status import StatusCode


class MM7Error(Exception):
    """An MM7 transaction failed with ``status``: answered as a SOAP fault.

    Raise it from a codec, a processor or a sender; the resource turns it into
    a ``VASPErrorRsp`` or ``RSErrorRsp`` fault with this status.
    """

    def __init__(
        self,
        code: StatusCode | int,
        text: str | None = None,
        details: str | None = None,
    ) -> None:
        if isinstance(code, StatusCode):
            status = Status.of(code, text, details)
        else:
            status = Status(int(code), text or "", details)
        super().__init__(
            f"{status.code} {status.text}" + (f": {details}" if details else "")
        )
        self.status = status

    @property
    def is_transient(self) -> bool:
        """Whether the peer should retry: the service is only unavailable."""
        return self.status.code == StatusCode.SERVICE_UNAVAILABLE
