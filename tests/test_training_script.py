"""The training script as a template: a researcher copies ``training/train.py``, changes it, points
``TRAINING_SCRIPT`` (or ``--script``) at the copy, and every run follows the copy.

Each copy here is the real file's text with a change appended at its end that rebinds one of its public functions
(``compute_loss``, ``make_optimizer``), as a researcher's edit would change it: the loop looks them up when it
runs, so the change holds however the rest of the file reads. Real training on the tiny SD model, on the CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import ALICE_TOKEN
from tests.test_training import lora_weights, run_task
from tests.tiny_models import make_images
from training.script import load_training_script

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "train.py"
FAST = {"steps": 3, "resolution": 32, "checkpoint_every": 0, "learning_rate": 1e-2, "validation_prompts": []}

ZERO_LOSS = '''
_researchers_compute_loss = compute_loss


def compute_loss(*args, **kwargs):
    """The researcher's change: the loss times zero."""
    return 0 * _researchers_compute_loss(*args, **kwargs)
'''

ZERO_LR = '''
_researchers_make_optimizer = make_optimizer


def make_optimizer(params, lr, **kwargs):
    """The researcher's change: a learning rate of zero."""
    return _researchers_make_optimizer(params, 0.0, **kwargs)
'''

RAISES = """

def compute_loss(*args, **kwargs):
    raise ValueError("my new loss is not finished yet")
"""


def copy_script(folder: Path, change: str, name: str = "my_train.py") -> Path:
    """``cp training/train.py folder/name`` plus ``change`` at its end."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(shutil.copy(SCRIPT, folder / name))
    path.write_text(path.read_text() + change)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    make_images(folder, 2, size=40)
    return folder


def up_weights(workdir: Path) -> dict[str, torch.Tensor]:
    """The LoRA's up (B) matrices: zero when the adapter was never updated (peft's gaussian init)."""
    weights = lora_weights(workdir)
    up = {k: t for k, t in weights.items() if "lora_B" in k or "lora.up" in k}
    assert up, sorted(weights)[:5]
    return up


def test_an_unchanged_run_moves_the_up_weights(tiny_sd, photos, tmp_path):
    """The control for the two tests below: three steps at this learning rate make the up weights non-zero."""
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(photos), params=FAST)
    assert rc == 0, events[-1]
    assert any(t.abs().max() > 0 for t in up_weights(tmp_path / "w").values())
    assert "training script" not in (tmp_path / "w" / "output" / "README.md").read_text()


@pytest.mark.parametrize("change", [ZERO_LOSS, ZERO_LR], ids=["loss-times-zero", "learning-rate-zero"])
def test_a_changed_copy_named_by_the_setting_is_what_trains(tiny_sd, photos, tmp_path, monkeypatch, change):
    script = copy_script(tmp_path / "mine", change)
    monkeypatch.setenv("TRAINING_SCRIPT", str(script))
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(photos), params=FAST)
    assert rc == 0, events[-1]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    for name, tensor in up_weights(tmp_path / "w").items():
        assert torch.count_nonzero(tensor) == 0, name
    card = (tmp_path / "w" / "output" / "README.md").read_text()
    assert "| training script | `my_train.py` (a customized copy of `training/train.py`) |" in card
    # the copy's name, not where it is kept (the card of a model kept locally loads it from its output folder)
    assert str(script.parent) not in card and str(tmp_path / "w" / "output") in card


def test_the_script_flag_wins_and_an_error_in_compute_loss_stops_the_run_with_its_message(tiny_sd, photos, tmp_path):
    script = copy_script(tmp_path / "mine", RAISES)
    rc, events = run_task(tmp_path / "w", "--script", str(script), base_model=str(tiny_sd), images=str(photos),
                          params=FAST)  # fmt: skip
    assert rc == 1
    assert events[-1]["event"] == "error" and "my new loss is not finished yet" in events[-1]["message"], events[-1]
    assert not [e for e in events if e["event"] == "step"]


def test_a_script_that_is_not_there_or_has_no_train_function_is_refused_clearly(tmp_path):
    from training.exitcodes import BadInputError

    with pytest.raises(BadInputError, match="does not exist"):
        load_training_script(str(tmp_path / "missing.py"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(BadInputError, match=r"no train\(ctx, recipe\)"):
        load_training_script(str(tmp_path / "empty.py"))
    assert load_training_script(None).__name__ == "training.train"


# ---------------------------------------------------------------- through the app: the form in local mode, and a Job
def local_app(tmp_path: Path, **env: str):
    """A local-mode app's context (settings, folder queue, worker on this CPU; the worker not started)."""
    from contract.settings import load_settings
    from scheduler.hardware.local import LocalHardware
    from scheduler.queue import make_queue
    from scheduler.worker import Worker
    from ui.context import AppContext

    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), **env})
    queue = make_queue(settings)
    return AppContext(
        settings=settings, queue=queue, worker=Worker(settings, queue, LocalHardware(gpu_probe=lambda: False))
    )


def submit_from_the_form(ctx, tmp_path: Path):
    """The owner's submit of the Train form (demo model, 3 photos, 3 steps); returns the queued task."""
    from tests.test_form import photos, values
    from ui.submission import submit_task

    answer = submit_task(ctx, "local", photos(tmp_path), values(steps=3))
    assert "queued" in answer, answer
    [task] = ctx.queue.list()
    return task


def test_an_error_raised_in_compute_loss_stops_a_run_started_from_the_form_with_its_message(tmp_path):
    from scheduler.task import TaskStatus

    script = copy_script(tmp_path / "mine", RAISES)
    ctx = local_app(tmp_path, TRAINING_SCRIPT=str(script), MAX_ATTEMPTS="1")  # a second attempt fails the same
    task = submit_from_the_form(ctx, tmp_path)
    ctx.worker.step()  # claims and trains the task in this thread, as the started worker's loop would
    failed = ctx.queue.get(task.id)
    assert failed.status is TaskStatus.FAILED
    assert "my new loss is not finished yet" in failed.last_error, failed.last_error


def test_the_readmes_customize_example_trains_through_the_apps_local_loop(tmp_path):
    """The README's walk-through: copy train.py, replace ``compute_loss`` with the README's, set TRAINING_SCRIPT.
    The first step's loss (before any update, same seed and photos) is the unchanged script's times the README's
    weights (all below 1), so it is lower; later steps differ too."""
    from scheduler.task import TaskStatus
    from tests.test_readme import _python_block_after

    block = _python_block_after("2. In `my_train.py`")
    script = copy_script(tmp_path / "mine", "\n\n" + block)
    losses = {}
    for name, env in (("unchanged", {}), ("readme", {"TRAINING_SCRIPT": str(script)})):
        ctx = local_app(tmp_path / name, **env)
        task = submit_from_the_form(ctx, tmp_path / name)
        ctx.worker.step()
        done = ctx.queue.get(task.id)
        assert done.status is TaskStatus.DONE, done.last_error
        losses[name] = [loss for _, loss in ctx.worker.status.snapshot().loss_history]
    assert len(losses["readme"]) == len(losses["unchanged"]) == 3
    assert losses["readme"][0] < losses["unchanged"][0]


@pytest.mark.slow
def test_a_copy_named_by_the_setting_is_what_trains_in_a_job(hub, tmp_path, tiny_sd):
    """TRAINING_BACKEND=jobs on the emulator: the Space forwards TRAINING_SCRIPT to the Job, whose trainer runs the
    copy (the loss times zero: the uploaded LoRA's up weights stay zero)."""
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    from scheduler.task import TaskStatus
    from tests.test_jobs_backend import JobsSpace

    script = copy_script(tmp_path / "mine", ZERO_LOSS)
    space = JobsSpace(hub, tmp_path, tiny_sd, TRAINING_SCRIPT=str(script))
    try:
        task = space.enqueue("dreambooth-lora", steps=3, rank=4, checkpoint_every=None, learning_rate=1e-2)
        space.worker.start()
        [done] = space.wait_terminal([task.id], 150)
    finally:
        space.worker.stop()
    assert done.status is TaskStatus.DONE, done.last_error
    [job] = space.jobs(task.id)
    assert (job.get("environment") or {}).get("TRAINING_SCRIPT") == str(script)
    path = hf_hub_download(task.output_repo, "pytorch_lora_weights.safetensors", token=ALICE_TOKEN, endpoint=hub.url,
                           cache_dir=tmp_path / "dl")  # fmt: skip
    up = {k: t for k, t in load_file(path).items() if "lora_B" in k or "lora.up" in k}
    assert up and all(torch.count_nonzero(t) == 0 for t in up.values())


def test_the_trainer_resolves_the_setting_like_the_app_and_the_flag_wins(tmp_path, monkeypatch):
    """TRAINING_SCRIPT relative to the app's folder (not the working one), passed on as an absolute path; ``--script``
    wins and the setting is then not even read; a bad setting is bad input (exit code 2) with the settings' message."""
    from contract.settings import APP_ROOT
    from training.cli import _script, _settings, list_recipes, parse_args
    from training.exitcodes import BadInputError

    monkeypatch.chdir(tmp_path)
    args = parse_args(["--task", "t.json", "--workdir", "w"])
    monkeypatch.setenv("TRAINING_SCRIPT", "app.py")
    assert _script(args, _settings(args)) == str(APP_ROOT / "app.py")
    monkeypatch.setenv("TRAINING_SCRIPT", "no_such_train.py")
    with pytest.raises(BadInputError, match="TRAINING_SCRIPT='no_such_train.py' names no file"):
        _settings(args)
    flagged = parse_args(["--task", "t.json", "--workdir", "w", "--script", "my_pkg.train"])
    assert _script(flagged, _settings(flagged)) == "my_pkg.train"
    monkeypatch.delenv("TRAINING_SCRIPT")
    assert _script(args, _settings(args)) is None
    monkeypatch.setenv("TRAINING_FAMILY_MODULES", "my_family.py")
    listing = parse_args(["--list-families"])
    with pytest.raises(BadInputError, match="TRAINING_FAMILY_MODULES='my_family.py'"):
        list_recipes(listing)


def test_the_module_flags_come_first_and_the_settings_add_theirs(monkeypatch):
    from training.cli import _family_modules, _recipe_modules, _settings, parse_args

    monkeypatch.setenv("TRAINING_RECIPES_MODULES", "env_recipes, more_recipes")
    monkeypatch.setenv("TRAINING_FAMILY_MODULES", "env_family")
    args = parse_args(["--list-recipes", "--recipes-module", "flag_recipes", "--families-module", "flag_family"])
    settings = _settings(args)
    assert _recipe_modules(args, settings) == ["flag_recipes", "env_recipes", "more_recipes"]
    assert _family_modules(args, settings) == ["flag_family", "env_family"]
