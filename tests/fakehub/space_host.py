"""Drives the Spaces: a clock thread advances their timelines and keeps each Space's process in step."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path

from tests.fakehub.runner import SpaceCommand, SpaceRunner, space_env
from tests.fakehub.spaces import SpaceBook, SpaceState, subdomain

TICK_S = 0.05


class SpaceHost:
    """Space states plus the optional runners that play their containers."""

    def __init__(self, root: Path, endpoint: str, owner_ids, default_switch_delay_s: float = 1.0) -> None:
        self.root = Path(root)
        self.endpoint = endpoint
        self.owner_ids = owner_ids  # callable: namespace -> user id
        self.book = SpaceBook(self.root, default_switch_delay_s)
        self._runners: dict[str, SpaceRunner] = {}
        self._runners_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._clock, name="fakehub-spaces", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- used by routes
    def create(self, repo_id: str, **kwargs) -> None:
        self.book.create(repo_id, **kwargs)

    def delete(self, repo_id: str) -> None:
        self.detach(repo_id)
        self.book.delete(repo_id)

    def subdomain(self, repo_id: str) -> str:
        return subdomain(repo_id)

    def runtime(self, repo_id: str) -> dict:
        return self.book.peek(repo_id, SpaceState.runtime)

    def ledger(self, repo_id: str) -> list[dict]:
        return self.book.peek(repo_id, lambda s: [asdict(p) for p in s.ledger])

    # ---------------------------------------------------------------- runners
    def attach(self, repo_id: str, spec: SpaceCommand) -> None:
        """Play this Space's containers with ``spec`` from now on."""
        log_dir = self.root / "logs" / repo_id.replace("/", "--")
        with self._runners_lock:
            old = self._runners.pop(repo_id, None)
            self._runners[repo_id] = SpaceRunner(spec, log_dir)
        if old is not None:
            old.close()

    def detach(self, repo_id: str) -> None:
        """Stop the Space's process and forget its runner."""
        with self._runners_lock:
            runner = self._runners.pop(repo_id, None)
        if runner is not None:
            runner.close()

    def runner(self, repo_id: str) -> SpaceRunner | None:
        with self._runners_lock:
            return self._runners.get(repo_id)

    def logs(self, repo_id: str) -> list[Path]:
        return sorted((self.root / "logs" / repo_id.replace("/", "--")).glob("container-*.log"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for repo_id in list(self._runners):
            self.detach(repo_id)

    # ---------------------------------------------------------------- the clock
    def _clock(self) -> None:
        while not self._stop.wait(TICK_S):
            for repo_id in self.book.ids():
                try:
                    self._tick(repo_id)
                except Exception as e:  # keep the clock alive; a broken Space must not stop the others
                    print(f"fakehub: space {repo_id} tick failed: {e!r}")

    def _tick(self, repo_id: str) -> None:
        state = self.book.update(repo_id, None)
        runner = self.runner(repo_id)
        if runner is None:
            return
        wanted, container = state.container_wanted, state.container
        if runner.container is not None and (not wanted or runner.container != container):
            runner.stop()
        elif runner.container == container and runner.exit_code() is not None:
            code = runner.exit_code()
            runner.stop()
            self.book.update(repo_id, lambda s, now: s.crashed(now, code) if s.container == container else None)
            return
        if wanted and runner.container != container:
            home = self.root / "space-homes" / repo_id.replace("/", "--")
            owner_id = self.owner_ids(repo_id.split("/")[0])
            wanted, container, env = self.book.peek(
                repo_id,
                lambda s: (
                    s.container_wanted,
                    s.container,
                    space_env(s, self.endpoint, owner_id, home, runner.spec.env_for(s.current)),
                ),
            )
            if wanted:  # still, after the stop above (which may have taken the grace period)
                runner.start(container, env)
