"""The run view's text and progress bar, rendered from the worker's status."""

from __future__ import annotations

from contract.events import Step, parse_event
from scheduler.status import StatusData, WorkerStatus
from scheduler.task import Task
from scheduler.trainer_process import apply_event
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


def test_the_latest_scores_show_next_to_the_base_models_as_the_trainer_reports_them():
    status = WorkerStatus()
    status.start_task(Task(instance_prompt="a photo of sks dog", submitted_by="local", id="abc", params={"steps": 1000}))
    assert "Scores" not in phase_text(status.snapshot())

    def report(record: dict) -> None:  # one decoded line of the trainer's event stream, applied as the worker does
        apply_event(status, parse_event({"event": "scores", **record}), None, None)

    report({"step": 0, "dino": 0.42, "clip_i": 0.7, "clip_t": 0.311, "val_loss": 0.2})
    assert ("**Scores of the base model:** DINO 0.420 · CLIP-I 0.700 · CLIP-T 0.311 · validation loss 0.2000"
            in phase_text(status.snapshot()))  # fmt: skip
    report({"step": 500, "dino": 0.61, "clip_i": 0.8, "clip_t": 0.305, "val_loss": 0.1234})
    report({"step": 1000, "dino": 0.655, "clip_t": 0.29})  # no CLIP-I nor loss this time: left out

    text = phase_text(status.snapshot())
    assert ("**Scores at step 1000:** DINO 0.655 (base 0.420) · CLIP-T 0.290 (base 0.311)" + "\n") in text + "\n"
    assert "step 500" not in text

    status.start_task(Task(instance_prompt="a photo of sks toy", submitted_by="local", id="next", params={"steps": 4}))
    s = status.snapshot()
    assert s.scores is None and s.base_scores is None and "Scores" not in phase_text(s)
