"""The Run tab's own HTML in Chromium, without an app: a Jobs panel's log box opens on the newest lines (issue 21,
item 14), and the loss chart keeps every label inside its picture at phone and desktop widths (item 15; the app's
charts are checked in tests/e2e/test_results_view.py).

The panel is ``ui.jobs_view.panel_html`` with its CSS (``JOBS_CSS``, which Gradio scopes to the panels' component).
"""

from __future__ import annotations

import pytest

from scheduler.status import StatusData
from tests.e2e.harness import PHONE, browser, shot
from tests.test_jobs_ui import TOKEN, job_of, running
from ui.jobs_view import JOBS_CSS, panel_html
from ui.loss_chart import loss_chart_html

pytestmark = [pytest.mark.slow, pytest.mark.browser]

#: the kind of lines a Job prints: long ones wrap in a panel a phone's width wide
LOG = tuple(f"step {k}/40 loss 0.{k:04d} · sampling validation prompt {k} of the run, written to samples/step{k}.png"
            for k in range(1, 41))  # fmt: skip
CHART = [(k, 1.12 - 0.0004 * k + (0.002 if k % 3 else 0.0)) for k in range(1, 41)]  # labels such as "1.120"


def page_of(b, body: str, css: str = "", viewport: dict[str, int] = PHONE):
    page = b.new_page(viewport=viewport)
    page.set_content(f"<!doctype html><html><head><style>body {{ font-family: sans-serif; margin: 8px; }} {css}</style>"
                     f"</head><body>{body}</body></html>")  # fmt: skip
    return page


def test_a_jobs_log_box_shows_its_newest_lines_and_the_chart_keeps_its_labels_inside(tmp_path):
    from playwright.sync_api import expect

    task = running("alice", "a photo of sks dog", 7)
    html = panel_html(task, job_of(task, log=LOG), StatusData(job_prices={"t4-small": 0.4}), TOKEN)
    with browser() as b:
        page = page_of(b, f'<div class="jobs-run">{html}</div>', JOBS_CSS)
        box = page.locator(".job-log")  # the log's scrolling box
        last, first_shown = LOG[-1], LOG[-12]  # the panel keeps the last 12 lines
        geometry = box.evaluate(
            """(el, texts) => { const r = el.getBoundingClientRect(), range = document.createRange();
                 const pre = el.matches('pre') ? el : el.querySelector('pre'), node = pre.firstChild;
                 const at = t => node.textContent.indexOf(t);
                 const span = (t) => { range.setStart(node, at(t)); range.setEnd(node, at(t) + t.length);
                                       const b = range.getBoundingClientRect(); return [b.top, b.bottom]; };
                 return {top: r.top, bottom: r.bottom, last: span(texts[0]), first: span(texts[1]),
                         scrolls: el.scrollHeight > el.clientHeight}; }""",
            [last, first_shown],
        )
        assert geometry["scrolls"], geometry  # more lines than the box holds: it must choose which ones show
        assert geometry["top"] <= geometry["last"][0] and geometry["last"][1] <= geometry["bottom"] + 1, geometry
        assert geometry["first"][1] <= geometry["top"], geometry  # the oldest lines are the ones scrolled away
        expect(page.get_by_role("log", name="Job log (tail)")).to_be_visible()  # announced as a log
        shot(page, "jobs-log-tail-phone")
        page.close()

        for name, viewport in (("phone", {"width": 340, "height": 500}), ("desktop", {"width": 520, "height": 400})):
            page = page_of(b, loss_chart_html(CHART), viewport=viewport)
            drawn = page.evaluate(
                """() => { const svg = document.querySelector('svg'), box = svg.getBoundingClientRect();
                     return {width: box.width, texts: [...svg.querySelectorAll('text')].map(t => {
                       const b = t.getBoundingClientRect();
                       return [t.textContent, b.left - box.left, b.right - box.left, b.top - box.top]; })}; }"""
            )
            assert drawn["width"] > viewport["width"] * 0.9, drawn["width"]  # the chart fills its box
            for text, left, right, _ in drawn["texts"]:
                assert left >= 0 and right <= drawn["width"] + 0.5, (name, text, left, right)
            labels = [t for t in drawn["texts"] if t[0].startswith("1.1")]
            assert len(labels) >= 3 and all(len(t[0]) == len(labels[0][0]) for t in labels), labels  # "1.120", whole
            shot(page, f"loss-chart-{name}")
            page.close()
