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
from tests.fakehub.faults import Fault, RequestRecord
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
        """Register ``token`` for user ``name`` (``oauth=True``: an OAuth-type token, refused on hardware calls)."""
        self.emulator.users.add(User(name, token, role, tuple(orgs), oauth))

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
    ) -> None:
        """Disturb the next ``count`` requests whose method and raw path (no query) match ``path_regex``.

        Fail with ``status`` (500 when omitted), or with ``delay_s`` alone only delay them; ``land_then_fail``
        applies the request and then answers ``status``. ``method="*"`` matches any method.
        """
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        self.emulator.faults.add(Fault(method, path_regex, status, count, delay_s, land_then_fail, body, headers))

    def clear_faults(self) -> None:
        self.emulator.faults.clear()

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


@pytest.fixture(autouse=True)
def _clear_fakehub_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used the emulator, drop the faults it injected."""
    yield
    if "fakehub" in request.fixturenames:
        request.getfixturevalue("fakehub").clear_faults()
