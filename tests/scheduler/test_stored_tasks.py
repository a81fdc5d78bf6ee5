"""Tasks read back from the queue are checked before anything acts on them (security finding 7).

A forged ``queue.json`` entry (anyone with write access to the queue can write one) is shown FAILED with the
reason, never claimed, requeued, fetched or given hardware; deleting it touches nothing outside the queue.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi

from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.lifecycle import Snapshot, decide
from scheduler.queue import InvalidTransition, QueueError, make_queue
from scheduler.queue.document import QUEUE_FILE, QueueDoc
from scheduler.stored import REJECTED, UnreadableTask, stored_task_problem, vet_tasks
from scheduler.task import ImageRef, Lease, Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.scheduler.helpers import make_images, make_task

pytestmark = pytest.mark.timeout(120)

LOCAL = load_settings({})
SPACE = load_settings({"SPACE_ID": "alice/trainer"})  # queue repo alice/trainer-queue


def hub_task(**changes: Any) -> Task:
    task = make_task(**{"base_model": "org/model", **changes})
    task.images = ImageRef(path=f"images/{task.id}", repo_id="alice/trainer-queue", count=3)
    return task


def problem(task: Task, settings=SPACE) -> str | None:
    return stored_task_problem(task, settings, queue_repo=settings.queue_repo, queue_dir=None)


def test_a_task_as_the_app_stores_it_passes():
    assert problem(hub_task()) is None
    assert problem(hub_task(params={"steps": 4, "validation_prompts": ["a", "b"], "checkpoint_every": None})) is None
    revision = "0123456789abcdef0123456789abcdef01234567"
    pinned = hub_task()
    pinned.images.revision = revision
    assert problem(pinned) is None


def _with_images(**images: Any) -> Task:
    task = hub_task()
    for key, value in images.items():
        setattr(task.images, key, value)
    return task


@pytest.mark.parametrize(
    ("task", "words"),
    [
        (hub_task(id="../../etc"), "not a safe task id"),
        (hub_task(id="a/b"), "not a safe task id"),
        (_with_images(repo_id="bob/photos"), "bob/photos"),
        (_with_images(repo_id=None), "local folder"),
        (_with_images(path="images/../checkpoints"), "not a plain relative path"),
        (_with_images(path="/etc"), "not a plain relative path"),
        (_with_images(path="images/someone-else"), "outside"),
        (_with_images(revision="main; rm -rf"), "revision"),
        (hub_task(hardware="h100x8"), "h100x8"),
        (hub_task(hardware="cpu-basic"), "no GPU"),
        (hub_task(deadline_s=10**9), "deadline_s"),
        (hub_task(deadline_s=0), "deadline_s"),
        (hub_task(max_attempts=99), "max_attempts"),
        (hub_task(max_attempts=0), "max_attempts"),
        (hub_task(attempts=-5), "attempts"),
        (hub_task(recipe=""), "recipe"),
        (hub_task(recipe="../x"), "recipe"),
        (hub_task(base_model="/etc/passwd"), "base model"),
        (hub_task(base_model=""), "base model"),
        (hub_task(output_repo="not a/valid//repo"), "output repo"),
        (hub_task(instance_prompt="a" * 10_000), "instance prompt"),
        (hub_task(instance_prompt=" "), "instance prompt"),
        (hub_task(params={"steps": {"nested": 1}}), "param 'steps'"),
        (hub_task(params={"prompts": list(range(1000))}), "param 'prompts'"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_forged_fields_are_rejected_with_the_reason(task, words):
    reason = problem(task)
    assert reason is not None and words in reason, reason


def test_local_queue_images_must_be_inside_the_task_folder(tmp_path):
    queue_dir = tmp_path / "queue"
    task = make_task(base_model="org/model")
    task.images = ImageRef(path=str(queue_dir / "images" / task.id), count=1)
    check = lambda t: stored_task_problem(t, LOCAL, queue_repo=None, queue_dir=queue_dir)  # noqa: E731
    assert check(task) is None
    task.images.path = str(tmp_path / "elsewhere")
    assert "outside" in check(task)
    task.images.path = str(queue_dir / "images" / task.id / ".." / "other")
    assert "outside" in check(task)
    (queue_dir / "images").mkdir(parents=True)
    (queue_dir / "images" / task.id).symlink_to(tmp_path)  # a link out of the queue folder
    task.images.path = str(queue_dir / "images" / task.id)
    assert "outside" in check(task)
    task.images = ImageRef(path=f"images/{task.id}", repo_id="alice/q")
    assert "Hub repo" in check(task)
    # Local mode: a path base model and a CPU flavor are fine.
    local = make_task(base_model="/models/sd", hardware="cpu-basic")
    local.images = ImageRef(path=str(queue_dir / "images" / local.id), count=1)
    assert check(local) is None


def test_vet_replaces_rejected_tasks_by_failed_copies_without_lease():
    good, bad = hub_task(), hub_task(hardware="h100x8", status=TaskStatus.RUNNING, lease=Lease("w", 1.0))
    twin = hub_task(id=good.id)
    out = vet_tasks([good, bad, twin], problem)
    assert out[0] is good
    assert out[1].status is TaskStatus.FAILED and out[1].lease is None
    assert out[1].last_error.startswith(REJECTED) and "h100x8" in out[1].last_error
    assert out[2].status is TaskStatus.FAILED and "same id" in out[2].last_error
    assert bad.status is TaskStatus.RUNNING  # the original is left alone


# --- reading garbage -----------------------------------------------------------------------------------------


def test_one_malformed_entry_does_not_break_reading_the_others(tmp_path):
    good = make_task()
    entries = [good.to_dict(), 42, {**good.to_dict(), "id": "bad-status", "status": "EXPLODED"},
               {**good.to_dict(), "id": "bad-images", "images": "nope"}, {**good.to_dict(), "id": "bad-type", "attempts": "1"},
               {"id": "no-prompt"}]  # fmt: skip
    text = json.dumps({"format": 1, "tasks": entries, "recent_ops": ["x", 3]})
    doc = QueueDoc.from_json(text)
    assert doc.tasks[0] == good
    unreadable = doc.tasks[1:]
    assert [t.id for t in unreadable] == ["unreadable-1", "bad-status", "bad-images", "bad-type", "no-prompt"]
    assert all(isinstance(t, UnreadableTask) and t.status is TaskStatus.FAILED for t in unreadable)
    assert "EXPLODED" in unreadable[1].last_error and "images" in unreadable[2].last_error
    assert doc.recent_ops == ["x"]
    assert json.loads(doc.to_json())["tasks"] == entries  # written back exactly as found


@pytest.mark.parametrize("text", ["[1, 2]", '{"tasks": {"a": 1}}', "{not json"])
def test_a_file_that_is_no_queue_document_is_a_queue_error(text):
    with pytest.raises(QueueError, match=QUEUE_FILE):
        QueueDoc.from_json(text)


def test_a_local_queue_with_a_garbage_entry_keeps_working(tmp_path):
    queue = make_queue(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 1))
    stored = json.loads((queue.folder / QUEUE_FILE).read_text())
    stored["tasks"].append({"id": "junk", "status": ["?"]})
    (queue.folder / QUEUE_FILE).write_text(json.dumps(stored))

    assert [t.status for t in queue.list()] == [TaskStatus.FAILED, TaskStatus.PENDING]  # the placeholder is oldest
    assert queue.cancel(task.id).status is TaskStatus.CANCELLED
    assert json.loads((queue.folder / QUEUE_FILE).read_text())["tasks"][1] == {"id": "junk", "status": ["?"]}
    with pytest.raises(InvalidTransition, match="unreadable"):
        queue.retry("junk")
    with pytest.raises(InvalidTransition, match="unreadable"):
        queue.claim("junk", "w", 60)
    queue.delete("junk")  # the owner can remove it
    assert [t.id for t in queue.list()] == [task.id]


# --- the worker and the queue operations on a forged local queue --------------------------------------------------


def apply_forgery(data: dict[str, Any], changes: dict[str, dict[str, Any]]) -> None:
    """Edit the task entries of a parsed queue file: ``changes[task id]`` sets fields (``images`` is merged)."""
    for entry in data["tasks"]:
        for key, value in changes.get(entry["id"], {}).items():
            if key == "images":
                entry["images"].update(value)
            else:
                entry[key] = value


def forge_local(queue, changes: dict[str, dict[str, Any]]) -> None:
    """Rewrite tasks of a local queue's file as someone with write access to the folder could."""
    path = queue.folder / QUEUE_FILE
    data = json.loads(path.read_text())
    apply_forgery(data, changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def forged_local(tmp_path):
    """A local-mode worker whose queue holds one forged task per attack, and a sentinel file outside the queue."""
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.1"})
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings))
    photos = make_images(tmp_path / "photos", 1)
    outside = tmp_path / "outside"
    make_images(outside, 1)
    sentinel = tmp_path / "data" / "etc" / "keep.txt"  # where queue/images/../../etc points
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("must survive")
    attacks = {
        "traversal": ({"id": "../../etc"}, "not a safe task id"),
        "outside": ({"images": {"path": str(outside)}}, "outside"),
        "other repo": ({"images": {"repo_id": "bob/photos", "path": "images/x"}}, "bob/photos"),
        "hardware": ({"hardware": "h100x8"}, "h100x8"),
        "deadline": ({"deadline_s": 10**9}, "deadline_s"),
        "attempts": ({"max_attempts": 99}, "max_attempts"),
    }
    tasks = {name: queue.enqueue(make_task(base_model="org/model"), photos) for name in attacks}
    forge_local(queue, {tasks[name].id: change for name, (change, _) in attacks.items()})
    ids = {name: ("../../etc" if name == "traversal" else t.id) for name, t in tasks.items()}
    return settings, queue, worker, ids, {n: w for n, (_, w) in attacks.items()}, sentinel, outside


def test_the_worker_shows_forged_tasks_failed_and_never_acts_on_them(forged_local):
    settings, queue, worker, ids, words, sentinel, outside = forged_local

    for _ in range(3):
        action, _ = worker.step()
        assert action.kind.value == "wait", action

    shown = {t.id: t for t in worker.status.snapshot().tasks}
    for name, task_id in ids.items():
        assert shown[task_id].status is TaskStatus.FAILED, name
        assert shown[task_id].last_error.startswith(REJECTED) and words[name] in shown[task_id].last_error, name
    assert all(t.status is TaskStatus.PENDING for t in queue.list())  # the queue itself is not changed
    assert not (settings.data_dir / "runs").exists()  # nothing fetched, no run folder
    assert sentinel.read_text() == "must survive" and len(list(outside.iterdir())) == 1


def test_the_queue_refuses_to_claim_requeue_or_fetch_a_forged_task(forged_local, tmp_path):
    settings, queue, worker, ids, words, sentinel, outside = forged_local
    with pytest.raises(InvalidTransition, match="h100x8"):
        queue.claim(ids["hardware"], "w", 60)
    forge_local(
        queue, {ids["attempts"]: {"status": "RUNNING", "attempts": 1, "lease": {"holder": "gone", "expires_at": 1.0}}}
    )
    assert queue.requeue_expired(2.0) == []
    assert worker.step()[0].kind.value == "wait"
    assert queue.get(ids["attempts"]).status is TaskStatus.RUNNING  # not requeued by the worker either
    for name in ("outside", "other repo", "traversal"):
        with pytest.raises(QueueError, match="Refusing"):
            queue.fetch_images(queue.get(ids[name]), tmp_path / "dest" / name)
    assert not (tmp_path / "dest").exists()


def test_cancel_and_delete_of_a_forged_task_touch_nothing_outside_the_queue(forged_local):
    settings, queue, worker, ids, words, sentinel, outside = forged_local
    for name in ("traversal", "outside"):
        assert queue.cancel(ids[name]).status is TaskStatus.CANCELLED
        queue.delete(ids[name])
    assert sentinel.read_text() == "must survive"
    assert len(list(outside.iterdir())) == 1
    assert "../../etc" not in [t.id for t in queue.list()]


def test_run_dir_refuses_unsafe_ids(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    worker = Worker(settings, make_queue(settings), make_hardware(settings))
    runs = (tmp_path / "data" / "runs").resolve()
    assert worker.run_dir("3f2a9c1b7e4d") == runs / "3f2a9c1b7e4d"
    for bad in ("../../etc", "..", "a/b", "", "/etc", ".hidden"):
        with pytest.raises(ValueError, match="Refusing"):
            worker.run_dir(bad)
    runs.mkdir(parents=True)
    (runs / "linked").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="Refusing"):
        worker.run_dir("linked")


# --- the same on the Hub (emulator) --------------------------------------------------------------------------------


def forge_hub(queue, changes: dict[str, dict[str, Any]]) -> None:
    api: HfApi = queue.api
    path = api.hf_hub_download(queue.repo_id, QUEUE_FILE, repo_type="dataset", force_download=True)
    data = json.loads(Path(path).read_text())
    apply_forgery(data, changes)
    api.upload_file(
        path_or_fileobj=json.dumps(data).encode(), path_in_repo=QUEUE_FILE, repo_id=queue.repo_id, repo_type="dataset"
    )


def test_a_space_worker_requests_no_hardware_and_downloads_nothing_for_forged_tasks(hub, tmp_path):
    space = f"alice/stored-{uuid.uuid4().hex[:6]}"
    hub.create_space(space, owner_token=ALICE_TOKEN, switch_delay_s=0.2)
    hub.wait_for_stage(space, "RUNNING", timeout_s=10)
    settings = load_settings({"SPACE_ID": space, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "POLL_INTERVAL_S": "0.2",
                              "RETRY_BASE_S": "0.01", "DATA_DIR": str(tmp_path / "data")})  # fmt: skip
    queue = make_queue(settings)
    other = f"alice/other-{uuid.uuid4().hex[:6]}"  # a repo the token can read: the images must not come from it
    queue.api.create_repo(other, repo_type="dataset", private=True)
    photos = make_images(tmp_path / "photos", 1, size=(128, 128))
    attacks = {
        "hardware": ({"hardware": "h100x8"}, "h100x8"),
        "deadline": ({"deadline_s": 10**9}, "deadline_s"),
        "attempts": ({"max_attempts": 99}, "max_attempts"),
        "other repo": ({"images": {"repo_id": other}}, other),
        "traversal": ({"id": "../../etc"}, "not a safe task id"),
    }
    tasks = {name: queue.enqueue(make_task(base_model="m"), photos) for name in attacks}
    for task in tasks.values():
        queue.api.upload_file(
            path_or_fileobj=photos[0], path_in_repo=f"images/{task.id}/000.png", repo_id=other, repo_type="dataset"
        )
    forge_hub(queue, {tasks[name].id: change for name, (change, _) in attacks.items()})
    ids = {name: ("../../etc" if name == "traversal" else t.id) for name, t in tasks.items()}
    worker = Worker(settings, queue, make_hardware(settings))
    hub.clear_requests()

    for _ in range(3):
        assert worker.step()[0].kind.value == "wait"
    with pytest.raises(QueueError, match="Refusing"):
        queue.fetch_images(queue.get(ids["other repo"]), tmp_path / "dest")

    assert hub.requests("POST", rf"^/api/spaces/{space}/hardware$") == []
    assert hub.requests(path_regex=other) == []
    assert hub.space_runtime(space)["hardware"]["requested"] in (None, "cpu-basic")
    shown = {t.id: t for t in worker.status.snapshot().tasks}
    for name, (_, words) in attacks.items():
        assert shown[ids[name]].status is TaskStatus.FAILED and words in shown[ids[name]].last_error, name
    assert all(t.status is TaskStatus.PENDING for t in queue.list())
    files_before = set(queue.api.list_repo_files(queue.repo_id, repo_type="dataset"))
    queue.cancel("../../etc")
    queue.delete("../../etc")  # only the entry goes
    assert set(queue.api.list_repo_files(queue.repo_id, repo_type="dataset")) == files_before


@pytest.mark.parametrize(("hardware", "expected"), [("cpu-basic", "wait"), ("t4-small", "release_hardware")])
def test_decide_acts_on_no_rejected_task(hardware, expected):
    now = 1000.0
    forged = [
        hub_task(status=TaskStatus.RUNNING, attempts=1, lease=Lease("gone", now - 10), max_attempts=99),  # expired
        hub_task(attempts=5, max_attempts=99),  # out of attempts
        hub_task(hardware="h100x8"),  # runnable
        hub_task(deadline_s=10**9, note="held"),  # held back
    ]
    tasks = vet_tasks(forged, problem)
    assert all(t.status is TaskStatus.FAILED for t in tasks)
    snap = Snapshot(tasks=tuple(tasks), now=now, worker_id="me", local=False, current_hardware=hardware,
                    requested_hardware=hardware, accelerator=hardware, gpu_visible=True)  # fmt: skip
    action = decide(snap)
    assert action.kind.value == expected and action.task_id is None, action
