"""A customizer's model family, named in TRAINING_FAMILY_MODULES, reaches the whole app: the form's base-model check
(in the app's own process) accepts its pipeline, the worker's trainer loads it, and the task trains to DONE.

The family is the README's "Add a model family" example, written to a module outside the repo; the base model is the
tiny SD pipeline saved under the example's ``ToyDiffusionPipeline`` class. Real local queue, real trainer subprocess
on the CPU, nothing mocked: the registry of model families is swapped for a copy so this test's registrations end
with it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from contract.settings import load_settings

MODULE = "my_family"
TOY_PIPELINE = "ToyDiffusionPipeline"


@pytest.fixture
def family_module(tmp_path, monkeypatch) -> Path:
    """README step 1: ``my_family.py`` in a folder of its own, importable here and by the trainer subprocess (which
    inherits this environment); the registry as it was (built-ins, no toy family) is restored afterwards."""
    from tests.test_readme import _python_block_after
    from training import families

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(_python_block_after("1. Create `my_family.py`"))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))
    families.registered_families()  # the built-ins, loaded once
    untouched = {name: cls for name, cls in families._REGISTRY.items() if TOY_PIPELINE not in cls.pipelines}
    monkeypatch.setattr(families, "_REGISTRY", untouched)
    sys.modules.pop(MODULE, None)
    yield folder
    sys.modules.pop(MODULE, None)  # a later import registers it again (in the registry then in place)


@pytest.fixture
def toy_model(tiny_sd, tmp_path) -> Path:
    """The tiny SD pipeline saved under the README family's pipeline class."""
    folder = Path(shutil.copytree(tiny_sd, tmp_path / "toy-model"))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": TOY_PIPELINE}))
    return folder


def local_app(tmp_path: Path, **env: str):
    """A local-mode app's context (settings, folder queue, worker on this CPU; the worker not started)."""
    from scheduler.hardware.local import LocalHardware
    from scheduler.queue import make_queue
    from scheduler.worker import Worker
    from ui.context import AppContext

    settings = load_settings({"DATA_DIR": str(tmp_path / "data"), **env})
    queue = make_queue(settings)
    worker = Worker(settings, queue, LocalHardware(gpu_probe=lambda: False))
    return AppContext(settings=settings, queue=queue, worker=worker)


def form_values(model: Path) -> dict:
    from tests.test_form import values

    return values(base_model=str(model), steps=2, resolution=256, output_repo="dreambooth-sks-toy")


def test_a_custom_family_named_in_the_setting_is_submitted_from_the_form_and_trains(family_module, toy_model, tmp_path):
    from huggingface_hub import ModelCard

    from scheduler.task import TaskStatus
    from tests.test_form import photos
    from ui.submission import submit_task

    # Without the setting the app's own check does not know the pipeline: nothing is queued.
    plain = local_app(tmp_path / "plain")
    answer = submit_task(plain, "local", photos(tmp_path), form_values(toy_model))
    assert answer.startswith("**Nothing was queued.**") and TOY_PIPELINE in answer, answer
    assert "StableDiffusionPipeline" in answer and "FluxPipeline" in answer, answer  # the supported pipelines
    assert plain.queue.list() == []
    assert MODULE not in sys.modules

    # With it, the app imports the module at start: the form queues the task, the worker's trainer loads it too.
    ctx = local_app(tmp_path / "custom", TRAINING_FAMILY_MODULES=MODULE)
    assert MODULE in sys.modules
    answer = submit_task(ctx, "local", photos(tmp_path), form_values(toy_model))
    assert "queued" in answer and "Nothing was queued" not in answer, answer
    [task] = ctx.queue.list()
    assert task.base_model == str(toy_model)

    action, _ = ctx.worker.step()  # claims and trains the task in this thread, as the started worker's loop would
    assert action.kind.value == "claim_and_train"
    done = ctx.queue.get(task.id)
    assert done.status is TaskStatus.DONE, done.last_error
    out = Path(done.result_url)
    card = ModelCard.load(out / "README.md")
    assert "toy-family" in card.data.tags, card.data.tags  # the family's own tag: the trainer used the toy family


def test_the_form_lists_the_custom_familys_defaults(family_module, toy_model, tmp_path):
    """The form's family lookup (the trainer's catalog) follows the setting too."""
    from ui.model_family import family_of

    ctx = local_app(tmp_path, TRAINING_FAMILY_MODULES=MODULE)
    family = family_of(ctx.settings, str(toy_model))
    assert family is not None and family.name == "toy-sd" and TOY_PIPELINE in family.pipelines


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (None, "ModuleNotFoundError"),  # no such module
        ("import no_such_package_for_a_family\n", "no_such_package_for_a_family"),
        ("raise RuntimeError('my family is not finished')\n", "my family is not finished"),
    ],
)
def test_a_family_module_that_does_not_import_shows_the_setup_page(tmp_path, monkeypatch, source, expected):
    from app import create_app
    from tests.test_app import labels

    name = f"broken_family_{abs(hash(expected)) % 10_000}"
    if source is not None:
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = create_app(load_settings({"DATA_DIR": str(tmp_path / "data"), "TRAINING_FAMILY_MODULES": f"{name}"}))
    assert app.worker is None and [p.title for p in app.problems] == ["A model family module cannot be loaded"]
    text = labels(app.demo)
    assert f"TRAINING_FAMILY_MODULES names '{name}'" in text and expected in text, text
    assert "remove it from the `TRAINING_FAMILY_MODULES` variable" in text
    sys.modules.pop(name, None)
