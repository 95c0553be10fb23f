"""The Maildir sender on a real Maildir in a temporary folder."""

from __future__ import annotations

import errno
import os
import stat
import time
from email.message import EmailMessage
from typing import Any

import pytest
from twisted.logger import capturedLogs, formatEvent

from mm7tx.mm7.errors import MM7Error
from mm7tx.smtp.maildir import MaildirError, MaildirSender
from mm7tx.testing import result_of


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "a@from.example"
    msg["To"] = "b@to.example"
    msg["Subject"] = "to disk"
    msg.set_content("text\n")
    return msg


def test_the_file_and_then_its_new_directory_entry_are_synced_before_the_answer(
    tmp_path, monkeypatch
):
    maildir = MaildirSender(str(tmp_path / "Maildir"))
    new = os.stat(tmp_path / "Maildir" / "new")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            same = (st.st_dev, st.st_ino) == (new.st_dev, new.st_ino)
            synced.append("new/" if same else "another directory")
        else:
            synced.append("file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    d = maildir.send("a@from.example", ["b@to.example"], message())
    # Synchronous: the answer is there, and every fsync happened before it.
    assert result_of(d).accepted == ("b@to.example",)
    assert synced == ["file", "new/"]
    [path] = list((tmp_path / "Maildir" / "new").iterdir())
    assert b"Subject: to disk" in path.read_bytes()


def test_a_failed_directory_sync_is_transient(tmp_path, monkeypatch):
    maildir = MaildirSender(str(tmp_path / "Maildir"))
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(MM7Error) as caught:
        result_of(maildir.send("a@from.example", ["b@to.example"], message()))
    assert caught.value.status.code == 4006
    assert "Input/output error" in (caught.value.status.details or "")


def test_a_maildir_that_cannot_be_made_or_written_is_refused_at_once(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(MaildirError) as caught:
        MaildirSender(str(tmp_path / "file" / "Maildir"))
    assert str(caught.value) == (
        f"cannot deliver into the Maildir {tmp_path}/file/Maildir: Not a directory"
    )
    # An existing Maildir whose new/ cannot take a file (a read-only file
    # system looks the same from here; root ignores a chmod).
    for folder in ("tmp", "cur"):
        (tmp_path / "Maildir" / folder).mkdir(parents=True)
    (tmp_path / "Maildir" / "new").write_text("")
    with pytest.raises(MaildirError, match=r"Maildir$|: Not a directory$"):
        MaildirSender(str(tmp_path / "Maildir"))
    (tmp_path / "Maildir" / "new").unlink()
    (tmp_path / "Maildir" / "new").mkdir()
    MaildirSender(str(tmp_path / "Maildir"))
    assert [p.name for p in (tmp_path / "Maildir").glob("*/*")] == []  # no trace


def test_a_maildir_another_process_makes_meanwhile_is_used(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers starting at once race to make it: mailbox.Maildir checks,
    then makes, and the loser's mkdir finds it made."""
    path = os.path.join(str(tmp_path), "Maildir")
    mkdir = os.mkdir

    def racing(name: str, mode: int = 0o777) -> None:
        if name == path and not os.path.exists(path):
            mkdir(name, mode)  # the other worker, just before this one
        mkdir(name, mode)

    monkeypatch.setattr(os, "mkdir", racing)
    sender = MaildirSender(path)
    assert sender.description == f"Maildir {path}"
    assert os.path.isdir(os.path.join(path, "new"))


# A refused write leaves nothing behind; a crash's leftovers are swept -----------


def _open_fds() -> int | None:
    """File descriptors open in this process (Linux), to see none leak."""
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


@pytest.mark.parametrize("failing", ["write", "fsync", "close", "link"])
def test_a_refused_write_leaves_nothing_in_tmp(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The disk fills up at each step of a delivery (the second chunk of a
    write, the file's fsync, its close, the link into new/): 4006, and no
    file in tmp/ or new/ once the answer is given, nor an open one."""
    path = tmp_path / "Maildir"
    maildir = MaildirSender(str(path))
    tmp = str(path / "tmp")
    ours: set[int] = set()
    real = {name: getattr(os, name) for name in ("open", "write", "fsync", "close")}
    writes = 0

    def open_(name: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd: int = real["open"](name, flags, mode, **kw)
        if os.path.dirname(os.fspath(name)) == tmp:
            ours.add(fd)
        return fd

    def write(fd: int, data: Any) -> int:
        nonlocal writes
        if fd in ours and failing == "write":
            writes += 1
            if writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(real["write"](fd, bytes(data)[:100]))  # a short write
        return int(real["write"](fd, data))

    def fsync(fd: int) -> None:
        if fd in ours and failing == "fsync":
            raise OSError(errno.ENOSPC, "No space left on device")
        real["fsync"](fd)

    def close(fd: int) -> None:
        real["close"](fd)
        if fd in ours and failing == "close":  # NFS says so only at close
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

    def link(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "close", close)
    if failing == "link":
        monkeypatch.setattr(os, "link", link)
    fds = _open_fds()
    with pytest.raises(MM7Error) as caught:
        result_of(maildir.send("a@from.example", ["b@to.example"], message()))
    assert caught.value.status.code == 4006
    assert "quota" in str(caught.value.status.details) or "space" in str(
        caught.value.status.details
    )
    assert os.listdir(tmp) == []
    assert os.listdir(path / "new") == []
    assert _open_fds() == fds
    assert ours  # the failure was where the test put it
    # Space returns: the next message is delivered, and only it.
    monkeypatch.undo()
    assert result_of(maildir.send("a@from.example", ["b@to.example"], message()))
    assert os.listdir(tmp) == []
    assert len(os.listdir(path / "new")) == 1


def test_a_file_system_without_hard_links_gets_the_message_renamed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "Maildir"
    maildir = MaildirSender(str(path))

    def link(*args: Any, **kw: Any) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", link)
    result = result_of(maildir.send("a@from.example", ["b@to.example"], message()))
    [name] = os.listdir(path / "new")
    assert result.reply == f"stored as new/{name}"
    assert os.listdir(path / "tmp") == []


def test_files_a_crash_left_in_tmp_are_swept_at_start(tmp_path: Any) -> None:
    """Files in tmp/ older than 36 hours (the Maildir spec's bound for
    readers) are removed when the sender is made; fresher ones may be a
    delivery of another process under way, and new/ and cur/ are mail."""
    path = tmp_path / "Maildir"
    for folder in ("tmp", "new", "cur"):
        (path / folder).mkdir(parents=True)
    now = time.time()

    def aged(name: str, hours: float) -> None:
        (path / name).write_bytes(b"" if name.startswith("tmp") else b"mail\n")
        os.utime(path / name, (now - hours * 3600, now - hours * 3600))

    aged("tmp/1.M1P1Q1.host", 37)  # a crash's, two days back
    aged("tmp/2.M2P2Q2.host", 36.1)
    aged("tmp/3.M3P3Q3.host", 35)  # may still be written
    aged("tmp/4.M4P4Q4.host", 0)
    aged("new/5.M5P5Q5.host", 48)
    aged("cur/6.M6P6Q6.host:2,S", 48)
    (path / "tmp" / "folder").mkdir()  # not a message file: left alone
    os.utime(path / "tmp" / "folder", (now - 48 * 3600, now - 48 * 3600))
    with capturedLogs() as events:
        MaildirSender(str(path))
    assert sorted(os.listdir(path / "tmp")) == [
        "3.M3P3Q3.host",
        "4.M4P4Q4.host",
        "folder",
    ]
    assert os.listdir(path / "new") == ["5.M5P5Q5.host"]
    assert os.listdir(path / "cur") == ["6.M6P6Q6.host:2,S"]
    assert [formatEvent(e) for e in events] == [
        f"Removed 2 files older than 36 hours from {path}/tmp (deliveries a "
        "crash interrupted)"
    ]
    # Nothing old left: nothing to say at the next start.
    with capturedLogs() as events:
        MaildirSender(str(path))
    assert list(events) == []


def test_a_sweep_that_cannot_remove_a_file_says_so_and_starts(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "Maildir"
    (path / "tmp").mkdir(parents=True)
    old = time.time() - 48 * 3600
    for name in ("a", "b"):
        (path / "tmp" / name).write_bytes(b"")
        os.utime(path / "tmp" / name, (old, old))
    unlink = os.unlink

    def refusing(name: Any, *args: Any, **kw: Any) -> None:
        if os.path.basename(os.fspath(name)) == "a":
            raise PermissionError(errno.EACCES, "Permission denied")
        unlink(name, *args, **kw)

    monkeypatch.setattr(os, "unlink", refusing)
    monkeypatch.setattr(os, "remove", refusing)
    with capturedLogs() as events:
        MaildirSender(str(path))
    assert os.listdir(path / "tmp") == ["a"]
    assert [formatEvent(e) for e in events] == [
        f"Removed 1 file older than 36 hours from {path}/tmp (deliveries a "
        "crash interrupted)",
        f"Could not remove 1 file older than 36 hours from {path}/tmp: "
        "Permission denied",
    ]
