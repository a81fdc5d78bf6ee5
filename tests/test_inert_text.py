"""Untrusted text is shown as text and refused where it could hurt (issue 20, findings 7 and 8).

Finding 7: a prompt, an error or a note from the queue reaches the owner's Results and Run tabs as Markdown, where
``![x](https://evil.example/p.png)`` is a tracking pixel and ``[click](https://evil.example)`` a phishing link. Every
view that puts such text into Markdown goes through ``contract.text`` (``md_text`` / ``md_code``); these tests
render what the views return with a CommonMark renderer (markdown-it-py, tables on) and look for images and links.
The browser test in tests/e2e/test_results_view.py renders the same views with Gradio's own Markdown (marked, GFM
autolinks, KaTeX). The model card is Markdown on the Hub: the same holds for it.

Finding 8: control characters (a terminal's escape sequences) and bidi overrides are refused in prompts by the form
and by the trainer alike (``contract.params.text_problem``).
"""

from __future__ import annotations

import ast
import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from markdown_it import MarkdownIt

from contract.params import text_problem
from contract.text import md_code, md_text, printable
from scheduler.status import StatusData
from scheduler.task import Task, TaskStatus
from scheduler.validation import validate_submission, validate_task
from tests.scheduler.helpers import make_images, make_task
from training.exitcodes import BadInputError
from training.spec import TrainSpec
from ui.auth import Access
from ui.results_view import TaskResult, results_pointer, settings_markdown, summary_markdown

EVIL = "evil.example"
HOSTILE = (f"![x](https://{EVIL}/p.png) [click](https://{EVIL}) <img src=x onerror=alert(1)> "
           f"<https://{EVIL}/auto> [ref]: https://{EVIL} **bold** _it_ `code` | pipe $$x$$ \\ &amp; #h")  # fmt: skip
TERMINAL = "\x1b]0;pwned\x07a photo"  # sets the window title of the terminal that prints it
OWNER = Access(user="alice", allowed=True, owner=True)


def render(markdown: str) -> str:
    return MarkdownIt("commonmark").enable("table").render(markdown)


def markup_from_user(rendered: str) -> list[str]:
    """The images, links, raw HTML and emphasis in ``rendered`` that the hostile text could have made."""
    tags = re.findall(r"<(?:img|a|em|code|h\d|blockquote)\b[^>]*>", rendered)
    return tags + [EVIL] * ("evil.example/p.png" in rendered and "<img" in rendered)


def text_of(rendered: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", rendered))


def hostile_task(**changes) -> Task:
    fields = {"instance_prompt": HOSTILE, "class_prompt": HOSTILE, "submitted_by": "bob", "base_model": HOSTILE,
              "output_repo": "bob/sks-dog", "status": TaskStatus.FAILED, "last_error": HOSTILE,
              "params": {"validation_prompts": [HOSTILE], "steps": 10}, "finished_at": 1_700_000_000.0}  # fmt: skip
    fields.update(changes)
    return Task(**fields)


# ----------------------------------------------------------------------------------------------- finding 7: views
def test_a_hostile_prompt_error_and_problem_are_text_in_the_results_view():
    result = TaskResult(task=hostile_task(), problems=[HOSTILE])
    # the views' own markup: the heading with the task id in code, a problem in italics; the settings table
    for markdown, own in ((summary_markdown(result), ["<h3>", "<code>", "<em>"]), (settings_markdown(result), [])):
        rendered = render(markdown)
        assert "<img" not in rendered and f'href="https://{EVIL}' not in rendered, rendered
        assert markup_from_user(rendered) == own, rendered
        assert HOSTILE[:120] in text_of(rendered)  # shown, as typed (cells are cut at 200 characters)
        assert f"https://{EVIL}" not in markdown  # a GFM autolinker (Gradio's marked) would link a bare URL


def test_only_a_hub_url_becomes_the_model_link():
    for url in (f"https://{EVIL}/bob/sks-dog", f"https://huggingface.co/bob/m) [click](https://{EVIL}"):
        task = hostile_task(status=TaskStatus.DONE, last_error=None, result_url=url)
        rendered = render(summary_markdown(TaskResult(task=task, model_url=url)))
        assert f'href="https://{EVIL}' not in rendered and "<img" not in rendered, rendered
    url = "https://huggingface.co/bob/sks-dog"
    task = hostile_task(status=TaskStatus.DONE, last_error=None, result_url=url)
    assert f'<a href="{url}">bob/sks-dog</a>' in render(summary_markdown(TaskResult(task=task, model_url=url)))


def test_the_run_tab_shows_messages_errors_and_the_last_prompt_as_text():
    from contract.settings import load_settings
    from ui.jobs_view import summary_text
    from ui.run_view import phase_text

    status = StatusData(phase="failed", task_id="t1", message=HOSTILE, last_error=HOSTILE)
    pointer = results_pointer([hostile_task()])
    settings = load_settings({"SPACE_ID": "alice/trainer", "HF_TOKEN": "hf_x", "TRAINING_BACKEND": "jobs"})
    jobs = summary_text(status, settings, 0, 1_700_000_000.0, owner=True)
    for markdown in (phase_text(status), pointer, jobs):
        rendered = render(markdown)
        assert "<img" not in rendered and f'href="https://{EVIL}' not in rendered, rendered
        assert not [t for t in markup_from_user(rendered) if t != "<code>"], rendered
        assert HOSTILE[:50] in text_of(rendered)


def test_md_text_and_md_code_keep_the_text_and_drop_the_markup():
    for text in (HOSTILE, "a photo of sks dog", "`a` ``b`` c`", "1. item", "- item", "www.evil.example x@y.z"):
        shown = render(md_text(text))
        assert text_of(shown).strip() == text and re.findall(r"<(?!/?p>)[^>]+>", shown) == [], shown
        code = render(md_code(text))
        assert text_of(code).strip() == text and code.count("<code>") == 1, code
    assert md_text("a photo of sks dog") == "a photo of sks dog"  # plain text stays readable in the source
    assert md_text(TERMINAL) == md_text("\\x1b]0;pwned\\x07a photo")  # control characters made visible
    assert printable("a\u202eb\nc") == "a\\u202eb\\nc" and printable("a\nb", keep_newlines=True) == "a\nb"


# ----------------------------------------------------------------------------------------------- finding 7: model card
def test_the_model_card_shows_a_hostile_prompt_as_text(tmp_path):
    from training.families.base import CardInfo
    from training.recipe_base import RunContext
    from training.utils.results import RunResult

    spec = TrainSpec.from_dict({"task_id": "t", "base_model": "bob/base", "instance_prompt": HOSTILE, "images": "/i",
                                "class_prompt": HOSTILE, "output": {"repo_id": "bob/sks-dog"},
                                "params": {"validation_prompts": [HOSTILE], "prior_preservation": True}})  # fmt: skip
    ctx = RunContext(spec=spec, workdir=tmp_path, progress=None)  # type: ignore[arg-type]
    ctx.output_dir.mkdir()
    sample = ctx.output_dir.resolve() / "samples" / "step4_0.png"
    result = RunResult(recipe="dreambooth-lora", steps=4, resolution=64, learning_rate=1e-4, warmup_steps=0,
                       mixed_precision="no", sample_paths={HOSTILE: str(sample)})  # fmt: skip
    # The family's card facts come from a loaded model (Components): a stand-in with a real CardInfo.
    comps = SimpleNamespace(family=SimpleNamespace(card_info=lambda _: CardInfo(license="mit", tags=("sd",))))
    from training.card import write_model_card

    card = write_model_card(ctx, result, comps).read_text()  # type: ignore[arg-type]
    body = card.split("\n---\n", 1)[1]
    rendered = render(body)
    images = re.findall(r"<img\b[^>]*>", rendered)
    assert images == [f'<img src="samples/step4_0.png" alt="{html.escape(HOSTILE, quote=True)}" />'], images
    assert re.findall(r"<a\b[^>]*>", rendered) == [] and "<em>" not in rendered and "<strong>bold" not in rendered
    # no URL left in the text where an autolinker (the Hub's) would make a link of it; code is never linked
    assert f"https://{EVIL}" not in re.sub(r"<code>.*?</code>|<pre>.*?</pre>|<img[^>]*>", "", rendered, flags=re.S)
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    ast.parse(code)  # the usage snippet stays valid Python, with the prompt as its string
    assert json.dumps(HOSTILE, ensure_ascii=False) in code
    assert f"<code>{html.escape(HOSTILE, quote=False)}</code>" in rendered  # the trigger prompt, as typed


# ----------------------------------------------------------------------------------------------- finding 8: refused
@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("photos"), 3)


@pytest.mark.parametrize("bad", [TERMINAL, "a photo\nof sks dog", "a photo \u202egod skc", "tab\there", "c1 \x9b2J",
                                 "del \x7f", "isolate \u2066x\u2069"])  # fmt: skip
def test_the_form_and_the_trainer_refuse_control_characters_in_prompts(images, bad):
    problems = validate_submission(instance_prompt=bad, images=images, hardware="t4-small", output_repo="u/m")
    assert len(problems) == 1 and problems[0].startswith("Instance prompt: holds the control character U+"), problems
    assert "one line of visible text" in problems[0]
    klass = validate_submission(instance_prompt="sks", class_prompt=bad, images=images, hardware="t4-small",
                                output_repo="u/m")  # fmt: skip
    assert len(klass) == 1 and klass[0].startswith("Class prompt: holds the control character"), klass
    validation = validate_task(make_task(params={"validation_prompts": ["ok", bad]}), images)
    assert len(validation) == 1, validation
    assert validation[0].startswith("Validation prompts: has a prompt with the control character U+"), validation
    model = validate_task(make_task(base_model=f"bob/m{bad}"), images)
    assert len(model) == 1 and model[0].startswith("Base model: holds the control character"), model

    task = {"task_id": "t", "base_model": "m", "instance_prompt": bad, "images": "/i"}
    with pytest.raises(BadInputError, match=r"^instance_prompt holds the control character U\+"):
        TrainSpec.from_dict(task)
    with pytest.raises(BadInputError, match=r"^class_prompt holds the control character"):
        TrainSpec.from_dict({**task, "instance_prompt": "sks", "class_prompt": bad})
    with pytest.raises(BadInputError, match=r"^params\.validation_prompts has a prompt with the control character"):
        TrainSpec.from_dict({**task, "instance_prompt": "sks", "params": {"validation_prompts": [bad]}})
    with pytest.raises(BadInputError, match=r"^base_model holds the control character"):
        TrainSpec.from_dict({**task, "instance_prompt": "sks", "base_model": f"bob/m{bad}"})


def test_the_message_names_the_character_and_where_it_is():
    assert text_problem(TERMINAL) == "holds the control character U+001B at character 1; use one line of visible text"
    assert text_problem("a \u202e") == ("holds the control character U+202E (RIGHT-TO-LEFT OVERRIDE) at character 3; "
                                        "use one line of visible text")  # fmt: skip


def test_ordinary_text_of_any_script_is_accepted_by_both(images):
    for prompt in ("a photo of sks dog", "une photo de sks chien, été 🌞", "صورة كلب sks", "写真 sks 犬", "$5 & <3"):
        assert text_problem(prompt) is None
        assert validate_submission(instance_prompt=prompt, images=images, hardware="t4-small", output_repo="u/m") == []
        TrainSpec.from_dict({"task_id": "t", "base_model": "m", "instance_prompt": prompt, "images": "/i",
                             "params": {"validation_prompts": [prompt]}})  # fmt: skip


def test_contract_text_imports_nothing_of_the_app():
    source = Path(__file__).resolve().parents[1].joinpath("contract", "text.py").read_text()
    assert not re.search(r"^\s*(from|import) (ui|scheduler|training|gradio|torch)\b", source, re.M)
