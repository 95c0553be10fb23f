"""Mail to MMS content (mm7tx.mail.to_mms): what a handset gets of a mail,
its SMIL, the images scaled to fit, and the SubmitReq it makes read back by
our own MM7 parser.  Test images are made with Pillow here."""

from __future__ import annotations

import functools
import re
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from io import BytesIO
from xml.etree import ElementTree

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mm7tx.mail import html_text, images, smil
from mm7tx.mail.to_mms import (
    MailRefused,
    MMSContent,
    TooLarge,
    Unreadable,
    Unsupported,
    mail_to_mms,
)
from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from tests.fuzzing import examples

K = 1024


def picture(
    size: tuple[int, int] = (64, 48), fmt: str = "PNG", mode: str = "RGB"
) -> bytes:
    image = Image.new(mode, size, "red" if mode == "RGB" else 128)
    out = BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@functools.cache
def phone_photo() -> bytes:
    """A JPEG of a phone photo's bytes (3-4 MB, 2400x1800): tiles of noise,
    which JPEG compresses no better than a real photo's detail."""
    tile = Image.merge(
        "RGB", [Image.effect_noise((300, 300), 30 + 20 * i) for i in range(3)]
    )
    image = Image.new("RGB", (2400, 1800))
    for x in range(0, 2400, 300):
        for y in range(0, 1800, 300):
            image.paste(tile, (x, y))
    out = BytesIO()
    image.save(out, "JPEG", quality=93)
    return out.getvalue()


def mail(
    text: str | None = "Hello from mail",
    subject: str = "Hi",
    html: str | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["To"] = "15551234567@mms.example"
    msg["Subject"] = subject
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    elif html is not None:
        msg.set_content(html, subtype="html")
    return msg


def attach(msg: EmailMessage, data: bytes, media_type: str, name: str) -> None:
    main, _, sub = media_type.partition("/")
    msg.add_attachment(data, maintype=main, subtype=sub, filename=name)


def parts(result: MMSContent) -> list[tuple[str, str | None]]:
    return [(p.media_type, p.content_location) for p in result.content]


def slides(result: MMSContent) -> list[list[tuple[str, str]]]:
    assert result.smil is not None
    root = ElementTree.fromstring(result.smil.data)
    return [
        [(el.tag, el.get("src") or "") for el in par] for par in root.find("body") or []
    ]


def test_text_and_photo_become_one_slide_with_the_subject_decoded():
    msg = mail("Look at this\n", subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus Berlin")
    attach(msg, picture(), "image/png", "Brücke.png")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert result.subject == "Grüße aus Berlin"
    assert parts(result) == [
        ("application/smil", "presentation.smil"),
        ("text/plain", "text1.txt"),
        ("image/png", "Brucke.png"),
    ]
    assert result.content[1].data == b"Look at this"
    assert result.content[2].filename == "Brücke.png"
    assert result.content[2].data == picture()
    assert slides(result) == [[("img", "Brucke.png"), ("text", "text1.txt")]]
    assert result.dropped == ()
    assert result.scaled == ()


def test_each_image_or_clip_has_a_slide_and_vcards_ride_along():
    msg = mail("Two photos and a song")
    attach(msg, picture(), "image/png", "a.png")
    attach(msg, picture(fmt="GIF"), "image/gif", "b.gif")
    attach(msg, b"#!AMR\n" + b"\x00" * 100, "audio/amr", "song.amr")
    attach(msg, b"\x00\x00\x00\x18ftyp3gp4", "video/3gpp", "clip.3gp")
    card = b"BEGIN:VCARD\r\nVERSION:2.1\r\nN:Doe;John\r\nEND:VCARD\r\n"
    attach(msg, card, "text/x-vcard", "john.vcf")
    attach(msg, b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", "text/calendar", "x.ics")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert slides(result) == [
        [("img", "a.png"), ("text", "text1.txt")],
        [("img", "b.gif")],
        [("audio", "song.amr")],
        [("video", "clip.3gp")],
    ]
    assert ("text/x-vcard", "john.vcf") in parts(result)
    assert ("text/calendar", "x.ics") in parts(result)
    vcard = next(p for p in result.content if p.media_type == "text/x-vcard")
    assert vcard.data == card


def test_an_unsupported_part_is_dropped_and_named_or_refused():
    msg = mail("See the report")
    attach(msg, b"%PDF-1.4 ...", "application/pdf", "report.pdf")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert [(d.media_type, d.name) for d in result.dropped] == [
        ("application/pdf", "report.pdf")
    ]
    assert "report.pdf" in str(result.dropped[0])
    with pytest.raises(Unsupported) as refused:
        mail_to_mms(msg.as_bytes(), max_size=300 * K, refuse_unsupported=True)
    assert (refused.value.code, refused.value.enhanced) == (554, "5.6.1")
    assert "report.pdf" in refused.value.reply


def test_the_plain_alternative_is_the_text_and_html_images_are_kept():
    """Apple Mail's shape: alternative(plain, related(html, image))."""
    msg = mail("Plain words", html="<p>Rich <b>words</b></p>")
    html_part = msg.get_payload()[1]
    html_part.add_related(picture(), maintype="image", subtype="png", cid="<i1>")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    texts = [p.data for p in result.content if p.media_type == "text/plain"]
    assert texts == [b"Plain words"]
    assert [p.media_type for p in result.content].count("image/png") == 1
    assert result.dropped == ()


def test_html_only_becomes_plain_text():
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<p>Hello &amp; welcome</p><p>Line one<br>Line two</p>"
        "<script>alert(1)</script><a href='https://x.example/'>site</a></body></html>"
    )
    result = mail_to_mms(mail(None, html=html).as_bytes(), max_size=300 * K)
    assert parts(result)[1] == ("text/plain", "text1.txt")
    assert result.content[1].data.decode() == (
        "Hello & welcome\r\n\r\nLine one\r\nLine two\r\n\r\nsite <https://x.example/>"
    )


def test_a_calendar_invitation_alternative_is_kept():
    msg = mail("Meeting at noon", html="<p>Meeting at noon</p>")
    msg.add_alternative(
        "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", subtype="calendar", charset="utf-8"
    )
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert [p.media_type for p in result.content] == [
        "application/smil",
        "text/plain",
        "text/calendar",
    ]


def test_an_image_handsets_do_not_show_becomes_a_jpeg():
    msg = mail("tiff")
    attach(msg, picture(fmt="TIFF"), "image/tiff", "scan.tiff")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert parts(result)[2] == ("image/jpeg", "scan.jpg")
    assert result.content[2].filename == "scan.jpg"
    assert Image.open(BytesIO(result.content[2].data)).format == "JPEG"


def test_a_mail_with_nothing_to_show_is_refused():
    msg = mail(None, subject="")
    del msg["Subject"]
    msg.set_content(b"%PDF", maintype="application", subtype="pdf")
    with pytest.raises(Unreadable) as refused:
        mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert str(refused.value).startswith("554 5.6.0 ")


def test_a_phone_photo_is_scaled_until_the_submitreq_fits():
    photo = phone_photo()
    assert 3_000_000 < len(photo) < 5_000_000
    msg = mail("From my phone")
    attach(msg, photo, "image/jpeg", "IMG_0001.JPG")
    started = time.perf_counter()
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    elapsed = time.perf_counter() - started
    [scaled] = result.scaled
    print(f"{len(photo)} bytes scaled in {elapsed * 1000:.0f} ms to", scaled)
    assert scaled.before == len(photo)
    assert scaled.after < 300 * K
    assert max(scaled.width, scaled.height) <= images.MAX_SIDE
    image = result.content[2]
    assert (image.media_type, image.content_location) == ("image/jpeg", "IMG_0001.JPG")
    assert Image.open(BytesIO(image.data)).size == (scaled.width, scaled.height)
    body = encoded(result)
    assert len(body) <= result.size <= 300 * K


def test_content_that_cannot_be_scaled_is_refused_552_5_3_4():
    msg = mail("A long song")
    attach(msg, b"\x00" * (400 * K), "audio/mpeg", "song.mp3")
    with pytest.raises(TooLarge) as refused:
        mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert (refused.value.code, refused.value.enhanced) == (552, "5.3.4")
    assert "song.mp3" in refused.value.text
    assert str(refused.value).startswith("552 5.3.4 the message cannot be made")


def test_too_many_images_for_the_size_are_refused():
    msg = mail("album")
    for n in range(20):
        attach(msg, picture((400, 300), "JPEG"), "image/jpeg", f"p{n}.jpg")
    with pytest.raises(TooLarge):
        mail_to_mms(msg.as_bytes(), max_size=40 * K)


@pytest.mark.parametrize("factor", [1.5, 3])
def test_a_decompression_bomb_is_dropped_not_decoded(monkeypatch, factor):
    """Over Pillow's MAX_IMAGE_PIXELS it warns (an error here, as every
    warning in the suite), over twice that it raises: both are a bomb."""
    msg = mail("bomb")
    attach(msg, picture((300, 300)), "image/png", "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(300 * 300 / factor))
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    [dropped] = result.dropped
    assert "decompression bomb" in dropped.reason
    with pytest.raises(Unsupported, match="decompression bomb"):
        mail_to_mms(msg.as_bytes(), max_size=300 * K, refuse_unsupported=True)


def test_our_own_pixel_limit_applies_when_pillow_only_warns():
    msg = mail("big")
    attach(msg, picture((300, 300)), "image/png", "big.png")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K, max_pixels=10_000)
    assert "too many pixels (300x300" in result.dropped[0].reason


@pytest.mark.parametrize(
    "data", [b"", b"not an image", picture(fmt="JPEG")[:200], b"\x89PNG\r\n\x1a\n"]
)
def test_a_broken_image_is_dropped(data):
    msg = mail("broken")
    attach(msg, data, "image/jpeg", "broken.jpg")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    assert [d.name for d in result.dropped] == ["broken.jpg"]
    assert [p.media_type for p in result.content] == ["application/smil", "text/plain"]


def test_a_broken_image_that_must_be_scaled_is_refused():
    photo = picture((800, 600), "JPEG")
    msg = mail("half a photo")
    attach(msg, photo[: len(photo) // 2], "image/jpeg", "half.jpg")
    with pytest.raises(MailRefused):
        mail_to_mms(msg.as_bytes(), max_size=5 * K)


def envelope_for(result: MMSContent) -> m.Envelope:
    request = m.SubmitReq(
        vasp_id="vasp-with-a-long-identifier",
        vas_id="service-identifier",
        sender_address=m.Address("12345", "ShortCode"),
        recipients=m.Recipients(
            to=tuple(m.Address(f"+1555123{n:04d}") for n in range(10))
        ),
        service_code="mail",
        delivery_report=True,
    )
    return m.Envelope("mail-1", result.submit_req(request))


def encoded(result: MMSContent) -> bytes:
    return codec.encode(envelope_for(result))[1]


def test_the_submitreq_is_read_back_by_our_parser():
    msg = mail("Grüße\nzweite Zeile", subject="Ünïcode subject & <more>")
    attach(msg, picture(), "image/png", "Fotó 1.png")
    attach(msg, picture(fmt="GIF"), "image/gif", "b.gif")
    attach(msg, b"BEGIN:VCARD\r\nEND:VCARD\r\n", "text/x-vcard", "c.vcf")
    result = mail_to_mms(msg.as_bytes(), max_size=300 * K)
    content_type, body = codec.encode(envelope_for(result))
    assert len(body) <= result.size
    back = codec.decode(content_type, body).message
    assert isinstance(back, m.SubmitReq)
    assert back.subject == "Ünïcode subject & <more>"
    assert len(back.recipients.to) == 10
    assert [
        (p.media_type, p.data, p.content_location, p.filename) for p in back.content
    ] == [
        (p.media_type, p.data, p.content_location, p.filename) for p in result.content
    ]
    assert back.content[1].data.decode("utf-8") == "Grüße\r\nzweite Zeile"
    # Every SMIL reference names a part.
    locations = {p.content_location for p in back.content}
    for slide in slides(result):
        assert {src for _, src in slide} <= locations


def test_smil_slides_follow_the_mail_order():
    assert smil.slides_for(
        [("text", "t1"), ("image", "a"), ("image", "b"), ("text", "t2"), ("text", "t3")]
    ) == [
        smil.Slide("a", "image", "t1"),
        smil.Slide("b", "image", "t2"),
        smil.Slide(text="t3"),
    ]


def test_html_to_text_keeps_text_and_drops_the_hidden():
    assert html_text.html_to_text("<script>x</script><style/>a<br/>b") == "a\nb"
    assert html_text.html_to_text("<div>  many   spaces </div><p>x") == (
        "many spaces\n\nx"
    )
    assert html_text.html_to_text("<a href='javascript:x'>y</a>") == "y"


def test_a_deeply_nested_mail_is_an_error_of_ours():
    boundary = [f"b{n}" for n in range(400)]
    head = "".join(
        f"Content-Type: multipart/mixed; boundary={b}\n\n--{b}\n" for b in boundary
    )
    raw = (f"Subject: deep\n{head}Content-Type: text/plain\n\ndeep text\n").encode()
    try:
        result = mail_to_mms(raw, max_size=300 * K)
    except Unreadable:
        return
    assert result.dropped and "nested too deep" in result.dropped[0].reason


# Differential: what the email package itself says the text and
# attachments are, for mails it builds.

TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\n \t"),
    max_size=80,
)
ATTACHMENTS = st.lists(st.sampled_from(["png", "gif", "pdf", "amr", "vcf"]), max_size=4)
_ATTACHMENT_TYPES = {
    "png": "image/png",
    "gif": "image/gif",
    "pdf": "application/pdf",
    "amr": "audio/amr",
    "vcf": "text/x-vcard",
}


@functools.cache
def attachment_data(kind: str) -> bytes:
    if kind in ("png", "gif"):
        return picture(fmt=kind.upper())
    return f"{kind} data\r\n".encode() * 4


def normalised(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


@settings(
    max_examples=examples(40),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    text=TEXT,
    subject=TEXT,
    html=st.booleans(),
    kinds=ATTACHMENTS,
)
def test_text_subject_and_attachments_agree_with_the_email_package(
    text, subject, html, kinds
):
    msg = mail(text or "x", subject=" ".join(subject.split()), html=None)
    if html:
        msg.add_alternative("<p>other</p>", subtype="html")
    for n, kind in enumerate(kinds):
        attach(msg, attachment_data(kind), _ATTACHMENT_TYPES[kind], f"f{n}.{kind}")
    raw = msg.as_bytes()
    parsed = message_from_bytes(raw, policy=policy.default)
    subject = " ".join(str(parsed["Subject"]).split()) or None
    body = parsed.get_body(("plain",))
    expected = normalised(body.get_content()) if body is not None else ""
    try:
        result = mail_to_mms(raw, max_size=300 * K)
    except Unreadable:
        # Nothing to show: no subject, no text, nothing but PDFs.
        assert subject is None and not expected.strip()
        assert set(kinds) <= {"pdf"}
        return

    assert result.subject == subject
    texts = [p.data.decode() for p in result.content if p.media_type == "text/plain"]
    assert [normalised(t) for t in texts] == ([expected] if expected.strip() else [])
    kept = [
        (a.get_content_type(), a.get_filename(), a.get_content())
        for a in parsed.iter_attachments()
        if a.get_content_type() != "application/pdf"
    ]
    ours = [
        (p.media_type, p.param("name"), p.data)
        for p in result.content
        if p.param("name") is not None
    ]
    assert [(t, n) for t, n, _ in ours] == [(t, n) for t, n, _ in kept]
    assert all(
        (d if isinstance(d, bytes) else d.encode()) == data
        for (_, _, data), (_, _, d) in zip(ours, kept, strict=True)
    )
    assert [d.name for d in result.dropped] == [
        a.get_filename()
        for a in parsed.iter_attachments()
        if a.get_content_type() == "application/pdf"
    ]


# Robustness: mails built valid, then broken on purpose.


def mutated_mail(draw) -> bytes:
    """A mail built valid, then up to four mutations of its bytes.  Built
    here rather than in a strategy: the email package draws its boundaries
    from ``random``, which a strategy must not use."""
    msg = mail(draw(TEXT) or "text", html=draw(st.sampled_from([None, "<p>h</p>"])))
    for n, kind in enumerate(draw(ATTACHMENTS)):
        attach(msg, attachment_data(kind), _ATTACHMENT_TYPES[kind], f"f{n}.{kind}")
    if draw(st.booleans()):
        attach(msg, phone_photo()[: 40 * K], "image/jpeg", "cut.jpg")
    raw = msg.as_bytes()
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cut", "flip", "header", "boundary", "charset"]))
        if op == "cut":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif op == "flip" and raw:
            data = bytearray(raw)
            for _ in range(draw(st.integers(1, 8))):
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
            raw = bytes(data)
        elif op == "header":
            header = draw(st.sampled_from(HOSTILE_HEADERS))
            raw = re.sub(rb"(?m)^Subject:[^\n]*\n", header + b"\n", raw, count=1)
        elif op == "boundary":
            raw = re.sub(rb"boundary=\"?=*[^\"\n]*", b"boundary=zz", raw, count=1)
        elif op == "charset":
            raw = raw.replace(b"charset=", b"charset=x-nope-", 1)
    return raw


HOSTILE_HEADERS = [
    b"Subject: =?x-unknown?q?abc?= =?utf-8?b?####?=",
    b"Content-Disposition: attachment; filename*=x''%ff%fe",
    b"Content-Type: image/png; name*0*=utf-8''%C3; name*1=x",
    b"Content-Type: multipart/mixed",
    b"Subject: " + b"\xff" * 30,
]


@settings(
    max_examples=examples(50),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), max_size=st.sampled_from([6 * K, 30 * K, 300 * K]))
def test_broken_mails_give_content_or_our_refusal(data, max_size):
    raw = mutated_mail(data.draw)
    try:
        result = mail_to_mms(raw, max_size=max_size)
    except MailRefused as refused:
        assert re.fullmatch(r"5\d\d 5\.\d\.\d .+", str(refused), re.S)
        return
    assert result.size <= max_size
    assert len(encoded(result)) <= result.size
