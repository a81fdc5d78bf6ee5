"""Soak run of the whole loop on the Hub emulator, with random faults, in ``space`` or ``jobs`` mode.

    python benchmarks/soak.py [--mode space|jobs] [--tasks N] [--batch B] [--seed S] [--parallel P]

Starts its own emulator (temporary root), runs ``app.py`` as a Space there (CPU training of a tiny random model on
the emulated t4-small, as in tests/faults) and enqueues N tasks in batches with the real HubQueue. The seed fixes
the task list (the steps of each task: the same in both modes) and the faults drawn for each batch.

``--mode space`` (default, issue 6's scenarios): the Space upgrades itself to train. Faults: the trainer SIGKILLed,
the app container killed, a crashing or hanging trainer, 5xx/429 and slow answers on queue reads and writes, failed
model uploads, three failed release requests (the app then pauses the Space; the soak restarts it as an owner
would), refused GPU requests (the soak retries the task as the owner would).

``--mode jobs`` (issue 12): the Space stays on cpu-basic with ``TRAINING_BACKEND=jobs`` and ``MAX_PARALLEL_JOBS=P``
and runs each task as an emulated Hugging Face Job. Faults: a Job crashing, cancelled or deleted from outside,
creation refused with 402 (the owner then retries the task), Job logs unavailable, 5xx/429 and slow answers on the
queue and on the Jobs API (ambiguous creations included), the trainer SIGKILLed inside its Job, a hanging or
crashing trainer, failed uploads, the Space's container killed while its Jobs run.

Then it checks the invariants and appends a ``soak`` record (with ``mode`` and ``wall_s``) to
benchmarks/results/soak-<date>-cpu.jsonl:

- every task ends DONE, FAILED or CANCELLED;
- no task is trained by two trainers at the same time (event time ranges of its runs never overlap) and no two
  workers hold it at once (queue history: one holder per version, the next claim after the previous lease);
- paid time <= training time + a bounded overhead per task (``--overhead-bound-s``);
- space mode: the Space ends on idle hardware (cpu-basic or paused) with no paid period open;
- jobs mode: never two live Jobs for one task (the emulator's Jobs registry), no Job alive at the end, no Job ran
  past its timeout, no Space hardware request at all and the Space on cpu-basic only, every paid Job second
  belongs to a task of the soak (``paid_s_per_task`` from the Jobs ledger) and each Job's period is recorded once
  in the queue's billing, covering its ledger time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TOKEN = "hf_soak_owner_write"  # a fake token of the emulator's only user
OWNER = "alice"
FLAVOR = "t4-small"
LABEL_TASK, LABEL_SPACE = "dreambooth-task", "dreambooth-space"  # scheduler.backends.jobs_runner's labels
JOB_ALIVE = ("SCHEDULING", "RUNNING")
TIMEOUT_SLACK_S = 1.0  # the emulator's clock ticks every 0.05 s


def isolate_env() -> None:
    """The soak's process env: no telemetry, no real token or Space, the emulator reached without a proxy."""
    os.environ.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      HF_HUB_DISABLE_UPDATE_CHECK="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    for var in ("HF_TOKEN", "SPACE_ID", "SYSTEM", "HF_HUB_OFFLINE"):
        os.environ.pop(var, None)


def task_steps(seed: int, n: int) -> list[int]:
    """The soak's task list for ``seed``: the training steps of each task (drawn apart from the faults, so the
    same seed gives the same tasks in both modes)."""
    rng = random.Random(f"soak-tasks-{seed}")
    return [rng.choice([1, 2]) for _ in range(n)]


def start_space(hub, root: Path, model: Path, mode: str, parallel: int, lease_s: int):
    """tests/faults/space.py's SpaceRun on a private emulator (same app, same fresh-disk containers); in jobs mode
    the Space dispatches Jobs, which run this checkout with one shared disk (``root/job-data``, as in
    tests/test_jobs_backend.py)."""
    from tests.faults import space as helpers

    os.environ["HF_HOME"] = str(root / "hf-home")
    os.environ.pop("HF_TOKEN", None)  # tests.conftest (imported by the helpers) sets the test suite's token
    variables = {"LEASE_S": str(lease_s)}
    if mode == "jobs":
        variables.update(TRAINING_BACKEND="jobs", MAX_PARALLEL_JOBS=str(parallel))
        hub.configure_jobs(scheduling_s=0.5, flavor_env={FLAVOR: {"DATA_DIR": str(job_data(root)), "KEEP_RUN_FOLDERS": "1"}})  # fmt: skip
    return helpers.start_space(hub, root, model, owner_token=TOKEN, hf_token=TOKEN, name="soak",
                               variables=variables, switch_delay_s=0.5)  # fmt: skip


def job_data(root: Path) -> Path:
    return root / "job-data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["space", "jobs"], default="space", help="TRAINING_BACKEND of the Space")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2, help="MAX_PARALLEL_JOBS in jobs mode")
    ap.add_argument(
        "--overhead-bound-s", type=float, default=60.0, help="allowed paid seconds per task beyond training"
    )
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/soak-<date>-cpu.jsonl)")
    args = ap.parse_args(argv)
    isolate_env()
    sys.path.insert(0, str(ROOT))
    rng = random.Random(args.seed)
    steps = task_steps(args.seed, args.tasks)

    from tests.fakehub.auth import User
    from tests.fakehub.fixtures import run_fakehub
    from tests.tiny_models import build_tiny_sd, make_images

    started = time.time()
    with (
        tempfile.TemporaryDirectory(prefix="soak-") as tmp,
        run_fakehub(Path(tmp) / "hub", users=[User(OWNER, TOKEN, "write")]) as hub,
    ):
        root = Path(tmp)
        model = build_tiny_sd(root / "tiny-sd")
        images = make_images(root / "photos", 3)
        run = start_space(hub, root / "run", model, args.mode, args.parallel, lease_s=8)
        faults: Counter[str] = Counter()
        ids: list[str] = []
        batch = run_batch_jobs if args.mode == "jobs" else run_batch
        if args.mode == "jobs":
            deal = FaultDeck(rng, JOB_FAULTS, JOB_FAULTS_PER_BATCH).deal
        else:
            deal = lambda: rng.sample(FAULTS, 2)  # noqa: E731 - today's draw, two kinds per batch
        try:
            for first in range(0, args.tasks, args.batch):
                ids += batch(run, hub, rng, images, steps[first : first + args.batch], faults, deal)
            if args.mode == "jobs":
                result = check_jobs(
                    run, hub, run.tasks(), ids, args.overhead_bound_s, job_data(root / "run"), args.parallel
                )
            else:
                run.wait_released(60)
                result = check(run, hub, run.tasks(), ids, args.overhead_bound_s)
        finally:
            run.stop()
    record = {
        "benchmark": "soak",
        "mode": args.mode,
        "tasks": len(ids),
        "batch": args.batch,
        "seed": args.seed,
        "faults_injected": dict(sorted(faults.items())),
        "violations": len(result["violations"]),
        "violation_details": result["violations"][:20],
        "outcomes": result["outcomes"],
        "gpu_seconds": round(result["gpu_s"], 1),
        "training_seconds": round(result["training_s"], 1),
        "gpu_overhead_s_per_task": round(result["overhead_per_task"], 2),
        "overhead_bound_s_per_task": args.overhead_bound_s,
        "gpu_periods": result["gpu_periods"],
        "paid_s_per_task_mean": round(result["gpu_s"] / max(1, len(ids)), 1),
        "wall_s": round(time.time() - started, 1),
        "device": "CPU (emulated t4-small on the Hub emulator, tiny random model)",
        "date": dt.date.today().isoformat(),
    }
    if args.mode == "jobs":
        record.update(
            max_parallel_jobs=args.parallel,
            jobs=result["jobs"],
            job_stages=result["job_stages"],
            max_jobs_alive=result["max_jobs_alive"],
            paid_s_per_task={i: round(s, 1) for i, s in result["paid_s_per_task"].items()},
            device="CPU (emulated t4-small Jobs on the Hub emulator, tiny random model)",
        )
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"soak-{record['date']}-cpu.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0 if not result["violations"] else 1


# ============================================================================================== space mode
FAULTS = ["none", "none", "trainer_sigkill", "container_kill", "crash_recipe", "hang_recipe", "queue_errors",
          "queue_slow", "upload_transient", "upload_permanent", "release_500x3", "gpu_refused"]  # fmt: skip


def batch_tasks(run, steps: list[int], chosen: list[str]) -> tuple[list, int]:
    """The batch's tasks (one per entry of ``steps``); the chosen faults turn some into fault recipes. Returns the
    tasks and the index of the one whose trainer or container gets killed."""
    from tests.faults.space import tiny_params

    kill = any(k in chosen for k in ("trainer_sigkill", "container_kill"))
    broken = "crash_recipe" in chosen or "hang_recipe" in chosen
    victim = 1 if broken else 0
    tasks = []
    for i, n in enumerate(steps):
        recipe, kw, params = "dreambooth-lora", {}, tiny_params(n)
        if i == 0 and "crash_recipe" in chosen:
            recipe = "faults-crash"
        elif i == 0 and "hang_recipe" in chosen:
            recipe, kw = "faults-hang", {"deadline_s": 5.0}
        elif i == victim and kill:
            recipe, params = "faults-slow-lora", tiny_params(6, checkpoint_every=2)
        tasks.append(run.task(recipe, params, **kw))
    return tasks, min(victim, len(tasks) - 1)


def inject_upload_faults(hub, tasks: list, chosen: list[str]) -> None:
    if "upload_transient" in chosen:
        hub.inject_fault("POST", rf"^/api/models/{tasks[-1].output_repo}/commit/main$", status=503, count=1)
    if "upload_permanent" in chosen:
        hub.inject_fault("POST", rf"^/api/models/{tasks[-1].output_repo}/commit/main$", status=500, count=100)


def count_faults(faults: Counter, chosen: list[str]) -> None:
    for name in chosen:
        if name != "none":
            faults[name] += 1


def retry_refused(run, first_id: str) -> None:
    """Wait for the refusal's note on ``first_id``, then retry every held task (the owner fixed billing)."""
    from tests.faults.space import wait_for

    wait_for(lambda: run.get(first_id).note, 90, "the refusal note")
    time.sleep(2)  # no request loop: the counts are checked by the tests
    for t in run.tasks():
        if t.status.value == "PENDING" and t.note:
            run.queue.retry(t.id)


def run_batch(run, hub, rng: random.Random, images, steps: list[int], faults: Counter, deal) -> list[str]:
    """Space mode: enqueue the batch, disturb the run with one or two random faults, wait until all end and the GPU
    is released."""
    from tests.faults.space import wait_for

    chosen = deal()
    tasks, victim = batch_tasks(run, steps, chosen)
    inject_upload_faults(hub, tasks, chosen)
    if "gpu_refused" in chosen:
        hub.inject_fault("POST", rf"^/api/spaces/{run.repo}/hardware$", status=402, count=1,
                         body='{"error": "You must add a payment method to your account to upgrade your space"}')  # fmt: skip
    count_faults(faults, chosen)
    stop = threading.Event()
    noise = threading.Thread(target=queue_noise, args=(run, hub, rng.random(), chosen, stop), daemon=True)
    noise.start()
    for t in tasks:
        run.queue.enqueue(t, images)
    try:
        if "gpu_refused" in chosen:
            retry_refused(run, tasks[0].id)
        if "release_500x3" in chosen:
            wait_for(lambda: run.runtime()["hardware"]["current"] == FLAVOR, 60, "the upgrade")
            hub.inject_fault("POST", rf"^/api/spaces/{run.repo}/hardware$", status=500, count=3)
        if "trainer_sigkill" in chosen or "container_kill" in chosen:
            first = tasks[victim].id
            wait_for(lambda: any(e.get("event") == "checkpoint" for e in run.events(first)), 90, "a checkpoint")
            if "container_kill" in chosen:
                run.kill_container()
            else:
                for pid in run.trainer_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        run.wait_terminal([t.id for t in tasks], 300)
        if "release_500x3" in chosen:
            wait_for(lambda: run.runtime()["stage"] == "PAUSED", 60, "the pause after three failed releases")
        stop.set()
        noise.join()
        hub.clear_faults()
        rt = run.runtime()
        if rt["stage"] == "PAUSED":
            run.queue.api.restart_space(run.repo)  # the owner restarts the paused Space (on cpu-basic)
            hub.wait_for_stage(run.repo, "RUNNING", 60)
        run.wait_released(60)
    finally:
        stop.set()
        hub.clear_faults()
    return [t.id for t in tasks]


def queue_noise(run, hub, level: float, chosen: list[str], stop: threading.Event) -> None:
    """While a batch runs: 5xx/429 or slow answers on the queue repo's reads and writes (and, in jobs mode, on the
    Jobs API), at random."""
    noisy = {"queue_errors", "queue_slow", "jobs_api_errors", "jobs_api_slow"}
    if not noisy & set(chosen):
        return
    rng = random.Random(level)
    repo = run.queue.repo_id
    queue_paths = [rf"^/api/datasets/{repo}/commit/main$", rf"^/datasets/{repo}/resolve/main/queue\.json$"]
    jobs_paths = [
        rf"^/api/jobs/{OWNER}$",
        rf"^/api/jobs/{OWNER}/[0-9a-f]+$",
        rf"^/api/jobs/{OWNER}/[0-9a-f]+/(logs|cancel)$",
    ]
    while not stop.wait(rng.uniform(0.5, 2.0)):
        for errors, slow, paths in (("queue_errors", "queue_slow", queue_paths), ("jobs_api_errors", "jobs_api_slow", jobs_paths)):  # fmt: skip
            path = rng.choice(paths)
            if errors in chosen:
                status = rng.choice([429, 500, 502, 503])
                ambiguous = (path.endswith("commit/main$") or path == jobs_paths[0]) and rng.random() < 0.5
                hub.inject_fault("*", path, status=status, count=1, land_then_fail=ambiguous,
                                 retry_after=0.2 if status == 429 else None)  # fmt: skip
            if slow in chosen:
                hub.inject_fault("*", path, delay_s=rng.uniform(0.5, 2.0), count=1)


def training_spans(run_dirs: list[Path]) -> list[tuple[float, float]]:
    """(first, last) event time of each trainer run (one ``events-*.jsonl`` each) in the task's run folders."""
    spans = []
    for d in run_dirs:
        for f in d.glob("events-*.jsonl"):
            times = []
            for line in f.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    times.append(float(json.loads(line)["time"]))
            if times:
                spans.append((min(times), max(times)))
    return sorted(spans)


def overlaps(spans: list[tuple[float, float]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Pairs of consecutive (sorted) spans where the later one starts before the earlier one ends."""
    spans = sorted(spans)
    out, reach = [], None
    for span in spans:
        if reach is not None and span[0] < reach[1]:
            out.append((reach, span))
        if reach is None or span[1] > reach[1]:
            reach = span
    return out


def common_violations(run, tasks, ids: list[str], dirs) -> tuple[list[str], Counter, float]:
    """The invariants of both modes: every task terminal, no two trainers at once, one lease holder at a time.
    ``dirs(task_id)`` lists a task's run folders. Returns the violations, the outcomes and the training seconds."""
    violations: list[str] = []
    by_id = {t.id: t for t in tasks}
    outcomes = Counter(by_id[i].status.value if i in by_id else "LOST" for i in ids)
    for i in ids:
        t = by_id.get(i)
        if t is None:
            violations.append(f"task {i} lost")
        elif not t.status.terminal:
            violations.append(f"task {i} ended {t.status.value}")
    if len(tasks) != len(set(t.id for t in tasks)):
        violations.append("duplicated task ids in the queue")
    training_s = 0.0
    for i in ids:
        spans = training_spans(dirs(i))
        training_s += sum(b - a for a, b in spans)
        for (a0, b0), (a1, b1) in overlaps(spans):
            violations.append(f"task {i} trained concurrently: {a0:.1f}-{b0:.1f} and {a1:.1f}-{b1:.1f}")
    # One holder at a time in the queue history; a new holder only after the previous lease expired or was dropped.
    last: dict[str, tuple[str, float]] = {}
    for _when, version in run.history():
        for i, t in version.items():
            if t.status.value != "RUNNING" or t.lease is None:
                last.pop(i, None) if t.status.value != "RUNNING" else None
                continue
            prev = last.get(i)
            if prev and prev[0] != t.lease.holder and t.started_at is not None and t.started_at < prev[1] - 1.0:
                violations.append(f"task {i} claimed by {t.lease.holder} while {prev[0]}'s lease ran")
            last[i] = (t.lease.holder, t.lease.expires_at)
    return violations, outcomes, training_s


def check(run, hub, tasks, ids: list[str], bound_s: float) -> dict:
    """Space mode's invariants; returns the violations and the figures."""
    violations, outcomes, training_s = common_violations(run, tasks, ids, run.run_dirs)
    rt = run.runtime()
    if not (rt["stage"] == "PAUSED" or rt["hardware"]["current"] == "cpu-basic"):
        violations.append(f"the Space ended on {rt['hardware']} ({rt['stage']})")
    if run.open_paid_periods():
        violations.append("a paid period is still open")
    gpu_s = hub.billed_seconds(run.repo).get(FLAVOR, 0.0)
    overhead = (gpu_s - training_s) / max(1, len(ids))
    if overhead > bound_s:
        violations.append(f"paid overhead {overhead:.1f} s per task > {bound_s} s")
    return {"violations": violations, "outcomes": dict(outcomes), "gpu_s": gpu_s, "training_s": training_s,
            "overhead_per_task": overhead, "gpu_periods": len(run.gpu_containers())}  # fmt: skip


# =============================================================================================== jobs mode
JOB_FAULTS = ["none", "job_crash", "job_cancel", "job_delete", "job_refused", "logs_unavailable", "jobs_api_errors",
              "jobs_api_slow", "queue_errors", "queue_slow", "trainer_sigkill", "hang_recipe", "crash_recipe",
              "upload_transient", "upload_permanent", "container_kill"]  # fmt: skip
JOB_FAULTS_PER_BATCH = 3


class FaultDeck:
    """Deals each batch ``per_batch`` distinct fault kinds from shuffled rounds of ``kinds``: every kind is dealt
    once per round, so a run of ``len(kinds) / per_batch`` batches or more injects every kind."""

    def __init__(self, rng: random.Random, kinds: list[str], per_batch: int) -> None:
        self.rng, self.kinds, self.per_batch = rng, list(kinds), per_batch
        self.pile: list[str] = []

    def deal(self) -> list[str]:
        hand: list[str] = []
        while len(hand) < self.per_batch:
            if not self.pile:
                self.pile = self.rng.sample(self.kinds, len(self.kinds))
            kind = next((k for k in self.pile if k not in hand), None)
            if kind is None:  # the rest of this round is already in the hand: add the next round behind it
                self.pile += self.rng.sample(self.kinds, len(self.kinds))
                continue
            self.pile.remove(kind)
            hand.append(kind)
        return hand


def space_jobs(hub, repo: str) -> list[dict]:
    """The Space's Jobs as the emulator's registry holds them (``inspect_job`` JSON), oldest first."""
    return [j for j in hub.jobs(OWNER) if (j.get("labels") or {}).get(LABEL_SPACE) == repo]


def job_events(data_dir: Path, task_id: str) -> list[dict]:
    out = []
    for f in sorted((data_dir / "runs" / task_id).glob("events-*.jsonl")):
        for line in f.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def run_batch_jobs(run, hub, rng: random.Random, images, steps: list[int], faults: Counter, deal) -> list[str]:
    """Jobs mode: enqueue the batch, inject random Job faults (and queue/Jobs API noise), wait until every task ends
    and no Job of the Space is alive."""
    from tests.faults.space import trainer_pids, wait_for

    data = job_data(run.cwd.parent)
    chosen = deal()
    tasks, victim = batch_tasks(run, steps, chosen)
    n = len(tasks)
    inject_upload_faults(hub, tasks, chosen)
    # Job faults hit the Jobs created afterwards whose labels match: one task each (a crash, a kill from outside).
    if "job_crash" in chosen:
        hub.inject_job_fault("crash", namespace=OWNER, labels={LABEL_TASK: tasks[2 % n].id}, at_s=rng.uniform(2.0, 15.0),
                             exit_code=rng.choice([1, 137]))  # fmt: skip
    for kind in ("cancel", "delete"):
        if f"job_{kind}" in chosen:
            hub.inject_job_fault(kind, namespace=OWNER, labels={LABEL_TASK: tasks[3 % n].id}, at_s=rng.uniform(2.0, 15.0))  # fmt: skip
    if "job_refused" in chosen:
        hub.inject_job_fault("refuse", namespace=OWNER, labels={LABEL_TASK: tasks[-1].id}, status=402)
    if "logs_unavailable" in chosen:
        hub.inject_job_fault("logs_unavailable", namespace=OWNER, count=2 * n)
    count_faults(faults, chosen)
    stop = threading.Event()
    noise = threading.Thread(target=queue_noise, args=(run, hub, rng.random(), chosen, stop), daemon=True)
    noise.start()
    for t in tasks:
        run.queue.enqueue(t, images)
    try:
        if "job_refused" in chosen:
            retry_refused(run, tasks[-1].id)
        if "trainer_sigkill" in chosen or "container_kill" in chosen:
            first = tasks[victim].id
            wait_for(lambda: any(e.get("event") == "checkpoint" for e in job_events(data, first)), 180, "a checkpoint")
            if "container_kill" in chosen:
                run.kill_container()  # the Space's container (its worker); the Jobs run on
            if "trainer_sigkill" in chosen:  # independent of the Space's container in jobs mode: both can happen
                for pid in trainer_pids(str(data), first):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        run.wait_terminal([t.id for t in tasks], 600)
        stop.set()
        noise.join()
        hub.clear_faults()
        wait_for(lambda: not [j for j in space_jobs(hub, run.repo) if j["status"]["stage"] in JOB_ALIVE], 180,
                 "the batch's Jobs to end")  # fmt: skip
    finally:
        stop.set()
        hub.clear_faults()
    return [t.id for t in tasks]


def parse_time(value: str | None) -> float | None:
    return None if not value else dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def job_violations(jobs: list[dict], ids: list[str], now: float) -> list[str]:
    """The Jobs registry's invariants: never two live Jobs (created -> finished) for one task, no Job alive, no Job
    that ran past its timeout, every Job labelled with a task of the soak. ``jobs``: ``inspect_job`` JSON."""
    violations = []
    known = set(ids)
    by_task: dict[str, list[tuple[float, float, str]]] = {}
    for job in jobs:
        task = (job.get("labels") or {}).get(LABEL_TASK)
        created, started, finished = (parse_time(job.get(k)) for k in ("createdAt", "startedAt", "finishedAt"))
        stage = job["status"]["stage"]
        if task not in known:
            violations.append(f"Job {job['id']} runs for {task!r}, not a task of the soak")
        if stage in JOB_ALIVE:
            violations.append(f"Job {job['id']} of task {task} is still {stage}")
        if started is not None and (finished or now) - started > job["timeoutSeconds"] + TIMEOUT_SLACK_S:
            violations.append(f"Job {job['id']} of task {task} ran {(finished or now) - started:.1f} s, past its "
                              f"timeout of {job['timeoutSeconds']} s")  # fmt: skip
        by_task.setdefault(task or "", []).append((created or now, finished or now, job["id"]))
    for task, periods in by_task.items():
        periods.sort()
        for (a0, b0, j0), (a1, b1, j1) in zip(periods, periods[1:], strict=False):
            if a1 < b0:
                violations.append(f"task {task} had two live Jobs: {j0} ({a0:.1f}-{b0:.1f}) and {j1} ({a1:.1f}-{b1:.1f})")  # fmt: skip
    return violations


def paid_per_task(ledger: list[dict]) -> dict[str, float]:
    """Billed Job seconds per task label, from the Jobs ledger."""
    paid: dict[str, float] = {}
    for p in ledger:
        task = p["labels"].get(LABEL_TASK, "")
        paid[task] = paid.get(task, 0.0) + p["seconds"]
    return paid


def billing_violations(ledger: list[dict], periods: list) -> list[str]:
    """Each paid Job is recorded exactly once in the queue's billing, and that record covers its ledger time."""
    recorded: dict[str, list] = {}
    for p in periods:
        if (p.closed_by or "").startswith("job "):
            recorded.setdefault(p.closed_by[4:], []).append(p)
    violations = []
    for entry in ledger:
        got = recorded.get(entry["job_id"], [])
        if len(got) != 1:
            violations.append(f"Job {entry['job_id']} recorded {len(got)} times in the queue's billing")
        elif (got[0].released_at or 0.0) - got[0].requested_at < entry["seconds"] - TIMEOUT_SLACK_S:
            violations.append(f"Job {entry['job_id']}: the queue records less than its {entry['seconds']:.1f} paid s")
    return violations


def max_alive(jobs: list[dict], now: float) -> int:
    """The most Jobs alive (created -> finished) at once."""
    edges = []
    for j in jobs:
        edges += [(parse_time(j["createdAt"]) or now, 1), (parse_time(j.get("finishedAt")) or now, -1)]
    alive = peak = 0
    for _, step in sorted(edges):
        alive += step
        peak = max(peak, alive)
    return peak


def check_jobs(run, hub, tasks, ids: list[str], bound_s: float, data: Path, parallel: int) -> dict:
    """Jobs mode's invariants; returns the violations and the figures."""
    from tests.faults.space import wait_for

    violations, outcomes, training_s = common_violations(run, tasks, ids, lambda i: [data / "runs" / i])
    jobs = space_jobs(hub, run.repo)
    ledger = [p for p in hub.jobs_ledger(OWNER) if p["labels"].get(LABEL_SPACE) == run.repo]
    violations += job_violations(jobs, ids, time.time())
    if (peak := max_alive(jobs, time.time())) > parallel:
        violations.append(f"{peak} Jobs alive at once, more than MAX_PARALLEL_JOBS={parallel}")
    if hardware := run.hardware_posts():
        violations.append(f"{len(hardware)} Space hardware request(s) in jobs mode")
    rt = run.runtime()
    if rt["hardware"]["current"] != "cpu-basic" or set(hub.billed_seconds(run.repo)) - {"cpu-basic"}:
        violations.append(f"the Space left cpu-basic: {rt['hardware']}, billed {hub.billed_seconds(run.repo)}")

    def recorded() -> list | None:
        periods = run.queue.list_with_billing()[1]
        return None if billing_violations(ledger, periods) else periods

    with contextlib.suppress(AssertionError):  # the Space records a Job's period on its next loop
        wait_for(recorded, 60, "every Job's period in the queue's billing", every=1.0)
    violations += billing_violations(ledger, run.queue.list_with_billing()[1])
    paid = paid_per_task(ledger)
    gpu_s = sum(p["seconds"] for p in ledger if p["flavor"] == FLAVOR)
    if abs(sum(paid.values()) - sum(p["seconds"] for p in ledger)) > 1e-6 or set(paid) - set(ids):
        violations.append("paid Job seconds that belong to no task of the soak")
    overhead = (gpu_s - training_s) / max(1, len(ids))
    if overhead > bound_s:
        violations.append(f"paid overhead {overhead:.1f} s per task > {bound_s} s")
    return {"violations": violations, "outcomes": dict(outcomes), "gpu_s": gpu_s, "training_s": training_s,
            "overhead_per_task": overhead, "gpu_periods": len(ledger), "jobs": len(jobs),
            "job_stages": dict(Counter(j["status"]["stage"] for j in jobs)), "max_jobs_alive": peak,
            "paid_s_per_task": {i: paid.get(i, 0.0) for i in ids}}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
