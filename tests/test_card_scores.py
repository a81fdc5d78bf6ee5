"""The model card shows a scored run's scores (issue 22): the picked checkpoint's measures in the ``model-index``
metadata, as ``huggingface_hub`` reads them back, and a table of every scored step with the picked one marked; an
unscored run says why; prompts typed by users stay text. The README states the pick rule with the code's numbers.

The card is written by ``training.card`` from a constructed ``ScoreRecord`` (what the trainer writes to
``scores.json``): the scores themselves are tested where they are computed. The family's card facts come from a
stand-in holding a real ``CardInfo`` (the card asks nothing else of a loaded model), as in tests/test_inert_text.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub import ModelCard

from contract.scores import CLIP_T_MARGIN, PICK_RULE, VAL_LOSS_RISE, PointScores, ScoreRecord, pick
from tests.test_inert_text import EVIL, HOSTILE, markup_from_user, render, text_of
from training.card import write_model_card
from training.families.base import CardInfo
from training.recipe_base import RunContext
from training.spec import TrainSpec
from training.utils.results import RunResult

REPO = "bob/sks-dog"
PROMPTS = ["a photo of sks dog", "a photo of sks dog on the beach", "a photo of dog"]


def _point(step: int, dino: float, clip_i: float, clip_t: float, val_loss: float) -> PointScores:
    images = [f"samples/scores/step{step}_{i}.png" for i in range(len(PROMPTS))]
    folder = f"checkpoints/step-{step:06d}" if step else None
    return PointScores(step=step, dino=dino, clip_i=clip_i, clip_t=clip_t, val_loss=val_loss, images=images,
                       checkpoint=folder)  # fmt: skip


def _record(**changes) -> ScoreRecord:
    """Base, then three checkpoints: step 400 has the best subject fidelity but has lost prompt fidelity, so the
    rule picks step 200 (not the last one)."""
    base = _point(0, 0.201, 0.512, 0.301, 0.1502)
    points = [_point(100, 0.40012, 0.61, 0.299, 0.140), _point(200, 0.55555, 0.70449, 0.2951, 0.12345),
              _point(400, 0.70, 0.80, 0.250, 0.121)]  # fmt: skip
    fields = {"prompts": PROMPTS, "models": {"dino": "facebook/dinov2-small", "clip": "openai/clip-vit-base-patch32"},
              "base": base, "points": points, "picked": pick(base, points)}  # fmt: skip
    fields.update(changes)
    return ScoreRecord(**fields)


def _write_card(tmp_path: Path, scores, *, recipe: str = "dreambooth-lora", prompt: str = PROMPTS[0]) -> Path:
    spec = TrainSpec.from_dict({"task_id": "t", "base_model": "bob/base", "instance_prompt": prompt, "images": "/i",
                                "recipe": recipe, "output": {"repo_id": REPO}})  # fmt: skip
    ctx = RunContext(spec=spec, workdir=tmp_path, progress=None)  # type: ignore[arg-type]
    ctx.output_dir.mkdir(exist_ok=True)
    result = RunResult(recipe=recipe, steps=400, resolution=64, learning_rate=1e-4, warmup_steps=0,
                       mixed_precision="no", scores=scores)  # fmt: skip
    comps = SimpleNamespace(family=SimpleNamespace(card_info=lambda _: CardInfo(license="mit", tags=("sd",))))
    return write_model_card(ctx, result, comps)  # type: ignore[arg-type]


def _table(body: str) -> dict[str, list[str]]:
    """The scores table's rows by their first cell (the settings table, after it, has a "base model" row too)."""
    section = body.split("## Training settings")[0]
    rows = re.findall(r"^\| ((?:base model|step \d+)) \| (.*) \|$", section, re.M)
    return {label: [c.strip() for c in rest.split(" | ")] for label, rest in rows}


def test_the_model_index_holds_the_picked_checkpoints_scores(tmp_path):
    record = _record()
    assert record.picked.step == 200  # the record is built so that the pick is not the last checkpoint
    card = ModelCard.load(_write_card(tmp_path, record))
    results = card.data.eval_results
    picked = record.point(200)
    assert {r.metric_type: r.metric_value for r in results} == {
        "dino": 0.556, "clip_i": 0.704, "clip_t": 0.295, "val_loss": 0.123}  # fmt: skip
    assert card.data.model_name == REPO
    for r in results:
        assert (r.task_type, r.dataset_type, r.dataset_name) == (
            "text-to-image", "dreambooth-subject", "the training photos and scoring prompts")  # fmt: skip
        assert "self-reported" in r.metric_name and "step 200" in r.metric_name, r.metric_name
        assert "self-reported" in r.source_name and r.source_url.endswith(f"/{REPO}/blob/main/scores.json")
        assert not r.verified
    configs = {r.metric_type: r.metric_config for r in results}
    assert configs["dino"] == "facebook/dinov2-small" and configs["clip_t"] == "openai/clip-vit-base-patch32"
    # a measure the point lacks is left out, not reported as a number
    picked.val_loss = None
    again = ModelCard.load(_write_card(tmp_path, record))
    assert [r.metric_type for r in again.data.eval_results] == ["dino", "clip_i", "clip_t"]


def test_the_scores_table_marks_the_picked_step_and_names_the_other_checkpoints(tmp_path):
    body = ModelCard.load(_write_card(tmp_path, _record())).text
    table = _table(body)
    assert list(table) == ["base model", "step 100", "step 200", "step 400"]
    assert table["base model"] == ["0.201", "0.512", "0.301", "0.150", ""]
    assert table["step 200"] == ["0.556", "0.704", "0.295", "0.123", "**picked**"]
    assert [label for label, cells in table.items() if cells[-1]] == ["step 200"]
    assert "The main LoRA is step 200's: the highest subject fidelity" in body
    assert "`facebook/dinov2-small`" in body and "`openai/clip-vit-base-patch32`" in body
    assert f'pipe.load_lora_weights("{REPO}", subfolder="checkpoints/step-000100")' in body
    rendered = render(body)
    assert "<th>DINO</th>" in rendered and "<strong>picked</strong>" in rendered  # a real Markdown table


def test_a_full_fine_tune_names_no_checkpoint_folder(tmp_path):
    points = [p.model_copy(update={"checkpoint": None}) for p in _record().points]
    body = ModelCard.load(_write_card(tmp_path, _record(points=points), recipe="dreambooth-full")).text
    assert "The model is step 200's" in body and "load_lora_weights" not in body


def test_an_unscored_run_says_why_and_an_unscored_result_adds_nothing(tmp_path):
    note = "no scoring model is set (SCORING_DINO_MODEL and SCORING_CLIP_MODEL are empty)"
    card = ModelCard.load(_write_card(tmp_path, ScoreRecord(prompts=PROMPTS, note=note)))
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "This run was not scored: no scoring model is set" in text_of(render(card.text))
    assert _table(card.text) == {}
    plain = ModelCard.load(_write_card(tmp_path, None))
    assert plain.data.eval_results is None and "## Scores" not in plain.text


def test_the_demo_models_pixel_embedding_is_named(tmp_path):
    record = _record(models={"dino": "builtin:pixels"})
    body = ModelCard.load(_write_card(tmp_path, record)).text
    named = ("`builtin:pixels` (a fixed pixel embedding: how close the images' colours are to the photos', not a model "
             "of the subject) for DINO")
    assert named in body


def test_hostile_prompts_and_notes_in_the_scores_are_text(tmp_path):
    record = _record(prompts=[HOSTILE, "a photo of sks dog"], note=HOSTILE)
    body = ModelCard.load(_write_card(tmp_path, record)).text
    section = body[body.index("## Scores") : body.index("## Training settings")]
    rendered = render(section)
    assert "<img" not in rendered and f'href="https://{EVIL}' not in rendered, rendered
    assert not [t for t in markup_from_user(rendered) if t not in ("<code>", "<h2>")], rendered
    assert HOSTILE in text_of(rendered)  # the prompt and the note, shown as typed
    unscored = ModelCard.load(_write_card(tmp_path, ScoreRecord(note=HOSTILE))).text
    shown = render(unscored[unscored.index("## Scores") : unscored.index("## Training settings")])
    assert "<img" not in shown and "<a " not in shown and HOSTILE in text_of(shown), shown


# ----------------------------------------------------------------------------------------------- the README
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_the_readme_states_the_pick_rule_with_the_codes_numbers():
    start = README.index("## Scores and the picked checkpoint")
    section = README[start : README.index("\n## ", start + 1)]
    prose = " ".join(re.sub(r"^\s*>\s?", "", line) for line in section.splitlines()).split()
    assert " ".join(PICK_RULE.split()) in " ".join(prose), "the README must quote contract.scores.PICK_RULE"
    assert f"{CLIP_T_MARGIN}" in section and f"{VAL_LOSS_RISE:.0%}" in section
    for figure in ("0.668", "0.803", "0.305", "0.774", "0.885"):  # the paper's reference figures
        assert figure in section
    assert "score: false" in section and "SCORING_DINO_MODEL" in section and "SCORING_CLIP_MODEL" in section
