"""Many visitors at once: the app run as a Space on the Hub emulator, opened by a crowd of browser tabs.

    python benchmarks/crowd.py [--tabs 25,50,100] [--seconds 60] [--queue-tasks 100] [--label before] [--out FILE]

Starts its own emulator (temporary root) and runs ``app.py`` there as alice's Space on cpu-basic (as the fault
scenarios do: ``tests/faults/space.py``). Each level opens N tabs at once (``benchmarks/crowd_tabs.py``: the page, its
load events, then the timer's tick at the interval the server sets, raw Gradio queue protocol): one the owner's,
``--allowed-share`` of them allowed users', the rest anonymous. It ticks for ``--seconds``, closes the tabs and lets
the app settle. ``--queue-tasks`` seeds the queue with that many finished tasks (the owner's queue table then has
that many rows). ``--training STEPS`` trains a run on the Space during each level (``benchmarks/crowd_run.py``) and
records how many tick periods the owner's tab was behind its trainer.

One JSON line per level is appended to benchmarks/results/crowd-<date>-cpu.jsonl: tick latency p50/p95/max (all
tabs and per kind), ticks done and dropped, page-load events time, the app's CPU (percent of one core over the tick
window) and RSS (before, peak, at the end of the level, after the tabs closed; then after a ``gc.collect()`` and a
``malloc_trim(0)`` in the app: ``benchmarks/crowd_probe.py``), Hub requests per minute, the bytes a tick sends, the
load average. The benchmark's own client runs on the same machine (its CPU is recorded too): figures
from a shared 2-core machine are comparable between runs of one session only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import crowd_probe, crowd_run  # noqa: E402
from benchmarks.crowd_tabs import PageEvents, Tab, TabStats  # noqa: E402

TOKEN = "hf_crowd_owner_write"  # a fake token of the emulator's only user
OWNER = "alice"
QUEUE_REPO = f"{OWNER}/crowd-queue"
SETTLE_S = 5.0


def isolate_env() -> None:
    """No telemetry, no real token or Space, the emulator reached without a proxy."""
    os.environ.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                      HF_HUB_DISABLE_UPDATE_CHECK="1", GRADIO_ANALYTICS_ENABLED="False", NO_PROXY="127.0.0.1,localhost")  # fmt: skip
    for var in ("HF_TOKEN", "SPACE_ID", "SYSTEM", "HF_HUB_OFFLINE"):
        os.environ.pop(var, None)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def crowd_kinds(n: int, allowed_share: float) -> list[str]:
    """The tabs of a level: the owner first, ``allowed_share`` of them allowed users (at least one from 3 tabs on),
    the rest anonymous."""
    allowed = max(1 if n >= 3 else 0, round(n * allowed_share))
    return (["owner"] + ["allowed"] * allowed + ["anonymous"] * n)[:n]


def seed_finished_tasks(hub: Any, count: int) -> None:
    """A queue of ``count`` finished tasks (done, failed, cancelled in turn) from bob and carol, committed before the
    Space starts."""
    from scheduler.queue.document import QueueDoc
    from scheduler.task import Task, TaskStatus

    statuses = [TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED]
    tasks = []
    for i in range(count):
        user = ("bob", "carol")[i % 2]
        status = statuses[i % 3]
        tasks.append(Task(instance_prompt=f"a photo of sks dog number {i}", submitted_by=user, output_repo=f"{user}/sks-{i}",
                          status=status, attempts=1, created_at=1_700_000_000.0 + i, started_at=1_700_000_100.0 + i,
                          finished_at=1_700_000_460.0 + i, last_error="out of memory" if status is TaskStatus.FAILED else None,
                          result_url=f"{hub.url}/{user}/sks-{i}" if status is TaskStatus.DONE else None))  # fmt: skip
    doc = QueueDoc(tasks=tasks)
    hub.commit_files(
        QUEUE_REPO, {"queue.json": doc.to_json().encode()}, author=OWNER, repo_type="dataset", private=True
    )


def app_pid(hub: Any, repo: str) -> int:
    runner = hub.emulator.spaces.runner(repo)
    return runner.process.pid


def config_of(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}config", timeout=60) as resp:
        return json.loads(resp.read())


def summarize(level: list[TabStats]) -> dict[str, Any]:
    """Latencies and counts of one level, over all tabs and per kind."""
    ticks = [t for s in level for t in s.tick_s]
    loads = [s.load_s for s in level if s.load_s is not None]
    out: dict[str, Any] = {
        "tick_ms": {"p50": ms(percentile(ticks, 0.5)), "p95": ms(percentile(ticks, 0.95)), "max": ms(max(ticks, default=None))},
        "ticks": len(ticks),
        "dropped_ticks": sum(s.dropped for s in level),
        "estimation_messages": sum(s.estimations for s in level),
        "page_load_events_s": {"p50": percentile(loads, 0.5), "p95": percentile(loads, 0.95), "max": max(loads, default=None)},
        "page_bytes": statistics.median([s.page_bytes for s in level]) if level else 0,
        "page_s_p50": percentile([s.page_s for s in level if s.page_s is not None], 0.5),
        "load_event_s_p50": {fn: round(percentile([s.load_fn_s[fn] for s in level if fn in s.load_fn_s], 0.5), 3)
                             for fn in sorted({fn for s in level for fn in s.load_fn_s})},  # fmt: skip
        "failed_tabs": sum(1 for s in level if s.load_s is None),
        "errors": sum(len(s.errors) for s in level),
        "error_sample": next((s.errors[0][:300] for s in level if s.errors), None),
        "per_kind": {},
    }  # fmt: skip
    for kind in ("owner", "allowed", "anonymous"):
        tabs = [s for s in level if s.kind == kind]
        kind_ticks = [t for s in tabs for t in s.tick_s]
        if not tabs:
            continue
        intervals = {s.interval_s for s in tabs if s.interval_s is not None}
        out["per_kind"][kind] = {
            "tabs": len(tabs), "ticks": len(kind_ticks), "tick_ms_p50": ms(percentile(kind_ticks, 0.5)),
            "tick_ms_p95": ms(percentile(kind_ticks, 0.95)),
            "bytes_per_tick": round(sum(s.tick_bytes for s in tabs) / len(kind_ticks)) if kind_ticks else None,
            "interval_s": sorted(str(i) if i == float("inf") else i for i in intervals),
        }  # fmt: skip
    return out


async def run_level(
    url: str, events: PageEvents, kinds: list[str], seconds: float, app: Any
) -> tuple[list[TabStats], dict]:
    """Open the tabs at once, tick for ``seconds`` after the last load, close them; the stats, and the app's CPU time
    and the wall time of the opening and of the ticking."""
    import httpx

    from tests.signin import session_cookie

    users = {"owner": OWNER}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, read=None), limits=limits) as client:
        tabs = []
        for i, kind in enumerate(kinds):
            user = users.get(kind) or (f"friend{i}" if kind == "allowed" else None)
            tabs.append(Tab(client, url, events, kind, session_cookie(user) if user else None))
        cpu0, wall0 = cpu_s(app), time.monotonic()
        await asyncio.gather(*(tab.open() for tab in tabs))
        start, cpu1 = time.monotonic(), cpu_s(app)
        phases = random.Random(len(tabs))  # the same spread of first ticks for every run of a level
        await asyncio.gather(*(tab.tick_until(start + seconds, phases.random()) for tab in tabs))
        cpu2, end = cpu_s(app), time.monotonic()
        await asyncio.gather(*(tab.close() for tab in tabs))
    return [tab.stats for tab in tabs], {"open": (cpu1 - cpu0, start - wall0), "tick": (cpu2 - cpu1, end - start)}


def cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return times.user + times.system


class PeakRss:
    """The highest RSS of ``process`` while in the ``with`` block (read every half second)."""

    def __init__(self, process: Any) -> None:
        self.process, self.peak, self._stop = process, process.memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(url: str, hub: Any, pid: int, events: PageEvents, n: int, args: argparse.Namespace,
            space: Any = None, probe: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One level: ``space`` (the ``SpaceRun``) trains a run meanwhile with ``--training``; ``probe``: the
    environment ``crowd_probe`` gave the app (its memory asked after the tabs closed)."""
    import psutil

    app = psutil.Process(pid)
    me = psutil.Process()
    kinds = crowd_kinds(n, args.allowed_share)
    task_id = crowd_run.start_training(space, Path(probe_dir(probe)), args.training) if args.training else None
    rss_before = app.memory_info().rss
    objects_before = crowd_probe.ask(pid, probe).get("objects") if probe else None
    load_before = os.getloadavg()[0]
    hub.clear_requests()
    mine0, wall0 = cpu_s(me), time.monotonic()
    with PeakRss(app) as peak:
        stats, phases = asyncio.run(run_level(url, events, kinds, args.seconds, app))
    mine1, wall = cpu_s(me), time.monotonic() - wall0
    rss_end = app.memory_info().rss
    served = hub.requests()
    paths = Counter(f"{r.method} {r.path}" for r in served).most_common(4)
    lag = crowd_run.owner_lag(space, task_id, stats) if task_id else None
    if task_id:
        crowd_run.stop_training(space, task_id)
    time.sleep(SETTLE_S)
    rss_closed = app.memory_info().rss
    asked = crowd_probe.ask(pid, probe) if probe else {}
    record = {
        "benchmark": "crowd", "label": args.label, "date": dt.date.today().isoformat(), "machine": f"{os.cpu_count()} cores",
        "tabs": n, "owner": kinds.count("owner"), "allowed": kinds.count("allowed"), "anonymous": kinds.count("anonymous"),
        "seconds": args.seconds, "queue_tasks": args.queue_tasks, "training": bool(task_id), "load_events": len(events.load),
        **summarize(stats),
        "app_cpu_pct": round(100 * phases["tick"][0] / phases["tick"][1], 1),  # while ticking
        "app_cpu_pct_opening": round(100 * phases["open"][0] / phases["open"][1], 1),  # while the tabs open
        "app_cpu_s_per_open": round(phases["open"][0] / n, 3),
        "client_cpu_pct": round(100 * (mine1 - mine0) / wall, 1),
        "rss_mb": {"before": rss_before >> 20, "peak": peak.peak >> 20, "end": rss_end >> 20, "closed": rss_closed >> 20,
                   "closed_gc": asked.get("rss_gc_mb"), "closed_trim": asked.get("rss_trim_mb")},
        "gradio_sessions_closed": asked.get("gradio_sessions"), "owner_lag": lag,
        "gc_objects": {"before": objects_before, "closed": asked.get("objects")},
        "hub_requests_per_min": round(len(served) * 60 / wall, 1), "hub_requests_top": paths,
        "load_avg_before": round(load_before, 2), "wall_s": round(wall, 1),
        "note": "shared 2-core machine (other sessions' processes too); the crowd's client runs on the same cores",
    }  # fmt: skip
    return record


def probe_dir(probe: dict[str, str] | None) -> str:
    """The benchmark's scratch folder (the probe's), or a new temporary one."""
    return str(Path(probe[crowd_probe.OUT_VAR]).parent) if probe else tempfile.mkdtemp(prefix="crowd-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tabs", default="25", help="comma-separated tab counts, one level each")
    ap.add_argument("--seconds", type=float, default=60.0, help="ticking time per level")
    ap.add_argument("--allowed-share", type=float, default=0.05)
    ap.add_argument("--queue-tasks", type=int, default=0, help="finished tasks seeded in the queue")
    ap.add_argument("--training", type=int, default=0, metavar="STEPS",
                    help="train a demo-model run of STEPS steps on the Space during each level (0: none)")
    ap.add_argument("--label", default="", help="what the app is (e.g. before, after)")
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/crowd-<date>-cpu.jsonl)")
    args = ap.parse_args(argv)
    isolate_env()
    from contract.settings import DEFAULT_BASE_MODEL
    from scheduler.queue.hub import HubQueue
    from tests.fakehub.auth import User
    from tests.fakehub.fixtures import run_fakehub
    from tests.faults.space import start_space
    from tests.tiny_models import build_tiny_sd

    out = Path(args.out or ROOT / "benchmarks" / "results" / f"crowd-{dt.date.today().isoformat()}-cpu.jsonl")
    with tempfile.TemporaryDirectory(prefix="crowd-") as tmp, \
            run_fakehub(Path(tmp) / "hub", users=[User(OWNER, TOKEN, "write")]) as hub:  # fmt: skip
        root = Path(tmp)
        os.environ["HF_HOME"] = str(root / "hf-home")
        os.environ.pop("HF_TOKEN", None)
        if args.queue_tasks:
            seed_finished_tasks(hub, args.queue_tasks)
        variables = {"QUEUE_REPO": QUEUE_REPO, "ALLOWED_USERS": ",".join([OWNER, *(f"friend{i}" for i in range(1000))]),
                     "POLL_INTERVAL_S": "5"}  # fmt: skip
        probe = crowd_probe.probe_env(root / "probe")
        # The run's tiny model is offered after the page's first model (the page loads as without it).
        models = f"{DEFAULT_BASE_MODEL},{build_tiny_sd(root / 'probe' / 'model')}"
        run = start_space(hub, root / "run", models, owner_token=TOKEN, hf_token=TOKEN, name="crowd",
                          variables=variables, env=probe)  # fmt: skip
        run.queue = HubQueue(run.queue.api, QUEUE_REPO, retry=run.queue.retry_policy)  # the Space's queue (QUEUE_REPO)
        try:
            from tests.polling import wait_http

            wait_http(run.url, 120)
            events = PageEvents.from_config(config_of(run.url))
            pid = app_pid(hub, run.repo)
            time.sleep(SETTLE_S)
            for n in [int(x) for x in args.tabs.split(",") if x]:
                record = measure(run.url, hub, pid, events, n, args, run, probe)
                print(json.dumps(record), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        finally:
            run.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
