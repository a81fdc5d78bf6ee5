"""The Queue tab's table: HTML built server-side, every value escaped, Hub links clickable, local wording."""

from __future__ import annotations

from html.parser import HTMLParser

import gradio as gr
import pytest

from contract.settings import load_settings
from scheduler.task import Task, TaskStatus
from ui.context import AppContext
from ui.layout import only_changed
from ui.queue_view import refresh, table_html

HUB = "https://huggingface.co"


class Elements(HTMLParser):
    """Every start tag of a document with its attributes, and its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for t, attrs in self.tags if t == tag]


def task(**fields) -> Task:
    base = {"instance_prompt": "a photo of sks dog", "submitted_by": "alice", "output_repo": "alice/sks-dog",
            "created_at": 1_700_000_000.0}  # fmt: skip
    return Task(**{**base, **fields})


def finished(status: TaskStatus, **fields) -> Task:
    return task(status=status, attempts=1, started_at=1_700_000_100.0, finished_at=1_700_000_460.0, **fields)


def test_user_input_comes_out_inert():
    hostile = [
        task(instance_prompt='<script>alert("p")</script> a photo of sks dog'),
        finished(TaskStatus.FAILED, instance_prompt="a photo of zwx cat", note='<img src=x onerror="alert(1)"> bad " quote'),
        finished(TaskStatus.DONE, result_url='https://huggingface.co/alice/x" onmouseover="alert(2)'),
    ]
    html = table_html(hostile, local=False, endpoint=HUB)
    parsed = Elements(html)
    assert not parsed.named("script") and not parsed.named("img")
    assert not [attrs for _, attrs in parsed.tags if any(name.startswith("on") for name in attrs)]
    text = "".join(parsed.text)
    assert '<script>alert("p")</script> a photo of sks dog' in text  # shown as text, whole
    assert '<img src=x onerror="alert(1)"> bad " quote' in text
    (link,) = parsed.named("a")
    assert link["href"] == 'https://huggingface.co/alice/x" onmouseover="alert(2)'  # one attribute value, quoted


def test_only_hub_urls_become_links_that_open_a_new_tab():
    long_repo = "alice/dreambooth-" + "very-long-subject-name-" * 6 + "v2"
    tasks = [
        finished(TaskStatus.DONE, result_url=f"{HUB}/{long_repo}", created_at=5.0),
        finished(TaskStatus.DONE, result_url="http://127.0.0.1:9999/alice/emulated", created_at=4.0),
        finished(TaskStatus.DONE, result_url="javascript:alert(1)", created_at=3.0),
        finished(TaskStatus.DONE, result_url="https://evil.example/alice/x", created_at=2.0),
        finished(TaskStatus.DONE, result_url="/home/me/data/runs/abc/work/output", created_at=1.0),
    ]
    parsed = Elements(table_html(tasks, local=False, endpoint="http://127.0.0.1:9999"))
    links = parsed.named("a")
    assert [a["href"] for a in links] == [f"{HUB}/{long_repo}", "http://127.0.0.1:9999/alice/emulated"]
    assert all(a["target"] == "_blank" and "noopener" in (a["rel"] or "") for a in links)
    text = "".join(parsed.text)
    assert long_repo in text  # the whole repo id is the link's text
    for shown in ("javascript:alert(1)", "https://evil.example/alice/x", "/home/me/data/runs/abc/work/output"):
        assert shown in text  # as text, not as a link
    assert len(parsed.named("code")) == 3


def test_long_notes_and_prompts_are_kept_whole():
    note = "Hardware request refused: " + "the account needs a payment method; " * 10 + "see settings/billing."
    prompt = "a photo of sks dog " + "sitting on a red sofa in the sun " * 4
    parsed = Elements(table_html([finished(TaskStatus.FAILED, note=note, instance_prompt=prompt)], local=False, endpoint=HUB))
    text = "".join(parsed.text)
    assert note in text and prompt in text
    assert "ERROR" not in text and "FAILED" in text


def test_local_mode_says_this_machine_and_free_and_a_space_names_its_gpu():
    done = finished(TaskStatus.DONE, hardware="t4-small", result_url="/data/runs/x/work/output")
    local = "".join(Elements(table_html([done], local=True)).text)
    assert "this machine" in local and "free" in local
    assert "t4-small" not in local and "T4" not in local and "$" not in local
    space = "".join(Elements(table_html([done], local=False, endpoint=HUB)).text)
    assert "Nvidia T4 small" in space and "$0.04" in space and "this machine" not in space  # 6 minutes at $0.40/h


def test_the_table_is_sent_only_when_it_changed(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    ctx = AppContext(settings=settings, queue=None, worker=None)  # refresh reads only the settings
    tasks = [finished(TaskStatus.DONE, id="t1", result_url="/data/out")]
    table, choices = refresh(ctx, tasks, None, [])
    assert isinstance(table, str) and "<table" in table and isinstance(choices, gr.Dropdown)
    (first,), seen = only_changed([table], {})
    assert first == table
    again, _ = refresh(ctx, tasks, None, ["t1"])
    (second,), seen = only_changed([again], seen)
    assert second == gr.skip()
    changed, _ = refresh(ctx, [*tasks, task(id="t2", created_at=1_800_000_000.0)], None, ["t1"])
    (third,), _ = only_changed([changed], seen)
    assert third == changed and third.index('data-task="t2"') < third.index('data-task="t1"')  # newest first
    assert refresh(ctx, [], None, [])[0] == '<p class="queue-empty">No tasks to show.</p>'


def test_the_cost_is_the_tasks_share_of_the_billed_gpu_period():
    from scheduler.billing import Claim, GpuPeriod
    from ui.queue_view import cost_usd

    # One T4 period of 1000 s (request to release): a held the GPU 200 s, b 600 s (the 200 s before the first claim,
    # the switch and the start-up, are spread in the same proportions).
    claims = [Claim("a", 1_700_000_200.0), Claim("b", 1_700_000_400.0)]
    period = GpuPeriod("t4-small", 1_700_000_000.0, 1_700_001_000.0, claims)
    a = finished(TaskStatus.DONE, id="a", hardware="t4-small")
    b = finished(TaskStatus.DONE, id="b", hardware="t4-small")
    old = finished(TaskStatus.DONE, id="old", hardware="t4-small")  # trained before periods were recorded
    now = 1_800_000_000.0
    assert cost_usd(a, now, False, [period]) == pytest.approx(1000 / 3600 * 0.40 * 0.25)
    assert cost_usd(b, now, False, [period]) == pytest.approx(1000 / 3600 * 0.40 * 0.75)
    assert cost_usd(old, now, False, [period]) == pytest.approx(360 / 3600 * 0.40)  # its own training time
    assert cost_usd(a, now, True, [period]) == 0.0  # local mode: free
    # A running task: the open period up to now.
    running = task(id="r", status=TaskStatus.RUNNING, started_at=1_700_000_100.0, hardware="t4-small")
    live = GpuPeriod("t4-small", 1_700_000_000.0, None, [Claim("r", 1_700_000_100.0)])
    assert cost_usd(running, 1_700_003_600.0, False, [live]) == pytest.approx(0.40)
    text = "".join(Elements(table_html([a, b], local=False, endpoint=HUB, now=now, periods=[period])).text)
    assert "$0.03" in text and "$0.08" in text  # 0.0278 and 0.0833
