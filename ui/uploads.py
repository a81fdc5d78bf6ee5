"""Which browser sessions show which of Gradio's upload copies, so that a submit removes only what no other session
still needs.

Gradio keeps an upload in a folder named by its content (``<GRADIO_TEMP_DIR>/<sha256 of the bytes>/<file name>``):
the same photo uploaded in two tabs, or by two users, is one file. A submit that removed it would leave the other
form showing photos that are gone, and its own submit would fail with "file not found". So each form reports what
it shows (the photo field's ``change`` event, with its session), a submit removes only the copies no other session
shows, and a closed tab lets go of its own. Whatever is left is swept with the rest of Gradio's cache
(``ui.layout.CACHE_SWEEP``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

#: the most sessions tracked (a bound on memory whatever the callers send); beyond it the least recently reporting go,
#: and a submit may then remove a copy such an old tab still shows (as if it had closed)
MAX_SESSIONS = 1000


class UploadHolders:
    """Session id -> the upload copies its form shows (thread-safe; sessions without a live copy are dropped, and
    at most ``MAX_SESSIONS`` are kept)."""

    def __init__(self) -> None:
        self._held: dict[str | None, frozenset[Path]] = {}
        self._lock = threading.Lock()

    def hold(self, session: str | None, paths: Iterable[Path]) -> None:
        """``session``'s form shows ``paths`` now (and nothing else); copies gone from the disk are forgotten."""
        with self._lock:
            self._held.pop(session, None)  # re-inserted last: the most recent
            self._held[session] = frozenset(Path(p) for p in paths)
            for key in list(self._held)[: max(0, len(self._held) - MAX_SESSIONS)]:
                del self._held[key]
            for key, held in list(self._held.items()):
                live = frozenset(p for p in held if p.exists())
                if live:
                    self._held[key] = live
                else:
                    del self._held[key]

    def release(self, session: str | None) -> None:
        """``session`` shows nothing any more (its tab closed)."""
        with self._lock:
            self._held.pop(session, None)

    def take(self, session: str | None, paths: Iterable[Path]) -> list[Path]:
        """``session`` has submitted ``paths`` (its form clears them): it lets go of them, and of those, the ones no
        other session shows are returned, to be removed."""
        with self._lock:
            self._held.pop(session, None)
            shown = frozenset().union(*self._held.values())
            return [Path(p) for p in paths if Path(p) not in shown]

    def holders(self, path: Path) -> int:
        """How many sessions show ``path``."""
        with self._lock:
            return sum(Path(path) in held for held in self._held.values())
