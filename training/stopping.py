"""Graceful stop on SIGTERM (what the worker's watchdog and a Space restart send first).

Inside the training loop of a single-process run the signal is deferred to the end of the current step, where the
trainer saves a checkpoint and raises ``Terminated``; elsewhere (or with several processes, which could not agree
on a step without a per-step collective) it raises ``Terminated`` at once.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM)."""


class _StopState:
    deferring = False
    requested = False


STOP = _StopState()


def _on_sigterm(signum, frame) -> None:
    if STOP.deferring:
        STOP.requested = True
        return
    raise Terminated("stopped by SIGTERM")


@contextmanager
def sigterm_handler():
    """Install the SIGTERM handler for the duration of a run (restoring the previous one)."""
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    STOP.deferring = STOP.requested = False
    try:
        yield STOP
    finally:
        signal.signal(signal.SIGTERM, previous)
        STOP.deferring = STOP.requested = False


@contextmanager
def deferred_stop(enabled: bool):
    """Within this block a SIGTERM only sets ``STOP.requested`` (checked by the training loop after each step)."""
    STOP.deferring = enabled
    try:
        yield STOP
    finally:
        STOP.deferring = False
        if STOP.requested:
            STOP.requested = False
            raise Terminated("stopped by SIGTERM")
