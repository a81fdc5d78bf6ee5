"""The scores in the Results tab (issue 22, point 3): the charts drawn from a record, the grid of base-model and
picked-checkpoint images built from an output folder written here (``tests.results_fixtures``), and the same read
from a model repo on the emulator (real huggingface_hub against tests/fakehub). No mocks."""

from __future__ import annotations

import base64
import io
import re
import time
import xml.etree.ElementTree as ET

from huggingface_hub import HfApi
from PIL import Image

from contract.scores import SCORES_NAME, PointScores, ScoreRecord
from contract.settings import load_settings
from scheduler.hardware import make_hardware
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.worker import Worker
from tests.conftest import ALICE_TOKEN
from tests.results_fixtures import SCORED_PROMPTS, STEP_COLORS, step_images, write_scored_output
from ui.auth import Access
from ui.context import AppContext
from ui.results_view import ResultsCache, local_output_dir, result_from_folder, result_from_repo, results_values_for
from ui.scores_chart import NO_SCORES, SCORE_MEASURES, line_chart_svg, scores_chart_html, series_of
from ui.scores_view import scores_from_folder, scores_html, scores_update

SVG = "{http://www.w3.org/2000/svg}"


def svgs(html: str) -> list[ET.Element]:
    """The SVG elements of a chart's HTML, parsed as XML (so each must be well-formed)."""
    return [ET.fromstring(s.replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
            for s in re.findall(r"<svg .*?</svg>", html, re.S)]  # fmt: skip


def coords(element: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, pair.split(","))) for pair in element.get("points").split()]


def legends(html: str) -> list[list[str]]:
    """Each chart's legend labels, in order."""
    return [re.findall(r'class="legend-label">(.*?)</span>', box) for box in html.split('class="scores-chart-box"')[1:]]


def by_class(svg: ET.Element, tag: str, cls: str) -> dict[str, ET.Element]:
    return {e.get("data-series") or "": e for e in svg.iter(SVG + tag) if e.get("class") == cls}


def record_of(*steps: tuple[int, float | None, float | None, float | None, float | None],
              picked: int | None = None) -> ScoreRecord:  # fmt: skip
    """A record whose first step-0 tuple is the base model's."""
    points = [PointScores(step=s, dino=d, clip_i=i, clip_t=t, val_loss=v) for s, d, i, t, v in steps]
    base = next((p for p in points if p.step == 0), None)
    data = {"prompts": ["a photo of sks dog"], "base": base, "points": [p for p in points if p.step]}
    if picked is not None:
        data["picked"] = {"step": picked, "reason": "the best"}
    return ScoreRecord(**data)


def test_the_chart_draws_each_score_over_the_steps_with_the_base_model_dashed_and_the_pick_marked(tmp_path):
    record = record_of((0, 0.30, 0.60, 0.31, 0.20), (250, 0.45, 0.70, 0.30, 0.15), (500, 0.62, 0.80, 0.31, 0.14),
                       (750, 0.64, 0.81, 0.27, 0.17), picked=500)  # fmt: skip

    html = scores_chart_html(record)
    scores, loss = svgs(html)

    lines = by_class(scores, "polyline", "series")
    assert sorted(lines) == ["CLIP-I", "CLIP-T", "DINO"]
    dino, clip_i, clip_t = coords(lines["DINO"]), coords(lines["CLIP-I"]), coords(lines["CLIP-T"])
    assert len(dino) == len(clip_i) == len(clip_t) == 3
    assert [x for x, _ in dino] == sorted({x for x, _ in dino})  # steps left to right, one x per step
    assert [x for x, _ in dino] == [x for x, _ in clip_t]
    assert dino[0][1] > dino[1][1] > dino[2][1]  # rising scores are drawn higher (smaller y)
    assert clip_i[0][1] < dino[0][1]  # 0.70 above 0.45 on the shared axis
    refs = by_class(scores, "line", "base-ref")
    assert sorted(refs) == ["CLIP-I", "CLIP-T", "DINO"] and all(r.get("stroke-dasharray") for r in refs.values())
    # CLIP-T at step 500 equals the base model's 0.31: on its dashed line
    assert abs(float(refs["CLIP-T"].get("y1")) - clip_t[1][1]) < 0.11
    assert float(refs["DINO"].get("y1")) > dino[0][1]  # the base model's 0.30 is below every checkpoint
    picked = [e for e in scores.iter(SVG + "line") if e.get("class") == "picked-step"]
    assert len(picked) == 1 and abs(float(picked[0].get("x1")) - dino[1][0]) < 0.11
    marks = [e for e in scores.iter(SVG + "circle") if e.get("class") == "picked-point"]
    assert len(marks) == 3 and all(abs(float(m.get("cx")) - dino[1][0]) < 0.11 for m in marks)
    assert legends(html) == [["DINO", "CLIP-I", "CLIP-T", "base model (step 0)", "picked: step 500"],
                             ["validation loss", "base model (step 0)", "picked: step 500"]]  # fmt: skip
    x_ticks = [float(t.text) for t in scores.iter(SVG + "text") if t.get("class") == "x-tick"]
    assert x_ticks[0] == 0 and x_ticks[-1] >= 750  # the axis starts at the base model's step 0

    assert by_class(loss, "polyline", "series").keys() == {"validation loss"}
    assert len(coords(by_class(loss, "polyline", "series")["validation loss"])) == 3
    assert by_class(loss, "line", "base-ref").keys() == {"validation loss"}
    assert any(e.get("class") == "picked-step" for e in loss.iter(SVG + "line"))


def test_an_empty_record_draws_a_frame_that_says_so_and_no_loss_chart():
    html = scores_chart_html(ScoreRecord())
    (only,) = svgs(html)
    assert legends(html) == [[]]
    assert NO_SCORES in [t.text for t in only.iter(SVG + "text")]
    assert not list(only.iter(SVG + "polyline")) and not list(only.iter(SVG + "circle"))


def test_one_scored_point_shows_as_a_dot_and_measures_nobody_has_are_left_out():
    record = record_of((0, 0.3, None, None, None), (100, 0.5, None, None, None), picked=100)
    assert series_of(record, SCORE_MEASURES[1]) is None  # no CLIP-I anywhere

    html = scores_chart_html(record)
    (chart,) = svgs(html)  # no validation loss: no second chart

    assert by_class(chart, "polyline", "series").keys() == {"DINO"}
    dots = [c for c in chart.iter(SVG + "circle") if c.get("data-series") == "DINO"]
    assert len(dots) == 1 and dots[0].get("class") == "picked-point"  # a one-point line is invisible: its dot is not
    assert legends(html) == [["DINO", "base model (step 0)", "picked: step 100"]]


def test_the_base_model_alone_draws_its_reference_lines():
    (chart,) = svgs(line_chart_svg("t", [series_of(record_of((0, 0.3, 0.6, None, None)), m) for m in SCORE_MEASURES[:2]],
                                   "score"))  # fmt: skip
    assert by_class(chart, "line", "base-ref").keys() == {"DINO", "CLIP-I"}
    assert not list(chart.iter(SVG + "polyline"))
    assert min(float(t.text) for t in chart.iter(SVG + "text") if t.get("class") == "x-tick") == 0


def color_of(uri: str) -> tuple[int, int, int]:
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as img:
        return img.convert("RGB").getpixel((img.width // 2, img.height // 2))


def near(color: tuple[int, int, int], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 12 for a, b in zip(color, expected, strict=True))


def grid_rows(html: str) -> list[tuple[str, list[str | None]]]:
    """The grid's rows: the prompt label (as HTML) and each image cell's data URI (None: "no image")."""
    table = re.search(r'<table class="scores-grid".*?</table>', html, re.S).group()
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S):
        label = re.search(r'<th scope="row"[^>]*>(.*?)</th>', row, re.S).group(1)
        cells = [m.group(1) if m.group(1) else None
                 for m in re.finditer(r'<td[^>]*>(?:<img src="([^"]+)")?', row)]  # fmt: skip
        rows.append((label, cells))
    return rows


def test_the_grid_shows_one_row_per_prompt_with_the_base_model_and_the_picked_checkpoint(tmp_path):
    record = write_scored_output(tmp_path / "output")
    task = Task(instance_prompt="a photo of sks dog", submitted_by="local", status=TaskStatus.DONE,
                result_url=str(tmp_path / "output"))  # fmt: skip

    result = result_from_folder(task, tmp_path / "output")

    assert result.scores is not None and result.scores.record == record and record.picked.step == 500
    # only the base model's and the picked step's images are read
    assert set(result.scores.images) == set(step_images(0)) | set(step_images(500))
    html = scores_html(result.scores)
    heads = re.findall(r'<th scope="col"[^>]*>(.*?)</th>', html)
    assert heads == ["prompt", "base model", "picked checkpoint (step 500)"]
    rows = grid_rows(html)
    assert [label for label, _ in rows] == [p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                                            for p in SCORED_PROMPTS]  # fmt: skip
    assert "<b>in the snow</b>" not in html  # the prompt with markup is text
    for _, (base, picked) in rows:
        assert near(color_of(base), STEP_COLORS[0]) and near(color_of(picked), STEP_COLORS[500])
    assert "Picked checkpoint: step 500</b> (the highest subject fidelity" in html
    assert "DINO 0.620 (base 0.300) · CLIP-I 0.800 (base 0.600) · CLIP-T 0.300 (base 0.310)" in html
    assert 'class="scores-chart"' in html and 'class="scores-loss-chart"' in html
    update = scores_update(result.scores)
    assert update.visible is True and update.value == html


def test_a_missing_or_unsafe_image_is_said_in_its_cell(tmp_path):
    record = write_scored_output(tmp_path / "output")
    (tmp_path / "secret.png").write_bytes((tmp_path / "output" / step_images(500)[0]).read_bytes())
    record.points[1].images[0] = "../secret.png"  # outside the output folder: never read
    (tmp_path / "output" / step_images(0)[1]).unlink()
    (tmp_path / "output" / SCORES_NAME).write_text(record.model_dump_json())

    scores = scores_from_folder(tmp_path / "output", [])

    rows = grid_rows(scores_html(scores))
    assert rows[0][1][1] is None and rows[1][1][0] is None and rows[0][1][0] and rows[1][1][1]
    assert scores_html(scores).count("no image") == 2


def test_no_scores_file_shows_nothing_and_a_note_alone_shows_the_note(tmp_path):
    (tmp_path / "plain").mkdir()
    task = Task(instance_prompt="p", submitted_by="local", status=TaskStatus.DONE)
    plain = result_from_folder(task, tmp_path / "plain")
    assert plain.scores is None and plain.problems[0].startswith("No training_metrics.json")
    hidden = scores_update(plain.scores)
    assert hidden.visible is False and hidden.value == ""

    (tmp_path / "noted").mkdir()
    (tmp_path / "noted" / SCORES_NAME).write_text(ScoreRecord(note="scoring was turned off <i>for this task</i>").model_dump_json())
    html = scores_html(result_from_folder(task, tmp_path / "noted").scores)
    assert "scoring was turned off &lt;i&gt;for this task&lt;/i&gt;" in html
    assert "<svg" not in html and "scores-grid" not in html and "Picked" not in html

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / SCORES_NAME).write_text('{"points": "nope"}')
    broken = result_from_folder(task, tmp_path / "broken")
    assert broken.scores is None and any("scores.json could not be read" in p for p in broken.problems)


def test_the_model_repo_gives_the_scores_with_only_the_base_and_picked_images(hub, tmp_path):
    record = write_scored_output(tmp_path / "output")
    api = HfApi(endpoint=hub.url, token=ALICE_TOKEN)
    repo = f"alice/scored-{int(time.time() * 1000) % 10**9}"
    url = str(api.create_repo(repo, private=True))
    api.upload_folder(repo_id=repo, folder_path=str(tmp_path / "output"))  # what training/upload.py uploads
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", status=TaskStatus.DONE, output_repo=repo,
                result_url=url)  # fmt: skip
    hub.clear_requests()

    result = result_from_repo(task, api, tmp_path / "cache")

    assert result.scores is not None and result.scores.record == record
    assert set(result.scores.images) == set(step_images(0)) | set(step_images(500))
    # asked for by name (HEAD or GET: a file with the bytes of one already cached is not fetched again)
    fetched = {r.path.split("/resolve/", 1)[1].split("/", 1)[1] for r in hub.requests(path_regex="/resolve/")}
    assert SCORES_NAME in fetched and set(step_images(500)) <= fetched
    assert not fetched & set(step_images(250) + step_images(750))  # bounded: nothing of the other steps
    cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert SCORES_NAME in cached
    rows = grid_rows(scores_html(result.scores))
    assert len(rows) == len(SCORED_PROMPTS) and all(near(color_of(p), STEP_COLORS[500]) for _, (_, p) in rows)


def test_the_results_tab_shows_the_scores_to_the_owner_and_the_submitter_only(tmp_path):
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    queue = make_queue(settings)
    ctx = AppContext(settings=settings, queue=queue, worker=Worker(settings, queue, make_hardware(settings)))
    task = Task(instance_prompt="a photo of sks dog", submitted_by="alice", status=TaskStatus.DONE, finished_at=1.0)
    write_scored_output(local_output_dir(ctx, task))
    cache = ResultsCache(ctx)

    alice = results_values_for(cache, Access("alice", True, False), [task], task.id)[-1]
    bob = results_values_for(cache, Access("bob", True, False), [task], task.id)[-1]

    assert alice.visible is True and len(grid_rows(alice.value)) == len(SCORED_PROMPTS)
    assert bob.visible is False and bob.value == ""
