"""Mail to MMS content: what of a mail a handset gets, as MM7 content parts.

:func:`mail_to_mms` takes a mail's bytes and gives the Subject (RFC 2047
decoded) and the parts of a SubmitReq (:class:`MMSContent`):

- the text a handset shows: the ``text/plain`` alternative, else the HTML
  one as plain text (:mod:`mm7tx.mail.html_text`), as UTF-8;
- images, audio, video and vCard/vCalendar parts with their types and
  names (an image of a type handsets do not show, WebP or TIFF say,
  becomes a JPEG);
- a SMIL presentation, one slide per image, audio or video part with its
  text (:mod:`mm7tx.mail.smil`);

and names every part it leaves out (:class:`DroppedPart`), for the caller's
log.  Images that would make the SubmitReq's HTTP body larger than
``max_size`` are scaled down and re-encoded (:mod:`mm7tx.mail.images`);
a mail that cannot fit, or (with ``refuse_unsupported``) has a part that
cannot be sent, raises a :class:`MailRefused` that carries its SMTP reply.

It is synchronous and CPU-heavy for a mail with large photos (decoding and
encoding them takes tens to hundreds of milliseconds): the caller runs it
off the reactor (:func:`mm7tx.offload.in_threads`) for large mails.
"""

from __future__ import annotations

import dataclasses
import email
import math
import re
import unicodedata
from dataclasses import dataclass
from email import policy
from email.message import Message
from xml.sax.saxutils import escape

from mm7tx.mail import html_text, images, smil
from mm7tx.mm7.messages import Content, ContentPart, SubmitReq

# Bytes of the SubmitReq's body kept for all but the content parts: the
# SOAP envelope (ten recipients and the ids fit well within it) and the
# multipart framing around it.  The Subject comes on top.  A caller whose
# envelope is larger passes its own ``envelope_size``.
ENVELOPE_SIZE = 4096
# Bytes a content part takes besides its body and its names: the boundary
# line and its headers (Content-Type, -ID, -Location, -Transfer-Encoding).
PART_OVERHEAD = 256
# Multipart levels read; parts nested deeper are dropped.
MAX_DEPTH = 20
# An image is not scaled below this many bytes: a share this small means
# too many images for the size.
MIN_IMAGE_BYTES = 2048

VCARD_TYPES = frozenset({"text/vcard", "text/x-vcard", "text/directory"})
VCALENDAR_TYPES = frozenset({"text/calendar", "text/x-vcalendar"})
SMIL_LOCATION = "presentation.smil"

# Attachments sent as application/octet-stream, typed by their name.
_EXTENSION_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".amr": "audio/amr",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mp4",
    ".3gp": "video/3gpp",
    ".mp4": "video/mp4",
    ".vcf": "text/x-vcard",
    ".vcs": "text/x-vcalendar",
    ".ics": "text/calendar",
}
_TYPE_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "text/plain": ".txt",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "text/x-vcalendar": ".vcs",
    "text/calendar": ".ics",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SPACE = re.compile(r"\s+")


class MailRefused(Exception):
    """A mail that cannot become an MMS, with the SMTP reply it gets:
    ``code`` (the reply code), ``enhanced`` (RFC 3463) and ``text`` (why,
    for the sender to read)."""

    code = 554
    enhanced = "5.6.0"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply(self) -> str:
        """The reply's text after its code: ``5.3.4 why``."""
        return f"{self.enhanced} {self.text}"

    def __str__(self) -> str:
        return f"{self.code} {self.reply}"


class TooLarge(MailRefused):
    """The content cannot fit the MMSC's size even with its images scaled
    down (552 5.3.4: message too big for system)."""

    code = 552
    enhanced = "5.3.4"


class Unsupported(MailRefused):
    """A part that cannot be sent as MMS, refused under
    ``refuse_unsupported`` (554 5.6.1: media not supported)."""

    enhanced = "5.6.1"


class Unreadable(MailRefused):
    """A mail with nothing a handset can show, or that cannot be read at
    all (554 5.6.0)."""


@dataclass(frozen=True, slots=True)
class DroppedPart:
    """A part of the mail left out of the MMS, and why."""

    media_type: str
    name: str | None
    reason: str

    def __str__(self) -> str:
        name = f"{self.name!r} " if self.name else ""
        return f"{name}({self.media_type}): {self.reason}"


@dataclass(frozen=True, slots=True)
class ScaledImage:
    """An image made smaller to fit: its name, bytes before and after, and
    its new size in pixels."""

    name: str
    before: int
    after: int
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class MMSContent:
    """What a mail becomes: the SubmitReq's Subject and content (the SMIL
    part first when there are parts), the parts dropped and the images
    scaled (for the log), and ``size``, an upper bound of the SubmitReq's
    body in bytes with an envelope of ``envelope_size``."""

    subject: str | None
    content: Content
    dropped: tuple[DroppedPart, ...] = ()
    scaled: tuple[ScaledImage, ...] = ()
    size: int = 0

    @property
    def smil(self) -> ContentPart | None:
        return next((p for p in self.content if p.is_smil), None)

    def submit_req(self, request: SubmitReq) -> SubmitReq:
        """``request`` with this Subject and content."""
        return dataclasses.replace(request, subject=self.subject, content=self.content)


@dataclass(slots=True)
class _Item:
    """A part on its way into the MMS: ``kind`` is ``text``, ``image``,
    ``audio``, ``video`` or ``file`` (vCard, vCalendar: not on a slide)."""

    kind: str
    media_type: str
    data: bytes
    name: str | None
    location: str = ""
    charset: str | None = None

    @property
    def cost(self) -> int:
        return part_size(len(self.data), self.name, self.location)


def part_size(size: int, name: str | None = None, location: str = "") -> int:
    """An upper bound of the bytes a content part of ``size`` bytes takes in
    the encoded SubmitReq: base64 in lines of 76 and CRLF, the worst case
    of the codec (:func:`mm7tx.mm7.codec.mime.leaf_part`), its headers, and
    its name thrice (an RFC 2231-encoded UTF-8 name) and location twice."""
    body = 4 * math.ceil(size / 3) + 2 * math.ceil(size / 57)
    names = 3 * len((name or "").encode("utf-8")) + 2 * len(location)
    return body + PART_OVERHEAD + names


def mail_to_mms(
    raw: bytes,
    *,
    max_size: int,
    refuse_unsupported: bool = False,
    envelope_size: int = ENVELOPE_SIZE,
    max_pixels: int | None = None,
) -> MMSContent:
    """The MMS content of the mail ``raw``, for a SubmitReq whose HTTP body
    may have at most ``max_size`` bytes.

    Raises :class:`TooLarge` when it cannot fit, :class:`Unsupported` for a
    part that cannot be sent when ``refuse_unsupported`` (else the part is
    dropped and named in ``dropped``), :class:`Unreadable` for a mail with
    nothing to show.  ``max_pixels`` bounds an image's pixels (default
    Pillow's ``Image.MAX_IMAGE_PIXELS``); a larger one is unreadable.
    Synchronous and CPU-heavy for large images: run it off the reactor.
    """
    try:
        mail = email.message_from_bytes(raw, policy=policy.default)
    except RecursionError:
        raise Unreadable("the mail's parts are nested too deep") from None
    subject = _subject(mail)
    items: list[_Item] = []
    dropped: list[DroppedPart] = []
    _walk(mail, 0, items, dropped, max_pixels)
    if refuse_unsupported and dropped:
        raise Unsupported(
            "these parts cannot be sent as MMS: "
            + "; ".join(str(d) for d in dropped[:5])
        )
    if not items and not subject:
        raise Unreadable("the mail has nothing a handset can show")
    _name(items)
    envelope = envelope_size + len(escape(subject or "").encode("utf-8"))
    scaled = _fit(items, max_size - envelope, max_pixels)
    content = _content(items)
    size = envelope + sum(
        part_size(len(p.data), p.param("name"), p.content_location or "")
        for p in content
    )
    if size > max_size:
        raise TooLarge(
            f"the message would be {_kb(size)} and the MMSC takes at most "
            f"{_kb(max_size)}"
        )
    return MMSContent(subject, content, tuple(dropped), tuple(scaled), size)


def _kb(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    return f"{math.ceil(size / 1024)} KB"


def _subject(mail: Message) -> str | None:
    """The Subject, RFC 2047 words decoded, on one line."""
    try:
        value = mail.get("Subject")
    except (ValueError, IndexError, TypeError, AttributeError, LookupError):
        # The header parser of the email package fails on some malformed
        # headers; the raw text is the best that is left.
        value = _raw_header(mail, "Subject")
    text = _SPACE.sub(" ", str(value or "")).strip()
    return text or None


def _raw_header(mail: Message, name: str) -> str | None:
    for key, value in mail.raw_items():  # type: ignore[attr-defined]
        if key.lower() == name.lower():
            return str(value)
    return None


def _media_type(part: Message) -> tuple[str, str | None]:
    """The part's type (an octet-stream typed by its name's extension) and
    its file name."""
    media_type = part.get_content_type()
    try:
        name = part.get_filename()
    except (ValueError, IndexError, TypeError, AttributeError, LookupError):
        name = None  # a malformed Content-Disposition, as in _subject
    if name is not None:
        name = _SPACE.sub(" ", name).strip() or None
    if media_type == "application/octet-stream" and name:
        extension = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
        media_type = _EXTENSION_TYPES.get(extension, media_type)
    return media_type, name


def _walk(
    part: Message,
    depth: int,
    items: list[_Item],
    dropped: list[DroppedPart],
    max_pixels: int | None,
) -> None:
    """Every part of ``part`` a handset can show into ``items`` (in mail
    order), every other into ``dropped``."""
    media_type, name = _media_type(part)
    if depth > MAX_DEPTH:
        dropped.append(DroppedPart(media_type, name, "nested too deep"))
    elif media_type.startswith("message/"):
        dropped.append(DroppedPart(media_type, name, "an attached mail"))
    elif part.is_multipart():
        children = [p for p in part.get_payload() if isinstance(p, Message)]
        if media_type == "multipart/alternative":
            _alternative(children, depth, items, dropped, max_pixels)
        else:
            for child in children:
                _walk(child, depth + 1, items, dropped, max_pixels)
    else:
        _leaf(part, media_type, name, items, dropped, max_pixels)


def _alternative(
    children: list[Message],
    depth: int,
    items: list[_Item],
    dropped: list[DroppedPart],
    max_pixels: int | None,
) -> None:
    """The text of one alternative (the plain one, else the first with
    text, else the last), and the media of all: a mail's inline images are
    in its HTML alternative's ``multipart/related``, its calendar invitation
    in an alternative of its own.  Parts of the other alternatives that are
    text again are not dropped: they are the same text."""
    walked = []
    for child in children:
        found: list[_Item] = []
        lost: list[DroppedPart] = []
        _walk(child, depth + 1, found, lost, max_pixels)
        walked.append((child.get_content_type(), found, lost))
    chosen = next((i for i, w in enumerate(walked) if w[0] == "text/plain"), None)
    if chosen is None:
        chosen = next(
            (i for i, w in enumerate(walked) if any(x.kind == "text" for x in w[1])),
            len(walked) - 1,
        )
    seen: set[tuple[str, bytes]] = set()
    for index, (_, found, lost) in enumerate(walked):
        for item in found:
            key = (item.media_type, item.data)
            if (index == chosen or item.kind != "text") and key not in seen:
                seen.add(key)
                items.append(item)
        dropped.extend(
            d for d in lost if index == chosen or not d.media_type.startswith("text/")
        )


def _text(part: Message, data: bytes) -> str:
    """A text part's bytes decoded: by its charset, else UTF-8, else its
    charset (or Latin-1) with replacement characters."""
    charset = part.get_content_charset() or "us-ascii"
    for attempt in (charset, "utf-8"):
        try:
            return data.decode(attempt)
        except (UnicodeDecodeError, LookupError):
            continue
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("latin-1")


def _leaf(
    part: Message,
    media_type: str,
    name: str | None,
    items: list[_Item],
    dropped: list[DroppedPart],
    max_pixels: int | None,
) -> None:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    main = media_type.partition("/")[0]
    if media_type in VCARD_TYPES or media_type in VCALENDAR_TYPES:
        items.append(
            _Item("file", media_type, data, name, "", part.get_content_charset())
        )
    elif media_type in ("text/plain", "text/html"):
        text = _text(part, data)
        if media_type == "text/html":
            text = html_text.html_to_text(text)
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        text = "\r\n".join(line.rstrip() for line in lines).strip("\r\n")
        if text.strip():
            items.append(_Item("text", "text/plain", text.encode("utf-8"), name))
    elif main == "image":
        _image(media_type, data, name, items, dropped, max_pixels)
    elif main in ("audio", "video") and data:
        items.append(_Item(main, media_type, data, name))
    elif data:
        dropped.append(DroppedPart(media_type, name, "not a type handsets show"))


def _image(
    media_type: str,
    data: bytes,
    name: str | None,
    items: list[_Item],
    dropped: list[DroppedPart],
    max_pixels: int | None,
) -> None:
    """An image kept as it is when it is of a type handsets show and Pillow
    reads it (WBMP, which Pillow does not read, as it is), else made a
    JPEG; one that cannot be read is dropped."""
    if media_type == "image/vnd.wap.wbmp":
        items.append(_Item("image", media_type, data, name))
        return
    try:
        if media_type in images.HANDSET_TYPES:
            picture = images.inspect(data, max_pixels)
            # Typed by what it is, not by what the mail said.
            picture = dataclasses.replace(
                picture, media_type=picture.media_type or media_type
            )
            if picture.media_type not in images.HANDSET_TYPES:
                picture = images.to_jpeg(data, max_pixels)
        else:
            picture = images.to_jpeg(data, max_pixels)
    except images.ImageError as e:
        dropped.append(DroppedPart(media_type, name, str(e)))
        return
    if name and picture.media_type != media_type:
        name = _renamed(name, ".jpg")
    items.append(_Item("image", picture.media_type, picture.data, name))


def _location(name: str | None, media_type: str, kind: str, number: int) -> str:
    """A Content-Location made of ``name``: ASCII letters, digits, ``._-``
    (what every handset resolves), else ``<kind><number>.<ext>``."""
    extension = _TYPE_EXTENSIONS.get(media_type, "")
    if name:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore")
        base = ascii_name.decode("ascii").replace("\\", "/").rsplit("/", 1)[-1]
        safe = _UNSAFE.sub("_", base).strip("._")[-40:].lstrip("._")
        stem, dot, ext = safe.rpartition(".")
        if dot and stem:
            if extension and _EXTENSION_TYPES.get(f".{ext.lower()}") != media_type:
                safe = stem + extension  # a converted image, a text of any name
            return safe
        if safe:
            return safe + extension
    return f"{kind}{number}{extension}"


def _name(items: list[_Item]) -> None:
    """Give each item a location of its own."""
    used = {SMIL_LOCATION}
    for number, item in enumerate(items, 1):
        location = _location(item.name, item.media_type, item.kind, number)
        stem, dot, ext = location.rpartition(".")
        if not dot:
            stem, ext = location, ""
        suffix = 1
        while location.lower() in used:
            suffix += 1
            location = f"{stem}-{suffix}{dot}{ext}"
        used.add(location.lower())
        item.location = location


def _fit(items: list[_Item], budget: int, max_pixels: int | None) -> list[ScaledImage]:
    """Scale images down until every item fits ``budget`` bytes (SMIL
    included), smallest image first, each scaled to an equal share of what
    the others left; :class:`TooLarge` when that cannot be."""
    # The SMIL names each part once; a scaled image's name may change its
    # extension (".png" to ".jpg"), never its length by more than that.
    budget -= part_size(len(_smil(items)) + 16 * len(items), None, SMIL_LOCATION)
    scalable = [
        i for i in items if i.kind == "image" and i.media_type != "image/vnd.wap.wbmp"
    ]
    fixed = [i for i in items if i not in scalable]
    budget -= sum(i.cost for i in fixed)
    if budget < 0 or (scalable and budget < len(scalable) * MIN_IMAGE_BYTES):
        largest = max(fixed, key=lambda i: len(i.data), default=None)
        why = (
            f"; its largest part is {largest.location} ({_kb(len(largest.data))})"
            if largest is not None and not scalable
            else ""
        )
        raise TooLarge(f"the message cannot be made small enough for the MMSC{why}")
    if sum(i.cost for i in scalable) <= budget:
        return []
    scaled = []
    pending = sorted(scalable, key=lambda i: len(i.data))
    for index, item in enumerate(pending):
        share = budget // (len(pending) - index)
        if item.cost > share:
            overhead = part_size(0, item.name, item.location) + 8
            # Raw bytes whose base64 (78 bytes a 57-byte line) fits the share.
            target = (share - overhead) * 57 // 78 - 3
            before = len(item.data)
            try:
                picture = images.fit(item.data, target, max_pixels)
            except images.ImageError as e:
                raise TooLarge(
                    f"the image {item.location} ({_kb(before)}) does not fit: {e}"
                ) from None
            item.data, item.media_type = picture.data, picture.media_type
            item.location = _renamed(item.location, ".jpg")
            item.name = item.name and _renamed(item.name, ".jpg")
            scaled.append(
                ScaledImage(
                    item.location,
                    before,
                    len(picture.data),
                    picture.width,
                    picture.height,
                )
            )
        budget -= item.cost
    return scaled


def _renamed(location: str, extension: str) -> str:
    stem, dot, ext = location.rpartition(".")
    if dot and f".{ext.lower()}" == extension:
        return location
    return (stem if dot else location) + extension


def _smil(items: list[_Item]) -> bytes:
    slides = smil.slides_for([(i.kind, i.location) for i in items if i.kind != "file"])
    return smil.build_smil(slides)


def _content(items: list[_Item]) -> Content:
    """The SMIL part, then every item as a content part."""
    if not items:
        return ()
    parts = [
        ContentPart(
            "application/smil",
            _smil(items),
            (("charset", "utf-8"),),
            content_id=SMIL_LOCATION,
            content_location=SMIL_LOCATION,
        )
    ]
    for item in items:
        params: list[tuple[str, str]] = []
        charset = "utf-8" if item.kind == "text" else item.charset
        if charset:
            params.append(("charset", charset))
        if item.name:
            params.append(("name", item.name))
        parts.append(
            ContentPart(
                item.media_type,
                item.data,
                tuple(params),
                content_id=item.location,
                content_location=item.location,
            )
        )
    return tuple(parts)
