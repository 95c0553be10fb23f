"""mm7tx: an MM7 (3GPP TS 23.140) gateway on Twisted."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.abc import Loader, MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType

# First, before anything imports Twisted's endpoints (which take them out of
# the environment): the sockets systemd passed, for systemd: listeners.
from mm7tx.app import systemd as _systemd  # noqa: F401

__version__ = "0.1.0"

# The modules' homes before they moved into packages (README, "Layout"): the
# names configurations, --logger options, .tac files and imports use.
MOVED = {
    "mm7tx.messages": "mm7tx.mm7.messages",
    "mm7tx.status": "mm7tx.mm7.status",
    "mm7tx.errors": "mm7tx.mm7.errors",
    "mm7tx.codec": "mm7tx.mm7.codec",
    "mm7tx.wire": "mm7tx.mail.wire",
    "mm7tx.auth": "mm7tx.http.auth",
    "mm7tx.client": "mm7tx.http.client",
    "mm7tx.limits": "mm7tx.http.limits",
    "mm7tx.ratelog": "mm7tx.http.ratelog",
    "mm7tx.resource": "mm7tx.http.resource",
    "mm7tx.site": "mm7tx.http.site",
    "mm7tx.esmtp": "mm7tx.smtp.esmtp",
    "mm7tx.maildir": "mm7tx.smtp.maildir",
    "mm7tx.senders": "mm7tx.smtp.senders",
    "mm7tx.processors": "mm7tx.gateway.processors",
    "mm7tx.reports": "mm7tx.gateway.reports",
    "mm7tx.cohost": "mm7tx.app.cohost",
    "mm7tx.health": "mm7tx.app.health",
    "mm7tx.service": "mm7tx.app.service",
    "mm7tx.systemd": "mm7tx.app.systemd",
    "mm7tx.tap": "mm7tx.app.tap",
    "mm7tx.workers": "mm7tx.app.workers",
}


def new_home(name: str) -> str | None:
    """Where the module once named ``name`` lives now (``mm7tx.codec.mime``:
    ``mm7tx.mm7.codec.mime``), ``None`` for a name that did not move."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _OldNames(MetaPathFinder, Loader):
    """Imports a module by its old name as the very module at its new home
    (one module object, private names and all), so that every old dotted
    name keeps working without a file left at the old path."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if new_home(fullname) is None:
            return None
        return ModuleSpec(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        home = new_home(spec.name)
        assert home is not None
        module = importlib.import_module(home)
        # The import system sets __spec__ to this alias's spec after this:
        # exec_module puts the module's own spec back.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing runs (the module ran at its new home); its own spec goes
        back in place of the alias's."""
        assert module.__spec__ is not None
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
    sys.meta_path.insert(0, _OldNames())
