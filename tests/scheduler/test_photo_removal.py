"""Privacy by default: a DONE task's photos, and the checkpoints trained on them (LoRA and optimizer state), leave the
queue in the change that marks it DONE (unless KEEP_PHOTOS), and ``squash_history`` drops the Hub history that still
holds them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from contract.settings import load_settings
from scheduler.cli import EXIT_CONFLICT, EXIT_OK, EXIT_USAGE, main
from scheduler.hardware import make_hardware
from scheduler.queue import InvalidTransition, LocalQueue, QueueError, make_queue
from scheduler.queue.document import QUEUE_FILE
from scheduler.task import TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.scheduler.helpers import make_images, make_task
from tests.scheduler.queues import make_hub_queue, store_checkpoint, stored_files

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["local", "hub"])
def backend(request, tmp_path):
    """A factory of queues on one backend: ``make(keep_photos)``."""

    def make(keep_photos: bool = False):
        if request.param == "local":
            return LocalQueue(tmp_path / f"queue-{uuid.uuid4().hex[:6]}", keep_photos=keep_photos)
        return make_hub_queue(request.getfixturevalue("hub"), ALICE_TOKEN, keep_photos=keep_photos)

    return make


def run_to_done(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 3))
    queue.claim(task.id, "w", 60)
    return queue.complete(task.id, "w", "https://hub/alice/sks-dog")


def test_done_removes_the_photos_and_records_it(backend, tmp_path):
    queue = backend()
    done = run_to_done(queue, tmp_path)
    assert done.status is TaskStatus.DONE
    assert not [f for f in stored_files(queue) if f.startswith(f"images/{done.id}")]
    stored = queue.get(done.id)
    assert stored.images.removed and stored.images.count == 3
    with pytest.raises(QueueError, match="photos .* were removed"):
        queue.fetch_images(stored, tmp_path / "dest")
    # Completing again (an answer that was lost) changes nothing and does not fail.
    assert queue.complete(done.id, "w", "https://hub/alice/sks-dog").images.removed


def test_keep_photos_keeps_them(backend, tmp_path):
    queue = backend(keep_photos=True)
    done = run_to_done(queue, tmp_path)
    assert len([f for f in stored_files(queue) if f.startswith(f"images/{done.id}/")]) == 3
    assert not queue.get(done.id).images.removed
    assert sorted(p.name for p in queue.fetch_images(queue.get(done.id), tmp_path / "dest").iterdir()) == [
        "000.png",
        "001.png",
        "002.png",
    ]


def run_to_done_with_checkpoints(queue, tmp_path):
    """A task completed after its trainer mirrored a checkpoint (the LoRA and the optimizer state) to the queue."""
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 3))
    queue.claim(task.id, "w", 60)
    stored = [store_checkpoint(queue, task.id, name=n) for n in ("trainable.safetensors", "optimizer.safetensors")]
    assert set(stored) <= set(stored_files(queue))
    return queue.complete(task.id, "w", "https://hub/alice/sks-dog"), stored


def test_done_removes_the_checkpoints_with_the_photos(backend, tmp_path):
    queue = backend()
    other = queue.enqueue(make_task(), make_images(tmp_path / "other", 1))
    queue.claim(other.id, "w", 60)
    others = store_checkpoint(queue, other.id)  # a task still training keeps its own
    done, _ = run_to_done_with_checkpoints(queue, tmp_path)
    files = stored_files(queue)
    assert not [f for f in files if f.startswith((f"checkpoints/{done.id}", f"images/{done.id}"))], files
    assert others in files


def test_keep_photos_keeps_the_checkpoints(backend, tmp_path):
    queue = backend(keep_photos=True)
    _, stored = run_to_done_with_checkpoints(queue, tmp_path)
    assert set(stored) <= set(stored_files(queue))


def test_other_tasks_keep_their_photos(backend, tmp_path):
    queue = backend()
    other = queue.enqueue(make_task(), make_images(tmp_path / "other", 2))
    run_to_done(queue, tmp_path)
    assert len([f for f in stored_files(queue) if f.startswith(f"images/{other.id}/")]) == 2


def test_retry_of_a_task_whose_photos_were_removed_says_so(tmp_path):
    queue = LocalQueue(tmp_path / "queue")
    done = run_to_done(queue, tmp_path)
    data = json.loads((queue.folder / QUEUE_FILE).read_text())
    data["tasks"][0]["status"] = "FAILED"  # as if someone marked it failed by hand
    (queue.folder / QUEUE_FILE).write_text(json.dumps(data))
    with pytest.raises(QueueError, match="its photos were removed"):
        queue.retry(done.id)


def test_the_done_commit_holds_both_changes(hub, tmp_path):
    queue = make_hub_queue(hub, ALICE_TOKEN)
    api: HfApi = queue.api
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 3))
    queue.claim(task.id, "w", 60)
    before = api.list_repo_commits(queue.repo_id, repo_type="dataset")

    queue.complete(task.id, "w", "https://hub/alice/sks-dog")

    after = api.list_repo_commits(queue.repo_id, repo_type="dataset")
    assert len(after) == len(before) + 1 and after[1].commit_id == before[0].commit_id
    done_commit, parent = after[0].commit_id, before[0].commit_id

    def at(revision: str) -> tuple[str, list[str]]:
        path = hf_hub_download(queue.repo_id, QUEUE_FILE, repo_type="dataset", revision=revision)
        status = json.loads(Path(path).read_text())["tasks"][0]["status"]
        files = api.list_repo_files(queue.repo_id, repo_type="dataset", revision=revision)
        return status, [f for f in files if f.startswith(f"images/{task.id}/")]

    assert at(parent) == ("RUNNING", [f"images/{task.id}/00{i}.png" for i in range(3)])
    assert at(done_commit) == ("DONE", [])


def test_complete_when_the_photos_were_already_removed_by_hand(hub, tmp_path):
    queue = make_hub_queue(hub, ALICE_TOKEN)
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 1))
    queue.claim(task.id, "w", 60)
    queue.api.delete_folder(f"images/{task.id}", repo_id=queue.repo_id, repo_type="dataset")
    assert queue.complete(task.id, "w", "https://hub/x").status is TaskStatus.DONE


def test_make_queue_passes_keep_photos(tmp_path):
    assert make_queue(load_settings({"DATA_DIR": str(tmp_path)})).keep_photos is False
    assert make_queue(load_settings({"DATA_DIR": str(tmp_path), "KEEP_PHOTOS": "true"})).keep_photos is True


def test_a_local_worker_removes_the_photos_of_the_task_it_finished(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), "POLL_INTERVAL_S": "0.2", "LEASE_S": "30"})
    queue = make_queue(settings)
    worker = Worker(settings, queue, make_hardware(settings), recipes_modules=("tests.test_worker_recipes",))
    task = queue.enqueue(
        make_task(base_model="unused", recipe="test-slow", params={"steps": 2}), make_images(tmp_path / "p", 2)
    )
    assert (queue.folder / "images" / task.id).is_dir()

    worker.step()

    done = queue.get(task.id)
    assert done.status is TaskStatus.DONE, done.last_error
    assert done.images.removed and not (queue.folder / "images" / task.id).exists()


# --- squashing the history -------------------------------------------------------------------------------------


def test_squash_leaves_one_commit_with_the_current_files(hub, tmp_path):
    queue = make_hub_queue(hub, ALICE_TOKEN)
    api: HfApi = queue.api
    done = run_to_done(queue, tmp_path)
    waiting = queue.enqueue(make_task(), make_images(tmp_path / "w", 2))
    queue.claim(waiting.id, "w", 60)  # pins its images to a commit...
    queue.requeue(waiting.id, "w", "crashed")  # ...and keeps the pin while PENDING again
    assert queue.get(waiting.id).images.revision
    files = sorted(api.list_repo_files(queue.repo_id, repo_type="dataset"))
    assert len(api.list_repo_commits(queue.repo_id, repo_type="dataset")) > 3

    message = queue.squash_history()

    assert "one commit" in message
    assert len(api.list_repo_commits(queue.repo_id, repo_type="dataset")) == 1
    assert sorted(api.list_repo_files(queue.repo_id, repo_type="dataset")) == files
    assert queue.get(done.id).status is TaskStatus.DONE
    again = queue.get(waiting.id)
    assert again.images.revision is None  # the pinned commit is gone: the images are read at main
    assert len(list(queue.fetch_images(again, tmp_path / "dest").iterdir())) == 2
    assert queue.claim(waiting.id, "w2", 60).status is TaskStatus.RUNNING  # the queue keeps working


def test_squash_is_refused_while_a_task_runs(hub, tmp_path):
    queue = make_hub_queue(hub, ALICE_TOKEN)
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 1))
    queue.claim(task.id, "w", 60)
    commits = len(queue.api.list_repo_commits(queue.repo_id, repo_type="dataset"))
    with pytest.raises(InvalidTransition, match="RUNNING"):
        queue.squash_history()
    assert len(queue.api.list_repo_commits(queue.repo_id, repo_type="dataset")) == commits


def test_a_local_queue_has_no_history_to_squash(tmp_path):
    assert "keeps no history" in LocalQueue(tmp_path / "q").squash_history()


def test_cli_squash(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RETRY_BASE_S", "0.01")
    queue = make_hub_queue(hub, ALICE_TOKEN)
    task = queue.enqueue(make_task(), make_images(tmp_path / "photos", 1))
    queue.claim(task.id, "w", 60)
    assert main(["--queue", queue.repo_id, "squash"]) == EXIT_CONFLICT
    assert "RUNNING" in capsys.readouterr().err
    queue.complete(task.id, "w", "https://hub/x")
    assert main(["--queue", queue.repo_id, "squash"]) == EXIT_OK
    assert "one commit" in capsys.readouterr().out
    assert len(queue.api.list_repo_commits(queue.repo_id, repo_type="dataset")) == 1
    assert main(["--local", str(tmp_path / "q"), "squash"]) == EXIT_OK
    assert "keeps no history" in capsys.readouterr().out


def test_cli_refuses_an_unsafe_task_id(tmp_path, capsys):
    make_images(tmp_path / "photos", 1)
    args = ["--local", str(tmp_path / "q"), "submit", "--images", str(tmp_path / "photos"), "--prompt", "a photo of sks dog",
            "--output-repo", "alice/x", "--id", "../../etc"]  # fmt: skip
    assert main(args) == EXIT_USAGE
    assert "--id" in capsys.readouterr().err
