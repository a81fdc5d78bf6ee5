"""One contract suite for every TaskQueue backend: the same assertions run on LocalQueue and on HubQueue (the real
huggingface_hub client against the emulator)."""

from __future__ import annotations

import json
import time

import pytest

from scheduler.queue.base import InvalidTransition, TaskNotFound
from scheduler.task import TaskStatus
from tests.scheduler.helpers import make_images, make_task
from tests.scheduler.queues import queue_file_text, store_checkpoint, stored_files

pytestmark = pytest.mark.timeout(120)


def test_enqueue_stores_task_and_images(queue, tmp_path):
    images = make_images(tmp_path / "in", 3)
    task = make_task(params={"steps": 50})
    stored = queue.enqueue(task, images)
    assert stored.id == task.id
    assert stored.status is TaskStatus.PENDING
    assert stored.images is not None and stored.images.count == 3
    again = queue.get(task.id)
    assert again.instance_prompt == "a photo of sks dog"
    assert again.params == {"steps": 50}
    assert again.images.count == 3
    fetched = queue.fetch_images(again, tmp_path / "out")
    got = sorted(p.read_bytes() for p in fetched.iterdir() if p.is_file())
    assert got == sorted(p.read_bytes() for p in images)


def test_enqueue_is_idempotent_by_id(queue, tmp_path):
    images = make_images(tmp_path, 2)
    task = make_task()
    queue.enqueue(task, images)
    changed = make_task(id=task.id, instance_prompt="something else")
    second = queue.enqueue(changed, images)
    assert second.instance_prompt == "a photo of sks dog"
    assert [t.id for t in queue.list()] == [task.id]


def test_list_is_oldest_first(queue, tmp_path):
    images = make_images(tmp_path, 1)
    now = time.time()
    newer = make_task(created_at=now + 10)
    older = make_task(created_at=now)
    queue.enqueue(newer, images)
    queue.enqueue(older, images)
    assert [t.id for t in queue.list()] == [older.id, newer.id]


def test_get_unknown_raises_not_found(queue):
    with pytest.raises(TaskNotFound):
        queue.get("nope")
    with pytest.raises(TaskNotFound):
        queue.claim("nope", "w1", 60)


def test_claim_once(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    before = time.time()
    claimed = queue.claim(task.id, "w1", 60)
    assert claimed is not None
    assert claimed.status is TaskStatus.RUNNING
    assert claimed.attempts == 1
    assert claimed.lease.holder == "w1"
    assert claimed.lease.expires_at >= before + 59
    assert claimed.started_at >= before
    assert queue.claim(task.id, "w2", 60) is None
    assert queue.get(task.id).lease.holder == "w1"


def test_claim_refuses_exhausted_task(queue, tmp_path):
    task = queue.enqueue(make_task(max_attempts=1, attempts=1), make_images(tmp_path, 1))
    with pytest.raises(InvalidTransition):
        queue.claim(task.id, "w1", 60)


def test_heartbeat_renews_lease_and_stores_progress(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    first = queue.claim(task.id, "w1", 5)
    beat = queue.heartbeat(task.id, "w1", 600, {"step": 7, "total": 100})
    assert beat.lease.expires_at > first.lease.expires_at + 500
    assert queue.get(task.id).progress == {"step": 7, "total": 100}
    with pytest.raises(InvalidTransition):
        queue.heartbeat(task.id, "intruder", 600)


def test_heartbeat_after_cancel_tells_the_holder_to_stop(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    queue.claim(task.id, "w1", 60)
    queue.cancel(task.id)
    with pytest.raises(InvalidTransition, match="cancelled"):
        queue.heartbeat(task.id, "w1", 60)


def test_complete(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    queue.claim(task.id, "w1", 60)
    with pytest.raises(InvalidTransition):
        queue.complete(task.id, "w2", "https://example/x")
    done = queue.complete(task.id, "w1", "https://example/model")
    assert done.status is TaskStatus.DONE
    assert done.result_url == "https://example/model"
    assert done.finished_at is not None and done.lease is None
    assert queue.complete(task.id, "w1", "https://example/model").status is TaskStatus.DONE  # repeat is harmless
    with pytest.raises(InvalidTransition):
        queue.cancel(task.id)


def test_fail_running_and_pending(queue, tmp_path):
    images = make_images(tmp_path, 1)
    running = queue.enqueue(make_task(), images)
    queue.claim(running.id, "w1", 60)
    with pytest.raises(InvalidTransition):
        queue.fail(running.id, "w2", "boom")
    failed = queue.fail(running.id, "w1", "CUDA out of memory")
    assert failed.status is TaskStatus.FAILED and failed.last_error == "CUDA out of memory"
    pending = queue.enqueue(make_task(), images)
    assert queue.fail(pending.id, None, "bad input").status is TaskStatus.FAILED
    with pytest.raises(InvalidTransition):
        queue.fail(pending.id, None, "another reason")


def test_cancel_pending_and_running(queue, tmp_path):
    images = make_images(tmp_path, 1)
    a = queue.enqueue(make_task(), images)
    b = queue.enqueue(make_task(), images)
    queue.claim(b.id, "w1", 60)
    assert queue.cancel(a.id).status is TaskStatus.CANCELLED
    assert queue.cancel(b.id).status is TaskStatus.CANCELLED
    assert queue.cancel(b.id).status is TaskStatus.CANCELLED
    assert queue.claim(a.id, "w1", 60) is None


def test_retry_resets_attempts_and_keeps_error(queue, tmp_path):
    task = queue.enqueue(make_task(max_attempts=2), make_images(tmp_path, 1))
    queue.claim(task.id, "w1", 60)
    queue.fail(task.id, "w1", "trainer crashed")
    again = queue.retry(task.id)
    assert again.status is TaskStatus.PENDING
    assert again.attempts == 0 and again.lease is None
    assert again.last_error == "trainer crashed"
    with pytest.raises(InvalidTransition):
        queue.retry(task.id)  # PENDING without a note: nothing to retry
    assert queue.claim(task.id, "w2", 60).attempts == 1


def test_note_holds_a_pending_task_until_retry(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    noted = queue.set_note(task.id, "GPU request refused: add a payment method")
    assert noted.note == "GPU request refused: add a payment method"
    assert noted.last_error == noted.note
    assert noted.status is TaskStatus.PENDING and not noted.runnable
    cleared = queue.retry(task.id)
    assert cleared.note is None and cleared.runnable
    assert cleared.last_error is None  # the refusal no longer holds: the queue table shows no stale reason
    queue.claim(task.id, "w1", 60)
    with pytest.raises(InvalidTransition):
        queue.set_note(task.id, "too late")


def test_requeue_expired(queue, tmp_path):
    images = make_images(tmp_path, 1)
    again = queue.enqueue(make_task(max_attempts=2), images)
    last = queue.enqueue(make_task(max_attempts=1), images)
    alive = queue.enqueue(make_task(), images)
    queue.claim(again.id, "dead", 1)
    queue.claim(last.id, "dead", 1)
    queue.claim(alive.id, "alive", 3600)
    assert queue.requeue_expired(time.time()) == []
    changed = queue.requeue_expired(time.time() + 5)
    assert sorted(t.id for t in changed) == sorted([again.id, last.id])
    assert queue.get(again.id).status is TaskStatus.PENDING
    assert "expired" in queue.get(again.id).last_error
    gave_up = queue.get(last.id)
    assert gave_up.status is TaskStatus.FAILED and "Gave up after 1 attempts" in gave_up.last_error
    assert queue.get(alive.id).status is TaskStatus.RUNNING


def test_queue_file_is_readable_json(queue, tmp_path):
    task = queue.enqueue(make_task(instance_prompt="a photo of sks dog, studio light"), make_images(tmp_path, 1))
    text = queue_file_text(queue)
    assert "\n  " in text  # pretty-printed for the Hub's file viewer
    data = json.loads(text)
    assert [t["id"] for t in data["tasks"]] == [task.id]
    assert data["tasks"][0]["instance_prompt"] == "a photo of sks dog, studio light"
    assert data["tasks"][0]["status"] == "PENDING"


def test_delete_removes_a_finished_task_with_its_images_and_checkpoints(queue, tmp_path):
    images = make_images(tmp_path, 2)
    done = queue.enqueue(make_task(), images)
    kept = queue.enqueue(make_task(), images)
    queue.claim(done.id, "w1", 60)
    checkpoint = store_checkpoint(queue, done.id)
    queue.keep_photos = True  # KEEP_PHOTOS: the photos and checkpoints stay once it is DONE, until it is deleted
    queue.complete(done.id, "w1", "https://hub/alice/model")
    assert checkpoint in stored_files(queue)

    deleted = queue.delete(done.id)

    assert deleted.id == done.id and deleted.status is TaskStatus.DONE and deleted.result_url == "https://hub/alice/model"
    assert [t.id for t in queue.list()] == [kept.id]
    with pytest.raises(TaskNotFound):
        queue.get(done.id)
    files = stored_files(queue)
    assert not [f for f in files if done.id in f], files  # no image, no checkpoint left
    assert len([f for f in files if f.startswith(f"images/{kept.id}/")]) == 2  # the other task's photos stay
    assert queue.fetch_images(queue.get(kept.id), tmp_path / "out").is_dir()
    with pytest.raises(TaskNotFound):
        queue.delete(done.id)


def test_delete_refuses_unfinished_tasks_and_cancelled_ones_without_checkpoints_go(queue, tmp_path):
    images = make_images(tmp_path, 1)
    pending = queue.enqueue(make_task(), images)
    running = queue.enqueue(make_task(), images)
    queue.claim(running.id, "w1", 60)
    for task in (pending, running):
        with pytest.raises(InvalidTransition, match="Cancel it first"):
            queue.delete(task.id)
    assert len(queue.list()) == 2 and len([f for f in stored_files(queue) if f.startswith("images/")]) == 2

    queue.cancel(pending.id)
    assert queue.delete(pending.id).status is TaskStatus.CANCELLED  # no checkpoint folder: nothing else to remove
    assert [t.id for t in queue.list()] == [running.id]
