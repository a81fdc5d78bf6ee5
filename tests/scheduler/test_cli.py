"""The operator CLI (``python -m scheduler``): commands, messages and exit codes, on a local and a Hub queue."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from scheduler.cli import EXIT_CONFLICT, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, main
from scheduler.queue.local import LocalQueue
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN
from tests.scheduler.helpers import make_images, make_task

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("RETRY_BASE_S", "0.01")


def submit_args(images_dir, *extra):
    return ["submit", "--images", str(images_dir), "--prompt", "a photo of sks dog", "--output-repo", "alice/sks-dog", "--steps", "50", *extra]


def test_local_round_trip(tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    qdir = str(tmp_path / "q")
    assert main(["--local", qdir, *submit_args(images, "--id", "task0001")]) == EXIT_OK
    assert "Enqueued task task0001 (3 images, t4-small)" in capsys.readouterr().out
    assert main(["--local", qdir, "list"]) == EXIT_OK
    table = capsys.readouterr().out
    assert "task0001" in table and "PENDING" in table and "0/2" in table
    assert main(["--local", qdir, "show", "task0001"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["params"] == {"steps": 50} and shown["images"]["count"] == 3
    assert main(["--local", qdir, "cancel", "task0001"]) == EXIT_OK
    assert "Task task0001 is CANCELLED." in capsys.readouterr().out
    assert main(["--local", qdir, "retry", "task0001"]) == EXIT_OK
    assert "Task task0001 is PENDING." in capsys.readouterr().out
    assert LocalQueue(qdir).get("task0001").status is TaskStatus.PENDING
    assert main(["--local", qdir, "list", "--status", "DONE", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []
    assert main(["--local", qdir, "delete", "task0001"]) == EXIT_CONFLICT
    assert "Cancel it first" in capsys.readouterr().err
    assert main(["--local", qdir, "cancel", "task0001"]) == EXIT_OK
    assert main(["--local", qdir, "delete", "task0001"]) == EXIT_OK
    assert "Task task0001 (CANCELLED) deleted with its images and checkpoints." in capsys.readouterr().out
    assert LocalQueue(qdir).list() == [] and not (tmp_path / "q" / "images" / "task0001").exists()


def test_exit_codes_and_messages(tmp_path, capsys):
    qdir = tmp_path / "q"
    queue = LocalQueue(qdir)
    done = queue.enqueue(make_task(), make_images(tmp_path / "a", 1))
    queue.claim(done.id, "w", 60)
    queue.complete(done.id, "w", "https://example/m")
    assert main(["--local", str(qdir), "show", "nope"]) == EXIT_NOT_FOUND
    assert "No task with id 'nope'" in capsys.readouterr().err
    assert main(["--local", str(qdir), "cancel", done.id]) == EXIT_CONFLICT
    assert "already DONE" in capsys.readouterr().err


def test_invalid_submission_enqueues_nothing(tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 2)
    (images / "notes.txt").write_text("hello")
    qdir = tmp_path / "q"
    code = main(["--local", str(qdir), "submit", "--images", str(images), "--prompt", "", "--steps", "-3", "--hardware", "h100-mega", "--output-repo", "x"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "The task was not enqueued" in err
    for fragment in ("Instance prompt: must not be empty", "Steps: -3 is out of range", "unknown flavor 'h100-mega'", "Image notes.txt: not a readable image"):
        assert fragment in err
    assert LocalQueue(qdir).list() == []
    assert main(["--local", str(qdir), "submit", "--images", str(tmp_path / "missing"), "--prompt", "p"]) == EXIT_USAGE


def test_bad_setting_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAX_ATTEMPTS", "many")
    assert main(["--local", str(tmp_path), "list"]) == EXIT_USAGE
    assert "MAX_ATTEMPTS='many' is not an integer" in capsys.readouterr().err


def test_hub_queue_and_space_hardware(hub, tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    repo = f"alice/cli-queue-{uuid.uuid4().hex[:6]}"
    assert main(["--queue", repo, *submit_args(images, "--id", "hubtask01")]) == EXIT_OK
    capsys.readouterr()
    assert main(["--queue", repo, "list", "--json"]) == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in listed] == ["hubtask01"] and listed[0]["images"]["repo_id"] == repo
    space = f"alice/cli-space-{uuid.uuid4().hex[:6]}"
    hub.create_space(space, owner_token=ALICE_TOKEN, hardware="t4-small", switch_delay_s=0.2)
    assert main(["--space", space, "hardware"]) == EXIT_OK
    assert "requested: t4-small" in capsys.readouterr().out
    assert main(["--space", space, "release"]) == EXIT_OK
    assert "requested cpu-basic" in capsys.readouterr().out
    assert hub.space_runtime(space)["hardware"]["requested"] == "cpu-basic"


def test_help_and_usage_in_a_subprocess(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "scheduler", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    for word in ("list", "show", "cancel", "retry", "delete", "submit", "hardware", "release", "exit codes"):
        assert word in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "scheduler", "--local", str(tmp_path), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
