"""The Queue, Run and Results views as one refresh renders them (issue 21: items 6, 9, 12, 15).

The handlers are the real ones of ``build_ui`` (called as Gradio calls them); the worker is not started, so its
status is what the test writes there, as its last read of the queue would.
"""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser

import gradio as gr

from app import create_app
from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.test_app import Profile, handler, space_settings
from tests.tiny_models import make_images
from ui.context import AppContext
from ui.layout import build_ui, results_picker_update
from ui.loss_chart import CHAR_PX, loss_chart_html, ticks

PHASE = 4  # tick values: hardware, queue table, queue picker, known ids, then the run view's phase line


def local_ctx(tmp_path) -> AppContext:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    queue = make_queue(settings)
    return AppContext(settings=settings, queue=queue, worker=Worker(settings, queue, make_hardware(settings)))


def row_of(table: str, task_id: str) -> str:
    match = re.search(rf'<tr data-task="{task_id}">.*?</tr>', table)
    assert match, table
    return match.group(0)


def test_a_cancel_shows_at_once_in_the_queue_and_run_views(tmp_path):
    """Item 6: the worker (training the task) reads the queue only every few seconds; until then the views showed the
    task RUNNING under "Task ... is CANCELLED", and the Run tab its phase "training" with an ETA."""
    ctx = local_ctx(tmp_path)
    demo = build_ui(ctx, login=False)
    photos = make_images(tmp_path / "photos", 3, size=64)
    task = ctx.queue.enqueue(Task(instance_prompt="a photo of sks dog", submitted_by="local", base_model="m",
                                  params={"steps": 300}), photos)  # fmt: skip
    other = ctx.queue.enqueue(Task(instance_prompt="a photo of zwx cat", submitted_by="local", base_model="m"), photos)
    ctx.queue.cancel(other.id)
    ctx.queue.claim(task.id, ctx.worker.worker_id, 60)
    ctx.worker.status.update(tasks=ctx.queue.list(), phase="training", task_id=task.id, step=30, total=300,
                             steps_per_s=0.4, eta_s=660.0, loss=0.2)  # the worker's last read, and its run  # fmt: skip
    tick = handler(demo, "on_tick")
    before = tick(None, [], {}, None)
    assert "RUNNING" in row_of(before[1], task.id) and "**ETA:** 11 min" in before[PHASE]

    assert handler(demo, "cancel")(task.id, None, None) == f"Task `{task.id}` is CANCELLED."
    delete = handler(demo, "delete")
    assert "was deleted" in delete(other.id, None, None)
    after = tick(None, [], {}, None)
    assert "CANCELLED" in row_of(after[1], task.id) and "RUNNING" not in after[1]
    assert f'data-task="{other.id}"' not in after[1]  # deleted: gone from the table at once
    assert "ETA" not in after[PHASE] and "**Phase:** stopping" in after[PHASE]
    assert f"Task `{task.id}` is CANCELLED: its trainer is being stopped." in after[PHASE]

    # The refresh follows each of the buttons' events at once (not the next timer tick).
    config = demo.get_config_file()
    deps = config["dependencies"]
    for name in ("cancel", "retry", "delete"):
        action = next(d for d in deps if d["api_name"] == name)
        assert any(d.get("trigger_after") == action["id"] and d["api_name"].startswith("on_tick") for d in deps), name

    # Once the worker has read the queue again, its read is shown (a retry elsewhere is not hidden by the cancel).
    ctx.queue.retry(task.id)
    ctx.worker.status.update(tasks=ctx.queue.list(), phase="cancelled", eta_s=None)
    assert "PENDING" in row_of(tick(None, [], {}, None)[1], task.id)


def test_visitors_who_may_not_act_get_a_sign_in_prompt_instead_of_empty_controls(hub, tmp_path):
    """Item 12: anonymous and non-allowed visitors saw "No tasks to show." with Cancel/Retry/Delete, and an empty
    chart and log box; the owner and allowed users keep them."""
    repo = f"alice/views-{uuid.uuid4().hex[:6]}"
    hub.create_space(repo, owner_token=ALICE_TOKEN)
    app = create_app(space_settings(hub, repo, ALLOWED_USERS="bob", DATA_DIR=str(tmp_path / "data")))
    assert not app.problems
    for profile in (None, Profile("carol")):
        table = handler(app.demo, "on_tick")(None, [], {}, profile)[1]
        assert "No tasks to show" not in table and ("Sign in with Hugging Face" in table or "carol" in table)
    on_load = handler(app.demo, "on_load")

    def views(profile):  # the page load's last outputs: queue controls, run bar, charts and log, results picker and charts
        return on_load(profile)[-6:]

    for profile in (None, Profile("carol")):
        updates = views(profile)
        assert [u.visible for u in updates] == [False] * len(updates), profile  # controls, bar, charts, log, results
    for profile in (Profile("bob"), Profile("alice")):  # an allowed user, the owner
        assert all(u.visible for u in views(profile)), profile
        assert "Sign in" not in handler(app.demo, "on_tick")(None, [], {}, profile)[1]


def finished(task_id: str, at: float, status: TaskStatus = TaskStatus.DONE) -> Task:
    return Task(id=task_id, instance_prompt="a photo of sks dog", submitted_by="local", status=status,
                created_at=at - 100, finished_at=at)  # fmt: skip


def sent(update: gr.Dropdown) -> dict:
    """What an update sends to the browser: the arguments it was made with (Gradio's ``_constructor_args``)."""
    return update._constructor_args[0]


def test_the_results_picker_follows_the_newest_finished_task_until_the_user_picks_one():
    """Item 9: the picker kept the task that was newest when the page loaded."""
    seen: dict = {}
    first = [finished("aaaaaaaa1111", 1_700_000_000.0)]
    pick, _ = results_picker_update(first, seen)
    assert sent(pick)["value"] == "aaaaaaaa1111"
    second = [*first, finished("bbbbbbbb2222", 1_700_000_500.0)]
    pick, button = results_picker_update(second, seen)
    assert sent(pick).get("value") == "bbbbbbbb2222" and button.visible  # the one that just finished
    assert results_picker_update(second, seen) == (gr.skip(), gr.skip())  # nothing new: nothing sent

    third = [*second, finished("cccccccc3333", 1_700_001_000.0)]
    pick, _ = results_picker_update(third, seen, user_pick="aaaaaaaa1111")  # the user picked the first one
    assert "value" not in sent(pick) and sent(pick)["choices"][0][1] == "cccccccc3333"  # new choices, pick stays
    fourth = [*third, finished("dddddddd4444", 1_700_002_000.0)]
    pick, _ = results_picker_update(fourth, seen, user_pick="gone00000000")  # a pick no longer listed: follow
    assert sent(pick)["value"] == "dddddddd4444"


class Texts(HTMLParser):
    """The SVG's texts with their attributes."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.items: list[tuple[dict[str, str | None], str]] = []
        self._attrs: dict[str, str | None] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._attrs = dict(attrs) if tag == "text" else None

    def handle_data(self, data: str) -> None:
        if self._attrs is not None:
            self.items.append((self._attrs, data))
            self._attrs = None


def test_the_loss_chart_has_round_ticks_and_room_for_every_label():
    """Item 15 (the browser test in tests/e2e/test_results_view.py checks the drawn labels): ".120" for "1.120"."""
    assert ticks(1.1188, 1.12) == ([1.1185, 1.119, 1.1195, 1.12], 0.0005)
    for curve in ([(1, 1.120970)], [(1, 1.12), (2, 1.1194), (3, 1.1188)], [(1, 0.0123), (50, 0.0119)],
                  [(1, 250.0), (2000, 0.5)], [(k, 1.0 / k) for k in range(1, 3001)]):  # fmt: skip
        texts = Texts(loss_chart_html(curve)).items
        y_labels = [(float(a["x"]), float(a["y"]), t) for a, t in texts if a.get("class") == "y-tick"]
        values = [float(t) for _, _, t in y_labels]
        assert values == sorted(values) and len(values) >= 2, curve  # drawn bottom-up: rising values
        assert all(y1 > y2 for (_, y1, _), (_, y2, _) in zip(y_labels, y_labels[1:], strict=False))
        losses = [v for _, v in curve]
        assert values[0] <= min(losses) and values[-1] >= max(losses)  # the curve lies within the ticks
        assert all(x - len(t) * CHAR_PX >= 8 + 11 for x, _, t in y_labels), y_labels  # right of the axis title
    assert "no loss recorded yet" in loss_chart_html([]) and "<polyline" not in loss_chart_html([])
    assert "<polyline" not in loss_chart_html([(1, float("nan"))])
