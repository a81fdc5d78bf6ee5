"""The app's settings: parsed once from the environment (Space secrets and variables) into one frozen object.

This module is the only place in the project that reads ``os.environ``: ``load_settings`` for the app, the
scheduler and Jobs, ``load_trainer_settings`` for the trainer (``python -m training``), which parses only its own
variables (``TRAINER_VARIABLES``) with the same parsers. Every field records where its value came from
(``Settings.sources()``), so the settings view can say "from QUEUE_REPO" or "default".

``VARIABLES`` names every variable read here; the README's variables table lists them all but ``NOT_FOR_USERS``
(tests/test_readme.py checks both ways).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from contract.caption_models import DEFAULT_CAPTION_MODEL
from contract.flavors import FLAVORS, IDLE_FLAVORS, is_jobs_only
from contract.scoring_models import DEFAULT_CLIP_MODEL, DEFAULT_DINO_MODEL
from contract.setting_values import (  # SettingsError: raised by ``load_settings``, its importers read it here
    SettingsError,
    check_repo_id,
    looks_like_path,
    parse_bool,
    parse_caption_model,
    parse_exposure,
    parse_list,
    parse_modules,
    parse_namespace,
    parse_number,
    parse_scoring_model,
)

APP_ROOT = Path(__file__).resolve().parent.parent  # the app's folder: where a relative TRAINING_SCRIPT is looked for
DEFAULT_BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_ENDPOINT = "https://huggingface.co"
SLEEP_TIME_MARGIN_S = 1800  # the Space's sleep_time backstop = task deadline + this margin
TRAINING_BACKENDS = ("space", "jobs")  # where training runs: the Space upgrades itself, or one HF Job per task
BILLINGS = ("owner", "visitor")  # who pays: the Space's owner (HF_TOKEN), or each signed-in visitor (their OAuth token)
DEFAULT_JOBS_GPU_HOURS_PER_DAY = 24.0  # JOBS_GPU_HOURS_PER_DAY default: a day of one GPU, in any 24 h
# Tests only: let Gradio's mocked sign-in (anyone becomes the token's owner) serve a Space-mode app.
MOCK_SIGNIN_VAR = "DREAMBOOTH_TEST_MOCK_SIGNIN"
DEMO_DIR_VAR = "DREAMBOOTH_DEMO_DIR"  # where the built-in demo model is built on first use (training.demo)

#: every environment variable this module reads (``load_settings``; ``load_trainer_settings`` reads a subset)
VARIABLES = (
    "HF_TOKEN", "HF_ENDPOINT", "SPACE_ID", "SPACE_AUTHOR_NAME", "SPACE_REPO_NAME", "QUEUE_REPO", "ALLOWED_USERS",
    "TRAIN_HARDWARE", "IDLE_HARDWARE", "MAX_ATTEMPTS", "TASK_DEADLINE_S", "LEASE_S", "POLL_INTERVAL_S",
    "RETRY_BASE_S", "BASE_MODELS", "DEFAULT_BASE_MODEL", "DATA_DIR", "ACCELERATOR", "ALLOW_CPU_TRAINING",
    "TRAINING_SCRIPT", "TRAINING_FAMILY_MODULES", "TRAINING_RECIPES_MODULES", DEMO_DIR_VAR, "TRAINING_BACKEND",
    "MAX_PARALLEL_JOBS", "JOBS_GPU_HOURS_PER_DAY", "JOB_IMAGE", "JOBS_NAMESPACE", "KEEP_PHOTOS", "KEEP_RUN_FOLDERS",
    "OUTPUT_NAMESPACE", "MAX_QUEUED_PER_USER", "MAX_GPU_HOURS_PER_USER_DAY", "SPACE_HOST", "SYSTEM",
    "OAUTH_CLIENT_SECRET", MOCK_SIGNIN_VAR, "LOCAL_EXPOSE_TO_NETWORK", "MAX_SPEND_USD_PER_MONTH",
    "SCORING_DINO_MODEL", "SCORING_CLIP_MODEL", "CAPTION_MODEL", "BILLING",
)  # fmt: skip
_PLATFORM = "set by the Spaces platform in every Space's container, not by the Space's owner"
#: variables read here that the README's variables table deliberately leaves out (users do not set them), and why
NOT_FOR_USERS: Mapping[str, str] = MappingProxyType({
    "SPACE_ID": f"{_PLATFORM}: the Space's repo id (its presence turns local mode off)",
    "SPACE_AUTHOR_NAME": f"{_PLATFORM}: the Space's owner",
    "SPACE_REPO_NAME": f"{_PLATFORM}: the Space's name",
    "SPACE_HOST": f"{_PLATFORM}: the Space's own host name (the sign-in's cross-site check)",
    "ACCELERATOR": f"{_PLATFORM}: the accelerator of the hardware the Space runs on",
    "SYSTEM": f"{_PLATFORM} (`spaces`): Gradio mounts the real OAuth routes",
    "OAUTH_CLIENT_SECRET": f"{_PLATFORM} with `hf_oauth: true`: the sign-in's secret (README: Privacy)",
    MOCK_SIGNIN_VAR: "tests only: lets Gradio's mocked sign-in (anyone becomes the token's owner) serve a Space-mode "
                     "app; never set on a real Space",
})  # fmt: skip
#: the variables the trainer (``python -m training``) reads itself, through ``load_trainer_settings``
TRAINER_VARIABLES = ("TRAINING_RECIPES_MODULES", "TRAINING_FAMILY_MODULES", "TRAINING_SCRIPT", DEMO_DIR_VAR,
                     "SCORING_DINO_MODEL", "SCORING_CLIP_MODEL", "CAPTION_MODEL")  # fmt: skip


def hub_offline() -> bool:
    """Whether huggingface_hub's offline mode is on (``HF_HUB_OFFLINE=1``, as the library itself reads it)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def default_demo_dir() -> Path:
    """Where the demo model is built when DREAMBOOTH_DEMO_DIR is not set: ``~/.cache/dreambooth-trainer/demo-sd``."""
    return Path.home() / ".cache" / "dreambooth-trainer" / "demo-sd"


@dataclass(frozen=True)
class Settings:
    """Effective configuration. Build it with ``load_settings()``; never read ``os.environ`` elsewhere."""

    hf_token: str | None = field(default=None, repr=False)
    hf_endpoint: str = DEFAULT_ENDPOINT
    space_id: str | None = None
    space_author: str | None = None
    space_repo_name: str | None = None
    local: bool = True
    queue_repo: str | None = None  # None in local mode: the queue is a folder under data_dir
    allowed_users: tuple[str, ...] = ()
    train_hardware: str = "t4-small"
    idle_hardware: str = "cpu-basic"  # or "pause"
    max_attempts: int = 2
    deadline_s: float = 3 * 3600.0
    lease_s: float = 300.0
    poll_interval_s: float = 10.0
    retry_base_s: float = 1.0
    base_models: tuple[str, ...] = (DEFAULT_BASE_MODEL,)
    default_base_model: str = DEFAULT_BASE_MODEL
    data_dir: Path = Path("data")
    accelerator: str = "none"
    allow_cpu_training: bool = False
    # Where training runs (README: "Use it as a Space" and "Training on Hugging Face Jobs"). "jobs": the Space stays
    # on its idle hardware and runs each task as a Hugging Face Job; never used in local mode.
    training_backend: str = "space"
    max_parallel_jobs: int = 2  # Jobs running at once (jobs backend)
    jobs_gpu_hours_per_day: float | None = DEFAULT_JOBS_GPU_HOURS_PER_DAY  # GPU hours of Jobs run in any 24 h; None: no cap
    job_image: str | None = None  # the Jobs' image: this Space's own (hf.co/spaces/<SPACE_ID>) unless JOB_IMAGE is set
    jobs_namespace: str | None = None  # who runs (and pays for) the Jobs: the Space's owner unless JOBS_NAMESPACE is set
    recipes_modules: tuple[str, ...] = ()  # TRAINING_RECIPES_MODULES, forwarded to each Job (a trainer reads it: load_trainer_settings)
    # TRAINING_SCRIPT: a customized copy of training/train.py (relative to the app's folder, or absolute) that every
    # run uses instead: the worker passes it to ``python -m training --script``; forwarded to each Job.
    training_script: str | None = None
    # TRAINING_FAMILY_MODULES: modules registering extra model families (``training.families.register_family``),
    # imported by the app (the form's base-model check) and passed to every trainer; forwarded to each Job.
    family_modules: tuple[str, ...] = ()
    # DREAMBOOTH_DEMO_DIR: where the built-in demo model is built on first use (read by the trainer and the app's
    # base-model check through ``training.demo``).
    demo_dir: Path = field(default_factory=default_demo_dir)
    # SCORING_DINO_MODEL / SCORING_CLIP_MODEL: the models that score a run (``contract.scoring_models``: a Hub repo
    # id, a local folder, or builtin:pixels for DINO); None: that measure is off (the variable set empty or none)
    scoring_dino_model: str | None = DEFAULT_DINO_MODEL
    scoring_clip_model: str | None = DEFAULT_CLIP_MODEL
    # CAPTION_MODEL: the model that writes captions for photos without a .txt, when a task asks for them
    # (``contract.caption_models``: a Hub repo id or a local folder)
    caption_model: str = DEFAULT_CAPTION_MODEL
    # Privacy and per-user limits (see README "Privacy").
    keep_photos: bool = False  # keep a DONE task's photos in the queue repo (default: removed with the DONE commit)
    keep_run_folders: bool = False  # debugging: keep a finished task's run folder in a Space's container
    output_namespace: str | None = None  # where non-owners' models go (default: their own account)
    max_queued_per_user: int = 2  # PENDING or RUNNING tasks a non-owner may have at once
    max_gpu_hours_per_user_day: float = 2.0  # hours of paid hardware a non-owner's tasks may be billed in 24 h
    max_spend_usd_per_month: float | None = None  # no GPU request or Job past this month's billed USD; None: no cap
    # BILLING (README: "Open your Space to everyone"): "owner" (HF_TOKEN pays) or "visitor": each signed-in visitor's
    # task runs as a Job in their own namespace with their OAuth token (``ui.visitor_submit``); needs a Space.
    billing: str = "owner"
    # Sign-in. Off local mode, writes are served only with the platform's OAuth (``oauth_ready``).
    space_host: str | None = None  # SPACE_HOST: the Space's own host name, for the cross-site check
    on_space_platform: bool = False  # SYSTEM=spaces: Gradio mounts the real OAuth routes
    oauth_client_secret_set: bool = False
    mock_signin_for_tests: bool = False  # DREAMBOOTH_TEST_MOCK_SIGNIN: tests only, never on a real Space
    # LOCAL_EXPOSE_TO_NETWORK (local mode only): listen on all interfaces instead of 127.0.0.1; the page warns that
    # whoever reaches the port owns the app. Host names other than loopback ones are served only when listed.
    local_expose_to_network: bool = False
    local_host_names: tuple[str, ...] = ()  # the extra Host names (``name`` or ``name:port``) served in local mode
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sleep_time_s(self) -> int:
        """``sleep_time`` sent with a GPU request: a backstop that outlives the task deadline."""
        return int(self.deadline_s + SLEEP_TIME_MARGIN_S)

    @property
    def uses_jobs(self) -> bool:
        """Whether training runs on Hugging Face Jobs (``TRAINING_BACKEND=jobs``; never in local mode)."""
        return self.training_backend == "jobs" and not self.local

    @property
    def visitor_pays(self) -> bool:
        """Whether each signed-in visitor trains on their own Jobs credit (``BILLING=visitor``; never locally)."""
        return self.billing == "visitor" and not self.local

    @property
    def oauth_ready(self) -> bool:
        """Whether sign-in is trustworthy: the platform's OAuth on a Space, or a test's explicit opt-in."""
        return self.local or self.mock_signin_for_tests or (self.on_space_platform and self.oauth_client_secret_set)

    @property
    def training_script_path(self) -> Path | None:
        """``training_script`` as an absolute path (a relative one is in the app's folder), None when not set."""
        return None if self.training_script is None else script_path(self.training_script)

    @property
    def local_queue_dir(self) -> Path:
        """Folder of the local queue (local mode)."""
        return self.data_dir / "queue"

    def sources(self) -> dict[str, str]:
        """For each field, the environment variable it came from, or "default" / "derived"."""
        return {f.name: self._sources.get(f.name, "default") for f in fields(self) if not f.name.startswith("_")}

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value for display, source) rows for a settings view; the token shows only as set / not set."""
        rows = []
        for name, source in self.sources().items():
            value: Any = getattr(self, name)
            if name == "hf_token":
                shown = "set (hidden)" if value else "not set"
            elif isinstance(value, tuple):
                shown = ", ".join(value) or "(none)"
            else:
                shown = "(none)" if value is None else str(value)
            rows.append((name, shown, source))
        return rows


def script_path(value: str) -> Path:
    """Where a TRAINING_SCRIPT value points: an absolute path as it is, a relative one inside the app's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else APP_ROOT / path


def _parse_training_script(raw: str) -> str:
    """TRAINING_SCRIPT: the path of an existing ``.py`` file (relative to the app's folder, or absolute)."""
    fix = ("Set TRAINING_SCRIPT to the path of your copy of training/train.py (e.g. my_train.py), relative to the "
           "app's folder or absolute, or leave it unset to use training/train.py.")  # fmt: skip
    if not raw.endswith(".py"):
        raise SettingsError(f"TRAINING_SCRIPT={raw!r} is not a Python file (it must end with .py). {fix}")
    path = script_path(raw)
    if not path.is_file():
        raise SettingsError(f"TRAINING_SCRIPT={raw!r} names no file (looked for {path}). {fix}")
    return raw


def _taker(env: Mapping[str, str], sources: dict[str, str]) -> Callable[..., str | None]:
    """``take(field, VAR)``: VAR's stripped value (None when unset or blank, unless ``blank``: then a set but blank
    variable gives ""), noting it as the field's source."""

    def take(name: str, var: str, blank: bool = False) -> str | None:
        raw = env.get(var)
        if raw is None or (raw.strip() == "" and not blank):
            return None
        sources[name] = var
        return raw.strip()

    return take


def _load_trainer_variables(values: dict[str, Any], take: Callable[..., str | None],
                            variables: Collection[str] = TRAINER_VARIABLES) -> None:  # fmt: skip
    """The trainer's own variables (those of ``variables``): TRAINING_SCRIPT, TRAINING_FAMILY_MODULES,
    TRAINING_RECIPES_MODULES, DREAMBOOTH_DEMO_DIR, the scoring models and the captioning model."""
    script = take("training_script", "TRAINING_SCRIPT") if "TRAINING_SCRIPT" in variables else None
    if script is not None:
        values["training_script"] = _parse_training_script(script)
    families = take("family_modules", "TRAINING_FAMILY_MODULES") if "TRAINING_FAMILY_MODULES" in variables else None
    if families is not None:
        values["family_modules"] = parse_modules("TRAINING_FAMILY_MODULES", families, "my_family")
    modules = take("recipes_modules", "TRAINING_RECIPES_MODULES") if "TRAINING_RECIPES_MODULES" in variables else None
    if modules is not None:
        values["recipes_modules"] = parse_modules("TRAINING_RECIPES_MODULES", modules, "my_recipes")
    demo_dir = take("demo_dir", DEMO_DIR_VAR) if DEMO_DIR_VAR in variables else None
    if demo_dir is not None:
        values["demo_dir"] = Path(demo_dir).expanduser()
    for name, var in (("scoring_dino_model", "SCORING_DINO_MODEL"), ("scoring_clip_model", "SCORING_CLIP_MODEL")):
        model = take(name, var, blank=True) if var in variables else None  # blank: the measure is off
        if model is not None:
            values[name] = parse_scoring_model(var, model)
    caption = take("caption_model", "CAPTION_MODEL") if "CAPTION_MODEL" in variables else None
    if caption is not None:
        values["caption_model"] = parse_caption_model(caption)


def load_trainer_settings(environ: Mapping[str, str] | None = None, *,
                          variables: Collection[str] = TRAINER_VARIABLES) -> Settings:  # fmt: skip
    """The trainer's settings: only ``variables`` (some of ``TRAINER_VARIABLES``) are read, with ``load_settings``'s
    parsers; every other field keeps its default. Raises SettingsError for a bad value of one of them.

    The trainer runs with the app's environment less its secrets (``child_environment``), in a Job with the Space's
    forwarded settings, or by hand with any environment: a variable it does not use must never stop it."""
    unknown = set(variables) - set(TRAINER_VARIABLES)
    if unknown:
        raise ValueError(f"not a trainer variable: {', '.join(sorted(unknown))}")
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _load_trainer_variables(values, _taker(env, sources), variables)
    return Settings(**values, _sources=MappingProxyType(sources))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse the settings from ``environ`` (default: the process environment). Raises SettingsError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    take = _taker(env, sources)

    token = take("hf_token", "HF_TOKEN")
    if token is not None:
        values["hf_token"] = token
    endpoint = take("hf_endpoint", "HF_ENDPOINT")
    if endpoint is not None:
        values["hf_endpoint"] = endpoint.rstrip("/")

    space_id = take("space_id", "SPACE_ID")
    author = take("space_author", "SPACE_AUTHOR_NAME")
    repo_name = take("space_repo_name", "SPACE_REPO_NAME")
    if space_id is not None:
        check_repo_id("SPACE_ID", space_id, need_namespace=True)
        values["space_id"] = space_id
        values["local"] = False
        sources["local"] = "SPACE_ID"
        id_author, id_name = space_id.split("/")
        if author is None:
            author, sources["space_author"] = id_author, "derived"
        if repo_name is None:
            repo_name, sources["space_repo_name"] = id_name, "derived"
    values["space_author"] = author
    values["space_repo_name"] = repo_name

    queue_repo = take("queue_repo", "QUEUE_REPO")
    if queue_repo is None and author and repo_name and space_id is not None:
        queue_repo, sources["queue_repo"] = f"{author}/{repo_name}-queue", "derived"
    if queue_repo is not None:
        check_repo_id("QUEUE_REPO", queue_repo, need_namespace=True)
    values["queue_repo"] = queue_repo

    users = take("allowed_users", "ALLOWED_USERS")
    if users is not None:
        values["allowed_users"] = parse_list(users)
    elif author:
        values["allowed_users"], sources["allowed_users"] = (author,), "derived"

    train_hw = take("train_hardware", "TRAIN_HARDWARE")
    if train_hw is not None:
        if train_hw not in FLAVORS:
            raise SettingsError(f"TRAIN_HARDWARE={train_hw!r} is not a known flavor. Choose one of: {', '.join(FLAVORS)}.")
        values["train_hardware"] = train_hw
    idle_hw = take("idle_hardware", "IDLE_HARDWARE")
    if idle_hw is not None:
        if idle_hw != "pause" and idle_hw not in IDLE_FLAVORS:
            raise SettingsError(
                f"IDLE_HARDWARE={idle_hw!r} is not an idle flavor. Use one of: {', '.join(sorted(IDLE_FLAVORS))}, pause."
            )
        values["idle_hardware"] = idle_hw

    numbers = (
        ("max_attempts", "MAX_ATTEMPTS", int, 1),
        ("deadline_s", "TASK_DEADLINE_S", float, 1),
        ("lease_s", "LEASE_S", float, 1),
        ("poll_interval_s", "POLL_INTERVAL_S", float, 0.05),
        ("retry_base_s", "RETRY_BASE_S", float, 0),
    )
    for name, var, kind, minimum in numbers:
        raw = take(name, var)
        if raw is not None:
            values[name] = parse_number(var, raw, kind, minimum)

    models = take("base_models", "BASE_MODELS")
    if models is not None:
        parsed = parse_list(models)
        if not parsed:
            raise SettingsError("BASE_MODELS is empty. Give a comma-separated list of model repo ids.")
        for model in parsed:
            if not looks_like_path(model):
                check_repo_id("BASE_MODELS", model, need_namespace=False)
        values["base_models"] = parsed
    base_models = values.get("base_models", (DEFAULT_BASE_MODEL,))
    default_model = take("default_base_model", "DEFAULT_BASE_MODEL")
    if default_model is not None:
        if default_model not in base_models:
            raise SettingsError(f"DEFAULT_BASE_MODEL={default_model!r} is not one of BASE_MODELS ({', '.join(base_models)}).")
    else:
        default_model = base_models[0]
        if "base_models" in sources:
            sources["default_base_model"] = "derived"
    values["default_base_model"] = default_model

    data_dir = take("data_dir", "DATA_DIR")
    if data_dir is not None:
        values["data_dir"] = Path(data_dir).expanduser()
    accelerator = take("accelerator", "ACCELERATOR")
    if accelerator is not None:
        values["accelerator"] = accelerator
    cpu = take("allow_cpu_training", "ALLOW_CPU_TRAINING")
    if cpu is not None:
        values["allow_cpu_training"] = parse_bool("ALLOW_CPU_TRAINING", cpu)
    _load_trainer_variables(values, take)

    _load_jobs_settings(values, sources, take, space_id=space_id, author=author)

    keep = take("keep_photos", "KEEP_PHOTOS")
    if keep is not None:
        values["keep_photos"] = parse_bool("KEEP_PHOTOS", keep)
    keep_runs = take("keep_run_folders", "KEEP_RUN_FOLDERS")
    if keep_runs is not None:
        values["keep_run_folders"] = parse_bool("KEEP_RUN_FOLDERS", keep_runs)
    namespace = take("output_namespace", "OUTPUT_NAMESPACE")
    if namespace is not None:
        values["output_namespace"] = parse_namespace("OUTPUT_NAMESPACE", namespace)
    for name, var, kind, minimum in (
        ("max_queued_per_user", "MAX_QUEUED_PER_USER", int, 0),
        ("max_gpu_hours_per_user_day", "MAX_GPU_HOURS_PER_USER_DAY", float, 0),
    ):
        raw = take(name, var)
        if raw is not None:
            values[name] = parse_number(var, raw, kind, minimum)
    spend = take("max_spend_usd_per_month", "MAX_SPEND_USD_PER_MONTH")
    if spend is not None and spend.lower() not in ("none", "off", "unlimited"):
        values["max_spend_usd_per_month"] = parse_number("MAX_SPEND_USD_PER_MONTH", spend, float, 0)

    billing = take("billing", "BILLING")
    if billing is not None:
        values["billing"] = _parse_billing(billing, space_id)

    host = take("space_host", "SPACE_HOST")
    if host is not None:
        values["space_host"] = host
    values["on_space_platform"] = (env.get("SYSTEM") or "").strip() == "spaces"
    values["oauth_client_secret_set"] = bool((env.get("OAUTH_CLIENT_SECRET") or "").strip())
    mock = take("mock_signin_for_tests", MOCK_SIGNIN_VAR)
    if mock is not None:
        values["mock_signin_for_tests"] = parse_bool(MOCK_SIGNIN_VAR, mock)
    expose = take("local_expose_to_network", "LOCAL_EXPOSE_TO_NETWORK")
    if expose is not None:
        values["local_expose_to_network"], values["local_host_names"] = parse_exposure(expose)
        sources["local_host_names"] = "LOCAL_EXPOSE_TO_NETWORK"

    return Settings(**values, _sources=MappingProxyType(sources))


def _parse_billing(raw: str, space_id: str | None) -> str:
    """BILLING: ``owner`` or ``visitor`` (case-insensitive); ``visitor`` needs a Space (the visitors' sign-in)."""
    billing = raw.lower()
    if billing not in BILLINGS:
        raise SettingsError(f"BILLING={raw!r} is not a billing mode. Use one of: {', '.join(BILLINGS)} (default owner).")
    if billing == "visitor" and space_id is None:
        raise SettingsError("BILLING='visitor' needs a Space (SPACE_ID): visitors pay through their Hugging Face "
                            "sign-in, which local mode does not have.")  # fmt: skip
    return billing


def _load_jobs_settings(values: dict[str, Any], sources: dict[str, str], take: Any, *, space_id: str | None,
                        author: str | None) -> None:  # fmt: skip
    """TRAINING_BACKEND and the settings of the Jobs backend (checked even when unused, so a typo shows early)."""
    backend = take("training_backend", "TRAINING_BACKEND")
    if backend is not None:
        backend = backend.lower()
        if backend not in TRAINING_BACKENDS:
            raise SettingsError(f"TRAINING_BACKEND={backend!r} is not a training backend. Use one of: {', '.join(TRAINING_BACKENDS)}.")
        if backend == "jobs" and space_id is None:
            raise SettingsError("TRAINING_BACKEND='jobs' needs a Space (SPACE_ID): local mode trains on this machine.")
        values["training_backend"] = backend
    raw = take("max_parallel_jobs", "MAX_PARALLEL_JOBS")
    if raw is not None:
        values["max_parallel_jobs"] = parse_number("MAX_PARALLEL_JOBS", raw, int, 1)
    raw = take("jobs_gpu_hours_per_day", "JOBS_GPU_HOURS_PER_DAY")
    if raw is not None:
        no_cap = raw.lower() in ("none", "off", "unlimited")
        values["jobs_gpu_hours_per_day"] = None if no_cap else parse_number("JOBS_GPU_HOURS_PER_DAY", raw, float, 0)
    image = take("job_image", "JOB_IMAGE")
    if image is None and space_id is not None:
        image, sources["job_image"] = f"hf.co/spaces/{space_id}", "derived"
    values["job_image"] = image
    namespace = take("jobs_namespace", "JOBS_NAMESPACE")
    if namespace is not None:
        parse_namespace("JOBS_NAMESPACE", namespace)
    elif author is not None and space_id is not None:
        namespace, sources["jobs_namespace"] = author, "derived"
    values["jobs_namespace"] = namespace
    train_hw = values.get("train_hardware")
    if is_jobs_only(train_hw) and values.get("training_backend") != "jobs":
        raise SettingsError(f"TRAIN_HARDWARE={train_hw!r} exists only on Jobs: set TRAINING_BACKEND=jobs or choose a Space flavor.")


SECRET_PREFIXES = ("OAUTH_",)


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a trainer subprocess: this process's, without the OAuth client secret and its kin.

    The trainer needs ``HF_TOKEN`` (to download and upload) but never the Space's sign-in secrets."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not k.startswith(SECRET_PREFIXES)}
