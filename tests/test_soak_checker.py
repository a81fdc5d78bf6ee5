"""The soak's invariant checkers (``benchmarks/soak.py``) on hand-made records: each flags the violation it is for.

No emulator here: the Jobs records are ``inspect_job`` JSON as the emulator's registry writes it, the ledger rows
as ``hub.jobs_ledger`` gives them, the billing rows real ``scheduler.billing.GpuPeriod`` objects.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from scheduler.billing import Claim, GpuPeriod
from tests.fakehub.jobs import iso

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("soak_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job(job_id: str, task: str, created: float, started: float | None, finished: float | None, *, stage: str = "COMPLETED", timeout: int = 600) -> dict:  # fmt: skip
    data = {"id": job_id, "labels": {"dreambooth-task": task, "dreambooth-space": "alice/soak"},
            "status": {"stage": stage, "message": None}, "createdAt": iso(T0 + created), "timeoutSeconds": timeout}  # fmt: skip
    if started is not None:
        data["startedAt"] = iso(T0 + started)
    if finished is not None:
        data["finishedAt"] = iso(T0 + finished)
    return data


def test_one_job_after_another_for_a_task_is_no_violation(soak):
    jobs = [job("a1", "t1", 0, 1, 20, stage="ERROR"), job("a2", "t1", 21, 22, 40), job("b1", "t2", 0, 1, 30)]
    assert soak.job_violations(jobs, ["t1", "t2"], now=T0 + 100) == []
    assert soak.max_alive(jobs, T0 + 100) == 2


def test_two_overlapping_jobs_for_one_task_are_flagged(soak):
    jobs = [job("a1", "t1", 0, 1, 20), job("a2", "t1", 15, 16, 40), job("b1", "t2", 0, 1, 30)]
    [violation] = soak.job_violations(jobs, ["t1", "t2"], now=T0 + 100)
    assert "task t1 had two live Jobs" in violation and "a1" in violation and "a2" in violation


def test_a_job_still_scheduling_while_another_runs_counts_as_live(soak):
    jobs = [job("a1", "t1", 0, 1, None, stage="RUNNING"), job("a2", "t1", 5, None, None, stage="SCHEDULING")]
    found = soak.job_violations(jobs, ["t1"], now=T0 + 10)
    assert any("two live Jobs" in v for v in found)
    assert sum("is still" in v for v in found) == 2  # and neither has ended


def test_a_job_past_its_timeout_or_for_an_unknown_task_is_flagged(soak):
    late = soak.job_violations([job("a1", "t1", 0, 1, 20, stage="ERROR", timeout=10)], ["t1"], now=T0 + 100)
    assert len(late) == 1 and "past its timeout of 10 s" in late[0]
    on_time = soak.job_violations([job("a1", "t1", 0, 1, 11, stage="ERROR", timeout=10)], ["t1"], now=T0 + 100)
    assert on_time == []
    stranger = soak.job_violations([job("x", "other", 0, 1, 5)], ["t1"], now=T0 + 100)
    assert len(stranger) == 1 and "not a task of the soak" in stranger[0]


def test_paid_seconds_per_task_and_their_record_in_the_queue_billing(soak):
    ledger = [{"job_id": "a1", "labels": {"dreambooth-task": "t1"}, "seconds": 19.0},
              {"job_id": "a2", "labels": {"dreambooth-task": "t1"}, "seconds": 18.0},
              {"job_id": "b1", "labels": {"dreambooth-task": "t2"}, "seconds": 29.0}]  # fmt: skip
    assert soak.paid_per_task(ledger) == {"t1": 37.0, "t2": 29.0}

    def period(job_id: str, task: str, seconds: float) -> GpuPeriod:
        return GpuPeriod("t4-small", T0, T0 + seconds, [Claim(task, T0)], closed_by=f"job {job_id}")

    billing = [period("a1", "t1", 19.5), period("a2", "t1", 18.4), period("b1", "t2", 29.2)]
    assert soak.billing_violations(ledger, billing) == []
    twice = soak.billing_violations(ledger, [*billing, period("b1", "t2", 29.2)])
    assert twice == ["Job b1 recorded 2 times in the queue's billing"]
    missing = soak.billing_violations(ledger, billing[:2])
    assert missing == ["Job b1 recorded 0 times in the queue's billing"]
    short = soak.billing_violations(ledger, [billing[0], billing[1], period("b1", "t2", 10.0)])
    assert len(short) == 1 and "less than its 29.0 paid s" in short[0]


def test_overlapping_trainer_runs_are_found(soak):
    assert soak.overlaps([(0, 10), (11, 20)]) == []
    assert soak.overlaps([(0, 10), (5, 20)]) == [((0, 10), (5, 20))]
    assert soak.overlaps([(0, 30), (5, 8), (10, 12)]) == [((0, 30), (5, 8)), ((0, 30), (10, 12))]  # nested runs too


def test_the_task_list_depends_on_the_seed_only(soak):
    assert soak.task_steps(3, 50) == soak.task_steps(3, 50)
    assert soak.task_steps(3, 10) == soak.task_steps(3, 50)[:10]
    assert soak.task_steps(3, 50) != soak.task_steps(4, 50)
    assert set(soak.task_steps(3, 50)) == {1, 2}


def test_the_fault_deck_deals_every_kind_once_per_round(soak):
    import random

    kinds = ["a", "b", "c", "d", "e", "f", "g"]
    deck = soak.FaultDeck(random.Random(1), kinds, 3)
    hands = [deck.deal() for _ in range(7)]  # 21 kinds dealt: three rounds of seven
    assert all(len(set(h)) == 3 for h in hands)  # distinct within a batch
    dealt = [k for h in hands for k in h]
    assert sorted(dealt[:7]) == kinds  # the first round deals each kind once
    assert {k: dealt.count(k) for k in kinds} == dict.fromkeys(kinds, 3)
    again = soak.FaultDeck(random.Random(1), kinds, 3)
    assert [again.deal() for _ in range(7)] == hands  # the seed fixes the faults
