"""Issue 21 item 1 (after training): an upload the Hub refuses for good is never paid for with a second training.

A 401/403/404 from the model repo after training used to requeue the task: a second paid Job trained it again, hit
the same refusal, and FAILED. Now the task fails at once with "trained, upload refused: <reason and fix>", its final
checkpoint stays in the queue repo, and Retry (once the cause is fixed) resumes at the last step and only uploads.

Jobs mode on the emulator with the real LoRA trainer (tiny model, CPU) and real huggingface_hub. The refusal is the
emulator's fault injection (a 403 on the model repo's commit, once), so that the cause can be "fixed" for Retry;
``tests/test_training.py`` checks the trainer's exit code against a real 403 (another user's namespace).
"""

from __future__ import annotations

import json

from scheduler.task import TaskStatus
from scheduler.trainer_process import UPLOAD_REFUSED
from tests.test_jobs_backend import JobsSpace


def test_a_refused_upload_trains_once_keeps_the_checkpoint_and_retry_only_uploads(hub, tmp_path, tiny_sd):
    space = JobsSpace(hub, tmp_path, tiny_sd)
    try:
        task = space.enqueue("dreambooth-lora", steps=2, rank=4, checkpoint_every=None)
        hub.inject_fault("POST", rf"^/api/models/{task.output_repo}/commit/", status=403, count=1)
        space.worker.start()
        [failed] = space.wait_terminal([task.id], 150)
        assert failed.status is TaskStatus.FAILED, failed.last_error
        assert failed.last_error.startswith(f"{UPLOAD_REFUSED}: HTTP 403 for {task.output_repo}"), failed.last_error
        assert "give it write access to alice" in failed.last_error and "press Retry" in failed.last_error
        assert len(space.jobs(task.id)) == 1 and failed.attempts == 1  # trained once: no second paid Job
        files = space.api.list_repo_files(space.queue.repo_id, repo_type="dataset")
        final = f"checkpoints/{task.id}/step-00000002/trainable.safetensors"
        assert final in files, files  # the trained LoRA is kept in the (private) queue repo

        # The cause is fixed (the fault was one-off): Retry runs one more Job, which resumes at the last step and
        # uploads without a training step.
        space.queue.retry(task.id)
        [done] = space.wait_terminal([task.id], 150)
        assert done.status is TaskStatus.DONE and done.result_url, done.last_error
        jobs = space.jobs(task.id)
        assert len(jobs) == 2
        log = space.hub.job_log(jobs[1]["id"])
        assert "resumed from the checkpoint of step 2" in log, log[-2000:]
        [events_file] = space.job_data.glob(f"runs/{task.id}/events-*.jsonl")  # KEEP_RUN_FOLDERS in the Jobs
        events = [json.loads(line) for line in events_file.read_text().splitlines()]
        resumed = max(i for i, e in enumerate(events) if e["event"] == "resumed")
        assert not [e for e in events[resumed:] if e["event"] == "step"], events[resumed:]  # no training step
        assert "pytorch_lora_weights.safetensors" in space.api.list_repo_files(task.output_repo)
    finally:
        space.worker.stop()


def test_the_worker_does_not_retry_a_refused_upload_and_says_why(tmp_path):
    from contract.events import Error, ExitCode
    from scheduler.trainer_process import trainer_outcome

    log = tmp_path / "train.log"
    log.write_text("error (upload_refused): HTTP 403 for bob/m; ...\n")
    error = Error(kind="upload_refused", message="HTTP 403 for bob/m; the token may not create or write bob/m")
    refused = trainer_outcome(ExitCode.UPLOAD_REFUSED, None, error, log, lambda lines: lines)
    assert not refused.ok and not refused.retryable
    assert refused.error.startswith("trained, upload refused: HTTP 403 for bob/m; the token may not create")
    assert "press Retry" in refused.error
    kept_failing = trainer_outcome(ExitCode.UPLOAD_FAILED, None, Error(kind="upload", message="500"), log, list)
    assert kept_failing.retryable  # a Hub that keeps failing (5xx) may accept the next attempt
