"""A warning logged at most once per interval per key, so that what a peer
can repeat at will (a connection refused, and refused again) cannot fill
the disk with the same line."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

# Seconds between two lines for one key.
DEFAULT_INTERVAL = 60.0
# Seconds a key is remembered after its last line: a count held back is
# reported with the key's next line if that comes within this time.
DEFAULT_FORGET_AFTER = 3600.0
# Keys remembered at most; past it, the one whose last line is oldest goes.
DEFAULT_MAX_KEYS = 10_000


class RateLimitedWarning:
    """One warning, ``format`` with the fields of each call, logged at most
    once per ``interval`` seconds for each key.

    A call within the interval of the key's last line is held back and
    counted; the key's next line ends with ``" (N more <suppressed> since
    the last warning)"`` and carries ``suppressed=N`` as a field.  Time is
    the ``clock``'s (the reactor's, a ``Clock`` in tests).  At most
    ``max_keys`` keys are remembered, each for ``forget_after`` seconds
    after its last line, so that a peer cycling through keys (source
    addresses) cannot grow the memory; a count held back for a key
    forgotten is not reported (count the events elsewhere too, in a metric).
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        format: str,
        *,
        suppressed: str = "",
        interval: float = DEFAULT_INTERVAL,
        forget_after: float = DEFAULT_FORGET_AFTER,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if interval <= 0 or forget_after < interval or max_keys < 1:
            raise ValueError(
                "a rate-limited warning needs interval > 0, "
                "forget_after >= interval and max_keys >= 1"
            )
        self._log = log
        self._clock = clock
        self._format = format
        what = f"more {suppressed}" if suppressed else "more"
        self._with_count = (
            format + " ({suppressed} " + what + " since the last warning)"
        )
        self.interval = interval
        self.forget_after = forget_after
        self.max_keys = max_keys
        # key -> (time of its last line, calls held back since); in the
        # order of those times (a key logged again moves to the end), so
        # that the stalest are always first.
        self._keys: dict[Hashable, tuple[float, int]] = {}

    def __len__(self) -> int:
        """Keys remembered now."""
        return len(self._keys)

    def __call__(self, key: Hashable, **fields: Any) -> bool:
        """Log the warning for ``key`` unless its last line is within the
        interval (then count it held back); whether it was logged."""
        now = self._clock.seconds()
        self._forget(now)
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            self._keys[key] = (entry[0], entry[1] + 1)  # in place: same time
            return False
        held_back = 0
        if entry is not None:
            held_back = entry[1]
            del self._keys[key]  # logged now: to the end
        while len(self._keys) >= self.max_keys:
            del self._keys[next(iter(self._keys))]
        self._keys[key] = (now, 0)
        self._log.warn(
            self._with_count if held_back else self._format,
            suppressed=held_back,
            **fields,
        )
        return True

    def _forget(self, now: float) -> None:
        keys = self._keys
        while keys:
            oldest = next(iter(keys))
            if now - keys[oldest][0] < self.forget_after:
                return
            del keys[oldest]
