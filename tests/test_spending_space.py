"""The spending caps on the Space backend: the product's Worker with HubQueue + SpaceHardware on the emulator, whose
ledger of billed time per hardware flavor is the bill. A "GPU container" is a second Worker whose settings say
ACCELERATOR=t4-small (as the platform's do after the switch); no task trains here, the caps stop them first."""

from __future__ import annotations

import math
import uuid

from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.outcomes import run_stop_at
from scheduler.queue import make_queue
from scheduler.spending import CAP_NOTE_PREFIX, EXIT_MARGIN_S, Caps, month_spend_usd, user_usage
from scheduler.task import Lease, Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.polling import wait_for
from tests.tiny_models import make_images

T4_USD_H = 0.40
DEADLINE_S = 600  # a worst case of (600 + 150) s on a T4: $0.083


def space(hub, **env: str):
    repo = f"alice/spend-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN, switch_delay_s=0.2)
    hub.wait_for_stage(repo, "RUNNING", timeout_s=10)
    values = {"SPACE_ID": repo, "HF_TOKEN": ALICE_TOKEN, "HF_ENDPOINT": hub.url, "POLL_INTERVAL_S": "0.3",
              "RETRY_BASE_S": "0.01", "TASK_DEADLINE_S": str(DEADLINE_S), "ALLOWED_USERS": "alice,bob", **env}  # fmt: skip
    settings = load_settings(values)
    gpu = load_settings({**values, "ACCELERATOR": "t4-small", "ALLOW_CPU_TRAINING": "1"})
    return repo, settings, gpu


def enqueue(queue, tmp_path, user: str = "alice") -> Task:
    task = Task(instance_prompt="a photo of sks dog", submitted_by=user, base_model="m", deadline_s=DEADLINE_S)
    return queue.enqueue(task, make_images(tmp_path / task.id, 3, size=128))


def billed_usd(hub, repo: str) -> float:
    """The emulator's bill of the Space's T4 time, per started minute."""
    seconds = hub.billed_seconds(repo).get("t4-small", 0.0)
    return math.ceil(seconds / 60) * 60 / 3600 * T4_USD_H


def hardware_posts(hub, repo: str) -> list:
    return hub.requests("POST", rf"^/api/spaces/{repo}/hardware$")


def test_the_months_cap_holds_what_would_pass_it_and_the_bill_stays_under_it(hub, tmp_path):
    cap = 0.085  # room for one worst case (0.083), not for a second start after a minute of T4 (0.0067 + 0.083)
    repo, settings, gpu_settings = space(hub, MAX_SPEND_USD_PER_MONTH=str(cap))
    queue = make_queue(settings)
    a, b = enqueue(queue, tmp_path), enqueue(queue, tmp_path)
    cpu = Worker(settings, queue, make_hardware(settings))
    action, _ = cpu.step()
    assert (action.kind.value, action.task_id) == ("request_hardware", a.id)
    [period] = queue.list_with_billing()[1]
    assert period.requested_for == a.id and period.requested_by == "alice"
    wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "t4-small", 10, "the switch to t4-small")
    queue.cancel(a.id)  # cancelled during the switch: the GPU is billed anyway, to a

    gpu = Worker(gpu_settings, make_queue(gpu_settings), make_hardware(gpu_settings))
    kinds = [gpu.step()[0].kind.value for _ in range(2)]
    assert kinds == ["hold_task", "release_hardware"]  # b's worst case no longer fits: held, then the GPU goes
    held = queue.get(b.id)
    assert held.status is TaskStatus.PENDING and held.attempts == 0
    assert held.note.startswith(CAP_NOTE_PREFIX) and "MAX_SPEND_USD_PER_MONTH" in held.note
    wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "cpu-basic", 10, "the switch back")

    fresh = Worker(settings, make_queue(settings), make_hardware(settings))  # the CPU container after the switch back
    for _ in range(3):
        assert fresh.step()[0].kind.value == "wait"  # b stays held: no GPU request while the cap would pass
    assert len(hardware_posts(hub, repo)) == 2  # the one request and the release
    tasks, periods = queue.list_with_billing()
    assert billed_usd(hub, repo) <= cap  # the emulator's bill
    assert month_spend_usd(periods, periods[0].released_at or 0, Caps()) <= cap  # the queue's own record of it
    assert user_usage("alice", periods, tasks, periods[0].released_at or 0, Caps())[0] >= 60  # a's switch, counted


def test_a_gpu_switch_cancelled_before_training_counts_against_its_submitter(hub, tmp_path):
    """Finding 3 (Space mode): submit, let the Space move to the GPU, cancel; nothing counted, again and again."""
    from ui.limits import user_limit_problem

    repo, settings, gpu_settings = space(hub, MAX_GPU_HOURS_PER_USER_DAY=str(0.07))  # 252 s: one start's room
    queue = make_queue(settings)
    cycles = 0
    for _ in range(3):
        tasks, periods = queue.list_with_billing()
        problem = user_limit_problem(settings, "bob", tasks, periods=periods)
        if problem:
            break
        cycles += 1
        task = enqueue(queue, tmp_path, user="bob")
        cpu = Worker(settings, make_queue(settings), make_hardware(settings))
        assert cpu.step()[0].kind.value == "request_hardware"
        wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "t4-small", 10, "the switch to t4-small")
        queue.cancel(task.id)
        gpu = Worker(gpu_settings, make_queue(gpu_settings), make_hardware(gpu_settings))
        assert gpu.step()[0].kind.value == "release_hardware"
        wait_for(lambda: hub.space_runtime(repo)["hardware"]["current"] == "cpu-basic", 10, "the switch back")
    assert cycles == 1, "the second submission is refused"
    assert "MAX_GPU_HOURS_PER_USER_DAY" in problem and "$" in problem and "bob was billed" in problem
    tasks, periods = queue.list_with_billing()
    assert user_usage("bob", periods, tasks, periods[-1].released_at or 0, Caps())[0] >= 60
    queue.delete(tasks[0].id)  # deleting the cancelled task does not erase what it cost
    tasks, periods = queue.list_with_billing()
    assert user_limit_problem(settings, "bob", tasks, periods=periods) is not None
    assert user_limit_problem(settings, "alice", tasks, periods=periods) is None  # the owner is not bound


def test_the_watchdog_of_a_space_stops_a_run_where_its_submitters_cap_ends(tmp_path):
    """Finding 4 (Space mode): the watchdog's stop comes from what the queue says was billed, not the deadline."""
    from scheduler.billing import Claim, GpuPeriod

    settings = load_settings({"SPACE_ID": "alice/s", "HF_TOKEN": "hf_x", "MAX_GPU_HOURS_PER_USER_DAY": "2"})
    now = 1_000_000.0
    bob = Task(instance_prompt="p", submitted_by="bob", status=TaskStatus.RUNNING, attempts=1, started_at=now - 600,
               lease=Lease("w", now + 60), deadline_s=3 * 3600)  # fmt: skip
    earlier = GpuPeriod("t4-small", now - 5000, now - 1400, [Claim("old", now - 5000, "bob")])  # one hour
    current = GpuPeriod("t4-small", now - 700, None, [Claim(bob.id, now - 600, "bob")], requested_for=bob.id)
    stop = run_stop_at(settings, bob.id, [bob], [earlier, current], now, in_job=False)
    # 2 h - 1 h - the 12 billed minutes of this period so far leave bob 48 minutes from now
    assert stop == now + (7200 - 3600 - 720) - EXIT_MARGIN_S
    assert run_stop_at(settings, bob.id, [bob], [earlier, current], now, in_job=True) is None  # a Job: the stored one
    owner = Task(instance_prompt="p", submitted_by="alice", status=TaskStatus.RUNNING, attempts=1, started_at=now - 600,
                 lease=Lease("w", now + 60))  # fmt: skip
    assert run_stop_at(settings, owner.id, [owner], [earlier, current], now, in_job=False) is None


def test_the_months_spend_is_shown_to_the_owner_only_and_an_allowed_user_sees_their_hours_in_dollars():
    from datetime import UTC, datetime

    from scheduler.billing import Claim, GpuPeriod
    from scheduler.status import WorkerStatus
    from ui.auth import Access
    from ui.spend_view import spend_note

    now = datetime(2026, 3, 15, 12, tzinfo=UTC).timestamp()
    settings = load_settings({"SPACE_ID": "alice/s", "HF_TOKEN": "hf_x", "ALLOWED_USERS": "alice,bob",
                              "MAX_SPEND_USD_PER_MONTH": "20"})  # fmt: skip
    bob_task = Task(instance_prompt="p", submitted_by="bob", status=TaskStatus.CANCELLED)
    status = WorkerStatus()
    status.update(
        tasks=[bob_task], billing=[GpuPeriod("t4-small", now - 3600, now, [Claim(bob_task.id, now - 3600, "bob")])]
    )
    seen = status.snapshot()
    owner = spend_note(settings, Access("alice", allowed=True, owner=True), seen, now)
    assert "$0.40 billed of $20.00" in owner and "$19.60 left" in owner and "MAX_SPEND_USD_PER_MONTH" in owner
    bob = spend_note(settings, Access("bob", allowed=True, owner=False), seen, now)
    assert "2 GPU hours a day (about $0.80 on Nvidia T4 small)" in bob and "1.00 h ($0.40)" in bob
    assert "1.00 h left" in bob and "$20" not in bob and "month" not in bob  # the Space's spend is the owner's
    for visitor in (Access("carol", allowed=False, owner=False), Access(None, allowed=False, owner=False)):
        assert spend_note(settings, visitor, seen, now) == ""
    uncapped = load_settings({"SPACE_ID": "alice/s", "HF_TOKEN": "hf_x"})
    assert "no spending cap" in spend_note(uncapped, Access("alice", allowed=True, owner=True), seen, now)
