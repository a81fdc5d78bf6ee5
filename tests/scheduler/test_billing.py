"""GPU periods and run records in the queue document: the transitions, the stored format (old files, malformed
entries) and each task's share of a period's cost; then the same on both queue backends (one commit per change)."""

from __future__ import annotations

import json

import pytest

from scheduler.billing import RECOVERED, Claim, GpuPeriod, parse_periods, period_from_dict, shares, task_cost_usd
from scheduler.queue.document import (
    QueueDoc,
    op_claim,
    op_close_period,
    op_complete,
    op_enqueue,
    op_open_period,
)
from scheduler.queue.local import LocalQueue
from scheduler.task import ImageRef, RunRecord, Task, TaskStatus
from tests.scheduler.helpers import make_images, make_task
from tests.scheduler.queues import queue_file_text

T4_PER_S = 0.40 / 3600


def doc_with(*ids: str) -> QueueDoc:
    doc = QueueDoc()
    for i, task_id in enumerate(ids):
        op_enqueue(doc, make_task(id=task_id, created_at=float(i)), ImageRef(path=f"images/{task_id}", count=3), 0.0)
    return doc


def run(**changes) -> RunRecord:
    fields = {"flavor": "t4-small", "recipe": "dreambooth-lora", "base_model": "org/sd15", "steps_per_s": 2.0,
              "first_step_at": 1040.0, "last_step_at": 1540.0, "startup_s": 40.0}  # fmt: skip
    return RunRecord(**{**fields, **changes})


# ---------------------------------------------------------------- transitions of the document
def test_a_period_opens_once_takes_the_claims_and_closes_with_the_release_time_of_the_last_task():
    doc = doc_with("a", "b")
    op_open_period(doc, "t4-small", 1000.0)
    assert op_open_period(doc, "t4-small", 1003.0).requested_at == 1000.0  # repeated (a restart): same period
    assert op_open_period(doc, "t4-small", 998.0).requested_at == 998.0  # an earlier record of the same request
    assert len(doc.billing) == 1

    op_claim(doc, "a", "w", 60, 1010.0, bill_to="t4-small")
    op_claim(doc, "a", "w", 60, 1011.0, bill_to="t4-small")  # a claim repeated after a lost answer: not twice
    op_complete(doc, "a", "w", "https://hub/m/a", 1600.0, run=run())
    op_claim(doc, "b", "w", 60, 1600.5, bill_to="t4-small")
    op_complete(doc, "b", "w", "https://hub/m/b", 2000.0, run=run(first_step_at=1620.0, last_step_at=1990.0))
    period = op_close_period(doc, 2004.0)

    assert (
        period is doc.billing[0] and period.task_ids == ["a", "b"] and [c.at for c in period.claims] == [1010.0, 1600.5]
    )
    assert (period.requested_at, period.released_at, period.closed_by) == (998.0, 2004.0, "release")
    a, b = doc.require("a").run, doc.require("b").run
    assert a.wrapup_s == 60.0 and b.wrapup_s == 10.0  # last step -> completion, measured by the completion itself
    assert a.release_s is None and b.release_s == 4.0  # only the period's last task waited for the release
    assert b.overhead_s == 40.0 + 10.0 + 4.0
    assert op_close_period(doc, 2010.0) is None  # nothing open any more: nothing changes
    assert doc.billing[0].released_at == 2004.0


def test_a_claim_without_a_recorded_request_opens_the_period_itself_and_a_bigger_gpu_starts_a_new_one():
    doc = doc_with("a", "b")
    op_claim(doc, "a", "w", 60, 1010.0, bill_to="t4-small")  # the CPU container's record of the request was lost
    assert [(p.hardware, p.requested_at, p.task_ids) for p in doc.billing] == [("t4-small", 1010.0, ["a"])]
    op_open_period(doc, "a100-large", 1500.0)  # task b needs more memory: the Space moves on
    assert [(p.hardware, p.released_at) for p in doc.billing] == [("t4-small", 1500.0), ("a100-large", None)]
    op_claim(doc, "b", "w", 60, 1600.0)  # no bill_to (local mode, a CPU flavor): no claim recorded
    assert doc.billing[1].claims == []


def test_a_period_left_open_by_a_dead_container_is_closed_as_recovered_without_measuring_a_release():
    doc = doc_with("a")
    op_open_period(doc, "t4-small", 1000.0)
    op_claim(doc, "a", "w", 60, 1010.0, bill_to="t4-small")
    op_complete(doc, "a", "w", "https://hub/m/a", 1500.0, run=run())
    period = op_close_period(doc, 9000.0, RECOVERED)
    assert (period.released_at, period.closed_by) == (9000.0, RECOVERED)
    assert doc.require("a").run.release_s is None


# ---------------------------------------------------------------- stored format
def test_old_queue_files_load_and_new_ones_keep_periods_and_run_records():
    old = json.dumps({"format": 1, "tasks": [make_task(id="a").to_dict()], "recent_ops": []})
    doc = QueueDoc.from_json(old)
    assert doc.billing == [] and doc.require("a").run is None

    doc = doc_with("a")
    op_open_period(doc, "t4-small", 1000.0)
    op_claim(doc, "a", "w", 60, 1010.0, bill_to="t4-small")
    op_complete(doc, "a", "w", "https://hub/m/a", 1500.0, run=run(family="sd15", resolution=512, steps=1000))
    text = doc.to_json()
    data = json.loads(text)
    assert data["format"] == 1  # unchanged: the new keys are optional
    assert data["billing"][0]["claims"] == [{"task_id": "a", "at": 1010.0, "user": "alice"}]  # the submitter too
    assert data["tasks"][0]["run"]["steps_per_s"] == 2.0 and data["tasks"][0]["run"]["family"] == "sd15"
    again = QueueDoc.from_json(text)
    assert again.billing == doc.billing and again.require("a").run == doc.require("a").run


@pytest.mark.parametrize(
    "entry",
    [
        42,
        "t4-small",
        {"hardware": "t4-small"},
        {"hardware": "t4-small", "requested_at": "yesterday"},
        {"hardware": "t4-small", "requested_at": 1000.0, "released_at": 900.0},
        {"hardware": "t4-small", "requested_at": True},
        {"hardware": "", "requested_at": 1000.0},
        {"hardware": "t4-small", "requested_at": 1000.0, "claims": "all"},
        {"hardware": "t4-small", "requested_at": 1000.0, "claims": [{"task_id": 7, "at": 1.0}]},
        {"hardware": "t4-small", "requested_at": 1000.0, "claims": [{"task_id": "a", "at": float("nan")}]},
        {"hardware": "t4-small", "requested_at": 1000.0, "claims": [{"task_id": "a", "at": 1.0}] * 1001},
    ],
)
def test_a_malformed_billing_entry_is_skipped_and_written_back_as_it_was(entry):
    good = {
        "hardware": "t4-small",
        "requested_at": 1000.0,
        "released_at": 1100.0,
        "claims": [{"task_id": "a", "at": 1010.0}],
    }
    text = json.dumps({"format": 1, "tasks": [make_task(id="a").to_dict()], "billing": [good, entry]})
    doc = QueueDoc.from_json(text)
    assert [p.hardware for p in doc.billing] == ["t4-small"] and doc.billing[0].task_ids == ["a"]
    written = json.loads(doc.to_json())["billing"]
    assert written[0] == {**good, "closed_by": None} and json.dumps(written[1:]) == json.dumps([entry])  # (NaN too)
    with pytest.raises(ValueError):
        period_from_dict(entry)
    assert parse_periods("not a list") == ([], [])


def test_a_malformed_run_record_is_dropped_and_the_task_stays_readable():
    done = make_task(id="a", status=TaskStatus.DONE, result_url="https://hub/m/a")
    for bad in (
        {"flavor": "t4-small"},
        {**run().__dict__, "steps_per_s": "fast"},
        {**run().__dict__, "batch_size": True},
        7,
    ):
        task = Task.from_dict({**done.to_dict(), "run": bad})
        assert task.status is TaskStatus.DONE and task.run is None
    assert Task.from_dict({**done.to_dict(), "run": run().__dict__}).run == run()


# ---------------------------------------------------------------- shares of a period's cost
def test_tasks_pay_in_proportion_to_the_time_they_held_the_gpu_and_the_shares_add_up_to_the_period():
    period = GpuPeriod("t4-small", 1000.0, 1400.0, [Claim("a", 1100.0), Claim("b", 1175.0)])  # a: 75 s, b: 225 s
    assert shares(period, now=0.0) == {"a": 0.25, "b": 0.75}
    a, b = (task_cost_usd(t, [period], now=0.0) for t in ("a", "b"))
    assert a + b == pytest.approx(400 * T4_PER_S)  # the whole period, request to release, is paid
    assert b == pytest.approx(3 * a)
    assert task_cost_usd("c", [period], now=0.0) is None  # in no period: the caller falls back


def test_a_running_task_pays_the_open_period_so_far_and_a_task_of_two_periods_pays_both():
    open_now = GpuPeriod("t4-small", 1000.0, None, [Claim("a", 1050.0)])
    assert task_cost_usd("a", [open_now], now=1360.0) == pytest.approx(360 * T4_PER_S)
    earlier = GpuPeriod("a10g-small", 0.0, 100.0, [Claim("a", 10.0)])  # a crashed there and was trained again later
    assert task_cost_usd("a", [earlier, open_now], now=1360.0) == pytest.approx(100 / 3600 * 1.0 + 360 * T4_PER_S)
    same_time = GpuPeriod("t4-small", 0.0, 0.0, [Claim("a", 0.0), Claim("b", 0.0)])
    assert shares(same_time, now=5.0) == {"a": 0.5, "b": 0.5}
    unknown = GpuPeriod("h999-future", 0.0, 3600.0, [Claim("a", 0.0)])
    assert task_cost_usd("a", [unknown], now=0.0) == 0.0  # a flavor without a price costs nothing known


# ---------------------------------------------------------------- both backends
def test_the_claim_and_the_completion_carry_the_period_and_the_run_record_in_one_change_each(queue, tmp_path):
    task = queue.enqueue(make_task(), make_images(tmp_path, 1))
    queue.open_period("t4-small", 1000.0)
    assert queue.open_period("t4-small", 1005.0).requested_at == 1000.0

    def commits() -> int:
        return (
            0 if isinstance(queue, LocalQueue) else len(queue.api.list_repo_commits(queue.repo_id, repo_type="dataset"))
        )

    before = commits()
    queue.claim(task.id, "w", 300, bill_to="t4-small")
    done = queue.complete(task.id, "w", "https://hub/m", run=run(first_step_at=None, last_step_at=None))
    assert commits() - before == (0 if isinstance(queue, LocalQueue) else 2)  # claim, complete: nothing extra

    tasks, periods = queue.list_with_billing()
    assert [t.id for t in tasks] == [task.id] and tasks[0].run == done.run and done.run.steps_per_s == 2.0
    assert periods[0].task_ids == [task.id] and periods[0].is_open
    closed = queue.close_period()
    assert closed is not None and closed.released_at is not None and queue.close_period() is None
    stored = json.loads(queue_file_text(queue))
    assert stored["billing"][0]["closed_by"] == "release" and stored["tasks"][0]["run"]["recipe"] == "dreambooth-lora"
    assert queue.get(task.id).run.release_s is not None  # the last task of the period waited this long
