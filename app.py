"""Entry point of the self-upgrading DreamBooth Space: settings, diagnostics, UI, worker, launch.

On a Space (``SPACE_ID`` set) the queue is a private Hub dataset repo and the app moves its own Space between CPU
and GPU; anything missing in the set-up (token, permissions, queue repo) shows a setup page instead of a crash.
Without ``SPACE_ID`` it runs in local mode: a queue folder under ``./data`` and training on this machine.
The UI is served first; the worker starts afterwards in a background thread.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from huggingface_hub import HfApi

from contract.settings import Settings, SettingsError, load_settings
from scheduler.diagnostics import OfferedModelsCheck, space_is_public
from scheduler.worker import Worker
from ui import reconnect
from ui.context import AppContext, FamilyModuleError, load_family_modules
from ui.http_guard import UploadCap, guard_middleware
from ui.layout import CSS, build_ui
from ui.setup_page import SetupProblem, build_setup_page

log = logging.getLogger("app")
#: browser sessions whose state Gradio keeps (the least recently used go first; an open tab refreshes at least every
#: ``ui.layout.VISITOR_REFRESH_S``, so closed tabs go before open ones while fewer than this are open)
SESSIONS_KEPT = 400

TOKEN_HELP = (
    "Create a fine-grained access token at https://huggingface.co/settings/tokens with **write** access to your "
    "repositories (this Space, the queue dataset and the model repos), then add it to this Space as a **secret** "
    "named `HF_TOKEN` (Settings → Variables and secrets → New secret)."
)


@dataclass
class App:
    """A built app: its Blocks, and the worker to start once the UI is served (None on the setup page)."""

    demo: gr.Blocks
    settings: Settings | None
    worker: Worker | None = None
    problems: list[SetupProblem] = field(default_factory=list)
    upload_cap: UploadCap = field(default_factory=UploadCap)  # what one user may hold in Gradio's upload cache

    def launch_options(self) -> dict[str, Any]:
        """``launch()`` arguments. Nothing of the data dir is served by URL (photos, weights, logs: samples reach
        the owner as event output). All interfaces only on a Space with the platform's sign-in, or in local mode
        with LOCAL_EXPOSE_TO_NETWORK; else 127.0.0.1 (whatever GRADIO_SERVER_NAME says). Every request passes
        ``ui.http_guard`` first (local mode: loopback Host names only; uploads: allowed users within a cap)."""
        opts: dict[str, Any] = {"css": CSS, "footer_links": ["gradio"], "run_history": False, "max_file_size": "20mb",
                                # Gradio keeps each tab's session (about a MB of page state) until this many newer
                                # ones push it out, open or closed: a crowd's closed tabs cannot fill the memory
                                "state_session_capacity": SESSIONS_KEPT,
                                # a banner, then a reload, when the app restarts (a Space: on each hardware switch)
                                "head": reconnect.head_html(local=self.settings is not None and self.settings.local)}
        opts["app_kwargs"] = {"middleware": [guard_middleware(self.settings, self.upload_cap)]}
        if self.settings is not None:
            opts["blocked_paths"] = [str(self.settings.data_dir.resolve())]
        s = self.settings
        if s is not None and s.local:  # no sign-in: the network only when the operator says so (the page warns)
            opts["server_name"] = "0.0.0.0" if s.local_expose_to_network else "127.0.0.1"
        else:
            public = s is not None and s.on_space_platform and s.oauth_client_secret_set
            opts["server_name"] = "0.0.0.0" if public else "127.0.0.1"
        return opts

    def launch(self, block: bool = True, **overrides: Any) -> str:
        """Serve the UI, then start the worker; blocks unless ``block`` is False. Returns the local URL."""
        _, url, _ = self.demo.launch(prevent_thread_lock=True, **{**self.launch_options(), **overrides})
        if self.worker is not None:
            self.worker.start()
        log.info("serving on %s", url)
        if block:
            try:
                self.demo.block_thread()
            finally:
                self.close()  # never leave a trainer running after the app (it runs in its own process group)
        return url

    def close(self) -> None:
        """Stop the worker (killing a running trainer) and the server."""
        if self.worker is not None:
            self.worker.stop()
        self.demo.close()


SIGNIN_PROBLEM = SetupProblem(
    "Sign-in with Hugging Face is not configured",
    "This app found a Space id but not the platform's sign-in (OAuth), so it cannot tell the owner from anyone "
    "else and serves no form.",
    "Keep `hf_oauth: true` in the README's metadata and run the app on Hugging Face Spaces (which sets the OAuth "
    "variables). To use it on your own machine, unset `SPACE_ID` (local mode).",
)

TOKEN_TITLES = {
    "missing": "The HF_TOKEN secret is missing",
    "invalid": "The HF_TOKEN secret is not accepted by the Hub",
    "read_only": "The HF_TOKEN secret is a read-only token",
    "oauth": "The HF_TOKEN secret is an OAuth token",
    "unreachable": "The Hub could not be reached",
}


def diagnose(settings: Settings, api: HfApi) -> list[SetupProblem]:
    """What stops the Space from working: token missing, invalid, read-only or OAuth-type; Space not owned by it."""
    from scheduler.diagnostics import check_space_ownership, diagnose_token

    if not settings.hf_token:
        return [SetupProblem(TOKEN_TITLES["missing"], "The app has no token to reach the Hub.", TOKEN_HELP)]
    problem = diagnose_token(api)
    if problem is not None:
        fix = TOKEN_HELP if problem.kind != "unreachable" else problem.fix
        return [SetupProblem(TOKEN_TITLES.get(problem.kind, "The HF_TOKEN secret cannot be used"), problem.message, fix)]
    owner_problem = check_space_ownership(api, settings)
    if owner_problem:
        fix = "Save a write token of the account (or organization) that owns this Space as the `HF_TOKEN` secret."
        return [SetupProblem("The token does not belong to this Space's owner", owner_problem, fix)]
    return []


def create_app(settings: Settings, api: HfApi | None = None, *, worker_kwargs: dict[str, Any] | None = None) -> App:
    """Build the app for ``settings``: the full UI with its worker, or the setup page."""
    from scheduler.hardware import make_hardware
    from scheduler.queue import make_queue

    try:  # TRAINING_FAMILY_MODULES: the form's base-model check must know the families the trainer will load
        load_family_modules(settings)
    except FamilyModuleError as exc:
        log.exception("a model family module could not be loaded")
        problem = family_module_problem(exc)
        return App(build_setup_page([problem], settings.space_id), settings, problems=[problem])
    if not settings.local:
        if not settings.oauth_ready:
            return App(build_setup_page([SIGNIN_PROBLEM], settings.space_id), settings, problems=[SIGNIN_PROBLEM])
        api = api or HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token)
        problems = diagnose(settings, api)
        if problems:
            return App(build_setup_page(problems, settings.space_id), settings, problems=problems)
    try:
        queue = make_queue(settings, api=api)
    except Exception as exc:  # noqa: BLE001 - any failure here is a set-up problem to explain, not a crash
        log.exception("the queue could not be opened")
        problem = SetupProblem(
            f"The queue repo {settings.queue_repo or settings.local_queue_dir} cannot be used",
            f"{type(exc).__name__}: {exc}",
            "Check that the token has write access to the namespace of the queue repo, or set the `QUEUE_REPO` "
            "variable to a dataset repo you own (it is created private if missing).",
        )
        return App(build_setup_page([problem], settings.space_id), settings, problems=[problem])
    hardware = make_hardware(settings, api=api)
    worker = Worker(settings, queue, hardware, **(worker_kwargs or {}))
    public = not settings.local and space_is_public(api, settings.space_id)
    ctx = AppContext(settings=settings, queue=queue, worker=worker, api=api, public_space=public)
    # The offered base models the token cannot use (gated, private, missing): told to the owner on the page.
    offered_check = None if settings.local else OfferedModelsCheck(settings)
    demo = build_ui(ctx, login=not settings.local, offered_check=offered_check)
    return App(demo, settings, worker=worker)


def family_module_problem(exc: FamilyModuleError) -> SetupProblem:
    """The setup problem of a TRAINING_FAMILY_MODULES module that does not import in the app's process."""
    return SetupProblem(
        "A model family module cannot be loaded",
        str(exc),
        f"Make `{exc.module}` importable by the app (a `{exc.module.replace('.', '/')}.py` next to `app.py`, or on "
        "`PYTHONPATH`), fix the error above (the app's log has the traceback) and keep `import torch` inside its "
        "methods, or remove it from the `TRAINING_FAMILY_MODULES` variable.",
    )


def settings_problem_app(exc: SettingsError) -> App:
    """The setup page for a variable with an unusable value."""
    problem = SetupProblem("A Space variable has an invalid value", str(exc), "Correct or delete the variable in Settings.")
    return App(build_setup_page([problem], None), None, problems=[problem])


def main() -> None:
    """``python app.py``: load settings, build, serve first, then start the worker."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = load_settings()
    except SettingsError as exc:
        app = settings_problem_app(exc)
    else:
        app = create_app(settings)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # a Space restart: stop the trainer before the process goes
    app.launch()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
