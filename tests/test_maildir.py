"""The Maildir sender on a real Maildir in a temporary folder."""

from __future__ import annotations

import os
import stat
from email.message import EmailMessage

import pytest

from mm7tx.errors import MM7Error
from mm7tx.maildir import MaildirError, MaildirSender
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
