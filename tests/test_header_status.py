"""The header's hardware line keeps up with the platform (issue 21, item 11).

- A hardware switch the app itself requested shows at once ("moving to ..."), with the stage the Hub answered the
  request with, not after the worker's next runtime read (a poll later: about 20 s on a Space).
- A page this app answers never shows a stale APP_STARTING: the app answering IS running.

The worker runs with a LocalQueue and a stand-in ``HardwareController`` (the Hub's runtime as injected state: no
Space, no sleeps); ``tests/test_worker_hub.py`` checks the same against the emulator's Space runtime.
"""

from __future__ import annotations

from types import SimpleNamespace

from contract.settings import load_settings
from scheduler.hardware.base import HardwareController, HardwareState
from scheduler.queue.local import LocalQueue
from scheduler.status import WorkerStatus, as_served
from scheduler.task import Task
from scheduler.worker import Worker
from tests.tiny_models import make_images
from ui.layout import header_text

CPU_RUNNING = HardwareState("cpu-basic", "cpu-basic", "RUNNING", "none", False)


class StandInSpace(HardwareController):
    """The Space's runtime as injected state. ``answer``: the runtime the Hub sends back for a request (None: a
    controller that reports nothing); reads after it still give the old state, as the worker's cache would."""

    def __init__(self, state: HardwareState, answer: HardwareState | None = None) -> None:
        self.current, self.answer = state, answer
        self.requests: list[str] = []
        self.releases = 0

    def state(self) -> HardwareState:
        return self.current

    def request(self, flavor: str, sleep_time_s: int | None = None) -> HardwareState | None:
        self.requests.append(flavor)
        return self.answer

    def release(self) -> str:
        self.releases += 1
        return "requested cpu-basic"


def ctx_for(status: WorkerStatus, *, local: bool = False, jobs: bool = False) -> SimpleNamespace:
    """What ``header_text`` reads of an ``AppContext``: the settings' mode and the worker's status."""
    return SimpleNamespace(settings=SimpleNamespace(local=local, uses_jobs=jobs), local=local,
                           worker=SimpleNamespace(status=status))  # fmt: skip


def header(status: WorkerStatus) -> str:
    return header_text(ctx_for(status), status.snapshot().hardware)


def space_worker(tmp_path, hardware: HardwareController) -> tuple[Worker, LocalQueue]:
    settings = load_settings({"SPACE_ID": "alice/trainer", "HF_TOKEN": "hf_test", "DATA_DIR": str(tmp_path / "data")})
    queue = LocalQueue(tmp_path / "queue")
    queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model=settings.default_base_model,
                       hardware="t4-small"), make_images(tmp_path / "photos", 3, size=64))  # fmt: skip
    return Worker(settings, queue, hardware), queue


def test_a_requested_switch_shows_at_once_with_the_stage_the_hub_answered(tmp_path):
    answer = HardwareState("cpu-basic", "t4-small", "RUNNING_BUILDING", "none", False)
    hardware = StandInSpace(CPU_RUNNING, answer=answer)
    worker, _ = space_worker(tmp_path, hardware)

    action, _ = worker.step()

    assert action.kind.value == "request_hardware" and hardware.requests == ["t4-small"]
    text = header(worker.status)
    assert "CPU basic" in text and "moving to Nvidia T4 small" in text and "RUNNING_BUILDING" in text, text


def test_a_requested_switch_shows_at_once_even_without_the_hubs_answer(tmp_path):
    hardware = StandInSpace(CPU_RUNNING, answer=None)  # the runtime read before the request still says RUNNING
    worker, _ = space_worker(tmp_path, hardware)

    action, _ = worker.step()

    assert action.kind.value == "request_hardware"
    assert "moving to Nvidia T4 small" in header(worker.status)
    assert hardware.current == CPU_RUNNING  # no extra runtime read was needed for it


def test_releasing_the_gpu_shows_the_move_back_at_once():
    status = WorkerStatus()
    status.update(hardware=HardwareState("t4-small", "t4-small", "RUNNING", "t4-small", True))
    status.hardware_requested("cpu-basic")
    assert "Nvidia T4 small → **moving to CPU basic**" in header(status)


def test_an_answer_for_another_flavor_is_not_taken_for_the_request():
    status = WorkerStatus()
    status.update(hardware=CPU_RUNNING)
    status.hardware_requested("t4-small", HardwareState("cpu-basic", "cpu-basic", "RUNNING", "none", False))
    assert status.snapshot().hardware.requested == "t4-small"


def test_a_stale_app_starting_is_shown_as_running_once_the_app_serves():
    status = WorkerStatus()
    status.update(hardware=HardwareState("cpu-basic", "cpu-basic", "APP_STARTING", "none", False))  # read at start-up
    text = header(status)
    assert "APP_STARTING" not in text and text.endswith("stage RUNNING") and "CPU basic" in text, text
    status.update(hardware=HardwareState(None, "cpu-basic", "APP_STARTING", "none", False))  # the first start
    assert header(status) == "**Hardware:** CPU basic · stage RUNNING"


def test_the_new_container_does_not_show_the_switch_it_ended():
    # Read by the GPU container while it started (the CPU one still served): it now serves, on the requested flavor.
    for stage in ("RUNNING_APP_STARTING", "RUNNING_BUILDING"):
        status = WorkerStatus()
        status.update(hardware=HardwareState("cpu-basic", "t4-small", stage, "t4-small", True))
        assert header(status) == "**Hardware:** Nvidia T4 small · stage RUNNING"


def test_the_old_container_keeps_the_hubs_word_during_a_switch():
    switching = HardwareState("cpu-basic", "t4-small", "RUNNING_BUILDING", "none", False)
    assert as_served(switching) == switching
    leaving = HardwareState("cpu-basic", "cpu-basic", "APP_STARTING", "t4-small", True)  # the T4 container, released
    assert as_served(leaving) == leaving
    cpu_to_cpu = HardwareState("cpu-basic", "cpu-upgrade", "RUNNING_APP_STARTING", "none", False)
    assert as_served(cpu_to_cpu) == cpu_to_cpu  # both are CPU containers: which one answers is unknown
    for stage in ("RUNNING", "PAUSED", "RUNTIME_ERROR", "SLEEPING"):
        hw = HardwareState("t4-small", "t4-small", stage, "t4-small", True)
        assert as_served(hw) == hw
    assert as_served(None) is None


def test_local_and_jobs_headers_are_unchanged():
    status = WorkerStatus()
    status.update(hardware=HardwareState("t4-small", "t4-small", "APP_STARTING", "t4-small", True))
    jobs = header_text(ctx_for(status, jobs=True), status.snapshot().hardware)
    assert jobs == "**Hardware:** Nvidia T4 small · stage RUNNING · training runs on Hugging Face Jobs"
    local = header_text(ctx_for(status, local=True), status.snapshot().hardware)
    assert local == "**Hardware:** this machine (a GPU)"
