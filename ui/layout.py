"""The app's page: sign-in, the Train / Queue / Run / Settings tabs, and the timer that refreshes them."""

from __future__ import annotations

import hashlib
from typing import Any

import gradio as gr

from scheduler.diagnostics import PUBLIC_SPACE_WARNING, OfferedModelsCheck
from scheduler.hardware.base import HardwareState
from scheduler.output_names import default_output_repo
from scheduler.status import as_served
from ui.auth import Access, access_for, may_submit, visible_tasks
from ui.context import AppContext
from ui.form import build_form, hardware_choices, uses_jobs
from ui.limits import output_namespace
from ui.queue_view import RecentWrites, build_queue_view, may_act, visitor_html
from ui.queue_view import refresh as refresh_queue
from ui.results_view import SHOW_EVENT, UserPicks, build_results_view, default_pick, finished_tasks, pick_choices
from ui.run_view import build_run_view, hardware_text, jobs_run_values, load_samples, run_values_for
from ui.settings_view import build_settings_view, owner_values, visibility
from ui.spend_view import spend_note
from ui.visitor_submit import visitor_banner
from ui.visitor_tasks import build_visitor_tasks

REFRESH_S = 2.0
#: how often the page of a visitor who may not act (anonymous, not allowed) refreshes: it shows only the hardware line
VISITOR_REFRESH_S = 20.0
#: the refresh's and the page load's events run at once, side by side (read-only and cheap): no queue, so no
#: queue-position messages to every waiting tab when a crowd opens the page or refreshes
REFRESH_EVENT = {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": None}
CACHE_SWEEP = (900, 3600)  # (every s, older than s)
# ``width: 100%`` matters: with ``margin: auto`` alone the container shrinks to its content, and what sizes itself to
# its container (a plot, the galleries) can then re-lay the page out forever, burning a CPU core in the browser.
CSS = """
.gradio-container { max-width: 1100px !important; width: 100%; margin: auto; }
@media (max-width: 640px) { .gradio-container { padding: 4px !important; } h1 { font-size: 1.4em !important; } }
#results-files button[aria-label="Remove this file"] { display: none; }  /* a download list, not an upload */
"""


def fingerprint(value: Any) -> str:
    """A short digest of a component value (DataFrames by content)."""
    text = value.to_json() if hasattr(value, "to_json") else repr(value)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def only_changed(values: list[Any], seen: dict[int, str]) -> tuple[list[Any], dict[int, str]]:
    """``gr.skip()`` for values the browser already shows (no re-render, no traffic); the new fingerprints."""
    seen = dict(seen or {})
    out = []
    for i, value in enumerate(values):
        digest = fingerprint(value)
        out.append(gr.skip() if seen.get(i) == digest else value)
        seen[i] = digest
    return out, seen


def offered_models_notice(check: OfferedModelsCheck | None, access: Access) -> Any:
    """The owner's notice of the offered base models this Space's token cannot use (hidden for everyone else, and
    when all are usable or nothing checks them)."""
    text = check.markdown() if check is not None and access.owner else ""
    return gr.Markdown(value=text, visible=bool(text))


def build_ui(ctx: AppContext, *, login: bool, offered_check: OfferedModelsCheck | None = None) -> gr.Blocks:
    """The main page. ``login`` adds the Hugging Face sign-in button (on a Space); ``offered_check`` tells the
    owner which offered base models the token cannot use (``scheduler.diagnostics``)."""
    # Gradio's cache (uploads, outputs sent to browsers) is swept every 15 minutes of files older than an hour, so
    # anonymous uploads cannot pile up; a submitted task's uploads are removed at once (``form.remove_uploads``).
    with gr.Blocks(title="DreamBooth trainer", delete_cache=CACHE_SWEEP) as demo:
        with gr.Row(equal_height=True):
            gr.Markdown("# DreamBooth trainer", min_height=0)
            if login:
                gr.LoginButton(min_width=160, scale=0)
        banner = gr.Markdown(access_for(ctx.settings, None).banner(), elem_id="banner")
        offered_notice = gr.Markdown(visible=False, elem_id="base-model-check")
        hardware = gr.Markdown(elem_id="hardware")
        with gr.Tabs() as tabs:
            with gr.Tab("Train", id="train"):
                form = build_form(ctx)
            with gr.Tab("Queue", id="queue"):
                queue = build_queue_view(ctx)
                if getattr(ctx.settings, "visitor_pays", False):  # a visitor's own tasks, read with their token
                    build_visitor_tasks(ctx, demo, after=[form.message])
            with gr.Tab("Run", id="run"):
                run = build_run_view(jobs=uses_jobs(ctx))
                open_results = gr.Button("See the last finished task's results", size="sm", visible=False)
            with gr.Tab("Results", id="results") as results_tab:
                results = build_results_view(ctx)
            with gr.Tab("Settings", id="settings"):
                settings_hint = gr.Markdown("Only the owner of this Space sees its settings.")
                settings = build_settings_view(ctx)
        known_ids = gr.State([])
        timer = gr.Timer(REFRESH_S)  # VISITOR_REFRESH_S for a visitor who may not act (``on_load``)

        def on_load(profile: gr.OAuthProfile | None, token: gr.OAuthToken | None = None) -> list[Any]:
            access = access_for(ctx.settings, profile)
            panel, owner_box = visibility(ctx, access)
            repo = default_output_repo(access.user, local=ctx.local, namespace=output_namespace(ctx.settings, access.user))
            # Settings values reach the owner's browser only (the page's /config carries none of them).
            visitors_pay = getattr(ctx.settings, "visitor_pays", False)  # the token is read (one whoami) only then
            banner_text = visitor_banner(ctx.settings, access, token) if visitors_pay else access.banner()
            if access.owner and ctx.public_space:
                banner_text += "\n\n" + PUBLIC_SPACE_WARNING
            status = ctx.worker.status.view()
            if spend := spend_note(ctx.settings, access, status):  # the owner's money, a user's cap
                banner_text += "\n\n" + spend
            # Jobs mode: the flavors at the Hub's Jobs prices once the worker has read them (the page was built before).
            prices = status.job_prices if uses_jobs(ctx) else None
            hardware_update = gr.Dropdown(choices=hardware_choices(True, prices)) if prices else gr.skip()
            # A visitor who may not act sees only the hardware line change: their page refreshes rarely.
            refresh = gr.skip() if may_act(access) else gr.Timer(value=VISITOR_REFRESH_S)
            # Visitors who may not act or follow runs get a sign-in prompt instead of empty controls, chart and log.
            allowed = may_act(access)
            views = [gr.Row(visible=allowed), *run.shown_to(allowed), *results.shown_to(allowed)]
            return [banner_text, gr.Button(interactive=may_submit(ctx.settings, access)), repo, panel, owner_box,
                    gr.Markdown(visible=not access.owner), hardware_update, refresh, *owner_values(ctx, access),
                    *views]  # fmt: skip

        demo.load(
            on_load,
            None,
            [banner, form.submit, form.output_repo, settings.panel, settings.owner_box, settings_hint, form.hardware,
             timer, settings.table, *settings.fields, queue.controls, *run.visibility_outputs(),
             *results.visibility_outputs()],  # fmt: skip
            **REFRESH_EVENT,
        )

        # Its own event: the check asks the Hub (once per ten minutes), and the banner should not wait for it.
        def on_load_offered(profile: gr.OAuthProfile | None) -> Any:
            return offered_models_notice(offered_check, access_for(ctx.settings, profile))

        demo.load(on_load_offered, None, offered_notice, **REFRESH_EVENT)

        shown = gr.State({})  # fingerprints of what this browser tab already shows
        user_picks = UserPicks()  # the finished task each tab's user picked in the Results tab (else: the newest)

        def on_tick(pick: str | None, ids: list[str], seen: dict[int, str], profile: gr.OAuthProfile | None,
                    request: gr.Request | None = None) -> list[Any]:  # fmt: skip
            access = access_for(ctx.settings, profile)
            if seen and not may_act(access):  # the page already shows the visitor's views: only the hardware line
                return visitor_tick_values(ctx, seen, len(tick_outputs))
            return tick_values(ctx, access, pick, ids, seen, recent=queue.recent,
                               user_pick=user_picks.get(getattr(request, "session_hash", None)))  # fmt: skip

        tick_inputs = [queue.pick, known_ids, shown]
        tick_outputs = [hardware, queue.table, queue.pick, known_ids, *run.outputs(), results.pick, open_results, shown]
        timer.tick(on_tick, tick_inputs, tick_outputs, **REFRESH_EVENT)
        demo.load(on_tick, tick_inputs, tick_outputs, **REFRESH_EVENT)
        for action in queue.actions:  # the queue and run views show a cancel, retry or delete at once
            action.then(on_tick, tick_inputs, tick_outputs, **REFRESH_EVENT)

        def on_pick(task_id: str | None, request: gr.Request) -> None:
            user_picks.set(getattr(request, "session_hash", None), task_id)

        results.pick.input(on_pick, results.pick, None, api_visibility="private", show_progress="hidden")

        # Results are built when the tab opens or a task is picked (cached), never per tick.
        results_tab.select(results.show, results.pick, results.outputs(), **SHOW_EVENT)

        def on_open_results(profile: gr.OAuthProfile | None, request: gr.Request) -> list[Any]:
            user_picks.set(getattr(request, "session_hash", None), None)  # the picker follows the newest again
            tasks = visible_tasks(access_for(ctx.settings, profile), ctx.worker.status.view().tasks)
            return [gr.Tabs(selected="results"), default_pick(tasks) or gr.skip()]

        open_results.click(on_open_results, None, [tabs, results.pick], api_visibility="private",
                           show_progress="hidden")  # fmt: skip

        def on_unload(request: gr.Request) -> None:  # a closed tab shows its uploads no more (``ui.uploads``)
            ctx.uploads.release(request.session_hash)
            user_picks.set(request.session_hash, None)

        demo.unload(on_unload)
    return demo


SAMPLES_INDEX = 5  # position of the gallery in ``tick_values``' values (hardware, table, then the run view's five)


def tick_values(ctx: AppContext, access: Access, pick: str | None, ids: list[str], seen: dict[int, str],
                recent: RecentWrites | None = None, user_pick: str | None = None) -> list[Any]:  # fmt: skip
    """What one refresh sends to one browser: the hardware line for anyone; the queue and the run view only with
    the tasks ``access`` may see (none, and a sign-in prompt, for anonymous and non-allowed visitors). ``recent``:
    the Queue tab's changes the worker has not read back yet; ``user_pick``: the finished task the user picked in
    the Results tab (None: it follows the newest)."""
    status = ctx.worker.status.view()  # shared by every tab: read, never changed
    tasks = visible_tasks(access, recent.apply(status.tasks) if recent is not None else status.tasks)
    table, choices = refresh_queue(ctx, tasks, pick, ids, status.job_prices, owner=access.owner)
    if not may_act(access):
        table = visitor_html(access, getattr(ctx.settings, "visitor_pays", False))
    new_ids = [t.id for t in sorted(tasks, key=lambda t: t.created_at, reverse=True)]
    run = jobs_run_values(access, status, tasks, ctx.settings) if uses_jobs(ctx) else run_values_for(access, status, tasks)
    values = [header_text(ctx, status.hardware), table, *run]
    updates, seen = only_changed(values, seen)
    if updates[SAMPLES_INDEX] != gr.skip():  # sample files go out as images, never as paths
        updates[SAMPLES_INDEX] = load_samples(updates[SAMPLES_INDEX])
    results_pick, open_results = results_picker_update(tasks, seen, user_pick)
    return [updates[0], updates[1], choices, new_ids, *updates[2:], results_pick, open_results, seen]


def visitor_tick_values(ctx: AppContext, seen: dict[int, str], count: int) -> list[Any]:
    """A refresh of a visitor's page that already shows their views (sign-in prompts, no task): the hardware line
    when it changed, nothing else (``count``: the values of a whole refresh, ``seen`` the last)."""
    (header,), seen = only_changed([header_text(ctx, ctx.worker.status.view().hardware)], seen)
    return [header, *[gr.skip()] * (count - 2), seen]


def header_text(ctx: AppContext, hw: HardwareState | None) -> str:
    """The header's hardware line. This process answers the page, so it shows the state as served (``as_served``: no
    stale APP_STARTING once the app runs)."""
    if getattr(ctx.settings, "visitor_pays", False):
        jobs = " · each visitor trains as a Hugging Face Job in their own account"
    else:
        jobs = " · training runs on Hugging Face Jobs" if uses_jobs(ctx) else ""
    return hardware_text(as_served(hw), ctx.local) + jobs


def results_picker_update(tasks: list[Any], seen: dict, user_pick: str | None = None) -> tuple[Any, Any]:
    """New choices for the Results picker (and the Run tab's button to it) only when the finished tasks changed.

    The picker follows the newest finished task (``default_pick``: the one that just finished) unless the user
    picked one (``user_pick``, still among the finished tasks): that pick stays. The finished tasks' fingerprint is
    kept in ``seen`` (the tab's fingerprints) under a string key, next to the values' integer ones."""
    finished = [f"{t.id}:{t.status.value}:{t.finished_at}" for t in finished_tasks(tasks)]
    digest = fingerprint(finished)
    if seen.get("finished") == digest:
        return gr.skip(), gr.skip()
    seen["finished"] = digest
    choices = pick_choices(tasks)
    if user_pick and any(value == user_pick for _, value in choices):
        return gr.Dropdown(choices=choices), gr.Button(visible=bool(choices))
    return gr.Dropdown(choices=choices, value=default_pick(tasks)), gr.Button(visible=bool(choices))
