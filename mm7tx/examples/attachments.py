"""The README's example of a processor with an option of its own that does
blocking work in a thread and tolerates the same request twice.

It lives in the package so that a configuration can bind it with
``Path "/p/" { processor = "mm7tx.examples.attachments.SaveAttachments"
save_dir = "/var/lib/mm7tx/parts" }``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import Deferred

from mm7tx.gateway.processors import EmailProcessor
from mm7tx.mm7.messages import Content, DeliverReq, DeliverRsp
from mm7tx.transaction import Transaction


def save_parts(folder: Path, content: Content) -> None:
    """Blocking: run in a thread.  A part's file is named after its bytes,
    and written under a name of its own then renamed, so the same request
    twice, even at once, leaves the same files, never half of one."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in content:
        final = folder / hashlib.sha256(part.data).hexdigest()
        if not final.exists():
            partial = folder / f".{final.name}.{uuid.uuid4().hex}"
            partial.write_bytes(part.data)
            partial.replace(final)


class SaveAttachments(EmailProcessor):
    @dataclass(frozen=True)
    class Options:
        save_dir: str

    def deliver(
        self, request: DeliverReq, transaction: Transaction
    ) -> Deferred[DeliverRsp]:
        folder = Path(self.options.save_dir)
        saved = transaction.in_thread(save_parts, folder, request.content)
        mail = super().deliver
        return saved.addCallback(lambda _: mail(request, transaction))
