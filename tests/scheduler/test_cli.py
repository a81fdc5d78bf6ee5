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
    assert "Enqueued task task0001 (3 images, this machine)" in capsys.readouterr().out
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
    assert listed[0]["hardware"] == "t4-small"  # a Space's task names its GPU (only a local queue's is "this machine")
    # The queue and Space options are accepted after the command too.
    assert main(["list", "--queue", repo]) == EXIT_OK
    assert "hubtask01" in (table := capsys.readouterr().out) and "t4-small" in table
    space = f"alice/cli-space-{uuid.uuid4().hex[:6]}"
    hub.create_space(space, owner_token=ALICE_TOKEN, hardware="t4-small", switch_delay_s=0.2)
    assert main(["--space", space, "hardware"]) == EXIT_OK
    assert "requested: t4-small" in capsys.readouterr().out
    assert main(["hardware", "--space", space]) == EXIT_OK
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


def test_queue_options_after_the_command(tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    qdir = str(tmp_path / "q")
    assert main([*submit_args(images, "--id", "after01"), "--local", qdir]) == EXIT_OK
    capsys.readouterr()
    assert main(["list", "--local", qdir]) == EXIT_OK
    assert "after01" in capsys.readouterr().out
    assert main(["show", "after01", "--local", qdir]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["id"] == "after01"
    assert main(["cancel", "--local", qdir, "after01"]) == EXIT_OK
    assert LocalQueue(qdir).get("after01").status is TaskStatus.CANCELLED
    # One queue only, wherever the options stand.
    with pytest.raises(SystemExit) as refused:
        main(["--queue", "alice/q", "list", "--local", qdir])
    assert refused.value.code == EXIT_USAGE
    assert "not allowed with argument --queue" in capsys.readouterr().err
    # As the issue reported it, in a shell.
    done = subprocess.run([sys.executable, "-m", "scheduler", "list", "--local", qdir, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [t["id"] for t in json.loads(done.stdout)] == ["after01"]


def pipeline_folder(path):
    """A folder that looks like a saved diffusers pipeline (the CLI checks its model_index.json is there)."""
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def test_submit_accepts_the_base_models_the_form_accepts(tmp_path, monkeypatch, capsys):
    from contract.settings import load_settings
    from scheduler.stored import stored_task_problem

    images = tmp_path / "photos"
    make_images(images, 3)
    pipeline_folder(tmp_path / "models" / "my-sd")
    monkeypatch.chdir(tmp_path)
    qdir = tmp_path / "q"
    accepted = {
        "folder": ("models/my-sd", str(tmp_path / "models" / "my-sd")),  # stored absolute: app.py may run elsewhere
        "hubid": ("someone/not-in-base-models", "someone/not-in-base-models"),
        "demo": ("builtin:demo", "builtin:demo"),
    }
    for task_id, (given, stored) in accepted.items():
        assert main(["--local", str(qdir), *submit_args(images, "--id", task_id, "--base-model", given)]) == EXIT_OK, capsys.readouterr().err
        assert LocalQueue(qdir).get(task_id).base_model == stored
    # The form accepts a CPU flavor in local mode; so does the CLI.
    assert main(["--local", str(qdir), *submit_args(images, "--id", "cpu", "--hardware", "cpu-basic")]) == EXIT_OK
    # Nothing enqueued is rejected when the local worker reads it back.
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    for task in LocalQueue(qdir).list():
        assert stored_task_problem(task, settings, queue_repo=None, queue_dir=qdir) is None, task.id
    capsys.readouterr()

    assert main(["--local", str(qdir), *submit_args(images, "--base-model", str(tmp_path / "photos"))]) == EXIT_USAGE
    assert "has no model_index.json (not a diffusers pipeline)" in capsys.readouterr().err
    assert main(["--local", str(qdir), *submit_args(images, "--base-model", "/no/such/folder")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "'/no/such/folder' is not a folder here nor a valid Hub repo id" in err and "builtin:demo" in err
    assert len(LocalQueue(qdir).list()) == 4


def test_submit_to_a_hub_queue_refuses_a_folder_of_this_machine(hub, tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    folder = pipeline_folder(tmp_path / "my-sd")
    repo = f"alice/cli-queue-{uuid.uuid4().hex[:6]}"
    assert main(["--queue", repo, *submit_args(images, "--base-model", str(folder))]) == EXIT_USAGE
    assert "is a folder on this machine, which the Space cannot read" in capsys.readouterr().err
    assert main(["--queue", repo, *submit_args(images, "--base-model", "builtin:demo")]) == EXIT_USAGE
    assert "not a folder here nor a valid Hub repo id; give a Hub repo id" in capsys.readouterr().err
    assert main(["--queue", repo, *submit_args(images, "--base-model", "someone/other-model", "--id", "hubid01")]) == EXIT_OK
    assert "A running Space picks it up at its next poll and asks for the GPU." in capsys.readouterr().out


def test_local_mode_says_this_machine_and_who_trains(tmp_path, monkeypatch, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert main(["--local", "data/queue", *submit_args(images, "--id", "loc01")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "(3 images, this machine)" in out and "t4-small" not in out
    assert "`python app.py` started in this folder trains it on this machine" in out
    assert "asks for the GPU" not in out
    other = tmp_path / "elsewhere" / "queue"
    assert main(["--local", str(other), *submit_args(images, "--id", "loc02")]) == EXIT_OK
    assert f"`DATA_DIR={tmp_path / 'elsewhere'} python app.py` trains it on this machine" in capsys.readouterr().out

    assert main(["list"]) == EXIT_OK  # local mode, no queue option: DATA_DIR/queue
    table = capsys.readouterr().out
    assert "loc01" in table and "this machine" in table and "t4-small" not in table
    assert main(["show", "loc01"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["hardware"] == "this machine"
    assert main(["list", "--json", "--local", str(other)]) == EXIT_OK
    assert [t["hardware"] for t in json.loads(capsys.readouterr().out)] == ["this machine"]
