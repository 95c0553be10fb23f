"""The Maildir sender: the embedded default, so that ``twistd -n mm7`` works
on a bare machine with no relay."""

from __future__ import annotations

import errno
import mailbox
import os
import tempfile
from email.message import EmailMessage

from twisted.internet import defer
from zope.interface import implementer

from mm7tx.errors import MM7Error
from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.status import StatusCode
from mm7tx.wire import WIRE_POLICY

_FILE_POLICY = WIRE_POLICY  # folds in linear time, as the SMTP sender does


class MaildirError(Exception):
    """The Maildir cannot be made or written into: every message would
    fail, so mm7tx does not start."""


@implementer(IMailSender)
class MaildirSender:
    """Delivers into a Maildir (the embedded default, for a bare machine).

    The standard library's ``mailbox.Maildir`` writes into ``tmp/``, fsyncs
    the file and links it into ``new/``, so a message is either whole or
    absent; the ``new/`` directory is then fsynced too, so that the entry
    survives a crash, before the answer (1000) can go.  The write is local
    and small; it runs in the reactor thread.

    A Maildir that cannot be made, or whose ``tmp/`` and ``new/`` cannot be
    written into (a read-only file system under systemd's
    ``ProtectSystem=strict``, say), raises :class:`MaildirError` at once.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        try:
            # Made here, not by mailbox.Maildir (which checks, then makes):
            # workers starting at once make it together.
            for folder in ("tmp", "new", "cur"):
                _make_folder(os.path.join(self.path, folder))
            self._maildir = mailbox.Maildir(self.path, create=False)
            for folder in ("tmp", "new"):
                _try_writing(os.path.join(self.path, folder))
        except OSError as e:
            raise MaildirError(
                f"cannot deliver into the Maildir {self.path}: {e.strerror or e}"
            ) from None
        self.description = f"Maildir {self.path}"

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        del message["Return-Path"]
        del message["Delivered-To"]
        message["Return-Path"] = f"<{sender}>"
        message["Delivered-To"] = ", ".join(recipients)
        try:
            key = self._maildir.add(message.as_bytes(policy=_FILE_POLICY))
            _fsync_directory(os.path.join(self.path, "new"))
        except OSError as e:
            return defer.fail(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"cannot write to the Maildir: {e.strerror}",
                )
            )
        return defer.succeed(
            SendResult(tuple(recipients), reply=f"stored as new/{key}")
        )


def _make_folder(path: str) -> None:
    """``path`` made if it is not there (by this process or another)."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except FileExistsError:  # there, and not a folder
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None


def _try_writing(folder: str) -> None:
    """Make and remove a file in ``folder`` (a dot file, which Maildir
    readers skip); raises the ``OSError`` a delivery would meet."""
    fd, name = tempfile.mkstemp(prefix=".mm7tx-check-", dir=folder)
    os.close(fd)
    os.unlink(name)


def _fsync_directory(path: str) -> None:
    """Make the entries of directory ``path`` durable (the file's own fsync
    does not cover its name in the directory)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
