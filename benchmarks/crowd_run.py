"""The crowd benchmark's run (``benchmarks/crowd.py --training``): a real run trained by the Space while the tabs
tick, and how far the owner's tab is behind its trainer.

The run is the tiny random test model (``tests.tiny_models.build_tiny_sd``, the demo model's builder) trained on
the Space's own CPU (a ``cpu-basic`` task, ``ALLOW_CPU_TRAINING``), one step event per step, enough steps to outlast a level. The lag is
measured from the trainer's own event times (``contract.events.Step.time``, in the events file the worker reads)
to the owner tab's tick answers (``benchmarks.crowd_tabs.TabStats.ticks``).
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.crowd_tabs import TabStats

FIRST_STEP_S = 300.0  # the run loads the model and caches latents first


def start_training(run: Any, folder: Path, steps: int) -> str:
    """Enqueue a tiny-model task on ``cpu-basic`` for ``steps`` steps (a step event each) and wait until its
    trainer has emitted a step; the task id. ``folder`` holds the model (``folder/model``, offered by the Space's
    ``BASE_MODELS``) and the photos."""
    from tests.faults.space import tiny_params
    from tests.polling import wait_for
    from tests.tiny_models import build_tiny_sd, make_images

    images = sorted((folder / "photos").glob("*")) or make_images(folder / "photos", 3)
    model = build_tiny_sd(folder / "model")
    task = replace(run.task(params=tiny_params(steps, log_every=1), deadline_s=300.0), base_model=str(model),
                   hardware="cpu-basic")  # fmt: skip
    run.queue.enqueue(task, images)
    try:
        wait_for(lambda: emitted_steps(run, task.id) or None, FIRST_STEP_S, "the run's first step", every=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: task {run.get(task.id).status}\n{run.log_tail()}") from None
    return task.id


def stop_training(run: Any, task_id: str) -> None:
    """Cancel the task; wait until the worker has stopped its trainer (the queue says it ended)."""
    run.queue.cancel(task_id)
    run.wait_terminal([task_id], 120)


def emitted_steps(run: Any, task_id: str) -> list[tuple[float, int]]:
    """(time, step) of every step event the task's trainer wrote, in order."""
    return [(e["time"], e["step"]) for e in run.events(task_id) if e.get("event") == "step" and e.get("time")]


def progress_lag(emitted: list[tuple[float, int]], ticks: list[tuple[float, float, int | None]],
                 interval_s: float) -> dict[str, Any]:  # fmt: skip
    """How far one tab's view of the run was behind the trainer. ``emitted``: (time, step) of the trainer's step
    events; ``ticks``: the tab's ticks in order, (sent, answered, step shown or None: no change). For each step
    emitted after the first tick was sent and shown by a later tick: the lag from its emission to the answer that
    first showed it (or a later step), in seconds and in tick periods, and the ticks sent after its emission that
    did not show it yet (0: the next tick showed it). ``unseen``: steps of the window no tick showed."""
    if not ticks:
        return {"points": 0, "unseen": 0}
    visible, shown = [], 0
    for _, _, step in ticks:
        shown = max(shown, step or 0)
        visible.append(shown)
    lags, missed, unseen = [], [], 0
    for at, step in emitted:
        if at < ticks[0][0]:
            continue
        i = bisect.bisect_left(visible, step)
        if i == len(ticks):
            unseen += 1
            continue
        lags.append(ticks[i][1] - at)
        missed.append(sum(1 for sent, _, _ in ticks[:i] if sent > at))
    return {"points": len(lags), "unseen": unseen, "interval_s": interval_s,
            "lag_s": quantiles(lags), "lag_ticks": quantiles([lag / interval_s for lag in lags]),
            "ticks_missed": quantiles(missed), "ticks_missed_over_1": sum(1 for m in missed if m > 1)}  # fmt: skip


def quantiles(values: list[float]) -> dict[str, float | None]:
    from benchmarks.crowd import percentile

    rounded = [round(v, 3) if v is not None else None for v in (percentile(values, 0.5), percentile(values, 0.95))]
    return {"p50": rounded[0], "p95": rounded[1], "max": round(max(values), 3) if values else None}


def owner_lag(run: Any, task_id: str, level: list[TabStats]) -> dict[str, Any]:
    """``progress_lag`` of the level's owner tab against the task's trainer, with the steps it emitted meanwhile."""
    owner = next(s for s in level if s.kind == "owner")
    emitted = emitted_steps(run, task_id)
    window = [e for e in emitted if owner.ticks and owner.ticks[0][0] <= e[0] <= owner.ticks[-1][1]]
    return {**progress_lag(emitted, owner.ticks, owner.interval_s or 0.0), "steps_in_window": len(window)}
