"""The README's promises, checked: its worked recipe example trains, and its two commands are the ones CI runs."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from safetensors.torch import load_file

from tests.tiny_models import make_images
from training.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _python_block_after(marker: str) -> str:
    start = README.index(marker)
    block = re.search(r"```python\n(.*?)```", README[start:], re.S)
    assert block, f"no python block after {marker!r}"
    return textwrap.dedent(block.group(1))


def test_readme_recipe_example_trains_with_its_own_settings(tiny_sd, tmp_path, monkeypatch):
    (tmp_path / "my_recipes.py").write_text(_python_block_after("1. Create `my_recipes.py`"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRAINING_RECIPES_MODULES", "my_recipes")  # step 2 of the README
    images = tmp_path / "photos"
    make_images(images, 2, size=48)
    task = {"task_id": "readme", "recipe": "lora-faces", "base_model": str(tiny_sd), "images": str(images),
            "instance_prompt": "a photo of sks person", "output": None, "checkpoint": None,
            "params": {"steps": 2, "resolution": 32, "checkpoint_every": 100, "validation_prompts": []}}  # fmt: skip
    (tmp_path / "task.json").write_text(json.dumps(task))
    rc = main(["--task", str(tmp_path / "task.json"), "--workdir", str(tmp_path / "run"), "--progress-bar", "off"])
    assert rc == 0
    weights = load_file(tmp_path / "run" / "output" / "pytorch_lora_weights.safetensors")
    down = [t for k, t in weights.items() if "lora_A" in k or "lora.down" in k]
    assert down, sorted(weights)[:5]
    assert {t.shape[0] for t in down} == {16}  # the recipe's rank, not the default 4


def test_ci_runs_exactly_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci.splitlines()
    assert "pip install -r requirements.txt && python app.py" in commands


def _variable_default(name: str) -> str:
    row = re.search(rf"^\s*\| `{name}` \| (.*?) \|", README, re.M)
    assert row, f"no row for {name} in the README's variables table"
    return row.group(1)


def _variables_table() -> list[str]:
    """The variable names of the README's variables table (``| variable | default | meaning |``), in order."""
    start = README.index("| variable | default | meaning |")
    rows = []
    for line in README[start:].splitlines()[2:]:
        if not line.strip().startswith("|"):
            break
        name = re.match(r"\s*\| `([A-Z][A-Z0-9_]*)` \| .+? \| .+ \|$", line)
        assert name, f"not a variable row: {line!r}"
        rows.append(name.group(1))
    return rows


class _RecordingEnv(dict):
    """An environment that notes every variable looked up in it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def test_the_settings_module_names_every_variable_it_reads():
    from contract import settings

    read: set[str] = set()
    for env in ({}, {"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs", "BASE_MODELS": "a/b"}):
        for load in (settings.load_settings, settings.load_trainer_settings):
            recording = _RecordingEnv(env)
            load(recording)
            read |= recording.read
    assert read == set(settings.VARIABLES)
    assert len(settings.VARIABLES) == len(set(settings.VARIABLES))
    assert set(settings.TRAINER_VARIABLES) <= set(settings.VARIABLES)
    assert set(settings.NOT_FOR_USERS) <= set(settings.VARIABLES) and all(settings.NOT_FOR_USERS.values())


def test_the_readme_variables_table_lists_exactly_the_variables_users_may_set():
    from contract.settings import NOT_FOR_USERS, VARIABLES

    rows = _variables_table()
    assert len(rows) == len(set(rows)), "a variable has two rows"
    for_users = set(VARIABLES) - set(NOT_FOR_USERS)
    assert not set(rows) - for_users, "rows for variables the settings do not read (or mark as not for users)"
    assert not for_users - set(rows), "variables the settings read without a row in the README's table"


def test_readme_says_which_base_models_are_offered_by_default():
    from contract.settings import Settings

    offered = Settings().base_models
    assert _variable_default("BASE_MODELS") == ", ".join(f"`{m}`" for m in offered)


def test_every_scheduler_command_in_the_readme_parses():
    import shlex

    from scheduler.cli import build_parser

    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)\n```", README, re.S)
             for line in block.splitlines() if line.startswith("python -m scheduler") and "--help" not in line]  # fmt: skip
    assert len(lines) >= 2
    for line in lines:
        build_parser().parse_args(shlex.split(line)[3:])  # argparse exits (SystemExit) on what it does not accept


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_readme_documents_the_training_script_setting():
    from contract.settings import Settings

    assert Settings().training_script is None
    assert _variable_default("TRAINING_SCRIPT") == "none (`training/train.py`)"
    row = re.search(r"^\s*\| `TRAINING_SCRIPT` \| .*? \| (.*) \|$", README, re.M)
    assert row, "no row for TRAINING_SCRIPT in the README's variables table"
    meaning = row.group(1)
    assert "a copy of `training/train.py` that every run uses instead: the app, Jobs and `python -m training`" in meaning
    assert "relative to the app's folder, or absolute" in meaning


def test_readme_documents_the_family_modules_setting():
    from contract.settings import Settings, load_settings

    assert Settings().family_modules == ()
    assert _variable_default("TRAINING_FAMILY_MODULES") == "none"
    row = re.search(r"^\s*\| `TRAINING_FAMILY_MODULES` \| .*? \| (.*) \|$", README, re.M)
    assert row, "no row for TRAINING_FAMILY_MODULES in the README's variables table"
    assert "comma-separated" in row.group(1) and "the app's form, the trainer and Jobs load them" in row.group(1)
    assert load_settings({"TRAINING_FAMILY_MODULES": "my_family, pkg.more"}).family_modules == ("my_family", "pkg.more")
    assert "`TRAINING_FAMILY_MODULES=my_family`" in _section("Customize the training")


def test_readme_documents_the_jobs_backend_as_the_settings_and_the_runner_have_it():
    from huggingface_hub import HfApi

    from contract.flavors import FLAVORS, JOBS_GPU_FLAVORS
    from contract.settings import Settings, load_settings
    from scheduler.backends.jobs_runner import JobsRunner
    from scheduler.spending import JOB_STARTUP_MARGIN_S, job_timeout_s

    defaults = Settings()
    assert _variable_default("TRAINING_BACKEND") == f"`{defaults.training_backend}`"
    assert _variable_default("MAX_PARALLEL_JOBS") == f"`{defaults.max_parallel_jobs}`"
    assert _variable_default("JOBS_GPU_HOURS_PER_DAY") == f"`{defaults.jobs_gpu_hours_per_day:g}`"
    assert _variable_default("JOB_IMAGE") == "`hf.co/spaces/<SPACE_ID>`"
    jobs = load_settings({"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "jobs", "JOBS_GPU_HOURS_PER_DAY": "none"})
    assert jobs.uses_jobs and jobs.job_image == "hf.co/spaces/alice/trainer" and jobs.jobs_namespace == "alice"
    assert jobs.jobs_gpu_hours_per_day is None  # "`none` for no cap"

    section = _section("Training on Hugging Face Jobs")
    for variable in ("TRAINING_BACKEND=jobs", "MAX_PARALLEL_JOBS", "JOBS_GPU_HOURS_PER_DAY", "JOB_IMAGE"):
        assert variable in section, variable
    runner = JobsRunner(jobs, queue=None, status=None, api=HfApi(endpoint="http://127.0.0.1:9"))  # type: ignore[arg-type]
    command = " ".join(runner.job_command("<task id>", "<lease holder>"))
    assert f"command `{command}`" in section
    # "the task deadline plus up to 10 minutes for start-up (at most twice the deadline)"
    assert JOB_STARTUP_MARGIN_S == 600 and "plus up to 10 minutes" in section and "at most twice" in section
    assert job_timeout_s(60) == 120 and job_timeout_s(3600) == 3600 + 600
    # The Jobs-only flavors the section names, at the list prices the fallback table has.
    for name in ("h200", "rtx-pro-6000"):
        flavor = FLAVORS[name]
        assert name in JOBS_GPU_FLAVORS and flavor.jobs_only
        named = f"**{flavor.label.removeprefix('Nvidia ')}** ({flavor.gpu_memory_gib} GB, ${flavor.usd_per_hour:.2f}/h)"
        assert named in " ".join(section.split()), named
    for claim in ("positive credit balance", "per minute", "timeout", "Not verified on the real platform"):
        assert claim in section, claim
