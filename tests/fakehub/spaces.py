"""Space runtimes: the stage/hardware state machine, secrets, variables and the ledger of billed periods.

Timeline of a hardware request made at ``t`` (``d`` = the Space's ``switch_delay_s``, ``a`` = ``app_start_s``):

    [t, t+d)      stage RUNNING_BUILDING, hardware.current = old flavor, hardware.requested = new flavor
                  (BUILDING with current None when the Space was not running: new, paused or asleep)
    [t+d, t+d+a)  stage APP_STARTING, current = new flavor; a new container starts (the old one is stopped)
    t+d+a ...     stage RUNNING

A restart, a crash or a change of secrets/variables starts a new container (APP_STARTING, then RUNNING);
pause stops it (PAUSED, current None). With ``sleep_time`` set, a Space RUNNING that long since its last
container start or hardware request goes to SLEEPING (API calls are not visits). Every change of
(hardware, stage, container) opens a new ledger period.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

SPACE_HARDWARE = (
    "cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
    "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8", "rtx-pro-6000",
    "rtx-pro-6000x2", "rtx-pro-6000x4", "rtx-pro-6000x8",
)  # fmt: skip
# (cpu cores, memory) by flavor; others default to (8, "30Gi").
RESOURCES = {"cpu-basic": (2, "16Gi"), "cpu-upgrade": (8, "32Gi"), "t4-small": (4, "15Gi"), "t4-medium": (8, "30Gi")}
CONTAINER_STAGES = ("APP_STARTING", "RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING")
# Stages the Hub bills hardware for ("Starting" and "Running"); building, paused, asleep and errors are free.
BILLED_STAGES = CONTAINER_STAGES
# A container that dies this many times in a row, each within CRASH_WINDOW_S of its start, ends in RUNTIME_ERROR.
MAX_FAST_CRASHES = 5
CRASH_WINDOW_S = 3.0


def accelerator(flavor: str | None) -> str:
    """The ``ACCELERATOR`` value a container on ``flavor`` sees: ``none`` on CPU flavors."""
    return "none" if not flavor or flavor.startswith("cpu") else flavor


def subdomain(repo_id: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", repo_id.lower()).strip("-")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass
class Period:
    """A stretch of time with one hardware flavor, one stage and one container."""

    hardware: str | None
    stage: str
    started_at: float
    ended_at: float | None = None
    container: int = 0


@dataclass
class SpaceState:
    repo_id: str
    requested: str
    current: str | None = None
    stage: str = "BUILDING"
    sleep_time: int | None = None
    dev_mode: bool = False
    switch_delay_s: float = 1.0
    app_start_s: float | None = None
    secrets: dict[str, dict] = field(default_factory=dict)
    variables: dict[str, dict] = field(default_factory=dict)
    switch_at: float | None = None
    running_at: float | None = None
    container: int = 0
    container_started_at: float | None = None
    fast_crashes: int = 0
    error: str | None = None
    last_request_at: float = field(default_factory=time.time)  # start of the sleep timer
    ledger: list[Period] = field(default_factory=list)

    @property
    def start_delay(self) -> float:
        return self.switch_delay_s / 2 if self.app_start_s is None else self.app_start_s

    @property
    def container_wanted(self) -> bool:
        return self.stage in CONTAINER_STAGES

    def note(self, now: float) -> None:
        """Open a new ledger period if hardware, stage or container changed."""
        key = (self.current, self.stage, self.container)
        last = self.ledger[-1] if self.ledger else None
        if last is not None and (last.hardware, last.stage, last.container) == key:
            return
        if last is not None:
            now = max(now, last.started_at)
            last.ended_at = now
        self.ledger.append(Period(self.current, self.stage, now, None, self.container))

    def _build(self, now: float) -> None:
        self.stage = "RUNNING_BUILDING" if self.current and self.container_wanted else "BUILDING"
        self.switch_at = now + self.switch_delay_s
        self.running_at = None

    def _new_container(self, now: float) -> None:
        self.container += 1
        self.container_started_at = self.last_request_at = now
        if self.stage != "RUNNING_BUILDING":
            self.stage = "APP_STARTING"
            self.running_at = now + self.start_delay

    # ---------------------------------------------------------------- events
    def _key(self) -> tuple:
        return (self.stage, self.current, self.container, self.switch_at, self.running_at)

    def _next_event(self) -> float | None:
        """When the timeline moves next on its own (switch done, app started, falling asleep)."""
        times = [t for t in (self.switch_at, self.running_at) if t is not None]
        if self.stage == "RUNNING" and self.sleep_time is not None and self.sleep_time > 0:
            times.append(self.last_request_at + self.sleep_time)
        return min(times) if times else None

    def advance(self, now: float) -> bool:
        """Play the timeline's events up to ``now``, each at its own time; True when anything changed."""
        before = self._key()
        while (at := self._next_event()) is not None and at <= now:
            if self.switch_at == at:
                self.current, self.switch_at = self.requested, None
                self.stage = "APP_STARTING"
                self._new_container(at)
            elif self.running_at == at:
                self.stage, self.running_at = "RUNNING", None
            else:
                self.stage, self.current = "SLEEPING", None
            self.note(at)
        self.note(now)
        return self._key() != before

    def request_hardware(self, flavor: str, sleep_time: int | None, now: float) -> None:
        if sleep_time is not None:
            self.sleep_time = sleep_time
        self.requested, self.last_request_at = flavor, now
        if flavor == self.current and self.container_wanted:
            if self.stage == "RUNNING_BUILDING":  # switching back before the switch happened: cancel it
                self.stage, self.switch_at = "RUNNING", None
        else:
            self._build(now)
        self.note(now)

    def pause(self, now: float) -> None:
        self.stage, self.current, self.switch_at, self.running_at = "PAUSED", None, None, None
        self.note(now)

    def restart(self, now: float) -> None:
        self.error, self.fast_crashes = None, 0
        if self.stage in ("BUILDING", "RUNNING_BUILDING"):
            if self.stage == "RUNNING_BUILDING":
                self._new_container(now)
        elif self.container_wanted:
            self._new_container(now)
        else:
            self._build(now)
        self.note(now)

    def settings_changed(self, now: float) -> None:
        """Secrets or variables changed: a running Space restarts its container."""
        if self.container_wanted:
            self._new_container(now)
        self.note(now)

    def crashed(self, now: float, exit_code: int | None) -> None:
        """The container exited by itself: restart it on the same hardware, or give up after a crash loop."""
        fast = self.container_started_at is not None and now - self.container_started_at < CRASH_WINDOW_S
        self.fast_crashes = self.fast_crashes + 1 if fast else 0
        if self.fast_crashes >= MAX_FAST_CRASHES:
            self.stage, self.running_at = "RUNTIME_ERROR", None
            self.error = f"Container exited with code {exit_code} ({self.fast_crashes} times in a row)"
        else:
            if self.stage == "RUNNING_BUILDING":
                self._new_container(now)
            else:
                self.stage = "APP_STARTING"
                self._new_container(now)
        self.note(now)

    # ---------------------------------------------------------------- views
    def runtime(self) -> dict:
        data: dict = {
            "stage": self.stage,
            "hardware": {"current": self.current, "requested": self.requested},
            "storage": None,
            "gcTimeout": self.sleep_time,
            "replicas": {"requested": 1, "current": 1 if self.container_wanted else 0},
            "devMode": self.dev_mode,
            "domains": [{"domain": f"{subdomain(self.repo_id)}.hf.space", "stage": "READY"}],
        }
        if self.error:
            data["errorMessage"] = self.error
        return data

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SpaceState:
        ledger = [Period(**p) for p in d.pop("ledger", [])]
        return cls(**d, ledger=ledger)


class SpaceNotFound(KeyError):
    pass


class SpaceBook:
    """All Space states, persisted as ``spaces/<ns>/<name>.json`` under the emulator root (secrets included:
    this is the emulator's vault, not repo content)."""

    def __init__(self, root: Path, default_switch_delay_s: float = 1.0) -> None:
        self.dir = Path(root) / "spaces"
        self.default_switch_delay_s = default_switch_delay_s
        self.lock = threading.RLock()
        self._states: dict[str, SpaceState] = {}
        for path in self.dir.glob("*/*.json"):
            state = SpaceState.from_json(json.loads(path.read_text()))
            self._states[state.repo_id] = state

    def _save(self, state: SpaceState) -> None:
        path = self.dir / f"{state.repo_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(state.to_json()))
        os.replace(tmp, path)

    def create(
        self,
        repo_id: str,
        *,
        hardware: str = "cpu-basic",
        sleep_time: int | None = None,
        secrets: dict[str, dict] | None = None,
        variables: dict[str, dict] | None = None,
        switch_delay_s: float | None = None,
        app_start_s: float | None = None,
    ) -> None:
        now = time.time()
        with self.lock:
            state = SpaceState(
                repo_id,
                requested=hardware,
                sleep_time=sleep_time,
                switch_delay_s=self.default_switch_delay_s if switch_delay_s is None else switch_delay_s,
                app_start_s=app_start_s,
                secrets={k: _entry(v) for k, v in (secrets or {}).items()},
                variables={k: _entry(v) for k, v in (variables or {}).items()},
            )
            state._build(now)
            state.advance(now)
            self._states[repo_id] = state
            self._save(state)

    def delete(self, repo_id: str) -> None:
        with self.lock:
            self._states.pop(repo_id, None)
            (self.dir / f"{repo_id}.json").unlink(missing_ok=True)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self._states)

    def update(self, repo_id: str, change) -> SpaceState:
        """Apply ``change(state, now)`` under the lock, advance the timeline, save; returns the state."""
        now = time.time()
        with self.lock:
            state = self._states.get(repo_id)
            if state is None:
                raise SpaceNotFound(repo_id)
            changed = state.advance(now)
            if change is not None:
                change(state, now)
                state.advance(now)
            if changed or change is not None:
                self._save(state)
            return state

    def peek(self, repo_id: str, fn):
        """Run ``fn(state)`` under the lock after advancing the timeline (no activity recorded)."""
        with self.lock:
            state = self.update(repo_id, None)
            return fn(state)


def _entry(v: dict | str) -> dict:
    if isinstance(v, str):
        v = {"value": v}
    return {"value": v.get("value", ""), "description": v.get("description"), "updatedAt": _now_iso()}
