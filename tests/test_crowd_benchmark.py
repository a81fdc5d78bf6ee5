"""The crowd benchmark's tabs (``benchmarks/crowd_tabs.py``) against the real app served in-process on the emulator,
and what a refresh costs: no Hub request, the visitor's page refreshing rarely, the worker's status copied once per
change (issue 26). Counts only: the benchmark itself measures times."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import gradio as gr
import httpx
import pytest

from benchmarks.crowd_tabs import PageEvents, Tab, page_load_calls
from scheduler.hardware.base import HardwareState
from scheduler.status import WorkerStatus
from tests.conftest import ALICE_TOKEN
from tests.polling import free_port
from tests.signin import session_cookie
from tests.test_app import space_settings
from ui.layout import REFRESH_S, VISITOR_REFRESH_S


@pytest.fixture
def served_app(hub, tmp_path):
    """alice's Space (bob allowed) served in-process, and its URL; its worker is not started (its Hub polls would
    blur the count), so the status is what its one read of the queue and the hardware left."""
    from app import create_app

    repo = f"alice/crowd-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    app = create_app(space_settings(hub, repo, ALLOWED_USERS="bob", DATA_DIR=str(tmp_path / "data")))
    assert not app.problems
    app.worker.snapshot()
    app.worker.status.update(hardware=HardwareState("cpu-basic", "cpu-basic", "RUNNING", "none", False))
    port = free_port()
    app.demo.launch(prevent_thread_lock=True, **{**app.launch_options(), "server_port": port})
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


@pytest.fixture
def served_space(served_app):
    return served_app[1]


async def open_and_tick(url: str, events: PageEvents, hub) -> list[Tab]:
    async with httpx.AsyncClient(timeout=60) as client:
        tabs = [Tab(client, url, events, kind, session_cookie(user) if user else None)
                for kind, user in (("owner", "alice"), ("allowed", "bob"), ("anonymous", None))]  # fmt: skip
        await asyncio.gather(*(tab.open() for tab in tabs))
        hub.clear_requests()
        for _ in range(2):  # two refreshes each, as the timer would ask them
            await asyncio.gather(*(tab._tick() for tab in tabs))
        requests = hub.requests()
        await asyncio.gather(*(tab.close() for tab in tabs))
    assert requests == [], [f"{r.method} {r.path}" for r in requests]
    return tabs


def test_tabs_load_the_page_and_tick_without_a_hub_request_and_visitors_refresh_rarely(served_space, hub):
    with urllib.request.urlopen(f"{served_space}config", timeout=60) as resp:
        events = PageEvents.from_config(json.loads(resp.read()))
    assert events.interval_s == REFRESH_S and events.load

    owner, allowed, anonymous = asyncio.run(open_and_tick(served_space, events, hub))

    for tab in (owner, allowed, anonymous):
        assert tab.stats.errors == [] and tab.stats.load_s is not None and tab.stats.page_bytes > 0, tab.stats
        assert len(tab.stats.tick_s) == 2 and tab.stats.dropped == 0
    # Who may act refreshes every REFRESH_S; an anonymous visitor, who sees only the hardware line, rarely.
    assert owner.stats.interval_s == allowed.stats.interval_s == REFRESH_S
    assert anonymous.stats.interval_s == VISITOR_REFRESH_S > REFRESH_S


def test_the_status_view_is_copied_once_per_change_and_never_changes_under_its_readers():
    status = WorkerStatus()
    status.update(phase="training", task_id="t1")
    first = status.view()
    assert status.view() is first  # every tab's refresh reads the same copy
    status.record_step(_step(1, 0.5))
    second = status.view()
    assert second is not first and second.loss_history == [(1, 0.5)]
    assert first.loss_history == [] and first.step == 0  # a reader's copy stays as it was published
    status.record_step(_step(2, 0.4))
    assert second.loss_history == [(1, 0.5)] and status.view().loss_history == [(1, 0.5), (2, 0.4)]


def _step(step: int, loss: float):
    from contract.events import Step

    return Step(step=step, total=10, loss=loss)


def page_load_events(config: dict) -> list[dict]:
    """The events a page load runs: the load events and the ``.then`` events after them, as the page chains them."""
    deps = config["dependencies"]
    run = [d for d in deps if any(kind == "load" for _, kind in d["targets"])]
    for dep in run:  # grows while walked
        run += [d for d in deps if d.get("trigger_after") == dep["id"] and d not in run]
    return run


def test_a_page_load_estimates_once_and_runs_its_events_unqueued(tmp_path):
    """Issue 26: the estimate ran twice per page load (its own load event, then again at the end of the first base
    model's defaults chain), and every load event waited in Gradio's queue (a queue-position message per waiting tab)."""
    from contract.settings import load_settings
    from scheduler.hardware import make_hardware
    from scheduler.queue import make_queue
    from scheduler.worker import Worker
    from ui.context import AppContext
    from ui.layout import build_ui

    # A Hub model first (the base model's defaults chain runs at load), and the demo model first (local, no GPU).
    for first_model in ({"BASE_MODELS": "stable-diffusion-v1-5/stable-diffusion-v1-5"}, {}):
        settings = load_settings({"DATA_DIR": str(tmp_path / "data"), **first_model})
        queue = make_queue(settings)
        demo = build_ui(AppContext(settings=settings, queue=queue, worker=Worker(settings, queue, make_hardware(settings))),
                        login=False)  # fmt: skip
        config = demo.get_config_file()
        estimate = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "estimate")
        loading = page_load_events(config)
        assert len([d for d in loading if estimate in d["outputs"]]) == 1, first_model
        queued = [demo.fns[d["id"]].api_name for d in loading if d.get("backend_fn") and
                  demo.fns[d["id"]].concurrency_limit is not None]  # fmt: skip
        assert queued == [], queued
        # Five server calls at most (ten before issue 26's merges): the page's own load, the offered models' check,
        # the first refresh, and the base model's family with its defaults, then the note, estimate and upload label
        calls = page_load_calls(PageEvents.from_config(config))
        assert calls == len([d for d in loading if d.get("backend_fn")]) <= 5, first_model


def test_a_visitors_refresh_after_the_first_sends_only_a_changed_hardware_line(hub, tmp_path):
    """Issue 26: every refresh of an anonymous tab rebuilt the queue, run and results views it does not see."""
    from app import create_app
    from tests.test_app import Profile, handler

    repo = f"alice/crowd-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    app = create_app(space_settings(hub, repo, ALLOWED_USERS="bob", DATA_DIR=str(tmp_path / "data")))
    status = app.worker.status
    status.update(hardware=HardwareState("cpu-basic", "cpu-basic", "RUNNING", "none", False))
    tick = handler(app.demo, "on_tick")
    first = tick(None, [], {}, None)  # the page load's: the visitor's views
    assert "Sign in with Hugging Face" in first[1] and "CPU basic" in first[0]
    seen = first[-1]
    again = tick(None, [], seen, None)
    assert all(value == gr.skip() for value in again[:-1])  # nothing changed: nothing at all
    status.update(hardware=HardwareState("t4-small", "t4-small", "RUNNING", "none", False))
    moved = tick(None, [], again[-1], None)
    assert "T4" in moved[0] and all(value == gr.skip() for value in moved[1:-1])
    # The owner's refresh still builds the views (the visitor's path is for those who may not act).
    owner = tick(None, [], {}, Profile("alice"))
    assert "No tasks to show" in owner[1]


def test_the_lag_counts_the_ticks_that_did_not_show_a_step_yet():
    """``benchmarks.crowd_run.progress_lag`` on made-up times: a step shown by the next tick, one two ticks late,
    one never shown, one emitted before the first tick (left out)."""
    from benchmarks.crowd_run import progress_lag

    emitted = [(8.0, 1), (10.0, 1), (10.5, 2), (13.0, 3), (20.0, 9)]
    ticks = [(9.0, 9.1, None), (11.0, 11.1, 1), (13.0, 13.1, None), (15.0, 15.1, 3)]
    lag = progress_lag(emitted, ticks, interval_s=2.0)
    assert lag["points"] == 3 and lag["unseen"] == 1
    # step 1: the next tick (sent at 11.0) showed it; step 2: the ticks sent at 11.0 and 13.0 still showed step 1
    assert lag["ticks_missed"] == {"p50": 0, "p95": 2, "max": 2} and lag["ticks_missed_over_1"] == 1
    assert lag["lag_s"]["max"] == 4.6 and lag["lag_ticks"]["max"] == 2.3


@pytest.mark.slow
def test_a_tiny_level_while_a_run_trains_records_the_owners_lag_and_the_memory(tmp_path):
    """The benchmark itself, one level of 2 tabs for a few seconds while the tiny model trains on the emulated Space:
    the record has the owner's lag behind the trainer and the app's memory after the tabs closed."""
    import os

    from benchmarks import crowd

    saved = dict(os.environ)  # the benchmark isolates its environment (no token, its own HF_HOME)
    out = tmp_path / "crowd.jsonl"
    try:
        assert crowd.main(["--tabs", "2", "--seconds", "6", "--training", "2000", "--queue-tasks", "3",
                           "--out", str(out), "--label", "test"]) == 0  # fmt: skip
    finally:
        os.environ.clear()
        os.environ.update(saved)
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["training"] is True and record["queue_tasks"] == 3 and record["errors"] == 0
    lag = record["owner_lag"]
    assert lag["steps_in_window"] > 0 and lag["points"] > 0, lag  # the owner's ticks showed the run's steps
    assert 0 < lag["lag_ticks"]["p50"] <= lag["lag_ticks"]["max"] and lag["ticks_missed"]["max"] >= 0
    rss = record["rss_mb"]
    assert 0 < rss["before"] <= rss["peak"] and rss["closed_gc"] > 0 and rss["closed_trim"] > 0, rss
    assert record["gc_objects"]["before"] > 0 and record["gc_objects"]["closed"] > 0
    # Gradio's sessions of the closed tabs (kept, marked closed: Gradio drops their State values an hour later)
    assert 0 <= record["gradio_sessions_closed"] <= 2
