"""Progress events as JSON lines (for the app; the event types are ``contract.events``') and a console progress
bar (for people)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from contract.events import PHASES, BaseEvent, Error, Phase, Step, event_record


class Progress:
    """Writes one JSON object per line to ``path`` (appending) and drives a tqdm bar when ``bar`` is true.

    Every event has ``event`` and ``time`` (unix seconds). On non-main processes (``enabled=False``) nothing is
    written, so the caller need not check the rank.
    """

    def __init__(self, path: str | Path | None = None, *, enabled: bool = True, bar: bool | None = None):
        self.enabled = enabled
        self._file = None
        if enabled and path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.bar_enabled = enabled and (sys.stderr.isatty() if bar is None else bar)
        self._bar = None

    def emit(self, event: BaseEvent) -> None:
        """Write one event line, stamped with the time (flushed immediately, so a killed trainer leaves complete
        lines)."""
        if not self.enabled:
            return
        record = event_record(event.model_copy(update={"time": round(time.time(), 3)}))
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def phase(self, name: str) -> None:
        assert name in PHASES, name
        self.emit(Phase(phase=name))
        if self.enabled:  # a line for people (and the app's log tail), bar or not
            self._close_bar()
            print(f"[training] {name.replace('_', ' ')}", file=sys.stderr, flush=True)

    def start_bar(self, total: int, initial: int = 0) -> None:
        if not self.bar_enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc="training", unit="step", file=sys.stderr)

    def advance_bar(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def step(self, *, step: int, total: int, loss: float, lr: float, steps_per_s: float, eta_s: float,
             peak_mem_gib: float) -> None:  # fmt: skip
        self.emit(Step(step=step, total=total, loss=round(loss, 6), lr=lr, steps_per_s=round(steps_per_s, 3),
                       eta_s=round(eta_s, 1), peak_mem_gib=round(peak_mem_gib, 3)))  # fmt: skip

    def error(self, kind: str, message: str) -> None:
        self._close_bar()
        self.emit(Error(kind=kind, message=message))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        if self._file is not None:
            self._file.close()
            self._file = None
