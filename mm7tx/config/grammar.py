"""Momentum's configuration grammar, read into a syntax tree.

Case-insensitive option names, ``#`` comments, ``name = value``, quoted
strings, lists in ``( )``, scopes in ``{ }`` and named scopes such as
``Listen "tcp:8080" { }``; a mistake is a :class:`ConfigError` at its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mm7tx.config.errors import ConfigError

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r]+) |
    (?P<newline>\n) |
    (?P<comment>\#[^\n]*) |
    (?P<string>"(?:[^"\\\n]|\\.)*") |
    (?P<unterminated>") |
    (?P<punct>[=(){},]) |
    (?P<word>[^\s=(){}",\#]+) |
    (?P<bad>.)
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    line: int


@dataclass(slots=True)
class Option:
    name: str
    value: str | list[str]
    line: int


@dataclass(slots=True)
class Scope:
    name: str
    label: str | None
    body: list[Option | Scope]
    line: int


def _tokens(text: str, source: str) -> list[Token]:
    tokens, line = [], 1
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "bad"
        value = match.group()
        if kind == "newline":
            line += 1
        elif kind == "string":
            tokens.append(Token("string", re.sub(r"\\(.)", r"\1", value[1:-1]), line))
        elif kind == "unterminated":
            # A string may not span lines: its closing quote is missing.
            raise ConfigError(
                source, line, "unterminated string (no closing '\"' on this line)"
            )
        elif kind == "bad":
            raise ConfigError(source, line, f"unexpected character {value!r}")
        elif kind in ("punct", "word"):
            tokens.append(Token(kind if kind == "word" else value, value, line))
    return tokens


def parse(text: str, source: str = "<config>") -> list[Option | Scope]:
    """The syntax tree of a configuration text."""
    tokens = _tokens(text, source)
    position = 0

    def peek() -> Token | None:
        return tokens[position] if position < len(tokens) else None

    def take(*kinds: str) -> Token:
        nonlocal position
        token = peek()
        if token is None:
            last = tokens[-1].line if tokens else 1
            raise ConfigError(
                source, last, f"unexpected end of file, expected {kinds[0]}"
            )
        if token.kind not in kinds:
            raise ConfigError(
                source,
                token.line,
                f"expected {' or '.join(kinds)}, found {token.text!r}",
            )
        position += 1
        return token

    def block(closing: bool) -> list[Option | Scope]:
        items: list[Option | Scope] = []
        while True:
            token = peek()
            if token is None:
                if closing:
                    raise ConfigError(
                        source, tokens[-1].line if tokens else 1, "missing '}'"
                    )
                return items
            if token.kind == "}":
                if not closing:
                    raise ConfigError(source, token.line, "'}' without a scope")
                take("}")
                return items
            name = take("word")
            following = take("=", "{", "string", "word")
            if following.kind == "=":
                items.append(Option(name.text, value(), name.line))
            elif following.kind == "{":
                items.append(Scope(name.text, None, block(True), name.line))
            else:
                take("{")
                items.append(Scope(name.text, following.text, block(True), name.line))

    def value() -> str | list[str]:
        token = take("string", "word", "(")
        if token.kind != "(":
            return token.text
        values: list[str] = []
        while True:
            item = take("string", "word", ")", ",")
            if item.kind == ")":
                return values
            if item.kind != ",":
                values.append(item.text)

    return block(False)
