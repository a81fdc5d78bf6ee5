"""Measurement only: what the crowd benchmark asks the app's process about its memory (never part of the app).

``probe_env`` writes a ``sitecustomize.py`` that the Space's ``python app.py`` imports at start (its folder first on
``PYTHONPATH``); it installs a SIGUSR1 handler. ``ask`` sends the signal and reads the answer: the RSS as it was,
after ``gc.collect()`` and after glibc's ``malloc_trim(0)`` (memory freed but kept by the allocator: fragmentation
rather than live objects), how many objects the collector tracks and how many browser sessions Gradio's state
holder keeps.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

OUT_VAR = "CROWD_PROBE_OUT"
ROOT = Path(__file__).resolve().parents[1]


def install() -> None:
    """In the probed process (from ``sitecustomize``): answer SIGUSR1 with ``report``."""
    if os.environ.get(OUT_VAR):
        signal.signal(signal.SIGUSR1, lambda *_: report(Path(os.environ[OUT_VAR])))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def report(out: Path) -> None:
    answer: dict[str, Any] = {"rss_mb": rss_mb()}
    gc.collect()
    answer["rss_gc_mb"] = rss_mb()
    objects = gc.get_objects()
    answer["objects"] = len(objects)  # live objects the collector tracks (containers): do closed tabs leave some?
    holders = [o for o in objects if type(o).__name__ == "StateHolder"]
    del objects
    answer["gradio_sessions"] = sum(len(getattr(h, "session_data", {})) for h in holders)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    answer["rss_trim_mb"] = rss_mb()
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(answer))
    tmp.replace(out)


def probe_env(folder: Path) -> dict[str, str]:
    """The Space's environment for the probe: ``sitecustomize.py`` in ``folder``, its answer file there."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text("from benchmarks.crowd_probe import install\n\ninstall()\n")
    return {"PYTHONPATH": f"{folder}{os.pathsep}{ROOT}", OUT_VAR: str(folder / "answer.json")}


def ask(pid: int, env: dict[str, str], timeout_s: float = 30.0) -> dict[str, Any]:
    """Signal the app ``pid`` and wait for its answer ({} if none came)."""
    out = Path(env[OUT_VAR])
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if out.exists():
            return json.loads(out.read_text())
        time.sleep(0.1)
    return {}
