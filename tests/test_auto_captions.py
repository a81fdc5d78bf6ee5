"""Captions written for the user (``params.auto_captions``): real training of the tiny SD model on the CPU with a
tiny random Florence-2 built here as the captioning model (``tests.tiny_captioner``); the Run and Results tabs and
the card show the captions; the form and the CLI carry the option, refuse it for an edit model and put its cost in
the estimate. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from contract.caption_models import caption_seconds
from contract.events import Captions, parse_event
from scheduler.status import StatusData, WorkerStatus
from scheduler.task import Task, TaskStatus
from scheduler.trainer_process import apply_event
from scheduler.validation import validate_task
from tests.conftest import ALICE_TOKEN
from tests.test_captions import captioned_photos, recorded  # noqa: F401 - the fixture records the conditioning
from tests.test_training import run_task
from training.captioner import Captioner, keep_trigger
from training.data import caption_prompt, load_images
from ui.captions_view import captions_from_folder, captions_from_repo
from ui.estimate import Estimate
from ui.form_estimate import photos_to_caption, with_captions
from ui.results_view import result_from_folder, result_from_repo, summary_markdown
from ui.run_view import phase_text

PROMPT = "a photo of sks dog"
OWN = "a dog on a red sofa"
CAPTIONS = {"steps": 2, "auto_captions": True}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three photos, the first with its own caption."""
    folder = tmp_path_factory.mktemp("captioned")
    captioned_photos(folder, {0: OWN})
    return folder


@pytest.fixture(scope="module")
def captioned_run(tiny_sd, tiny_captioner, photos, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A run that captions: (its work folder, its events)."""
    workdir = tmp_path_factory.mktemp("run") / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPTION_MODEL", str(tiny_captioner))
        rc, events = run_task(workdir, base_model=str(tiny_sd), images=str(photos), params=CAPTIONS)
    assert rc == 0, events
    return workdir, events


def caption_event(events: list[dict]) -> Captions:
    found = [parse_event(e) for e in events if e["event"] == "captions"]
    assert len(found) == 1
    return found[0]


def test_a_run_captions_only_the_photos_without_their_own(captioned_run, photos, tiny_captioner):
    workdir, events = captioned_run
    phases = [e["phase"] for e in events if e["event"] == "phase"]
    assert phases.index("validating_input") < phases.index("captioning") < phases.index("loading")
    event = caption_event(events)
    stems = sorted(p.stem for p in photos.iterdir() if p.suffix != ".txt")
    assert sorted(event.captions) == stems and sorted(event.written) == stems[1:]
    assert event.captions[stems[0]] == OWN  # its own .txt: not captioned again

    # the written captions are the model's own words for the training crops, the trigger word kept
    images = load_images(photos, 32)
    captioner = Captioner.load(str(tiny_captioner), "cpu", None)
    try:
        expected = captioner.caption([im.image for im in images[1:]])
    finally:
        captioner.close()
    for im, text in zip(images[1:], expected, strict=True):
        assert event.captions[im.source.stem] == keep_trigger(text, PROMPT, None)
    # saved as the upload's .txt files, one per photo
    saved = {p.stem: p.read_text(encoding="utf-8").strip() for p in (workdir / "output" / "captions").glob("*.txt")}
    assert saved == event.captions


def test_the_run_trains_each_photo_on_its_caption_with_the_trigger_word(tiny_sd, tiny_captioner, photos, tmp_path,
                                                                         recorded, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CAPTION_MODEL", str(tiny_captioner))
    rc, events = run_task(tmp_path / "work", base_model=str(tiny_sd), images=str(photos), params=CAPTIONS)
    assert rc == 0
    captions = caption_event(events).captions
    run = recorded[-1]
    assert run["conds"] is not None and len(run["conds"]) == 3  # one conditioning per photo: its caption's
    prompts = [caption_prompt(captions[Path(name).stem], PROMPT) for name in run["sources"]]
    assert all("sks" in prompt.split() or PROMPT in prompt for prompt in prompts)
    assert len(set(prompts)) == len({id(c) for c in run["conds"]})  # distinct captions, distinct conditioning


def test_a_second_try_reads_the_captions_it_wrote(captioned_run, tiny_sd, photos, tmp_path, monkeypatch):
    workdir, events = captioned_run
    again = tmp_path / "work"
    shutil.copytree(workdir / "output" / "captions", again / "output" / "captions")
    # no captioning model at all: the run must not need one, every caption was saved
    monkeypatch.setenv("CAPTION_MODEL", str(tmp_path / "no-such-model"))
    rc, second = run_task(again, base_model=str(tiny_sd), images=str(photos), params=CAPTIONS)
    assert rc == 0, second
    assert caption_event(second).captions == caption_event(events).captions

    rc, failed = run_task(tmp_path / "fresh", base_model=str(tiny_sd), images=str(photos), params=CAPTIONS)
    assert rc == 2  # a bad captioning model is bad input: said, not retried
    errors = [e["message"] for e in failed if e["event"] == "error"]
    assert errors and "no-such-model" in errors[0]


def test_the_card_lists_the_captions(captioned_run):
    workdir, events = captioned_run
    card = (workdir / "output" / "README.md").read_text()
    event = caption_event(events)
    assert "## Captions" in card and "written by a vision-language model" in card
    for stem in event.captions:
        row = next(line for line in card.splitlines() if line.startswith(f"| `{stem}` |"))
        assert ("captioning model" in row) == (stem in event.written)
    assert OWN in card


def test_the_run_tab_shows_the_captions_as_inert_text():
    status = WorkerStatus()
    hostile = "a dog ![x](http://evil.example/a.png) <b>bold</b>"
    apply_event(status, Captions(captions={"000": OWN, "001": hostile}, written=["001"]), None, None)
    data: StatusData = status.snapshot()
    assert data.captions == [("000", OWN, False), ("001", hostile, True)]
    text = phase_text(data)
    assert "**Captions** (1 written by the captioning model, marked ✎)" in text
    assert "✎ " in text.split("`001`")[1] and "✎" not in text.split("`000`")[1].split("`001`")[0]
    assert "![x](" not in text and "<b>" not in text  # a caption never becomes an image, link or markup
    status.start_task(Task(instance_prompt=PROMPT, submitted_by="me"))
    assert status.snapshot().captions == []  # the next run starts without them


def test_the_results_tab_shows_the_captions_from_the_folder_and_from_the_model_repo(captioned_run, hub, tmp_path):
    workdir, events = captioned_run
    event = caption_event(events)
    task = Task(instance_prompt=PROMPT, submitted_by="me", status=TaskStatus.DONE, finished_at=1.0)
    local = result_from_folder(task, workdir / "output")
    assert dict(local.captions) == event.captions
    summary = summary_markdown(local)
    assert "**Captions**" in summary and "among the output files" in summary
    assert any(p.parent.name == "captions" for p in local.files)  # offered as .txt downloads

    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    repo = f"alice/captioned-{uuid.uuid4().hex[:8]}"
    url = str(api.create_repo(repo, private=True))
    api.upload_folder(repo_id=repo, folder_path=str(workdir / "output"))  # what training/upload.py uploads
    task = dataclasses.replace(task, result_url=url, output_repo=repo)
    remote = result_from_repo(task, api, tmp_path / "cache")
    assert dict(remote.captions) == event.captions and not remote.problems
    assert "captions/ folder" in summary_markdown(remote)
    assert captions_from_folder(tmp_path / "nothing") == [] and captions_from_repo(["captions/x/y.txt"], print) == []


def test_the_task_carries_the_option_and_refuses_a_value_that_is_not_on_or_off(tmp_path):
    photo = captioned_photos(tmp_path, {}, n=1, size=64)[0]
    task = Task(instance_prompt=PROMPT, submitted_by="me", base_model="builtin:demo", hardware="t4-small",
                output_repo="me/model", params={"auto_captions": "yes"})  # fmt: skip
    assert any(p.startswith("Write captions: 'yes' is not on or off") for p in validate_task(task, [photo]))
    task.params["auto_captions"] = True
    assert not [p for p in validate_task(task, [photo]) if "Write captions" in p]


def test_the_estimate_counts_the_photos_to_caption(tmp_path):
    photos = captioned_photos(tmp_path, {0: OWN}, n=3)
    files = [str(p) for p in photos] + [str(photos[0].with_suffix(".txt"))]
    assert photos_to_caption(True, files) == 2 and photos_to_caption(False, files) == 0
    base = Estimate("t4-small", train_s=600.0, overhead_s=120.0, usd=0.1)
    est = with_captions(base, 2)
    assert est.caption_s == caption_seconds(2, "cuda") > 0 and est.total_s == base.total_s + est.caption_s
    assert est.usd > base.usd
    assert with_captions(Estimate("cpu-basic", 600.0, 0.0, 0.0), 2).caption_s == caption_seconds(2, "cpu")
    assert with_captions(base, 0) is base


def test_local_mode_writes_the_captions_at_once_and_the_table_edits_them(tiny_captioner, tmp_path):
    from tests.test_form import local_ctx
    from ui.caption_editor import apply_table, caption_table, write_captions_now

    photos = captioned_photos(tmp_path / "upload", {0: OWN}, n=3)
    upload = [str(p) for p in photos] + [str(photos[0].with_suffix(".txt"))]
    ctx = local_ctx(tmp_path / "data", CAPTION_MODEL=str(tiny_captioner))
    assert ctx.settings.caption_model == str(tiny_captioner)

    files, rows, note = write_captions_now(ctx, upload, "cpu", PROMPT)
    assert "Wrote captions for 2 photo(s)" in note
    texts = [Path(f) for f in files if f.endswith(".txt")]
    assert sorted(t.stem for t in texts) == sorted(p.stem for p in photos)  # one .txt per photo now
    assert str(photos[0].with_suffix(".txt")) in files  # its own caption is kept as it was
    assert [r[0] for r in rows] == [p.name for p in photos] and rows[0][1] == OWN
    assert all(r[1] for r in rows)  # the written ones are not empty
    assert rows == caption_table([Path(f) for f in files])

    # an edit rewrites that photo's .txt; an emptied cell removes it
    edited = [[rows[0][0], rows[0][1]], [rows[1][0], "sks dog on a beach"], [rows[2][0], ""]]
    after = apply_table(files, edited)
    table = dict(caption_table([Path(f) for f in after]))
    assert table == {photos[0].name: OWN, photos[1].name: "sks dog on a beach", photos[2].name: ""}
    assert len([f for f in after if f.endswith(".txt")]) == 2
    # nothing to write: said, and the upload unchanged
    again, _, note = write_captions_now(ctx, apply_table(files, [[rows[2][0], "x"]] + edited[:2]), "cpu", PROMPT)
    assert "Every photo has its caption already" in note


def test_a_bad_captioning_model_is_said_in_the_form_and_nothing_changes(tmp_path):
    from tests.test_form import local_ctx
    from ui.caption_editor import write_captions_now

    photos = captioned_photos(tmp_path / "upload", {}, n=2)
    ctx = local_ctx(tmp_path / "data", CAPTION_MODEL=str(tmp_path / "no-such-model"))
    files, rows, note = write_captions_now(ctx, [str(p) for p in photos], "cpu", PROMPT)
    assert note.startswith("**No captions were written:**") and "no-such-model" in note
    assert files == [str(p) for p in photos] and [r[1] for r in rows] == ["", ""]
