"""A delivery report as the store keeps it: what is needed to post it again
after a restart (the account's name, the DeliveryReportReq's fields, the
namespace), as JSON.  The account's URL and credentials are not kept: they
are looked up in the configuration when the report is posted, so no
password is ever written to the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from mm7tx.mm7 import messages as m

VERSION = 1
_ADDRESS_KINDS = ("Number", "ShortCode", "RFC2822Address")


class UnreadableReport(ValueError):
    """A stored report that is not one this version can post."""


@dataclass(frozen=True)
class StoredReport:
    """A report to post: to the account named ``account``, in ``namespace``."""

    account: str
    request: m.DeliveryReportReq
    namespace: str

    def encode(self) -> bytes:
        """One JSON object, keys sorted."""
        fields_ = {}
        for f in fields(m.DeliveryReportReq):
            value = getattr(self.request, f.name)
            if isinstance(value, m.Address):
                value = [value.value, value.kind, value.display_only]
            fields_[f.name] = value
        record = {
            "v": VERSION,
            "account": self.account,
            "namespace": self.namespace,
            "report": fields_,
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoredReport:
        """The inverse of :meth:`encode`; :class:`UnreadableReport` for
        anything else."""
        try:
            record = json.loads(data)
        except ValueError:
            raise UnreadableReport("not JSON") from None
        if not isinstance(record, dict) or record.get("v") != VERSION:
            raise UnreadableReport("not a report of this version")
        account, namespace = record.get("account"), record.get("namespace")
        report = record.get("report")
        if not (
            isinstance(account, str)
            and isinstance(namespace, str)
            and isinstance(report, dict)
        ):
            raise UnreadableReport("no account, namespace or report")
        values: dict[str, Any] = {}
        for f in fields(m.DeliveryReportReq):
            value = report.get(f.name)
            if f.name in ("recipient", "sender") and value is not None:
                value = _address(value)
            elif value is not None and not isinstance(value, str):
                raise UnreadableReport(f"{f.name} is not text")
            if value is not None:
                values[f.name] = value
        return cls(account, m.DeliveryReportReq(**values), namespace)


def _address(value: Any) -> m.Address:
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and value[1] in _ADDRESS_KINDS
        and isinstance(value[2], bool)
    ):
        return m.Address(value[0], value[1], value[2])
    raise UnreadableReport("an address is not [value, kind, display_only]")
