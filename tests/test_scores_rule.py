"""The checkpoint picker (contract.scores.pick) on score histories, and the scoring prompts. Torch-free."""

from __future__ import annotations

import pytest

from contract.scores import (
    CLIP_T_MARGIN,
    MAX_SCORING_PROMPTS,
    VAL_LOSS_RISE,
    PointScores,
    ScoreRecord,
    pick,
    scoring_prompts,
    shows_subject,
)

BASE = PointScores(step=0, dino=0.20, clip_i=0.60, clip_t=0.30, val_loss=0.50)


def history(*rows: tuple[int, float | None, float | None, float | None]) -> list[PointScores]:
    """(step, dino, clip_t, val_loss) rows."""
    return [PointScores(step=s, dino=d, clip_i=None, clip_t=t, val_loss=v) for s, d, t, v in rows]


CASES = {
    # subject fidelity keeps rising but prompt fidelity falls under the floor after step 300: overfitting
    "overfitting": (history((100, 0.40, 0.31, 0.40), (200, 0.55, 0.30, 0.38), (300, 0.62, 0.29, 0.37),
                            (400, 0.70, 0.25, 0.36)), 300),  # fmt: skip
    # subject fidelity still rising at the end, prompt fidelity steady: underfitting, the last one is best
    "underfitting": (history((100, 0.25, 0.30, 0.49), (200, 0.30, 0.30, 0.48), (300, 0.36, 0.30, 0.47)), 300),
    # flat: all within the tie margin, the earliest wins
    "flat": (history((100, 0.500, 0.30, 0.45), (200, 0.502, 0.30, 0.45), (300, 0.503, 0.30, 0.45)), 100),
    # the validation loss rises by more than VAL_LOSS_RISE at 400 although subject fidelity peaks there
    "validation loss rises": (history((100, 0.40, 0.30, 0.40), (200, 0.50, 0.30, 0.35), (300, 0.55, 0.30, 0.38),
                                      (400, 0.65, 0.30, 0.35 * (1 + VAL_LOSS_RISE) + 0.01)), 300),  # fmt: skip
    # every checkpoint lost prompt fidelity: the least damaged one
    "all drift": (history((100, 0.60, 0.20, 0.4), (200, 0.70, 0.22, 0.4), (300, 0.80, 0.21, 0.4)), 200),
    # no image scores at all (scoring models did not load): the last checkpoint
    "unscored": (history((100, None, None, 0.4), (200, None, None, 0.5)), 200),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_picker_chooses_the_expected_checkpoint(name):
    points, expected = CASES[name]
    assert pick(BASE, points).step == expected


def test_prompt_fidelity_exactly_at_the_floor_is_kept():
    points = history((100, 0.5, BASE.clip_t - CLIP_T_MARGIN, 0.4), (200, 0.4, 0.30, 0.4))
    assert pick(BASE, points).step == 100
    below = history((100, 0.5, BASE.clip_t - CLIP_T_MARGIN - 0.001, 0.4), (200, 0.4, 0.30, 0.4))
    assert pick(BASE, below).step == 200


def test_without_a_base_model_score_only_subject_fidelity_and_the_loss_decide():
    points = history((100, 0.3, 0.10, 0.4), (200, 0.6, 0.05, 0.4))
    assert pick(None, points).step == 200


def test_clip_i_stands_in_for_dino():
    points = [PointScores(step=100, clip_i=0.7, clip_t=0.3), PointScores(step=200, clip_i=0.8, clip_t=0.3)]
    assert pick(BASE, points).step == 200
    assert pick(BASE, []) is None


def test_the_record_round_trips_through_json():
    rec = ScoreRecord(prompts=["a"], base=BASE, points=history((100, 0.4, 0.3, 0.4)))
    rec.picked = pick(rec.base, rec.points)
    again = ScoreRecord.model_validate_json(rec.model_dump_json())
    assert again == rec and again.point(100).dino == 0.4 and again.point(5) is None


def test_scoring_prompts_keep_validation_prompts_first_and_add_the_built_in_ones():
    got = scoring_prompts("a photo of sks dog", "a photo of a dog", ["sks dog in a bucket", "a photo of sks dog on the beach"])
    assert got[:2] == ["sks dog in a bucket", "a photo of sks dog on the beach"]
    assert "a photo of sks dog in the snow" in got and got[-1] == "a photo of a dog"
    assert len(got) == len(set(got)) == 4  # the beach prompt was a validation prompt already
    assert [shows_subject(q, "a photo of a dog") for q in got] == [True, True, True, False]
    many = scoring_prompts("x", None, [f"p{i}" for i in range(8)])
    assert len(many) == MAX_SCORING_PROMPTS and many[0] == "p0"
