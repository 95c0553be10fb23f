"""Processors named in a configuration: found by their dotted name, and the
options each declares in its ``Options`` dataclass, read from a ``Path``
scope and converted to their declared types."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import types
import typing
from typing import Any

# The types a processor's option may be declared with, as a configuration
# value can give them.
_OPTION_KINDS = (str, int, float, bool)


def find_processor(name: str) -> Any:
    """The object a processor's dotted name names; ``ValueError`` says, in
    one line, why it cannot be loaded: for a module not found, where Python
    looked and that ``twistd`` does not put the current folder there."""
    where = f"cannot load processor {name!r}"
    parts = name.split(".")
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        raise ValueError(f"{where}: not a dotted name like package.module.Class")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts))}
    for end in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:end])
        try:
            spec = importlib.util.find_spec(module_name)
            module = importlib.import_module(module_name) if spec else None
        except ModuleNotFoundError as e:
            if e.name in prefixes:
                continue  # a parent is a module, not a package: look higher
            raise ValueError(f"{where}: importing {module_name!r} failed: {e}") from e
        except Exception as e:
            raise ValueError(
                f"{where}: importing {module_name!r} failed: {type(e).__name__}: {e}"
            ) from e
        if module is None:
            continue
        found: Any = module
        for attribute in parts[end:]:
            try:
                found = getattr(found, attribute)
            except AttributeError:
                rest = ".".join(parts[end:])
                raise ValueError(
                    f"{where}: module {module_name!r} has no {rest}"
                ) from None
        return found
    raise ValueError(f"{where}: {_not_on_path(parts[0])}")


def _not_on_path(top: str) -> str:
    """Why ``top`` was not imported: the import path, and the hint that
    ``twistd`` (unlike ``python``) leaves the current folder out of it."""
    looked = ", ".join(entry or "." for entry in sys.path)
    folder = os.getcwd()
    fix = "start it with PYTHONPATH=. or install the package"
    for candidate in (f"{top}.py", f"{top}/"):
        if os.path.exists(os.path.join(folder, candidate)) and not any(
            os.path.abspath(entry or ".") == folder for entry in sys.path
        ):
            return (
                f"no module {top!r} on the import path ({looked}); {candidate} is "
                f"in the current folder {folder}, which twistd does not put on "
                f"the import path: {fix}"
            )
    return (
        f"no module {top!r} on the import path ({looked}; twistd does not put "
        f"the current folder on it: {fix})"
    )


def declared_options(found: Any, name: str) -> dict[str, tuple[Any, bool]] | None:
    """The options a processor declares in its ``Options`` dataclass, by
    name: (the type a value is converted to, whether it is required);
    ``None`` when it declares none.  ``ValueError`` for a declaration a
    configuration cannot fill."""
    declared = getattr(found, "Options", None)
    if declared is None:
        return None
    if not (isinstance(declared, type) and dataclasses.is_dataclass(declared)):
        raise ValueError(f"Options of {name} is not a dataclass")
    try:
        hints = typing.get_type_hints(declared)
    except Exception as e:
        raise ValueError(
            f"Options of {name}: cannot read its types: {type(e).__name__}: {e}"
        ) from None
    fields: dict[str, tuple[Any, bool]] = {}
    for spec in dataclasses.fields(declared):
        if not spec.init:
            continue
        kind = _option_kind(hints.get(spec.name, Any))
        if kind is None:
            hint = hints.get(spec.name)
            shown = hint.__name__ if isinstance(hint, type) else str(hint)
            raise ValueError(
                f"option {spec.name} of {name} is declared {shown}: a "
                "configuration gives only str, int, float, bool or tuple[str, ...]"
            )
        required = (
            spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        )
        fields[spec.name.lower()] = (kind, required)
    return fields


def _option_kind(hint: Any) -> Any:
    """``str``, ``int``, ``float``, ``bool`` or ``tuple`` (of strings) for
    a declared type (``X | None`` as ``X``); ``None`` for any other."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) != 1:
            return None
        hint = others[0]
    if hint in _OPTION_KINDS:
        return hint
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, ...):
        return tuple
    return None


def option_value(kind: Any, value: str | list[str]) -> Any:
    """A configuration value as ``kind`` (:func:`_option_kind`);
    ``ValueError`` ends "option NAME of PROCESSOR …" with what is wrong."""
    if kind is tuple:
        return tuple(value) if isinstance(value, list) else (value,)
    if isinstance(value, list):
        raise ValueError("takes one value, not a list")
    if kind is bool:
        text = value.lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ValueError(f"must be true or false, not {value!r}")
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, not {value!r}") from None
    if kind is float:
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"must be a number, not {value!r}") from None
    return value
