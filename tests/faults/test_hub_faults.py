"""Scenarios 8 and 9 of issue 6: the result upload fails (transiently, then for good), and the Hub answers
429/5xx/slowly on the queue's reads and writes while tasks run. The app runs as a Space on the emulator."""

from __future__ import annotations

import random
import threading

import pytest

from scheduler.task import TaskStatus
from tests.faults.space import space
from tests.tiny_models import make_images

pytestmark = pytest.mark.slow


def test_8_failed_uploads_are_retried_and_a_permanent_failure_keeps_the_weights_for_retry(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    with space(hub, tmp_path, tiny_sd) as run:
        flaky, broken = run.task(), run.task()
        hub.inject_fault("POST", rf"^/api/models/{flaky.output_repo}/commit/main$", status=503, count=2)
        hub.inject_fault("POST", rf"^/api/models/{broken.output_repo}/commit/main$", status=500, count=1000)
        for t in (flaky, broken):
            run.queue.enqueue(t, images)
        ok, failed = run.wait_terminal([flaky.id, broken.id], 150)
        run.wait_released()

        assert ok.status is TaskStatus.DONE and ok.attempts == 1, ok.last_error  # retried inside the trainer
        assert failed.status is TaskStatus.FAILED and failed.attempts == 2
        assert "the model was trained but the upload failed" in failed.last_error
        assert "HTTP 500" in failed.last_error or "500" in failed.last_error
        # The trained weights are kept as a checkpoint on the Hub (the queue repo), at the final step.
        files = run.queue.api.list_repo_files(run.queue.repo_id, repo_type="dataset")
        assert f"checkpoints/{broken.id}/step-00000002/trainable.safetensors" in files
        # The second attempt did not retrain: it resumed at the final step.
        assert [e["step"] for e in run.events(broken.id) if e.get("event") == "resumed"] == [2]
        assert len([e for e in run.events(broken.id) if e.get("event") == "step"]) == 2

        # The owner presses Retry once the Hub accepts uploads again: a new GPU period, and no training either.
        hub.clear_faults()
        run.queue.retry(broken.id)
        done = run.wait_terminal([broken.id], 120)[0]
        run.wait_released()

    assert done.status is TaskStatus.DONE, done.last_error
    steps = [e for e in run.events(broken.id) if e.get("event") == "step"]
    assert len(steps) == 2  # still only the first attempt's two steps: the retry resumed from the Hub checkpoint
    assert [e["step"] for e in run.events(broken.id) if e.get("event") == "resumed"] == [2, 2]
    assert len(run.run_dirs(broken.id)) == 2  # the retry ran in a new container (empty disk)
    assert any(f.endswith(".safetensors") for f in run.queue.api.list_repo_files(broken.output_repo))
    assert not run.open_paid_periods()


def test_9_random_429_5xx_and_slow_answers_on_the_queue_lose_or_duplicate_nothing(hub, tmp_path, tiny_sd):
    images = make_images(tmp_path / "photos", 3)
    rng = random.Random(9)
    stop = threading.Event()
    injected: list[tuple[str, int | None, bool]] = []

    def noise(repo: str) -> None:
        paths = [rf"^/api/datasets/{repo}/commit/main$", rf"^/datasets/{repo}/resolve/main/queue\.json$",
                 rf"^/api/datasets/{repo}/preupload/main$"]  # fmt: skip
        while not stop.wait(rng.uniform(0.3, 0.8)):
            path = rng.choice(paths)
            if rng.random() < 0.3:
                hub.inject_fault("*", path, delay_s=rng.uniform(0.3, 0.8), count=1)
                injected.append((path, None, False))
            else:
                status = rng.choice([429, 500, 502, 503])
                landed = "commit" in path and rng.random() < 0.5
                hub.inject_fault("*", path, status=status, count=1, land_then_fail=landed,
                                 retry_after=0.2 if status == 429 else None)  # fmt: skip
                injected.append((path, status, landed))

    with space(hub, tmp_path, tiny_sd) as run:
        thread = threading.Thread(target=noise, args=(run.queue.repo_id,), daemon=True)
        thread.start()
        try:
            tasks = [run.enqueue(images) for _ in range(2)]
            done = run.wait_terminal([t.id for t in tasks], 180)
        finally:
            stop.set()
            thread.join()
        hub.clear_faults()
        run.wait_released()
        final = run.tasks()

    assert len(injected) >= 8 and any(landed for _, _, landed in injected)
    served = hub.requests(path_regex=rf"^/(api/)?datasets/{run.queue.repo_id}/")
    assert sum(r.status >= 429 for r in served) >= 5  # the faults really hit the app's (and the test's) requests
    assert [t.status for t in done] == [TaskStatus.DONE] * 2, [t.last_error for t in done]
    assert sorted(t.id for t in final) == sorted(t.id for t in tasks)  # none lost, none duplicated
    for t in done:
        assert t.attempts == 1
        runs = [e for e in run.events(t.id) if e.get("event") == "phase" and e.get("phase") == "training"]
        assert len(runs) == 1
    assert not run.open_paid_periods()
