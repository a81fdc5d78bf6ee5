"""Soak run of the whole loop on the Hub emulator, with random faults from issue 6's scenarios.

    python benchmarks/soak.py [--tasks N] [--batch B] [--seed S]

Starts its own emulator (temporary root), runs ``app.py`` as a Space there (CPU training of a tiny random model on
the emulated t4-small, as in tests/faults), enqueues N tasks in batches with the real HubQueue and, while they run,
injects random faults: the trainer SIGKILLed, the app container killed, a crashing or hanging trainer, 5xx/429 and
slow answers on queue reads and writes, failed model uploads, three failed release requests (the app then pauses
the Space; the soak restarts it as an owner would), refused GPU requests (the soak retries the task as the owner
would). Then it checks the invariants and appends a ``soak`` record to benchmarks/results/soak-<date>-cpu.jsonl:

- every task ends DONE, FAILED or CANCELLED;
- no task is trained by two trainers at the same time (event time ranges of its runs never overlap) and no two
  workers hold it at once (queue history: one holder per version, the next claim after the previous lease);
- the Space ends on idle hardware (cpu-basic or paused) with no paid period open;
- paid time <= training time + a bounded overhead per task (``--overhead-bound-s``).
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
sys.path.insert(0, str(ROOT))

TOKEN = "hf_soak_owner_write"  # a fake token of the emulator's only user
os.environ.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                  HF_HUB_DISABLE_UPDATE_CHECK="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")  # fmt: skip
for var in ("HF_TOKEN", "SPACE_ID", "SYSTEM", "HF_HUB_OFFLINE"):
    os.environ.pop(var, None)


class SoakSpace:
    """tests/faults/space.py's SpaceRun on a private emulator (same app, same fresh-disk containers)."""

    def __init__(self, hub, root: Path, model: Path, lease_s: int) -> None:
        from tests.faults import space as helpers

        os.environ["HF_HOME"] = str(root / "hf-home")
        self.helpers = helpers
        os.environ.pop("HF_TOKEN", None)  # tests.conftest (imported by the helpers) sets the test suite's token
        self.run = helpers.start_space(hub, root, model, owner_token=TOKEN, hf_token=TOKEN, name="soak",
                                       variables={"LEASE_S": str(lease_s)}, switch_delay_s=0.5)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overhead-bound-s", type=float, default=60.0, help="allowed paid seconds per task beyond training")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/soak-<date>-cpu.jsonl)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    from tests.fakehub.auth import User
    from tests.fakehub.fixtures import run_fakehub
    from tests.tiny_models import build_tiny_sd, make_images

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, run_fakehub(Path(tmp) / "hub", users=[User("alice", TOKEN, "write")]) as hub:
        root = Path(tmp)
        model = build_tiny_sd(root / "tiny-sd")
        images = make_images(root / "photos", 3)
        soak = SoakSpace(hub, root / "run", model, lease_s=8)
        run = soak.run
        faults: Counter[str] = Counter()
        ids: list[str] = []
        try:
            left = args.tasks
            while left > 0:
                n = min(args.batch, left)
                left -= n
                ids += run_batch(run, hub, rng, images, n, faults)
            run.wait_released(60)
            tasks = run.tasks()
            result = check(run, hub, tasks, ids, args.overhead_bound_s)
        finally:
            run.stop()
    record = {
        "benchmark": "soak",
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
        "wall_s": round(time.time() - started, 1),
        "device": "CPU (emulated t4-small on the Hub emulator, tiny random model)",
        "date": dt.date.today().isoformat(),
    }
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"soak-{record['date']}-cpu.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))
    return 0 if not result["violations"] else 1


FAULTS = ["none", "none", "trainer_sigkill", "container_kill", "crash_recipe", "hang_recipe", "queue_errors",
          "queue_slow", "upload_transient", "upload_permanent", "release_500x3", "gpu_refused"]  # fmt: skip


def run_batch(run, hub, rng: random.Random, images, n: int, faults: Counter) -> list[str]:
    """Enqueue ``n`` tasks, disturb the run with one or two random faults, wait until all end and the GPU is released."""
    from tests.faults.space import tiny_params, wait_for

    chosen = rng.sample(FAULTS, 2)
    kill = "trainer_sigkill" in chosen or "container_kill" in chosen
    broken = "crash_recipe" in chosen or "hang_recipe" in chosen
    victim = 1 if broken else 0  # the task whose trainer or container gets killed
    tasks = []
    for i in range(n):
        recipe, kw = "dreambooth-lora", {}
        params = tiny_params(rng.choice([1, 2]))
        if i == 0 and "crash_recipe" in chosen:
            recipe = "faults-crash"
        elif i == 0 and "hang_recipe" in chosen:
            recipe, kw = "faults-hang", {"deadline_s": 5.0}
        elif i == victim and kill:
            recipe, params = "faults-slow-lora", tiny_params(6, checkpoint_every=2)
        tasks.append(run.task(recipe, params, **kw))
    if "upload_transient" in chosen:
        hub.inject_fault("POST", rf"^/api/models/{tasks[-1].output_repo}/commit/main$", status=503, count=1)
    if "upload_permanent" in chosen:
        hub.inject_fault("POST", rf"^/api/models/{tasks[-1].output_repo}/commit/main$", status=500, count=100)
    if "gpu_refused" in chosen:
        hub.inject_fault("POST", rf"^/api/spaces/{run.repo}/hardware$", status=402, count=1,
                         body='{"error": "You must add a payment method to your account to upgrade your space"}')  # fmt: skip
    for name in chosen:
        if name != "none":
            faults[name] += 1
    stop = threading.Event()
    noise = threading.Thread(target=queue_noise, args=(run, hub, rng.random(), chosen, stop), daemon=True)
    noise.start()
    for t in tasks:
        run.queue.enqueue(t, images)
    try:
        if "gpu_refused" in chosen:
            wait_for(lambda: run.get(tasks[0].id).note, 60, "the refusal note")
            time.sleep(2)  # no request loop: the count is checked below
            for t in run.tasks():
                if t.status.value == "PENDING" and t.note:
                    run.queue.retry(t.id)  # the owner added a payment method and pressed Retry
        if "release_500x3" in chosen:
            wait_for(lambda: run.runtime()["hardware"]["current"] == "t4-small", 60, "the upgrade")
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
    """While a batch runs: 5xx/429 or slow answers on the queue repo's reads and writes, at random."""
    if "queue_errors" not in chosen and "queue_slow" not in chosen:
        return
    rng = random.Random(level)
    repo = run.queue.repo_id
    paths = [rf"^/api/datasets/{repo}/commit/main$", rf"^/datasets/{repo}/resolve/main/queue\.json$"]
    while not stop.wait(rng.uniform(0.5, 2.0)):
        path = rng.choice(paths)
        if "queue_errors" in chosen:
            status = rng.choice([429, 500, 502, 503])
            hub.inject_fault("*", path, status=status, count=1, land_then_fail="commit" in path and rng.random() < 0.5,
                             retry_after=0.2 if status == 429 else None)  # fmt: skip
        if "queue_slow" in chosen:
            hub.inject_fault("*", path, delay_s=rng.uniform(0.5, 2.0), count=1)


def check(run, hub, tasks, ids: list[str], bound_s: float) -> dict:
    """The invariants of the soak; returns the violations and the figures."""
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
    # No two trainers of one task at the same time.
    training_s = 0.0
    for i in ids:
        spans = []
        for d in run.run_dirs(i):
            for f in d.glob("events-*.jsonl"):
                times = [json.loads(line)["time"] for line in f.read_text().splitlines() if line.strip().startswith("{")]
                if times:
                    spans.append((min(times), max(times)))
        spans.sort()
        training_s += sum(b - a for a, b in spans)
        for (a0, b0), (a1, b1) in zip(spans, spans[1:], strict=False):
            if a1 < b0:
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
    rt = run.runtime()
    if not (rt["stage"] == "PAUSED" or rt["hardware"]["current"] == "cpu-basic"):
        violations.append(f"the Space ended on {rt['hardware']} ({rt['stage']})")
    if run.open_paid_periods():
        violations.append("a paid period is still open")
    gpu_s = hub.billed_seconds(run.repo).get("t4-small", 0.0)
    overhead = (gpu_s - training_s) / max(1, len(ids))
    if overhead > bound_s:
        violations.append(f"paid overhead {overhead:.1f} s per task > {bound_s} s")
    return {"violations": violations, "outcomes": dict(outcomes), "gpu_s": gpu_s, "training_s": training_s,
            "overhead_per_task": overhead, "gpu_periods": len(run.gpu_containers())}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
