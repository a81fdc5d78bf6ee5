"""Runs a command as "the Space": one process group per container start, its output captured to a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.fakehub.spaces import RESOURCES, SpaceState, accelerator, subdomain

# Variables of the test process that a real Space would not have.
_NOT_INHERITED = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SYSTEM", "ACCELERATOR", "CPU_CORES", "MEMORY", "HF_HOME")


@dataclass
class SpaceCommand:
    """What to run as the Space: ``command`` in ``cwd`` with ``env`` added on top of the Space's own env, and
    ``hardware_env[flavor]`` on top of that when the container runs on ``flavor``."""

    command: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    stop_grace_s: float = 2.0
    hardware_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def env_for(self, flavor: str | None) -> dict[str, str]:
        return {**self.env, **self.hardware_env.get(flavor or "", {})}


def clean_env() -> dict[str, str]:
    """The test process's environment minus what a fresh container would not have (tokens, Space and test vars)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _NOT_INHERITED and not k.startswith(("SPACE_", "OAUTH_", "PYTEST_"))
    }


def space_env(state: SpaceState, endpoint: str, owner_id: str, home: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment a Space container gets (never ``SYSTEM=spaces``: see testing-recipes.md)."""
    env = clean_env()
    author, name = state.repo_id.split("/")
    cores, memory = RESOURCES.get(state.current or "", (8, "30Gi"))
    env.update(
        SPACE_ID=state.repo_id,
        SPACE_AUTHOR_NAME=author,
        SPACE_REPO_NAME=name,
        SPACE_TITLE=name,
        SPACE_HOST=f"{subdomain(state.repo_id)}.hf.space",
        SPACE_CREATOR_USER_ID=owner_id,
        ACCELERATOR=accelerator(state.current),
        CPU_CORES=str(cores),
        MEMORY=memory,
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        PYTHONUNBUFFERED="1",
        # The emulated platform stands in for the real sign-in: the app under test opts in to the mocked one.
        DREAMBOOTH_TEST_MOCK_SIGNIN="1",
    )
    env.update({k: v["value"] for k, v in state.variables.items()})
    env.update({k: v["value"] for k, v in state.secrets.items()})
    env.update(extra)
    return env


class SpaceRunner:
    """Starts and stops the containers of one Space (driven by the emulator's clock thread; ``kill`` may come
    from a test thread)."""

    def __init__(self, spec: SpaceCommand, log_dir: Path) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self.container: int | None = None  # the Space's container number the current process belongs to
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self._lock = threading.RLock()
        self._closed = False
        self.starts = 0

    def start(self, container: int, env: dict[str, str]) -> None:
        """Start container number ``container``; its output goes to ``log_dir/container-NNN.log``.

        Does nothing once the runner is closed: the clock thread may still hold it after a test detached it.
        """
        with self._lock:
            self.stop()
            if self._closed:
                return
            self.starts += 1
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"container-{self.starts:03d}.log"
            self._log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
            banner = f"===== container {container} started at {time.time():.3f} on {env['ACCELERATOR']} =====\n"
            self._log_file.write(banner.encode())
            self._log_file.flush()
            command = self.spec.command
            try:
                self.process = self._popen(command, env)
            except OSError as e:  # e.g. command not found: the container fails like a crashing app
                self._log_file.write(f"cannot start {command!r}: {e}\n".encode())
                self._log_file.flush()
                self.process = self._popen([sys.executable, "-c", "raise SystemExit(127)"], env)
            self.container = container

    def _popen(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(
            command,
            cwd=self.spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exit_code(self) -> int | None:
        """The exit code once the current process has ended, else None (also None when nothing runs)."""
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashing container would die (the clock then restarts it)."""
        with self._lock:
            if self.process is not None:
                kill_process_tree(self.process)

    def close(self) -> None:
        """Stop the current container for good: no later ``start`` runs anything."""
        with self._lock:
            self._closed = True
            self.stop()

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period, and close the log."""
        with self._lock:
            if self.process is not None:
                stop_process_tree(self.process, self.spec.stop_grace_s)
                self.process = None
            self.container = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def logs(self) -> list[Path]:
        return sorted(self.log_dir.glob("container-*.log"))


def stop_process_tree(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM ``process``'s group, SIGKILL it after ``grace_s``, then every process left below it (a container
    stopping takes everything in it, even children in sessions of their own)."""
    pid = process.pid
    inside = _descendants(pid)  # before SIGTERM: an exiting app re-parents its children to init
    _signal_group(pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(pid, signal.SIGKILL)  # also any child left in the group
    _kill_all(inside | _descendants(pid))  # and those in sessions of their own (the trainer)
    process.wait()


def kill_process_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process``'s group and everything below it at once, as a crashing container dies."""
    inside = _descendants(process.pid)
    _signal_group(process.pid, signal.SIGKILL)
    _kill_all(inside)
    process.wait()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc), whatever its process group or session.

    A container's death takes everything in it; the app starts its trainer in a session of its own, which a
    process-group signal would miss.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
