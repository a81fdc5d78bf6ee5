"""Reliability of the queues: concurrent writers (threads and processes), concurrent claimers, races between
enqueue and status updates, and (Hub) injected 500/429/412/timeouts/"landed but 500" on commits. Also the Hub
request budget per operation and the absence of tokens in anything stored or raised."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import close_session, set_client_factory

from scheduler.queue.base import QueueUnavailable
from scheduler.queue.local import LocalQueue
from scheduler.retry import RetryPolicy
from scheduler.task import TaskStatus
from tests.conftest import ALICE_TOKEN, BOB_TOKEN
from tests.scheduler.helpers import make_images, make_task
from tests.scheduler.queues import make_hub_queue, unique_repo

pytestmark = pytest.mark.timeout(240)

FAST_CONFLICTS = RetryPolicy(attempts=60, base_s=0.005, max_s=0.2, jitter=1.0)
COMMIT = r"/commit/main$"


def new_backend(kind: str, request, tmp_path):
    """A factory of independent queue handles on one store (each thread acts as its own container)."""
    if kind == "local":
        folder = tmp_path / "queue"
        return (lambda: LocalQueue(folder)), ["--local", str(folder)]
    hub = request.getfixturevalue("hub")
    repo = unique_repo()
    return (lambda: make_hub_queue(hub, ALICE_TOKEN, repo, conflict_backoff=FAST_CONFLICTS)), ["--queue", repo]


@pytest.mark.parametrize("kind", ["local", "hub"])
def test_twenty_concurrent_enqueuers_threads_and_processes(kind, request, tmp_path):
    factory, where = new_backend(kind, request, tmp_path)
    factory().enqueue(make_task(id="seed"), make_images(tmp_path / "seed", 1))  # the repo exists before the race
    images = make_images(tmp_path / "imgs", 2)
    n_threads, n_procs = 16, 4
    env = {**os.environ, "RETRY_BASE_S": "0.01"}
    if kind == "local":  # no Hub account: nothing is uploaded, so the submit checks no output repo on the Hub
        env.pop("HF_TOKEN", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "scheduler", *where, "submit", "--images", str(tmp_path / "imgs"), "--prompt", f"proc {i}", "--output-repo", "alice/out", "--id", f"proc{i}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(n_procs)
    ]
    barrier = threading.Barrier(n_threads)

    def enqueue(i: int) -> str:
        queue = factory()
        barrier.wait()
        return queue.enqueue(make_task(id=f"thread{i}", instance_prompt=f"thread {i}"), images).id

    with ThreadPoolExecutor(n_threads) as pool:
        ids = list(pool.map(enqueue, range(n_threads)))
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    stored = factory().list()
    expected = {f"thread{i}" for i in range(n_threads)} | {f"proc{i}" for i in range(n_procs)} | {"seed"}
    assert sorted(ids) == sorted(f"thread{i}" for i in range(n_threads))
    assert len(stored) == 21 and {t.id for t in stored} == expected
    assert all(t.status is TaskStatus.PENDING and t.images.count in (1, 2) for t in stored)
    one = next(t for t in stored if t.id == "proc3")
    assert len(list(factory().fetch_images(one, tmp_path / "fetched").iterdir())) == 2


@pytest.mark.parametrize("kind", ["local", "hub"])
def test_five_concurrent_claimers_one_winner(kind, request, tmp_path):
    factory, _ = new_backend(kind, request, tmp_path)
    task = factory().enqueue(make_task(), make_images(tmp_path, 1))
    barrier = threading.Barrier(5)

    def claim(i: int):
        queue = factory()
        barrier.wait()
        return queue.claim(task.id, f"worker{i}", 300)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(claim, range(5)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = factory().get(task.id)
    assert stored.status is TaskStatus.RUNNING and stored.attempts == 1
    assert stored.lease.holder == winners[0].lease.holder


@pytest.mark.parametrize("kind", ["local", "hub"])
def test_enqueue_racing_status_updates_both_survive(kind, request, tmp_path):
    factory, _ = new_backend(kind, request, tmp_path)
    images = make_images(tmp_path, 1)
    running = factory().enqueue(make_task(id="running"), images)
    factory().claim(running.id, "w", 300)
    rounds = 4

    def enqueuer():
        queue = factory()
        for i in range(rounds):
            queue.enqueue(make_task(id=f"new{i}"), images)

    def updater():
        queue = factory()
        for i in range(rounds):
            queue.heartbeat(running.id, "w", 300, {"step": i})
        queue.complete(running.id, "w", "https://example/model")

    threads = [threading.Thread(target=enqueuer), threading.Thread(target=updater)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stored = {t.id: t for t in factory().list()}
    assert set(stored) == {"running", *(f"new{i}" for i in range(rounds))}
    assert stored["running"].status is TaskStatus.DONE and stored["running"].progress == {"step": rounds - 1}


# --- Hub faults --------------------------------------------------------------------------------------------


def commit_statuses(hub, repo):
    return [r.status for r in hub.requests("POST", rf"^/api/datasets/{repo}/commit/")]


@pytest.fixture
def hub_queue(hub):
    queue = make_hub_queue(hub, ALICE_TOKEN, conflict_backoff=FAST_CONFLICTS)
    queue.ensure_repo()
    hub.clear_requests()
    return queue


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"status": 500, "count": 2}, [500, 500, 200]),
        ({"status": 503}, [503, 200]),
        ({"status": 429, "retry_after": 0.05}, [429, 200]),
        ({"status": 412, "count": 5}, [412] * 5 + [200]),
        ({"status": 500, "land_then_fail": True}, [500]),
    ],
    ids=["500x2", "503", "429-retry-after", "412-storm", "landed-but-500"],
)
def test_enqueue_survives_commit_faults_without_loss_or_duplicate(hub, hub_queue, tmp_path, fault, expected):
    repo = hub_queue.repo_id
    hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", **fault)
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 2))
    assert commit_statuses(hub, repo) == expected
    fresh = make_hub_queue(hub, ALICE_TOKEN, repo)
    assert [t.id for t in fresh.list()] == [task.id]
    assert len(list(fresh.fetch_images(fresh.get(task.id), tmp_path / "out").iterdir())) == 2


def test_claim_landed_but_500_counts_one_attempt(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 1))
    hub.clear_requests()
    hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", status=500, land_then_fail=True)
    claimed = hub_queue.claim(task.id, "w1", 300)
    assert claimed is not None and claimed.attempts == 1
    assert commit_statuses(hub, repo) == [500]
    assert make_hub_queue(hub, ALICE_TOKEN, repo).get(task.id).attempts == 1


def test_requeue_landed_but_500_reports_the_requeued_task(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 1))
    hub_queue.claim(task.id, "dead", 1)
    hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", status=502, land_then_fail=True)
    changed = hub_queue.requeue_expired(time.time() + 10)
    assert [t.id for t in changed] == [task.id]
    stored = make_hub_queue(hub, ALICE_TOKEN, repo).get(task.id)
    assert stored.status is TaskStatus.PENDING and stored.attempts == 1


def test_delete_landed_but_500_is_reported_done_and_not_redone(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 2))
    hub_queue.cancel(task.id)
    hub.clear_requests()
    hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", status=500, land_then_fail=True)
    assert hub_queue.delete(task.id).id == task.id  # the re-read finds the operation: no second delete (a 404)
    assert commit_statuses(hub, repo) == [500]
    assert make_hub_queue(hub, ALICE_TOKEN, repo).list() == []
    assert not [f for f in hub_queue.api.list_repo_files(repo, repo_type="dataset") if task.id in f]


def test_reads_retry_transient_errors(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 1))
    hub.inject_fault("HEAD", rf"^/datasets/{repo}/resolve/main/queue.json$", status=503, count=2)
    assert [t.id for t in make_hub_queue(hub, ALICE_TOKEN, repo).list()] == [task.id]


@contextlib.contextmanager
def client_timeout(seconds: float):
    """huggingface_hub's shared HTTP client with a short timeout (it has none by default)."""
    set_client_factory(lambda: httpx2.Client(event_hooks={"request": [hf_http.hf_request_event_hook]}, follow_redirects=True, timeout=seconds))
    close_session()
    try:
        yield
    finally:
        set_client_factory(hf_http.default_client_factory)
        close_session()


def test_commit_timeouts_neither_lose_nor_duplicate(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    images = make_images(tmp_path, 1)
    with client_timeout(0.5):
        hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", delay_s=1.0)
        task = hub_queue.enqueue(make_task(), images)
        hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", delay_s=1.0)
        claimed = hub_queue.claim(task.id, "w1", 300)
    time.sleep(1.0)  # let any delayed commit finish on the server
    statuses = commit_statuses(hub, repo)
    assert statuses.count(200) == 2 and len(statuses) >= 3  # the timed-out commits were retried, one landed each
    stored = make_hub_queue(hub, ALICE_TOKEN, repo).list()
    assert [t.id for t in stored] == [task.id]
    assert claimed is not None and stored[0].attempts == 1 and stored[0].lease.holder == "w1"


def test_persistent_failure_raises_without_token(hub, hub_queue, tmp_path):
    repo = hub_queue.repo_id
    hub.inject_fault("POST", rf"^/api/datasets/{repo}/commit/", status=500, count=1000)
    hub_queue.conflict_attempts = 4
    with pytest.raises(QueueUnavailable) as info:
        hub_queue.enqueue(make_task(), make_images(tmp_path, 1))
    assert repo in str(info.value)
    hub.clear_faults()
    assert make_hub_queue(hub, ALICE_TOKEN, repo).list() == []
    text = f"{info.value} {info.value.__cause__!r} {info.value.__context__!r}"
    assert ALICE_TOKEN not in text


def test_foreign_namespace_gives_a_clear_error_without_token(hub, tmp_path):
    queue = make_hub_queue(hub, BOB_TOKEN, unique_repo("alice"))
    with pytest.raises(QueueUnavailable) as info:
        queue.enqueue(make_task(), make_images(tmp_path, 1))
    assert "write token" in str(info.value) and BOB_TOKEN not in str(info.value)


# --- request budget -----------------------------------------------------------------------------------------

# Upper bounds per operation, from a process that holds the latest state (the worker's normal case); complete asks
# once which of the task's checkpoints are there to remove with its photos (the Hub refuses to delete a missing folder).
BUDGET = {"unchanged read": 1, "changed read": 3, "enqueue": 3, "claim": 3, "heartbeat": 3, "complete": 4}


def test_hub_requests_per_operation(hub, tmp_path):
    queue = make_hub_queue(hub, ALICE_TOKEN)
    queue.ensure_repo()
    repo = queue.repo_id
    images = make_images(tmp_path, 3)
    counts = {}

    def measure(name, fn):
        hub.clear_requests()
        fn()
        counts[name] = len(hub.requests(path_regex=repo))

    measure("read before the first task", queue.list)  # a new repo: no queue.json yet
    queue.enqueue(make_task(), images)
    measure("enqueue", lambda: queue.enqueue(make_task(id="measured"), images))
    measure("unchanged read", queue.list)
    other = make_hub_queue(hub, ALICE_TOKEN, repo)
    other.list()
    queue.cancel(queue.list()[0].id)  # a change made elsewhere...
    measure("changed read", other.list)  # ...costs the other reader HEAD + HEAD + GET
    measure("claim", lambda: queue.claim("measured", "w1", 300))
    measure("heartbeat", lambda: queue.heartbeat("measured", "w1", 300, {"step": 1}))
    measure("complete", lambda: queue.complete("measured", "w1", "https://example/m"))
    print("\nHub requests per operation:", counts)
    for name, bound in BUDGET.items():
        assert counts[name] <= bound, (name, counts)
    assert counts["unchanged read"] == 1
    assert counts["read before the first task"] == 1


def test_no_token_in_anything_stored(hub, hub_queue, tmp_path):
    task = hub_queue.enqueue(make_task(), make_images(tmp_path, 1))
    hub_queue.claim(task.id, "w", 60)
    hub_queue.fail(task.id, "w", "boom")
    leaks = [label for label, data in hub.stored_bytes() if ALICE_TOKEN.encode() in data or BOB_TOKEN.encode() in data]
    assert leaks == []
