"""Browser tabs of the crowd benchmark (``benchmarks/crowd.py``), spoken as Gradio 6's page speaks its queue protocol.

A tab loads the page (``GET /``), keeps the heartbeat stream open (``gradio_api/heartbeat/<session>``: its close
ends the session), joins every page-load event (``gradio_api/queue/join``) and then the timer's tick every interval
the server set for it (a load event may change the ``gr.Timer``'s value, as the page would obey). The events that
follow a load event (``.then``) run after it, as the page runs them; the ``.change`` events a value set by them
would trigger in a browser are not run. Results come over
one SSE stream per session (``gradio_api/queue/data``), opened when an event waits and closed by the server once
none does, as the page's client does. Like the page (``trigger_mode="once"``), a tick due while the previous one
still waits is dropped. Signed-in tabs send a session cookie of Gradio's mocked sign-in (``tests.signin``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

API = "gradio_api"
#: the run view's progress line (``ui.run_view.progress_html``): the step a tick answer shows
STEP_SHOWN = re.compile(r"(\d+) / \d+ steps")


@dataclass(frozen=True)
class PageEvents:
    """What a tab needs of the app's ``/config``: the page-load events, the timer's tick and its interval."""

    load: tuple[int, ...]  # fn indices of the events that run at page load
    tick: int  # fn index of the timer's tick
    timer_id: int  # the gr.Timer's component id (a load event may set its interval)
    interval_s: float
    inputs: dict[int, list[Any]]  # fn index -> the values the page sends (component values; State as None)
    outputs: dict[int, list[int]]  # fn index -> its output component ids
    then: dict[int, list[int]]  # fn index -> the events that follow it (``.then``), run by the page after it
    backend: frozenset[int]  # events with a Python function (the others run in the browser only)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PageEvents:
        components = {c["id"]: c for c in config["components"]}
        timers = [c for c in config["components"] if c.get("type") == "timer"]
        if len(timers) != 1:
            raise ValueError(f"expected one gr.Timer on the page, found {len(timers)}")
        timer = timers[0]
        load, tick = [], None
        then: dict[int, list[int]] = {}
        inputs: dict[int, list[Any]] = {}
        outputs: dict[int, list[int]] = {}
        for dep in config["dependencies"]:
            kinds = {(target[0], target[1]) for target in dep.get("targets", [])}
            if any(kind == "load" for _, kind in kinds):
                load.append(dep["id"])
            if (timer["id"], "tick") in kinds:
                tick = dep["id"]
            inputs[dep["id"]] = [None if components.get(i, {}).get("type") == "state"
                                 else components.get(i, {}).get("props", {}).get("value") for i in dep["inputs"]]  # fmt: skip
            outputs[dep["id"]] = list(dep["outputs"])
            if dep.get("trigger_after") is not None:
                then.setdefault(dep["trigger_after"], []).append(dep["id"])
        if tick is None:
            raise ValueError("the timer has no tick event")
        backend = frozenset(dep["id"] for dep in config["dependencies"] if dep.get("backend_fn", True))
        return cls(tuple(load), tick, timer["id"], float(timer["props"].get("value") or 1.0), inputs, outputs, then,
                   backend)  # fmt: skip


def page_load_calls(events: PageEvents) -> int:
    """The server calls one page load makes: each load event with a Python function and, after each load event,
    those of the events that follow it (``.then``, transitively)."""
    seen, todo = 0, list(events.load)
    while todo:
        fn = todo.pop()
        seen += fn in events.backend
        todo += events.then.get(fn, [])
    return seen


@dataclass
class TabStats:
    """What one tab saw."""

    kind: str  # owner, allowed or anonymous
    page_s: float | None = None  # GET / answered
    page_bytes: int = 0
    load_s: float | None = None  # every page-load event completed (from the page request)
    tick_s: list[float] = field(default_factory=list)  # each completed tick, join to completion
    tick_bytes: int = 0  # completion messages of the ticks
    dropped: int = 0  # ticks due while the previous still waited
    errors: list[str] = field(default_factory=list)
    load_fn_s: dict[int, float] = field(default_factory=dict)  # each load event (and .then), from the page request
    estimations: int = 0  # queue-position messages received
    interval_s: float | None = None  # the timer interval the server set for this tab
    #: each completed tick: (sent, answered: unix seconds; the training step its answer showed, None if none)
    ticks: list[tuple[float, float, int | None]] = field(default_factory=list)


class Tab:
    """One browser tab of ``kind``, signed in with ``cookie`` (None: anonymous)."""

    def __init__(self, client: httpx.AsyncClient, url: str, events: PageEvents, kind: str, cookie: str | None) -> None:
        self.client, self.url, self.events = client, url.rstrip("/") + "/", events
        self.headers = {"Cookie": f"session={cookie}"} if cookie else {}
        self.session = secrets.token_hex(6)
        self.stats = TabStats(kind)
        self.interval_s = events.interval_s
        self._waiting: dict[str, asyncio.Future] = {}
        self._early: dict[str, dict[str, Any]] = {}  # completions read before their join was answered
        self._stream: asyncio.Task | None = None
        self._heartbeat: asyncio.Task | None = None

    async def open(self) -> None:
        """Load the page and run its load events (as a browser does on opening the tab)."""
        start = time.perf_counter()
        try:
            page = await self.client.get(self.url, headers=self.headers)
            self.stats.page_s, self.stats.page_bytes = time.perf_counter() - start, len(page.content)
            self._heartbeat = asyncio.create_task(self._keep_alive())
            loads = self.events.load
            done = await asyncio.gather(*(self._load_event(fn, start) for fn in loads), return_exceptions=True)
        except Exception as exc:  # noqa: BLE001 - a failed tab is counted, not fatal
            self.stats.errors.append(f"open: {type(exc).__name__}: {exc}")
            return
        for fn, outcome in zip(loads, done, strict=True):
            if isinstance(outcome, BaseException):
                self.stats.errors.append(f"load: {type(outcome).__name__}: {outcome}")
            else:
                self._obey_timer(fn, outcome)
        self.stats.load_s = time.perf_counter() - start
        self.stats.interval_s = self.interval_s

    async def _load_event(self, fn_index: int, start: float) -> dict[str, Any]:
        """A load event and the events that follow it (``.then``; the browser-only ones skipped), as the page runs
        them; the load event's own completion."""
        message = await self.call(fn_index) if fn_index in self.events.backend else {"success": True}
        self.stats.load_fn_s[fn_index] = time.perf_counter() - start
        await asyncio.gather(*(self._load_event(fn, start) for fn in self.events.then.get(fn_index, [])))
        return message

    async def tick_until(self, end: float, phase: float = 1.0) -> None:
        """Tick every interval until ``end`` (monotonic), dropping a tick due while the previous one waits. The
        first tick comes ``phase`` (0..1) of an interval from now: tabs opened at different moments tick apart."""
        pending: asyncio.Task | None = None
        due = time.monotonic() + self.interval_s * phase
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if pending is not None and not pending.done():
                self.stats.dropped += 1
            else:
                pending = asyncio.create_task(self._tick())
            due += self.interval_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        if pending is not None:
            await asyncio.wait([pending], timeout=30)

    async def _tick(self) -> None:
        start, sent = time.perf_counter(), time.time()
        try:
            message = await self.call(self.events.tick)
        except Exception as exc:  # noqa: BLE001
            self.stats.errors.append(f"tick: {type(exc).__name__}: {exc}")
            return
        self.stats.tick_s.append(time.perf_counter() - start)
        text = json.dumps(message)
        self.stats.tick_bytes += len(text)
        shown = STEP_SHOWN.search(text)
        self.stats.ticks.append((sent, time.time(), int(shown.group(1)) if shown else None))

    async def call(self, fn_index: int, timeout_s: float = 120.0) -> dict[str, Any]:
        """Join event ``fn_index`` and wait for its ``process_completed`` message (returned)."""
        body = {"data": self.events.inputs.get(fn_index, []), "fn_index": fn_index, "session_hash": self.session,
                "event_data": None, "trigger_id": None}  # fmt: skip
        joined = await self.client.post(f"{self.url}{API}/queue/join", json=body, headers=self.headers)
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if event_id in self._early:
            future.set_result(self._early.pop(event_id))
        else:
            self._waiting[event_id] = future
            self._ensure_stream()
        message = await asyncio.wait_for(future, timeout_s)
        if not message.get("success", False):
            raise RuntimeError(f"event {fn_index} failed: {str(message.get('output'))[:200]}")
        return message

    def _ensure_stream(self) -> None:
        if self._stream is None or self._stream.done():
            self._stream = asyncio.create_task(self._read_stream())

    async def _read_stream(self) -> None:
        url = f"{self.url}{API}/queue/data?session_hash={self.session}"
        try:
            async with self.client.stream("GET", url, headers=self.headers) as resp:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    kind = msg.get("msg")
                    if kind == "estimation":
                        self.stats.estimations += 1
                    elif kind == "process_completed":
                        future = self._waiting.pop(msg.get("event_id"), None)
                        if future is None:
                            self._early[msg.get("event_id")] = msg
                        elif not future.done():
                            future.set_result(msg)
                    elif kind == "close_stream":
                        break
        except Exception as exc:  # noqa: BLE001 - the waiting events fail with it
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(exc)
            self._waiting.clear()
            return
        if self._waiting:  # joined after the server decided to close: open again
            self._stream = asyncio.create_task(self._read_stream())

    async def _keep_alive(self) -> None:
        url = f"{self.url}{API}/heartbeat/{self.session}"
        try:
            async with self.client.stream("GET", url, headers=self.headers) as resp:
                async for _ in resp.aiter_lines():
                    pass
        except (httpx.HTTPError, asyncio.CancelledError):
            pass

    def _obey_timer(self, fn_index: int, message: dict[str, Any]) -> None:
        """A load event whose outputs include the ``gr.Timer``: the page then ticks at the value it sets (never,
        when it sets ``active=False``)."""
        data = (message.get("output") or {}).get("data") or []
        for out_id, value in zip(self.events.outputs.get(fn_index, []), data, strict=False):
            if out_id != self.events.timer_id or not isinstance(value, dict):
                continue
            if value.get("active") is False:
                self.interval_s = float("inf")
            elif value.get("value") is not None:
                self.interval_s = float(value["value"])

    async def close(self) -> None:
        """Close the tab: the heartbeat and any stream end (the server then runs the unload event)."""
        for task in (self._heartbeat, self._stream):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (self._heartbeat, self._stream) if t is not None), return_exceptions=True)
