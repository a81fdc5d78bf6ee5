"""Settings: parsed once from an environment mapping, with sources, defaults and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.settings import DEFAULT_BASE_MODEL, SettingsError, load_settings, load_trainer_settings

SPACE_ENV = {"SPACE_ID": "alice/trainer", "SPACE_AUTHOR_NAME": "alice", "SPACE_REPO_NAME": "trainer", "HF_TOKEN": "hf_secret_value_123"}


def test_local_defaults():
    s = load_settings({})
    assert s.local is True
    assert s.space_id is None and s.queue_repo is None
    assert s.train_hardware == "t4-small" and s.idle_hardware == "cpu-basic"
    assert s.max_attempts == 2 and s.deadline_s == 3 * 3600
    assert s.base_models == (DEFAULT_BASE_MODEL,) and s.default_base_model == DEFAULT_BASE_MODEL
    assert s.data_dir == Path("data") and s.local_queue_dir == Path("data/queue")
    assert s.accelerator == "none" and s.allow_cpu_training is False
    assert s.allowed_users == ()
    assert set(s.sources().values()) == {"default"}


def test_space_defaults_are_derived_from_space_id():
    s = load_settings(SPACE_ENV)
    assert s.local is False
    assert s.queue_repo == "alice/trainer-queue"
    assert s.allowed_users == ("alice",)
    src = s.sources()
    assert src["queue_repo"] == "derived" and src["space_id"] == "SPACE_ID" and src["hf_token"] == "HF_TOKEN"
    assert src["train_hardware"] == "default"
    assert s.sleep_time_s > s.deadline_s


def test_space_author_from_space_id_when_missing():
    s = load_settings({"SPACE_ID": "bob/x"})
    assert (s.space_author, s.space_repo_name, s.queue_repo) == ("bob", "x", "bob/x-queue")


def test_explicit_values():
    env = {
        **SPACE_ENV,
        "QUEUE_REPO": "alice-org/jobs",
        "ALLOWED_USERS": "alice, bob ,",
        "TRAIN_HARDWARE": "a10g-small",
        "IDLE_HARDWARE": "pause",
        "MAX_ATTEMPTS": "3",
        "TASK_DEADLINE_S": "600",
        "LEASE_S": "30",
        "POLL_INTERVAL_S": "0.5",
        "RETRY_BASE_S": "0.01",
        "BASE_MODELS": "org/model-a,org/model-b",
        "DATA_DIR": "/tmp/xyz",
        "ACCELERATOR": "t4-small",
        "ALLOW_CPU_TRAINING": "true",
    }
    s = load_settings(env)
    assert s.queue_repo == "alice-org/jobs" and s.allowed_users == ("alice", "bob")
    assert s.train_hardware == "a10g-small" and s.idle_hardware == "pause"
    assert (s.max_attempts, s.deadline_s, s.lease_s, s.poll_interval_s, s.retry_base_s) == (3, 600.0, 30.0, 0.5, 0.01)
    assert s.base_models == ("org/model-a", "org/model-b") and s.default_base_model == "org/model-a"
    assert s.data_dir == Path("/tmp/xyz") and s.accelerator == "t4-small" and s.allow_cpu_training is True
    assert s.sources()["queue_repo"] == "QUEUE_REPO" and s.sources()["default_base_model"] == "derived"


def test_token_is_never_shown():
    s = load_settings(SPACE_ENV)
    assert "hf_secret_value_123" not in repr(s)
    assert "hf_secret_value_123" not in str(s.describe())
    assert ("hf_token", "set (hidden)", "HF_TOKEN") in s.describe()


def test_local_base_model_path_is_accepted():
    s = load_settings({"BASE_MODELS": "/tmp/tiny-sd,org/real"})
    assert s.base_models == ("/tmp/tiny-sd", "org/real")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRAIN_HARDWARE": "h100-mega"}, "TRAIN_HARDWARE='h100-mega' is not a known flavor"),
        ({"IDLE_HARDWARE": "t4-small"}, "IDLE_HARDWARE='t4-small' is not an idle flavor"),
        ({"MAX_ATTEMPTS": "two"}, "MAX_ATTEMPTS='two' is not an integer"),
        ({"MAX_ATTEMPTS": "0"}, "must be at least 1"),
        ({"TASK_DEADLINE_S": "-5"}, "TASK_DEADLINE_S"),
        ({"ALLOW_CPU_TRAINING": "maybe"}, "ALLOW_CPU_TRAINING='maybe' is not a boolean"),
        ({"QUEUE_REPO": "bad--name/x"}, "QUEUE_REPO"),
        ({"QUEUE_REPO": "no-owner"}, "owner/name"),
        ({"SPACE_ID": "just-a-name"}, "SPACE_ID"),
        ({"BASE_MODELS": "ok/model,bad..id"}, "BASE_MODELS"),
        ({"BASE_MODELS": "a/b", "DEFAULT_BASE_MODEL": "c/d"}, "DEFAULT_BASE_MODEL='c/d' is not one of BASE_MODELS"),
    ],
)
def test_invalid_values_raise_clear_errors(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_settings(env)


def test_empty_values_mean_default():
    s = load_settings({"TRAIN_HARDWARE": "", "MAX_ATTEMPTS": "  "})
    assert s.train_hardware == "t4-small" and s.max_attempts == 2


def test_reads_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("TRAIN_HARDWARE", "l4x1")
    assert load_settings().train_hardware == "l4x1"


# --------------------------------------------------------------------------- training backend (issue 12)
def test_training_backend_defaults_to_the_self_upgrading_space():
    s = load_settings({"SPACE_ID": "alice/trainer"})
    assert s.training_backend == "space" and not s.uses_jobs
    assert (s.max_parallel_jobs, s.jobs_gpu_hours_per_day) == (2, 24.0)
    # The Jobs settings are derived anyway (shown in the settings view; used once TRAINING_BACKEND=jobs).
    assert s.job_image == "hf.co/spaces/alice/trainer" and s.jobs_namespace == "alice"
    assert s.sources()["job_image"] == "derived" and s.sources()["training_backend"] == "default"


def test_jobs_backend_settings():
    s = load_settings({"SPACE_ID": "alice/trainer", "TRAINING_BACKEND": "Jobs", "MAX_PARALLEL_JOBS": "4",
                       "JOBS_GPU_HOURS_PER_DAY": "6.5", "JOB_IMAGE": "hf.co/spaces/alice/other",
                       "JOBS_NAMESPACE": "alice-org", "TRAINING_RECIPES_MODULES": "my_recipes, more",
                       "TRAIN_HARDWARE": "h200"})  # fmt: skip
    assert s.uses_jobs and s.training_backend == "jobs"
    assert (s.max_parallel_jobs, s.jobs_gpu_hours_per_day, s.job_image, s.jobs_namespace) == (
        4, 6.5, "hf.co/spaces/alice/other", "alice-org")  # fmt: skip
    assert s.recipes_modules == ("my_recipes", "more") and s.train_hardware == "h200"
    assert load_settings({"SPACE_ID": "a/b", "JOBS_GPU_HOURS_PER_DAY": "none"}).jobs_gpu_hours_per_day is None


def test_training_script_is_a_py_file_in_the_apps_folder_or_an_absolute_path(tmp_path, monkeypatch):
    from contract.settings import APP_ROOT

    monkeypatch.chdir(tmp_path)  # a relative path is the app's folder's, not the working directory's
    default = load_settings({})
    assert default.training_script is None and default.training_script_path is None
    relative = load_settings({"TRAINING_SCRIPT": "app.py"})
    assert relative.training_script == "app.py" and relative.training_script_path == APP_ROOT / "app.py"
    assert relative.sources()["training_script"] == "TRAINING_SCRIPT"
    mine = tmp_path / "my_train.py"
    mine.write_text("")
    assert load_settings({"TRAINING_SCRIPT": str(mine)}).training_script_path == mine


def test_a_training_script_that_is_no_existing_py_file_is_refused_with_the_fix(tmp_path):
    from contract.settings import APP_ROOT

    (tmp_path / "folder.py").mkdir()
    (tmp_path / "my_train.txt").write_text("")
    fix = "Set TRAINING_SCRIPT to the path of your copy of training/train.py (e.g. my_train.py), relative to the app's folder or absolute"
    cases = [
        (str(tmp_path / "my_train.txt"), f"TRAINING_SCRIPT='{tmp_path / 'my_train.txt'}' is not a Python file (it must end with .py). {fix}"),
        ("no_such_train.py", f"TRAINING_SCRIPT='no_such_train.py' names no file (looked for {APP_ROOT / 'no_such_train.py'}). {fix}"),
        (str(tmp_path / "folder.py"), f"TRAINING_SCRIPT='{tmp_path / 'folder.py'}' names no file"),
    ]  # fmt: skip
    for value, message in cases:
        with pytest.raises(SettingsError) as raised:
            load_settings({"TRAINING_SCRIPT": value})
        assert str(raised.value).startswith(message), str(raised.value)


def test_family_modules_are_a_comma_separated_list_of_module_names():
    assert load_settings({}).family_modules == ()
    s = load_settings({"TRAINING_FAMILY_MODULES": " my_family, pkg.more_families ,"})
    assert s.family_modules == ("my_family", "pkg.more_families")
    assert s.sources()["family_modules"] == "TRAINING_FAMILY_MODULES"
    for bad in ("my_family.py", "my-family", "pkg..mod"):
        with pytest.raises(SettingsError, match="TRAINING_FAMILY_MODULES=.* is not a Python module name"):
            load_settings({"TRAINING_FAMILY_MODULES": f"ok, {bad}"})


def test_recipes_modules_are_a_comma_separated_list_of_module_names():
    assert load_settings({}).recipes_modules == ()
    s = load_settings({"TRAINING_RECIPES_MODULES": " my_recipes, pkg.more_recipes ,"})
    assert s.recipes_modules == ("my_recipes", "pkg.more_recipes")
    assert s.sources()["recipes_modules"] == "TRAINING_RECIPES_MODULES"
    for bad in ("my_recipes.py", "my-recipes", "pkg..mod", "../evil", "/tmp/x"):
        with pytest.raises(SettingsError, match="TRAINING_RECIPES_MODULES=.* is not a Python module name .*my_recipes"):
            load_settings({"TRAINING_RECIPES_MODULES": f"ok, {bad}"})
        with pytest.raises(SettingsError, match="TRAINING_RECIPES_MODULES=.* is not a Python module name"):
            load_trainer_settings({"TRAINING_RECIPES_MODULES": bad})


def test_local_mode_is_unchanged_by_the_backend_settings():
    s = load_settings({"MAX_PARALLEL_JOBS": "3"})
    assert s.local and not s.uses_jobs and s.job_image is None and s.jobs_namespace is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPACE_ID": "a/b", "TRAINING_BACKEND": "cloud"}, "TRAINING_BACKEND='cloud' is not a training backend. Use one of: space, jobs"),
        ({"TRAINING_BACKEND": "jobs"}, "TRAINING_BACKEND='jobs' needs a Space (SPACE_ID)"),
        ({"SPACE_ID": "a/b", "MAX_PARALLEL_JOBS": "0"}, "MAX_PARALLEL_JOBS='0' must be at least 1"),
        ({"SPACE_ID": "a/b", "MAX_PARALLEL_JOBS": "many"}, "MAX_PARALLEL_JOBS='many' is not an integer"),
        ({"SPACE_ID": "a/b", "JOBS_GPU_HOURS_PER_DAY": "-1"}, "JOBS_GPU_HOURS_PER_DAY='-1' must be at least 0"),
        ({"SPACE_ID": "a/b", "JOBS_GPU_HOURS_PER_DAY": "lots"}, "JOBS_GPU_HOURS_PER_DAY='lots' is not a number"),
        ({"SPACE_ID": "a/b", "JOBS_NAMESPACE": "bad name"}, "JOBS_NAMESPACE='bad name' is not a user or organization"),
        ({"SPACE_ID": "a/b", "TRAIN_HARDWARE": "h200"}, "TRAIN_HARDWARE='h200' exists only on Jobs: set TRAINING_BACKEND=jobs"),
    ],
)
def test_invalid_backend_values_raise_clear_errors(env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_the_trainer_reads_only_its_own_variables_with_the_same_parsers(tmp_path, monkeypatch):
    """A trainer runs with the app's environment (less its secrets), in a Job, or by hand: a variable it does not
    use never stops it, and its own ones parse as the app's do."""
    from contract.settings import APP_ROOT, TRAINER_VARIABLES, default_demo_dir, load_trainer_settings

    monkeypatch.chdir(tmp_path)
    unrelated = {"TRAIN_HARDWARE": "h200", "MAX_ATTEMPTS": "zero", "SPACE_ID": "not a repo id"}
    with pytest.raises(SettingsError):
        load_settings(unrelated)
    env = {**unrelated, "TRAINING_SCRIPT": "app.py", "TRAINING_FAMILY_MODULES": "my_family, pkg.more",
           "TRAINING_RECIPES_MODULES": "my_recipes", "DREAMBOOTH_DEMO_DIR": str(tmp_path / "demo")}  # fmt: skip
    s = load_trainer_settings(env)
    assert s.training_script_path == APP_ROOT / "app.py"
    assert (s.family_modules, s.recipes_modules, s.demo_dir) == (("my_family", "pkg.more"), ("my_recipes",), tmp_path / "demo")
    assert {name for name, source in s.sources().items() if source != "default"} == {
        "training_script", "family_modules", "recipes_modules", "demo_dir"}  # fmt: skip
    assert s.train_hardware == "t4-small" and s.local  # the rest: defaults
    assert load_trainer_settings({}).demo_dir == default_demo_dir() == load_settings({}).demo_dir
    for var, bad in (("TRAINING_SCRIPT", "no_such_train.py"), ("TRAINING_FAMILY_MODULES", "my_family.py")):
        with pytest.raises(SettingsError) as trainer:
            load_trainer_settings({var: bad})
        with pytest.raises(SettingsError) as app:
            load_settings({var: bad})
        assert str(trainer.value) == str(app.value)
        others = tuple(v for v in TRAINER_VARIABLES if v != var)
        assert load_trainer_settings({var: bad}, variables=others).sources()[
            "training_script" if var == "TRAINING_SCRIPT" else "family_modules"] == "default"  # fmt: skip
    with pytest.raises(ValueError, match="not a trainer variable"):
        load_trainer_settings({}, variables=("TRAIN_HARDWARE",))
