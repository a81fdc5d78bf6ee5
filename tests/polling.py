"""Waiting helpers shared by the tests and the benchmarks: standard library only, no environment side effects.

(``tests.conftest`` points the Hub client at the test emulator when imported; benchmarks that run their own
emulator import this module instead.)
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def serving(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> float:
    """Poll ``url`` until it answers 200; returns the seconds waited. Fails early when ``proc`` died."""
    start = time.monotonic()
    while not serving(url):
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the app exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{url} not served after {timeout}s:\n{tail(log)}")
        time.sleep(0.2)
    return time.monotonic() - start


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def tail(log: Path | None, n: int = 40) -> str:
    """The last ``n`` lines of a log file ("" when there is none)."""
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
