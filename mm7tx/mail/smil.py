"""The SMIL presentation of an MMS made from a mail: slides of media and text.

Handsets show an MMS as a slide show that its SMIL part describes; without
one, many show the parts as bare attachments or not at all.  Each slide
holds at most one image, audio or video part and at most one text part, in
two regions (media above, text below), the layout of the OMA MMS
conformance document.  Parts are referred to by their Content-Location,
which handsets resolve more widely than ``cid:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

# How long a slide with no audio or video shows (SMIL clock value).
SLIDE_DURATION = "5000ms"

# The SMIL element for each kind of media part.
_ELEMENTS = {"image": "img", "audio": "audio", "video": "video"}


@dataclass(frozen=True, slots=True)
class Slide:
    """One slide: the Content-Location of its media part and of its text
    part (either may be None, not both) and the media's kind (``image``,
    ``audio`` or ``video``)."""

    media: str | None = None
    media_kind: str | None = None
    text: str | None = None


def slides_for(items: list[tuple[str, str]]) -> list[Slide]:
    """Slides for parts in mail order, each ``(kind, location)`` where kind
    is ``text``, ``image``, ``audio`` or ``video``.

    A media part opens a new slide unless the current slide holds only
    text (the text written above a photo goes with it); a text part joins
    the current slide when that has no text yet, else opens a new one.
    """
    slides: list[Slide] = []
    for kind, location in items:
        last = slides[-1] if slides else None
        if kind == "text":
            if last is not None and last.text is None:
                slides[-1] = Slide(last.media, last.media_kind, location)
            else:
                slides.append(Slide(text=location))
        elif last is not None and last.media is None:
            slides[-1] = Slide(location, kind, last.text)
        else:
            slides.append(Slide(location, kind))
    return slides


def build_smil(slides: list[Slide]) -> bytes:
    """The SMIL document (UTF-8) that shows ``slides`` in order."""
    smil = ElementTree.Element("smil")
    layout = ElementTree.SubElement(ElementTree.SubElement(smil, "head"), "layout")
    ElementTree.SubElement(layout, "root-layout", width="100%", height="100%")
    ElementTree.SubElement(
        layout,
        "region",
        id="Image",
        top="0%",
        left="0%",
        width="100%",
        height="70%",
        fit="meet",
    )
    ElementTree.SubElement(
        layout,
        "region",
        id="Text",
        top="70%",
        left="0%",
        width="100%",
        height="30%",
        fit="scroll",
    )
    body = ElementTree.SubElement(smil, "body")
    for slide in slides:
        par = ElementTree.SubElement(body, "par")
        if slide.media_kind not in ("audio", "video"):
            # Audio and video slides last as long as their clip plays.
            par.set("dur", SLIDE_DURATION)
        if slide.media is not None and slide.media_kind is not None:
            media = ElementTree.SubElement(
                par, _ELEMENTS[slide.media_kind], src=slide.media
            )
            if slide.media_kind != "audio":
                media.set("region", "Image")
        if slide.text is not None:
            ElementTree.SubElement(par, "text", src=slide.text, region="Text")
    document: bytes = ElementTree.tostring(smil, encoding="utf-8")
    return document
