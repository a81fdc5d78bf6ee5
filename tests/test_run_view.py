"""The run view's text and progress bar, rendered from the worker's status."""

from __future__ import annotations

from contract.events import Step
from scheduler.status import StatusData, WorkerStatus
from scheduler.task import Task
from ui.run_view import phase_text, progress_html


def test_speed_line_shows_eta_while_steps_remain_and_drops_it_when_the_last_step_is_done():
    running = StatusData(phase="training", task_id="abc", step=3, total=10, steps_per_s=2.0, eta_s=3.5, loss=0.25)
    text = phase_text(running)
    assert "**Phase:** training · task `abc`" in text
    assert "**Speed:** 2.00 steps/s · **ETA:** under a minute · **loss:** 0.2500" in text

    done = StatusData(phase="done", task_id="abc", step=10, total=10, steps_per_s=2.0, eta_s=0.0, loss=0.2)
    text = phase_text(done)
    assert "**Speed:** 2.00 steps/s · **loss:** 0.2000" in text and "ETA" not in text


def test_phase_text_shows_the_first_line_of_the_last_error():
    s = StatusData(phase="failed", last_error="the trainer exited with code 1\nTraceback ...")
    assert "**Last error:** the trainer exited with code 1" in phase_text(s) and "Traceback" not in phase_text(s)


def test_progress_bar_percentages_are_clamped_and_labelled():
    assert 'aria-valuenow="40"' in progress_html(4, 10) and "4 / 10 steps (40%)" in progress_html(4, 10)
    assert 'aria-valuenow="100"' in progress_html(12, 10)
    assert "no training step yet" in progress_html(0, 0)


def test_an_ended_run_shows_no_eta_even_before_its_last_step():
    for phase in ("cancelled", "failed", "stopped", "done"):
        s = StatusData(phase=phase, task_id="abc", step=3, total=10, steps_per_s=2.0, eta_s=3.5, loss=0.25)
        assert "ETA" not in phase_text(s), phase


def test_a_new_task_starts_with_a_clean_run_view():
    status = WorkerStatus()
    status.start_task(Task(instance_prompt="a photo of sks dog", submitted_by="local", id="first", params={"steps": 10}))
    status.record_step(Step(step=3, total=10, loss=0.5, steps_per_s=2.0, eta_s=3.5))
    status.add_samples(["/tmp/step3_0.png"])
    status.update(log_tail=["boom"])
    status.end_task("failed", "Task first failed", last_error="the trainer exited with code 1")
    assert status.snapshot().eta_s is None and status.snapshot().last_error

    status.start_task(Task(instance_prompt="a photo of sks toy", submitted_by="local", id="second", params={"steps": 4}))

    s = status.snapshot()
    assert (s.task_id, s.phase, s.step, s.total) == ("second", "preparing", 0, 4)
    assert s.last_error is None and s.eta_s is None and s.steps_per_s is None and s.loss is None
    assert s.loss_history == [] and s.samples == [] and s.log_tail == []
    assert "Last error" not in phase_text(s) and "first" not in phase_text(s)
