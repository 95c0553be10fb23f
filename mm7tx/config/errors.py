"""The one error a configuration raises: it names the file (or the
command-line option) and the line, so an operator can act on it."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names file and
    line (line 0: the whole file, or a command-line option named as source)."""

    def __init__(self, source: str, line: int, message: str) -> None:
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line
