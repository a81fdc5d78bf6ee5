"""Helpers of the fault scenarios: the real app run as a Space by the emulator, and its queue seen from the test.

``start_space`` creates a Space on the session's emulator whose container runs ``python app.py`` with a fresh
``DATA_DIR`` per container (a Space's disk does not survive a restart), the tiny base model, CPU training allowed
on the emulated GPU flavors, short poll/lease/retry settings and the fault recipes of ``tests/faults/recipes.py``.
Tasks are enqueued with the real ``HubQueue`` (as the UI would, without a browser).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from scheduler.queue.hub import HubQueue
from scheduler.retry import RetryPolicy
from scheduler.task import Task
from tests.conftest import ALICE_TOKEN
from tests.e2e.harness import APP, free_port, wait_for, wait_http
from tests.signin import session_cookie

OWNER = "alice"  # every scenario's Space is alice's

RECIPES = "tests.faults.recipes"
# Every container of the Space starts with an empty data folder, as on the Hub.
FRESH_DISK = 'export DATA_DIR="$PWD/data/c$(date +%s%N)"; exec "$0" "$@"'
BASE_VARIABLES = {
    "KEEP_RUN_FOLDERS": "1",  # the scenarios read the trainers' events and work folders after the tasks end
    "ALLOW_CPU_TRAINING": "1",
    "POLL_INTERVAL_S": "0.5",
    "LEASE_S": "30",
    "RETRY_BASE_S": "0.05",
    "MAX_ATTEMPTS": "2",
    "TASK_DEADLINE_S": "300",
}
#: Text the tests captured from the UI (HTTP answers of the app); scenario 11 scans it for tokens.
CAPTURED_TEXT: list[str] = []
#: Folders of every Space the scenarios ran (their data folders and the trainers' work folders).
SPACE_FOLDERS: list[Path] = []


def tiny_params(steps: int = 2, **extra: Any) -> dict[str, Any]:
    """Trainer params for a quick tiny-model run (64 px, no sample images, no scores: these tests are about the
    Space's lifecycle, and scoring samples the base model and the built-in prompts)."""
    return {"steps": steps, "resolution": 64, "rank": 4, "learning_rate": 1e-4, "checkpoint_every": None,
            "score": False, **extra}


@dataclass
class SpaceRun:
    """A Space of the emulator running the app, plus the test's own client of its queue."""

    hub: Any
    repo: str
    cwd: Path
    port: int
    base_model: str
    queue: HubQueue
    output_repos: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # ---------------------------------------------------------------- tasks
    def task(self, recipe: str = "dreambooth-lora", params: dict[str, Any] | None = None, **kw: Any) -> Task:
        """A task for the tiny model, as the form would build it (output repo unique per task)."""
        tid = uuid.uuid4().hex[:12]
        output = kw.pop("output_repo", f"alice/faults-{tid}")
        self.output_repos.append(output)
        kw.setdefault("max_attempts", 2)
        kw.setdefault("deadline_s", 300.0)
        return Task(id=tid, instance_prompt="a photo of sks dog", submitted_by="alice", base_model=self.base_model,
                    recipe=recipe, params=params or tiny_params(), hardware="t4-small", output_repo=output, **kw)  # fmt: skip

    def enqueue(self, images: list[Path], recipe: str = "dreambooth-lora", params: dict[str, Any] | None = None, **kw: Any) -> Task:
        return self.queue.enqueue(self.task(recipe, params, **kw), images)

    def tasks(self) -> list[Task]:
        return self.queue.list()

    def get(self, task_id: str) -> Task:
        return self.queue.get(task_id)

    def wait_terminal(self, task_ids: list[str], timeout: float) -> list[Task]:
        def ready() -> list[Task] | None:
            tasks = {t.id: t for t in self.tasks()}
            got = [tasks[i] for i in task_ids]
            return got if all(t.status.terminal for t in got) else None

        try:
            return wait_for(ready, timeout, f"tasks {task_ids} to end", every=0.5)
        except AssertionError:
            print(self.log_tail())
            raise

    def history(self) -> list[tuple[float, dict[str, Task]]]:
        """Every version of queue.json in the queue repo's history, oldest first: (commit time, tasks by id)."""
        from scheduler.queue.document import QueueDoc

        api = self.queue.api
        out = []
        for c in reversed(api.list_repo_commits(self.queue.repo_id, repo_type="dataset")):
            try:
                path = api.hf_hub_download(self.queue.repo_id, "queue.json", repo_type="dataset", revision=c.commit_id)
            except Exception:  # noqa: BLE001 - the first commit (repo creation) has no queue file
                continue
            doc = QueueDoc.from_json(Path(path).read_text())
            out.append((c.created_at.timestamp(), {t.id: t for t in doc.tasks}))
        return out

    def holders(self, task_id: str) -> list[tuple[str, int, str | None]]:
        """The task's (status, attempts, lease holder) over the queue history, consecutive repeats collapsed."""
        seq: list[tuple[str, int, str | None]] = []
        for _, tasks in self.history():
            t = tasks.get(task_id)
            if t is None:
                continue
            item = (t.status.value, t.attempts, t.lease.holder if t.lease else None)
            if not seq or seq[-1] != item:
                seq.append(item)
        return seq

    # ---------------------------------------------------------------- hardware and billing
    def runtime(self) -> dict:
        return self.hub.space_runtime(self.repo)

    def hardware_posts(self) -> list:
        return self.hub.requests("POST", rf"^/api/spaces/{self.repo}/hardware$")

    def gpu_containers(self) -> set:
        return {p["container"] for p in self.hub.ledger(self.repo) if p["hardware"] == "t4-small" and p["container"]}

    def open_paid_periods(self) -> list[dict]:
        """Ledger periods on a paid flavor in a billed stage that have not ended."""
        from tests.fakehub.spaces import BILLED_STAGES

        return [p for p in self.hub.ledger(self.repo)
                if p["ended_at"] is None and p["hardware"] not in (None, "cpu-basic") and p["stage"] in BILLED_STAGES]  # fmt: skip

    def wait_released(self, timeout: float = 30) -> dict:
        """Wait until the Space is back on cpu-basic (or paused) with no switch pending; returns the runtime."""

        def idle() -> dict | None:
            rt = self.runtime()
            hw = rt["hardware"]
            if rt["stage"] == "PAUSED" or (hw["current"] == "cpu-basic" and hw["requested"] in (None, "cpu-basic")):
                return rt
            return None

        try:
            return wait_for(idle, timeout, "the Space to be back on idle hardware")
        except AssertionError:
            print(self.log_tail())
            raise

    # ---------------------------------------------------------------- the containers' disks and processes
    def run_dirs(self, task_id: str) -> list[Path]:
        """The task's work folders, one per container that ran it, oldest first."""
        return sorted((self.cwd / "data").glob(f"c*/runs/{task_id}"))

    def events(self, task_id: str) -> list[dict]:
        """Every progress event the trainer wrote for the task, over all containers and attempts, in order."""
        files = sorted((p for d in self.run_dirs(task_id) for p in d.glob("events-*.jsonl")),
                       key=lambda p: (p.parent.parent.parent.name, int(p.stem.split("-")[1])))  # fmt: skip
        out = []
        for f in files:
            for line in f.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    out.append({**json.loads(line), "_file": f"{f.parent.parent.parent.name}/{f.name}"})
        return out

    def trainer_pids(self) -> list[int]:
        """Pids of trainer processes (``python -m training``) started by this Space's containers."""
        return trainer_pids(str(self.cwd))

    def kill_container(self) -> None:
        """SIGKILL the app container and everything in it (the trainer included), as a crash would."""
        self.hub.kill_space_container(self.repo)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.hub.space_logs(self.repo))

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def get_page(self, path: str = "") -> str:
        """GET a page of the app (kept for the secrets scan)."""
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            text = resp.read().decode(errors="replace")
        CAPTURED_TEXT.append(text)
        return text

    def call_ui(self, api_name: str, data: list[Any], opener: Any = None) -> str:
        """Call a (private) Gradio endpoint of the app over raw HTTP, as the page does; returns the event stream."""
        return call_gradio(self.url, api_name, data, opener, user=self.repo.split("/")[0])

    def ui_text(self, expect: str, timeout: float = 60) -> str:
        """What the page's refresh tick renders (hardware line, queue table, run view), once it contains ``expect``
        (the app may be restarting, and a new container shows the queue after its first loop)."""
        last = [""]

        def rendered() -> bool:
            try:
                wait_http(self.url, timeout)
                last[0] = self.call_ui("on_tick", [None, [], {}])
            except (OSError, http.client.HTTPException):  # the container stopped mid-answer (a hardware switch)
                return False
            return expect in last[0]

        try:
            wait_for(rendered, timeout, f"the UI to show {expect!r}", every=0.5)
        except AssertionError:
            raise AssertionError(f"the UI never showed {expect!r}; last render:\n{last[0][-3000:]}") from None
        return last[0]

    def stop(self) -> None:
        self.hub.stop_space(self.repo)  # the emulator stops the whole container, its trainer included


def call_gradio(url: str, api_name: str, data: list[Any], opener: Any = None, user: str = OWNER) -> str:
    """POST ``/gradio_api/call/<api_name>`` and read its event stream (kept for the secrets scan)."""
    open_ = (opener or urllib.request.build_opener()).open
    owner = {"Cookie": f"session={session_cookie(user)}"}  # signed in (the Space's owner sees its queue and runs)
    req = urllib.request.Request(f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json", **owner})  # fmt: skip
    with open_(req, timeout=30) as resp:
        event_id = json.loads(resp.read())["event_id"]
    with open_(urllib.request.Request(f"{url}gradio_api/call/{api_name}/{event_id}", headers=owner), timeout=60) as resp:
        text = resp.read().decode(errors="replace")
    CAPTURED_TEXT.append(text)
    return text


def start_space(
    hub: Any,
    tmp_path: Path,
    base_model: Path | str,
    *,
    owner_token: str = ALICE_TOKEN,
    hf_token: str = ALICE_TOKEN,
    name: str = "faults",
    variables: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    switch_delay_s: float = 0.5,
    app_start_s: float = 0.2,
    wait: bool = True,
) -> SpaceRun:
    """Create a Space (owned by ``owner_token``'s user) running the app with secret ``HF_TOKEN=hf_token``."""
    owner = hub.emulator.users.by_token(owner_token).name
    repo = f"{owner}/{name}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    cwd = tmp_path / "space"
    cwd.mkdir(parents=True, exist_ok=True)
    SPACE_FOLDERS.append(cwd)
    space_env = {"GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "TRAINING_RECIPES_MODULES": RECIPES,
                 "PYTHONPATH": str(APP.parent), **(env or {})}  # fmt: skip
    hub.create_space(
        repo,
        owner_token=owner_token,
        command=["bash", "-c", FRESH_DISK, sys.executable, str(APP)],
        cwd=cwd,
        env=space_env,
        switch_delay_s=switch_delay_s,
        app_start_s=app_start_s,
        secrets={"HF_TOKEN": hf_token},
        variables={**BASE_VARIABLES, "BASE_MODELS": str(base_model), **(variables or {})},
    )
    api = HfApi(endpoint=hub.url, token=hf_token)
    queue = HubQueue(api, f"{repo}-queue", retry=RetryPolicy(attempts=8, base_s=0.05, max_s=0.5))
    run = SpaceRun(hub, repo, cwd, port, str(base_model), queue)
    if wait:
        hub.wait_for_stage(repo, "RUNNING", timeout_s=30)
    return run


@contextlib.contextmanager
def space(hub: Any, tmp_path: Path, base_model: Path | str, **kw: Any) -> Iterator[SpaceRun]:
    """``start_space`` as a context manager that stops the Space (and any trainer left) afterwards."""
    run = start_space(hub, tmp_path, base_model, **kw)
    try:
        yield run
    except BaseException:
        print(run.log_tail(80))
        raise
    finally:
        run.stop()


def trainer_pids(*needles: str) -> list[int]:
    """Pids of trainer processes (``python -m training``) with one argument that contains every one of ``needles``
    (e.g. a container's folder, a task id)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"training" in cmd and any(all(n.encode() in c for n in needles) for c in cmd):
            pids.append(int(proc.name))
    return pids
