"""The Maildir sender: the embedded default, so that ``twistd -n mm7`` works
on a bare machine with no relay."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import tempfile
import time
from email.message import EmailMessage

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mm7tx.interfaces import IMailSender, SendResult
from mm7tx.mail.wire import WIRE_POLICY
from mm7tx.mm7.errors import MM7Error
from mm7tx.mm7.status import StatusCode
from mm7tx.offload import Offload, inline

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.maildir")

_FILE_POLICY = WIRE_POLICY  # folds in linear time, as the SMTP sender does

# Seconds after which a file in tmp/ is a delivery that never finished (a
# crash) and may be removed: the bound the Maildir specification (D. J.
# Bernstein, maildir(5)) gives readers, "files in tmp/ older than 36 hours".
TMP_MAX_AGE = 36 * 3600.0
# Per process: with the time and pid, makes each file name unique.
_deliveries = itertools.count()


class MaildirError(Exception):
    """The Maildir cannot be made or written into: every message would
    fail, so mm7tx does not start."""


@implementer(IMailSender)
class MaildirSender:
    """Delivers into a Maildir (the embedded default, for a bare machine).

    Each message is written into ``tmp/``, fsynced and linked into ``new/``
    (:func:`_deliver`), so it is either whole or absent; the ``new/``
    directory is then fsynced too, so that the entry survives a crash,
    before the answer (1000) can go.  A write refused on the way (a full
    disk) answers 4006 and removes its ``tmp/`` file.  Given an ``offload``
    (:mod:`mm7tx.offload`) the write runs there, off the reactor thread:
    an fsync waits as long as the disk is busy.

    A Maildir that cannot be made, or whose ``tmp/`` and ``new/`` cannot be
    written into (a read-only file system under systemd's
    ``ProtectSystem=strict``, say), raises :class:`MaildirError` at once.
    Once made, the files a crash left in ``tmp/`` more than
    :data:`TMP_MAX_AGE` ago are removed, and counted in the log.
    """

    def __init__(self, path: str, offload: Offload | None = None) -> None:
        self.path = os.path.abspath(path)
        self.offload = offload
        try:
            # Made whether or not it is there (never checked, then made):
            # workers starting at once make it together.
            for folder in ("tmp", "new", "cur"):
                _make_folder(os.path.join(self.path, folder))
            for folder in ("tmp", "new"):
                _try_writing(os.path.join(self.path, folder))
        except OSError as e:
            raise MaildirError(
                f"cannot deliver into the Maildir {self.path}: {e.strerror or e}"
            ) from None
        self.description = f"Maildir {self.path}"
        _sweep(os.path.join(self.path, "tmp"), time.time() - TMP_MAX_AGE)

    def close(self) -> defer.Deferred[None]:
        return defer.succeed(None)

    def send(
        self, sender: str, recipients: list[str], message: EmailMessage
    ) -> defer.Deferred[SendResult]:
        del message["Return-Path"]
        del message["Delivered-To"]
        message["Return-Path"] = f"<{sender}>"
        message["Delivered-To"] = ", ".join(recipients)

        def write() -> str | _Delivered:
            try:
                key: str | _Delivered = _deliver(
                    self.path, message.as_bytes(policy=_FILE_POLICY)
                )
            except _Delivered as e:
                key = e
            _fsync_directory(os.path.join(self.path, "new"))
            return key

        def stored(key: str | _Delivered) -> SendResult:
            if isinstance(key, _Delivered):
                log.warn(
                    "Could not remove {file} once delivered: {why}",
                    file=key.file,
                    why=key.why,
                )
                key = key.name
            return SendResult(tuple(recipients), reply=f"stored as new/{key}")

        def refused(reason: Failure) -> Failure:
            reason.trap(OSError)
            return Failure(
                MM7Error(
                    StatusCode.SERVICE_UNAVAILABLE,
                    details=f"cannot write to the Maildir: {reason.value.strerror}",  # type: ignore[union-attr]
                )
            )

        # In a thread whatever its size: an fsync may wait for the disk as
        # long as it is busy (another message of tens of megabytes written).
        writing = self.offload(write) if self.offload is not None else inline(write)
        return writing.addCallbacks(stored, refused)


def _deliver(path: str, data: bytes) -> str:
    """Write ``data`` into the Maildir at ``path`` as a new message: into a
    file of ``tmp/``, fsynced, then linked into ``new/`` (renamed where the
    file system has no hard links); its name.

    Any ``OSError`` on the way removes the ``tmp/`` file before it is
    raised, so that a refused delivery leaves nothing behind.  (The
    standard library's ``mailbox.Maildir.add`` leaves it, with its file
    descriptor open, when the flush or the fsync fails: a full disk.)
    """
    name = _unique_name()
    tmp = os.path.join(path, "tmp", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        try:
            left = memoryview(data)
            while left:
                written = os.write(fd, left)
                if written <= 0:  # never for a file, but a loop must end
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                left = left[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        new = os.path.join(path, "new", name)
        try:
            os.link(tmp, new)
        except PermissionError:  # no hard links on this file system
            os.rename(tmp, new)
            return name
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        os.unlink(tmp)
    except OSError as e:  # delivered all the same: the sweep takes it later
        # Logged by the caller: this runs in a thread (mm7tx.offload), and
        # Twisted's log observers expect the reactor's.
        raise _Delivered(name, tmp, str(e.strerror or e)) from None
    return name


class _Delivered(Exception):
    """Delivered as ``name``, but its ``tmp/`` file could not be removed."""

    def __init__(self, name: str, file: str, why: str) -> None:
        super().__init__(name, file, why)
        self.name, self.file, self.why = name, file, why


def _unique_name() -> str:
    """A file name no other delivery uses (the Maildir specification's
    ``time.MmicrosecondsPpidQcount.host``)."""
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_deliveries)}.{host}"


def _sweep(folder: str, before: float) -> None:
    """Remove the files of ``folder`` last modified ``before`` (a time), and
    log how many; a file that cannot be removed is counted and left."""
    removed = failed = 0
    why = ""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.stat(follow_symlinks=False).st_mtime >= before:
                        continue
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:  # another worker's sweep took it
                    continue
                except OSError as e:
                    failed += 1
                    why = why or str(e.strerror or e)
    except OSError as e:
        log.warn(
            "Could not look for files a crash left in {folder}: {why}",
            folder=folder,
            why=e.strerror or e,
        )
    hours = f"{TMP_MAX_AGE / 3600:g}"
    if removed:
        log.info(
            "Removed {count} {files} older than {hours} hours from {folder} "
            "(deliveries a crash interrupted)",
            count=removed,
            files="file" if removed == 1 else "files",
            hours=hours,
            folder=folder,
        )
    if failed:
        log.warn(
            "Could not remove {count} {files} older than {hours} hours from "
            "{folder}: {why}",
            count=failed,
            files="file" if failed == 1 else "files",
            hours=hours,
            folder=folder,
            why=why,
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
