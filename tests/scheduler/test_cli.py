"""The operator CLI (``python -m scheduler``): commands, messages and exit codes, on a local and a Hub queue."""

from __future__ import annotations

import json
import os
import shutil
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
def fast_retries(monkeypatch, request):
    monkeypatch.setenv("RETRY_BASE_S", "0.01")
    # Local mode without a Hub account, unless the test starts the emulator (the test env's HF_TOKEN is its own).
    if "hub" not in request.fixturenames:
        monkeypatch.delenv("HF_TOKEN", raising=False)


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
    assert shown["params"]["steps"] == 50 and shown["images"]["count"] == 3
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
    for fragment in ("Instance prompt: must not be empty", "Steps: -3 is out of range", "unknown flavor 'h100-mega'", "Caption notes.txt: no photo named notes.*"):
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


def test_list_prints_no_escape_sequence_from_the_queue(tmp_path):
    """A task written into the queue without validation (as anyone with write access to it could) holds escape
    sequences: ``list`` shows them as text, and no ESC, BEL or bidi override reaches the terminal (issue 20, 8)."""
    qdir = tmp_path / "q"
    hostile = "\x1b]0;pwned\x07\x1b[2Ja photo"  # retitles the terminal, then clears it
    task = make_task(instance_prompt=hostile, submitted_by="bob\u202e")
    LocalQueue(qdir).enqueue(task, make_images(tmp_path / "a", 1))

    def run(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler", "--local", str(qdir), *command], capture_output=True,
                              timeout=60)  # fmt: skip

    table, as_json = run("list"), run("list", "--json")
    for shown in (table, as_json):
        assert shown.returncode == 0, shown.stderr
        assert b"\x1b" not in shown.stdout and b"\x07" not in shown.stdout, shown.stdout
        assert "\u202e".encode() not in shown.stdout
    assert "\\x1b]0;pwned\\x07\\x1b[2Ja photo" in table.stdout.decode() and "bob\\u202e" in table.stdout.decode()
    assert json.loads(as_json.stdout)[0]["instance_prompt"] == hostile  # the JSON keeps the value, escaped


def test_submit_refuses_a_prompt_with_control_characters(tmp_path, capsys):
    images = tmp_path / "photos"
    make_images(images, 3)
    args = ["--local", str(tmp_path / "q"), "submit", "--images", str(images), "--prompt", "\x1b]0;pwned\x07a photo",
            "--output-repo", "alice/sks-dog"]  # fmt: skip
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Instance prompt: holds the control character U+001B at character 1" in err and "\x1b" not in err
    assert LocalQueue(tmp_path / "q").list() == []


# ---------------------------------------------------------------- issue 21, item 8: the CLI submits as the form does
FORM_PROMPT, FORM_CLASS = "a photo of sks dog", "a photo of a dog"


def photos_with_captions(folder):
    """Three photos, two with a ``.txt`` caption (the form's upload of them, as a folder)."""
    make_images(folder, 3)
    (folder / "img0.txt").write_text("sks dog on a red sofa")
    (folder / "img2.txt").write_text("sks dog in the snow")
    return sorted(folder.iterdir())


def form_submit(tmp_path, files, env=None, **changes):
    """The form's Train button in local mode, in-process (as tests/test_form.py drives it), with the settings ``env``
    gives: its answer and its queue."""
    from contract.settings import load_settings
    from scheduler.hardware.local import LocalHardware
    from scheduler.output_names import default_output_repo
    from scheduler.queue import make_queue
    from scheduler.worker import Worker
    from training.demo import DEMO_MODEL, DEMO_RESOLUTION
    from ui.auth import access_for
    from ui.context import AppContext
    from ui.submission import submit

    settings = load_settings({"DATA_DIR": str(tmp_path / "form-data"), **(env or {})})
    queue = make_queue(settings)
    worker = Worker(settings, queue, LocalHardware(gpu_probe=lambda: False))  # not started: submit only enqueues
    ctx = AppContext(settings=settings, queue=queue, worker=worker)
    user = access_for(settings, None).user  # local mode: no sign-in
    values = {"instance_prompt": FORM_PROMPT, "class_prompt": FORM_CLASS, "base_model": DEMO_MODEL,
              "recipe": "dreambooth-lora", "steps": 4, "hardware": "t4-small", "learning_rate": 1e-4, "rank": 4,
              "resolution": DEMO_RESOLUTION, "private": True, **changes}  # fmt: skip
    # what the form fills in once the prompts are typed (``ui.form``'s on_prompt)
    values["output_repo"] = default_output_repo(user, values["instance_prompt"], True, None, class_prompt=FORM_CLASS)
    outcome = submit(ctx, user, [str(p) for p in files], values)
    return outcome, queue


def cli_submit(qdir, images, *extra):
    return main(["--local", str(qdir), "submit", "--images", str(images), "--prompt", FORM_PROMPT,
                 "--class-prompt", FORM_CLASS, "--base-model", "builtin:demo", "--steps", "4", "--learning-rate",
                 "1e-4", "--rank", "4", "--resolution", "64", "--hardware", "t4-small", *extra])  # fmt: skip


def stored_names(queue, task, dest):
    """The names of the files the queue stores for ``task`` (its photos and their captions)."""
    return sorted(p.name for p in queue.fetch_images(task, dest).iterdir())


def test_submit_takes_captions_names_the_repo_and_the_submitter_as_the_form_does(tmp_path, capsys):
    """The same photos and captions, prompts and numbers, through the CLI and through the form (local mode): the
    same task, stored with the same files (issue 21, 8: the CLI refused the .txt captions, named the repo
    ``<login>/dreambooth-<task id>`` and the submitter by the login name)."""
    from ui.auth import LOCAL_USER

    folder = tmp_path / "photos"
    files = photos_with_captions(folder)
    qdir = tmp_path / "q"
    assert cli_submit(qdir, folder, "--id", "cli01") == EXIT_OK, capsys.readouterr().err
    by_cli = LocalQueue(qdir).get("cli01")
    outcome, form_queue = form_submit(tmp_path, [shutil.copy(p, tmp_path / p.name) for p in files])
    assert outcome.queued, outcome.message
    by_form = outcome.task

    assert by_cli.submitted_by == by_form.submitted_by == LOCAL_USER
    assert by_cli.output_repo == by_form.output_repo == "dreambooth-sks-dog"
    assert by_cli.params == by_form.params and by_cli.params["prior_preservation"] is True
    for field in ("instance_prompt", "class_prompt", "recipe", "base_model", "hardware", "private"):
        assert getattr(by_cli, field) == getattr(by_form, field), field
    assert by_cli.images.count == by_form.images.count == 3
    cli_files = stored_names(LocalQueue(qdir), by_cli, tmp_path / "got-cli")
    assert cli_files == stored_names(form_queue, by_form, tmp_path / "got-form")
    assert len([n for n in cli_files if n.endswith(".txt")]) == 2


def test_submit_refuses_a_stray_caption_as_the_form_does(tmp_path, capsys):
    folder = tmp_path / "photos"
    files = photos_with_captions(folder)
    (folder / "cat.txt").write_text("a caption without its photo")
    qdir = tmp_path / "q"
    assert cli_submit(qdir, folder) == EXIT_USAGE
    err = capsys.readouterr().err
    outcome, _ = form_submit(tmp_path, [shutil.copy(p, tmp_path / p.name) for p in [*files, folder / "cat.txt"]])
    assert not outcome.queued
    expected = "Caption cat.txt: no photo named cat.* in this upload"
    assert expected in err and expected in outcome.message
    assert "Image" not in err  # the captions are not read as images
    assert LocalQueue(qdir).list() == []


def test_submit_help_names_the_real_defaults(tmp_path):
    """``submit --help`` prints the default base model and hardware themselves, from the settings (issue 21, 8)."""
    from contract.settings import DEFAULT_BASE_MODEL

    def shown(**env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "scheduler", "submit", "--help"], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **env})  # fmt: skip
        assert done.returncode == 0, done.stderr
        return " ".join(done.stdout.split())  # argparse wraps the help text

    text = shown()
    assert "DEFAULT_BASE_MODEL" in text and f"default: {DEFAULT_BASE_MODEL}" in text
    assert "default: t4-small" in text and "default: DEFAULT_BASE_MODEL" not in text
    configured = shown(BASE_MODELS="me/a,me/model-b", DEFAULT_BASE_MODEL="me/model-b", TRAIN_HARDWARE="a10g-small")
    assert "default: me/model-b" in configured and "default: a10g-small" in configured
    broken = shown(MAX_ATTEMPTS="many")  # a bad setting does not hide the help
    assert f"default: {DEFAULT_BASE_MODEL}" in broken


def test_hub_submit_names_the_tokens_user_and_the_forms_repo(hub, tmp_path, capsys):
    """On a Hub queue the CLI submits as the token's user (the owner, whom the form's sign-in names) and names the
    output repo as the form does, taking the next free name as the form does when the repo is not this app's for
    this subject (issue 21, 8: ``<login>`` and ``dreambooth-<task id>`` before)."""
    from huggingface_hub import HfApi

    from scheduler.output_names import default_output_repo

    images = tmp_path / "photos"
    make_images(images, 3)
    repo = f"alice/cli-queue-{uuid.uuid4().hex[:6]}"
    token = f"zq{uuid.uuid4().hex[:4]}"  # a subject of its own: the emulator is shared by the session's tests
    prompt = f"a photo of {token} dog"
    submit = ["--queue", repo, "submit", "--images", str(images)]
    assert main([*submit, "--prompt", prompt, "--id", "hubname01"]) == EXIT_OK
    capsys.readouterr()
    task = hub_task(repo, "hubname01")
    assert task.submitted_by == "alice"
    assert task.output_repo == default_output_repo("alice", prompt) == f"alice/dreambooth-{token}-dog"

    cat_prompt = f"a photo of {token} cat"
    taken = default_output_repo("alice", cat_prompt)
    HfApi(token=ALICE_TOKEN).create_repo(taken)  # alice's, but not made by this app for this subject
    assert main([*submit, "--prompt", cat_prompt, "--id", "hubname02"]) == EXIT_OK
    assert f"{taken} already exists" in capsys.readouterr().out
    assert hub_task(repo, "hubname02").output_repo == f"{taken}-2"


def hub_task(repo, task_id):
    """Task ``task_id`` as the Hub queue ``repo`` holds it."""
    from huggingface_hub import HfApi

    from scheduler.queue import HubQueue

    return HubQueue(HfApi(token=ALICE_TOKEN), repo).get(task_id)


def test_local_submit_with_a_token_checks_the_output_repo_as_the_form_does(hub, tmp_path, capsys):
    """Locally with HF_TOKEN the model is uploaded to the token's account: the CLI, like the form, takes the next
    free name when that account's repo of the same name is not this app's model of the subject."""
    from huggingface_hub import HfApi

    token = f"zq{uuid.uuid4().hex[:4]}"  # a subject of its own: the emulator is shared by the session's tests
    prompt = f"a photo of {token} dog"
    HfApi(token=ALICE_TOKEN).create_repo(f"alice/dreambooth-{token}-dog")  # not made by this app
    folder = tmp_path / "photos"
    files = photos_with_captions(folder)
    assert cli_submit(tmp_path / "q", folder, "--prompt", prompt, "--id", "tok01") == EXIT_OK, capsys.readouterr().err
    assert f"dreambooth-{token}-dog already exists" in capsys.readouterr().out
    env = {"HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url}
    outcome, _ = form_submit(tmp_path, [shutil.copy(p, tmp_path / p.name) for p in files], env, instance_prompt=prompt)
    assert outcome.queued, outcome.message
    assert LocalQueue(tmp_path / "q").get("tok01").output_repo == outcome.task.output_repo == f"dreambooth-{token}-dog-2"
