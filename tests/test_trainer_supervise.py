"""The supervisor of a running trainer (``scheduler.trainer_process.supervise``) shows the trainer's steps in the
worker's status soon enough for the owner's page (issue 26: no more than one refresh behind the trainer). A fake
process and a recorded ``time.sleep`` stand in for the trainer and the clock (the loop's waits are what is tested);
the events file and the status are real."""

from __future__ import annotations

import json

from contract.events import Step
from scheduler.status import WorkerStatus
from scheduler.trainer_process import EventReader, Watch, supervise
from ui.layout import REFRESH_S


class StepsTrainer:
    """A trainer that writes one step event per poll of its process, then exits."""

    def __init__(self, events, steps: int) -> None:
        self.events, self.steps, self.written, self.returncode = events, steps, 0, None

    def poll(self) -> int | None:
        if self.written == self.steps:
            self.returncode = 0
            return 0
        self.written += 1
        with self.events.open("a") as f:
            f.write(json.dumps(Step(step=self.written, total=self.steps, loss=0.5, time=1.0).model_dump()) + "\n")
        return None


def test_the_supervisor_reads_the_trainers_steps_several_times_per_page_refresh(tmp_path, monkeypatch):
    import scheduler.trainer_process as tp

    waits: list[float] = []
    status = WorkerStatus()
    shown: list[int] = []
    monkeypatch.setattr(tp.time, "sleep", lambda s: (waits.append(s), shown.append(status.view().step)))
    events, log = tmp_path / "events.jsonl", tmp_path / "train.log"
    log.write_text("loading\n")
    trainer = StepsTrainer(events, 5)
    # A Space's poll interval (5 s): the queue is read that rarely, the trainer's events much more often.
    watch = Watch(task_id="t1", deadline_s=1e9, poll_interval_s=5.0, heartbeat_s=1e9, kill_grace_s=1.0,
                  stopping=lambda: False, cancelled=lambda: False, heartbeat=lambda progress: None)  # fmt: skip
    supervise(trainer, EventReader(events), log, status, watch, redact=lambda lines: lines)

    assert shown == [1, 2, 3, 4, 5]  # each step is in the status by the loop's next wait
    assert waits and max(waits) <= REFRESH_S / 4, waits
    assert status.view().log_tail == ["loading"]
