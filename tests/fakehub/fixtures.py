"""The emulator from Python: :class:`FakeHub`, :func:`run_fakehub` and the pytest fixtures ``fakehub`` and ``hub``."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.fakehub.auth import User
from tests.fakehub.faults import Fault, JobFault, RequestRecord
from tests.fakehub.jobs import JOB_FLAVORS
from tests.fakehub.runner import SpaceCommand
from tests.fakehub.server import Emulator
from tests.fakehub.spaces import BILLED_STAGES


class FakeHub:
    """Handle on a running emulator: its URL and root, users, faults, the request log and the Spaces."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.url: str = emulator.url
        self.root: Path = emulator.root

    # ------------------------------------------------------------------ users
    def add_user(
        self, name: str, token: str, *, role: str = "write", orgs: Iterable[str] = (), oauth: bool = False
    ) -> None:
        """Register ``token`` for user ``name`` (``oauth=True``: an OAuth-type token, refused on hardware calls, with
        the scopes ``auth.LEGACY_OAUTH_SCOPES``; ``add_oauth_user`` chooses scopes and expiry)."""
        self.emulator.users.add(User(name, token, role, tuple(orgs), oauth))

    def add_oauth_user(
        self,
        name: str,
        token: str,
        *,
        scopes: Iterable[str] = ("openid", "profile"),
        expires_in: float | None = 8 * 3600,
        app: str | None = None,
        orgs: Iterable[str] = (),
    ) -> float | None:
        """Register an OAuth token of user ``name`` (a new or known user) with ``scopes``, expiring ``expires_in``
        seconds from now (None: never; <= 0: already expired), issued to the OAuth app ``app`` (default
        ``auth.DEFAULT_OAUTH_APP``: a Space's sign-in). Returns its expiry (unix seconds)."""
        expires_at = None if expires_in is None else time.time() + expires_in
        self.emulator.users.add(User(name, token, "write", tuple(orgs), True, frozenset(scopes), expires_at, app))
        return expires_at

    def set_credit(self, namespace: str, dollars: float | None) -> None:
        """``namespace`` has ``dollars`` of Jobs credit from now on (its Jobs' later cost draws on it; at 0 or below
        ``run_job`` answers 402); None: unlimited, the default. Reset after each test."""
        jobs = self.emulator.jobs
        jobs.credit.grant(namespace, dollars, jobs.cost_usd(namespace))

    def credit_left(self, namespace: str) -> float | None:
        """USD of Jobs credit left to ``namespace`` (None: unlimited)."""
        return self.emulator.jobs.credit_left(namespace)

    def repo_created_by_app(self, repo_id: str, repo_type: str = "model") -> str | None:
        """The OAuth app whose token created the repo (None: created with another kind of token)."""
        repo = self.emulator.storage.get_repo(repo_type, repo_id)
        if repo is None:
            raise ValueError(f"no {repo_type} repo {repo_id}")
        return repo.created_by_app

    # ------------------------------------------------------------------ faults and request log
    def inject_fault(
        self,
        method: str,
        path_regex: str,
        *,
        status: int | None = None,
        count: int = 1,
        delay_s: float = 0.0,
        land_then_fail: bool = False,
        body: str | None = None,
        headers: dict | None = None,
        retry_after: float | None = None,
        probability: float = 1.0,
    ) -> None:
        """Disturb the next ``count`` requests whose method and raw path (no query) match ``path_regex``.

        Fail with ``status`` (500 when omitted), or with ``delay_s`` alone only delay them; ``land_then_fail``
        applies the request and then answers ``status``. ``method="*"`` matches any method. ``probability`` < 1:
        each matching request is hit with that chance only (random 5xx; ``count`` counts the hits).
        """
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self.emulator.faults.add(
            Fault(method, path_regex, status, count, delay_s, land_then_fail, body, headers, probability)
        )

    def clear_faults(self) -> None:
        """Drop the pending request faults and Job faults."""
        self.emulator.faults.clear()
        self.emulator.jobs.faults.clear()

    def seed_faults(self, seed: int) -> None:
        """Reseed the draws of faults injected with ``probability`` < 1."""
        self.emulator.faults.seed(seed)

    def requests(self, method: str | None = None, path_regex: str | None = None) -> list[RequestRecord]:
        """Requests served so far (``/_emu/`` excluded), optionally filtered by method and path regex."""
        return self.emulator.faults.requests(method, path_regex)

    def request_counts(self) -> Counter[tuple[str, str]]:
        """How many requests were served per ``(method, raw path)``."""
        return Counter((r.method, r.path) for r in self.requests())

    def clear_requests(self) -> None:
        self.emulator.faults.clear_requests()

    # ------------------------------------------------------------------ Spaces
    def create_space(
        self,
        repo_id: str,
        *,
        owner_token: str,
        hardware: str = "cpu-basic",
        command: list[str] | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        switch_delay_s: float = 1.0,
        app_start_s: float | None = None,
        secrets: dict[str, str] | None = None,
        variables: dict[str, str] | None = None,
        private: bool = False,
        stop_grace_s: float = 2.0,
        hardware_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """Create a Space repo owned by ``owner_token``'s user; with ``command``, run it as the Space.

        The Space builds for ``switch_delay_s`` (as every later hardware switch does), then its container starts
        (APP_STARTING for ``app_start_s``, default half the switch delay) and it is RUNNING. ``env`` is added to
        the Space's environment, and ``hardware_env[flavor]`` too on that flavor (e.g. to fake a visible GPU).
        """
        user = self.emulator.users.by_token(owner_token)
        if user is None:
            raise ValueError("unknown owner token")
        if not user.can_write(repo_id.split("/")[0]):
            raise PermissionError(f"{user.name} cannot write to {repo_id}")
        self.emulator.storage.create_repo("space", repo_id, private=private, owner=user.name, sdk="gradio")
        if command is not None:
            self.emulator.spaces.attach(
                repo_id,
                SpaceCommand(list(command), Path(cwd or "."), dict(env or {}), stop_grace_s, dict(hardware_env or {})),
            )
        self.emulator.spaces.create(
            repo_id,
            hardware=hardware,
            secrets=dict(secrets or {}),
            variables=dict(variables or {}),
            switch_delay_s=switch_delay_s,
            app_start_s=app_start_s,
        )

    def space_runtime(self, repo_id: str) -> dict:
        """The same JSON as ``GET /api/spaces/{repo_id}/runtime``."""
        return self.emulator.spaces.runtime(repo_id)

    def wait_for_stage(self, repo_id: str, stage: str, timeout_s: float = 30.0) -> dict:
        """Poll the runtime until ``stage`` is reached; returns the runtime JSON (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout_s
        while True:
            runtime = self.space_runtime(repo_id)
            if runtime["stage"] == stage:
                return runtime
            if time.monotonic() > deadline:
                raise TimeoutError(f"{repo_id} still {runtime['stage']} after {timeout_s}s, expected {stage}")
            time.sleep(0.05)

    def set_switch_delay(self, repo_id: str, seconds: float) -> None:
        """The Space's build time from now on: later hardware requests take ``seconds``, and a switch under way ends
        ``seconds`` from now (a test holds a switch while it works in the old container, then lets it go)."""

        def change(state, now: float) -> None:
            state.switch_delay_s = seconds
            if state.switch_at is not None:
                state.switch_at = now + seconds

        self.emulator.spaces.book.update(repo_id, change)

    def ledger(self, repo_id: str) -> list[dict]:
        """``{hardware, stage, started_at, ended_at, container}`` periods, oldest first (last one open)."""
        return self.emulator.spaces.ledger(repo_id)

    def billed_seconds(self, repo_id: str) -> dict[str, float]:
        """Seconds per hardware flavor spent in billed stages (starting or running), the open period up to now."""
        totals: dict[str, float] = {}
        now = time.time()
        for p in self.ledger(repo_id):
            if p["hardware"] and p["stage"] in BILLED_STAGES:
                totals[p["hardware"]] = totals.get(p["hardware"], 0.0) + (p["ended_at"] or now) - p["started_at"]
        return totals

    def space_logs(self, repo_id: str) -> list[Path]:
        """Captured stdout+stderr files of the Space's process, one per container start, oldest first."""
        return self.emulator.spaces.logs(repo_id)

    def stop_space(self, repo_id: str) -> None:
        """Stop the Space's process for good (test cleanup); its runtime state is kept."""
        self.emulator.spaces.detach(repo_id)

    def kill_space_container(self, repo_id: str) -> None:
        """SIGKILL the running container; the runner then starts a new one on the same hardware."""
        runner = self.emulator.spaces.runner(repo_id)
        if runner is None:
            raise ValueError(f"{repo_id} has no runner")
        runner.kill()

    # ------------------------------------------------------------------ Jobs
    def configure_jobs(
        self,
        *,
        scheduling_s: float | None = None,
        image_root: Path | None = None,
        images: Mapping[str, Path] | None = None,
        flavor_env: Mapping[str, Mapping[str, str]] | None = None,
        stop_grace_s: float | None = None,
    ) -> None:
        """Set how Jobs run (reset after each test): ``scheduling_s`` in SCHEDULING before RUNNING (default
        0.2); ``image_root`` the working directory of every Job (default this checkout: "the Space's image");
        ``images`` a directory per image or Space id; ``flavor_env`` env added on a flavor; ``stop_grace_s``
        between SIGTERM and SIGKILL on cancel (default 2)."""
        jobs = self.emulator.jobs
        if scheduling_s is not None:
            jobs.scheduling_s = scheduling_s
        if image_root is not None:
            jobs.image_root = Path(image_root)
        if images is not None:
            jobs.images = {k: Path(v) for k, v in images.items()}
        if flavor_env is not None:
            jobs.flavor_env = {k: dict(v) for k, v in flavor_env.items()}
        if stop_grace_s is not None:
            jobs.stop_grace_s = stop_grace_s

    def inject_job_fault(
        self,
        kind: str,
        *,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        skip: int = 0,
        count: int = 1,
        at_s: float = 0.0,
        status: int | None = None,
        message: str | None = None,
        exit_code: int = 1,
    ) -> None:
        """Hit the Jobs created from now on (see :class:`tests.fakehub.faults.JobFault`): ``kind`` is
        ``refuse`` (creation answered ``status``, default 402), ``crash`` (killed ``at_s`` after RUNNING, stage
        ERROR), ``cancel``/``delete`` (stopped from outside at ``at_s``), ``logs_unavailable`` (logs answer
        ``status``, default 503). Matching: ``namespace``, all ``labels``; skip ``skip`` then hit ``count``."""
        self.emulator.jobs.faults.add(
            JobFault(kind, namespace, dict(labels or {}), skip, count, at_s, status, message, exit_code)
        )

    def jobs(self, namespace: str | None = None) -> list[dict]:
        """Every Job (of ``namespace``), oldest first, as ``inspect_job`` JSON."""
        now = time.time()
        return [j.to_json(now) for j in self.emulator.jobs.all() if namespace in (None, j.namespace)]

    def jobs_ledger(self, namespace: str | None = None) -> list[dict]:
        """Billed Job periods, one per Job that reached RUNNING: ``{job_id, namespace, flavor, stage, labels,
        started_at, ended_at, seconds}`` (billed from RUNNING to the end; ``ended_at`` None while it runs)."""
        return self.emulator.jobs.ledger(namespace)

    def job_billed_seconds(self, namespace: str | None = None) -> dict[str, float]:
        """Billed Job seconds per flavor (running ones up to now)."""
        totals: dict[str, float] = {}
        for p in self.jobs_ledger(namespace):
            totals[p["flavor"]] = totals.get(p["flavor"], 0.0) + p["seconds"]
        return totals

    def job_cost_usd(self, namespace: str | None = None) -> float:
        """What the billed Job time costs at the emulator's list prices (pro rata, not rounded to minutes)."""
        return sum(s * JOB_FLAVORS[f].usd_per_hour / 3600 for f, s in self.job_billed_seconds(namespace).items())

    def job_log(self, job_id: str) -> str:
        """Everything the Job's command printed so far (stdout and stderr), plus the start banner."""
        path = self.root / "jobs" / job_id / "job.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_jobs(self) -> int:
        """Kill every Job still alive (stage DELETED); how many there were."""
        return self.emulator.jobs.stop_all("stopped by the emulator at the end of the test")

    def reset_jobs(self) -> None:
        """End-of-test clean-up: stop live Jobs, drop Job faults, restore the default Job settings."""
        self.stop_jobs()
        self.emulator.jobs.faults.clear()
        self.emulator.jobs.reset_settings()

    # ------------------------------------------------------------------ storage
    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, Path | bytes],
        *,
        author: str,
        repo_type: str = "model",
        summary: str = "add files",
        private: bool = False,
    ) -> str:
        """Commit ``files`` (repo path -> bytes, or a local file linked in without being read into memory: large
        and sparse files) straight into the store, creating the repo for ``author`` if needed; the commit id.

        The client's uploads go through base64 commit lines (no LFS here), so files of GBs are put this way."""
        from tests.fakehub.storage import Operation

        storage = self.emulator.storage
        if storage.get_repo(repo_type, repo_id) is None:
            storage.create_repo(repo_type, repo_id, private=private, owner=author)
        ops = [
            Operation("add", path, content=data) if isinstance(data, bytes) else Operation("add", path, source=data)
            for path, data in files.items()
        ]
        return storage.commit(repo_type, repo_id, "main", ops, summary=summary, author=author).id

    def stored_bytes(self) -> Iterator[tuple[str, bytes]]:
        """Every file version and commit message stored in any repo (not the Spaces' secret vault)."""
        return self.emulator.storage.stored_bytes()


UserSpec = User | tuple[str, str]


@contextlib.contextmanager
def run_fakehub(
    root: Path | str,
    port: int | None = None,
    users: Mapping[str, str] | Iterable[UserSpec] = (),
    *,
    tree_page_size: int = 1000,
    switch_delay_s: float = 1.0,
) -> Iterator[FakeHub]:
    """Run the emulator on ``127.0.0.1:port`` (a free port when None) in a thread; ``users``: name -> token,
    ``(name, token)`` pairs or :class:`User` values."""
    items = users.items() if isinstance(users, Mapping) else users
    user_list = [u if isinstance(u, User) else User(u[0], u[1]) for u in items]
    emulator = Emulator(
        Path(root), port=port or 0, users=user_list, tree_page_size=tree_page_size, switch_delay_s=switch_delay_s
    ).start()
    try:
        yield FakeHub(emulator)
    finally:
        emulator.stop()


# ---------------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def fakehub() -> Iterator[FakeHub]:
    """The session's emulator on ``tests.conftest.EMULATOR_PORT`` (where ``HF_ENDPOINT`` points), with
    users alice (ALICE_TOKEN, write, org alice-org) and bob (BOB_TOKEN, write)."""
    from tests.conftest import ALICE_TOKEN, BOB_TOKEN, EMULATOR_PORT

    users = [User("alice", ALICE_TOKEN, "write", ("alice-org",)), User("bob", BOB_TOKEN, "write")]
    with tempfile.TemporaryDirectory(prefix="fakehub-") as root, run_fakehub(root, EMULATOR_PORT, users) as hub:
        yield hub


@pytest.fixture
def hub(fakehub: FakeHub) -> Iterator[FakeHub]:
    """The session's emulator with injected faults cleared before and after the test."""
    fakehub.clear_faults()
    yield fakehub
    fakehub.clear_faults()
    fakehub.reset_jobs()


@pytest.fixture(autouse=True)
def _clear_fakehub_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the emulator, drop the faults it injected and stop the Jobs it left running."""
    yield
    if "fakehub" in request.fixturenames:
        hub = request.getfixturevalue("fakehub")
        hub.clear_faults()
        hub.reset_jobs()
