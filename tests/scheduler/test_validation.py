"""Validation of submissions: one clear message per problem, nothing touched."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from scheduler.validation import check_image, submission_warnings, validate_submission, validate_task
from tests.scheduler.helpers import make_images, make_task

GOOD = dict(instance_prompt="a photo of sks dog", hardware="t4-small", output_repo="alice/sks-dog", steps=400, learning_rate=1e-4, rank=4, resolution=512)


def test_valid_submission_has_no_problems(tmp_path):
    assert validate_submission(images=make_images(tmp_path, 3), **GOOD) == []


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"instance_prompt": ""}, "Instance prompt: must not be empty"),
        ({"instance_prompt": "   "}, "Instance prompt: must not be empty"),
        ({"instance_prompt": "x" * 10_000}, "10000 characters; at most 1000"),
        ({"class_prompt": "y" * 1001}, "Class prompt: 1001 characters"),
        ({"hardware": "h100-mega"}, "Hardware: unknown flavor 'h100-mega'"),
        ({"hardware": "cpu-basic"}, "has no GPU"),
        ({"output_repo": ""}, "Output repo: must not be empty"),
        ({"output_repo": "bad--name"}, "Output repo: 'bad--name' is not a valid repo id"),
        ({"output_repo": "a/b/c"}, "is not a valid repo id"),
        ({"steps": -5}, "Steps: -5 is out of range; use 1 to 10000"),
        ({"steps": 10**9}, "Steps: 1000000000 is out of range"),
        ({"steps": 2.5}, "Steps: must be a whole number"),
        ({"learning_rate": 0}, "Learning rate: 0 is out of range"),
        ({"learning_rate": 0.5}, "Learning rate: 0.5 is out of range"),
        ({"learning_rate": float("nan")}, "Learning rate"),
        ({"rank": 0}, "LoRA rank: 0 is out of range; use 1 to 256"),
        ({"rank": 512}, "LoRA rank: 512 is out of range"),
        ({"resolution": 128}, "Resolution: 128 is out of range; use 256 to 1024"),
        ({"resolution": 500}, "Resolution: 500 must be a multiple of 64"),
        ({"base_model": "x/y", "base_models": ("a/b",)}, "Base model: 'x/y' is not offered here"),
        ({"recipe": "magic", "recipes": ("dreambooth-lora",)}, "Recipe: unknown recipe 'magic'"),
    ],
)
def test_each_problem_has_one_clear_message(tmp_path, changes, fragment):
    problems = validate_submission(images=make_images(tmp_path, 3), **{**GOOD, **changes})
    assert len(problems) == 1, problems
    assert fragment in problems[0]


def test_several_problems_are_all_reported(tmp_path):
    problems = validate_submission(images=[], **{**GOOD, "instance_prompt": "", "steps": 0, "hardware": "nope"})
    assert len(problems) == 4
    assert any(p.startswith("Images: at least 1") for p in problems)


def test_too_many_images(tmp_path):
    image = make_images(tmp_path, 1)[0]
    problems = validate_submission(images=[image] * 500, **GOOD)
    assert problems == ["Images: at most 100 allowed, got 500."]


def test_bad_image_files(tmp_path):
    good = make_images(tmp_path, 2)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (32, 200)).save(tiny)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good[0].read_bytes()[:40])
    problems = validate_submission(images=[*good, text, tiny, truncated, tmp_path / "missing.jpg"], **GOOD)
    assert len(problems) == 4
    assert "Image notes.png: not a readable image file" in problems[0]
    assert "Image tiny.png: 32x200 is too small" in problems[1]
    assert "Image cut.png" in problems[2]
    assert "Image missing.jpg: file not found" in problems[3]


def test_a_truncated_jpeg_is_refused_at_submit_naming_the_users_file(tmp_path):
    """``verify()`` reads no JPEG data: a photo cut short (an interrupted copy) is decoded at submit, so the user
    hears of it under their own file name, not later from the trainer under the queue's ``004.jpg``."""
    whole = tmp_path / "whole.jpg"
    Image.effect_noise((256, 256), 64).convert("RGB").save(whole, quality=90)
    data = whole.read_bytes()
    cut = tmp_path / "Rex at the beach.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert check_image(whole) is None
    problem = check_image(cut)
    assert problem is not None and problem.startswith("Image Rex at the beach.jpg: ") and "incomplete" in problem
    assert validate_submission(images=[whole, cut], **GOOD) == [problem]


def test_oversized_image_file(tmp_path):
    big = tmp_path / "big.bmp"
    with open(big, "wb") as f:
        f.truncate(21 * 1024 * 1024)
    problem = check_image(big)
    assert problem is not None and "21.0 MB; at most 20 MB" in problem


def test_validation_touches_nothing(tmp_path):
    images = make_images(tmp_path, 2)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in images}
    validate_submission(images=images, **{**GOOD, "steps": -1})
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in images} == before
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in images)


def test_validate_task_reads_params(tmp_path):
    task = make_task(params={"steps": 0, "rank": 4}, hardware="t4-small")
    problems = validate_task(task, make_images(tmp_path, 3))
    assert problems == ["Steps: 0 is out of range; use 1 to 10000."]


def test_cpu_flavor_allowed_only_with_cpu_training(tmp_path):
    images = make_images(tmp_path, 3)
    assert validate_submission(images=images, **{**GOOD, "hardware": "cpu-basic"}, allow_cpu_training=True) == []


def test_warning_below_three_images():
    assert submission_warnings(1) and not submission_warnings(3) and not submission_warnings(0)
