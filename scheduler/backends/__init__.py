"""Where training runs (``TRAINING_BACKEND``), each backend one pure decision function.

- ``space``: the self-upgrading Space (``scheduler.lifecycle.decide``: one action per loop; the Space moves to the
  task's GPU and trains there).
- ``jobs``: the Space stays on its idle hardware and runs every task as a Hugging Face Job
  (``scheduler.backends.jobs.decide_jobs``: a list of actions per loop; executed by ``scheduler.backends.jobs_runner``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scheduler.backends.jobs import decide_jobs
from scheduler.lifecycle import decide

DECIDERS: dict[str, Callable[[Any], Any]] = {"space": decide, "jobs": decide_jobs}

__all__ = ["DECIDERS", "decide", "decide_jobs"]
