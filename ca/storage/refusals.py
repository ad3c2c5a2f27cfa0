"""Refused requests in the audit log, aggregated per source and minute.

Every refused attestation, issuance, admin call and rate-limit trip is
audited, but anyone can send refused requests, so one chained row per
refusal would let anonymous traffic grow the chain without bound. Instead,
per minute, the first refusal of each (action, source, error) is chained at
once, committed before the refusal is answered (if it cannot be written the
request fails with 503 instead), and the ones after it in that minute are
counted and chained as one summary row (``outcome`` "refused", detail
``count``) when the minute is over. At most :data:`MAX_KEYS` keys a minute:
beyond that, sources are folded into ``"other"``. So a minute adds at most
2 x MAX_KEYS rows, however much is refused.

What a crash can lose is the count of repeats in the current minute, never
the fact that a source was refused in it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from idmint.ca.storage import audit
from idmint.errors import IdmintError

if TYPE_CHECKING:
    from idmint.ca.storage.recorder import RecordSink

log = logging.getLogger(__name__)

#: Distinct (action, source, error) per minute before sources become "other".
MAX_KEYS = 1000

_Key = tuple[str, str, str]


class RefusalLog:
    """Counts refusals and audits them per minute through a record sink."""

    def __init__(
        self,
        sink: RecordSink,
        clock: Callable[[], float] = time.time,
        observer: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.clock = clock
        #: Called with (action, error code) for every refusal (the metrics counter).
        self.observer = observer
        self._lock = threading.Lock()
        self._minute = -1
        self._counts: dict[_Key, int] = {}
        self._timer: threading.Timer | None = None

    def refused(
        self, action: str, source: str, error: IdmintError, selectors: Iterable[str] = ()
    ) -> None:
        """Count one refusal; chain it if it is the first of its kind this minute."""
        if self.observer is not None:
            self.observer(action, error.code)
        now = self.clock()
        minute = int(now // 60)
        name = type(error).__name__
        with self._lock:
            due = self._rotate(minute)
            key = (action, source, name)
            if key not in self._counts and len(self._counts) >= MAX_KEYS:
                key = (action, "other", name)
            seen = self._counts.get(key, 0)
            self._counts[key] = seen + 1
            if seen and self._timer is None:
                self._timer = threading.Timer(60 - now % 60 + 0.5, self.flush)
                self._timer.daemon = True
                self._timer.start()
        self._write(due, minute - 1)
        if not seen:
            detail = {
                "error": name,
                "reason": str(error)[:500],
                "selectors": sorted(selectors),
                "first_this_minute": True,
            }
            event = audit.Event(action, "-", key[1], "refused", detail, _at(now))
            self._commit([event])

    def flush(self) -> None:
        """Chain the summaries of a minute that is over (also run by a timer)."""
        minute = int(self.clock() // 60)
        with self._lock:
            self._timer = None
            due = self._rotate(minute)
        try:
            self._write(due, minute - 1)
        except IdmintError:
            log.exception("could not audit %d refusal summaries; they are lost", len(due))

    def close(self) -> None:
        with self._lock:
            due, self._counts = self._counts, {}
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        try:
            self._write(due, self._minute)
        except IdmintError:
            log.exception("could not audit %d refusal summaries at close", len(due))

    def _rotate(self, minute: int) -> dict[_Key, int]:
        """Start ``minute`` if it is new; return the previous minute's counts."""
        if minute == self._minute:
            return {}
        due, self._counts, self._minute = self._counts, {}, minute
        return due

    def _write(self, due: dict[_Key, int], minute: int) -> None:
        events = [
            audit.Event(
                action,
                "-",
                source,
                "refused",
                {"error": name, "count": count - 1, "minute": _at(minute * 60.0).isoformat()},
                _at(self.clock()),
            )
            for (action, source, name), count in sorted(due.items())
            if count > 1
        ]
        if events:
            self._commit(events)

    def _commit(self, events: list[audit.Event]) -> None:
        from idmint.ca.storage.recorder import Issuance

        self.sink.commit(Issuance(None, None, events))


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
