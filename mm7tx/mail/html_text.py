"""HTML as the plain text a handset shows, for mail that has no text/plain.

The standard library's ``html.parser`` reads it (tolerant of broken HTML,
entities decoded); the text of ``script``, ``style``, ``head`` and
``title`` is left out, block elements and ``<br>`` end lines, links keep
their address after their text, and runs of blank space collapse as a
browser collapses them.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_HIDDEN = frozenset({"script", "style", "head", "title", "template"})
_BLOCKS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "div",
        "dl",
        "dt",
        "dd",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "li",
        "ol",
        "p",
        "pre",
        "section",
        "table",
        "tr",
        "ul",
    }
)
_SPACE = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.pieces.append("\n")
        elif tag in _BLOCKS:
            self.pieces.append("\n\n" if tag == "p" else "\n")
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            return  # <script/> opens nothing
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self.pieces.append("\n\n" if tag == "p" else "\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and href.startswith(("http:", "https:")) and not self.hidden:
                self.pieces.append(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(_SPACE.sub(" ", data))


def html_to_text(html: str) -> str:
    """The text of ``html`` as lines a handset shows."""
    parser = _Text()
    parser.feed(html)
    parser.close()
    text = "".join(parser.pieces)
    lines = (line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
