"""Scoring a run (``training.scoring``, ``contract.scoring_models``): the maths where it can fail, the loading rules
(safetensors only, a Hub repo's exact files, offline mode) on tiny random models, the settings, the memory and the
time it adds.

Tiny random scoring models give meaningless numbers: with them only the plumbing is checked (types, shapes, ranges).
What a score must rank is checked with embeddings built by hand and with the fixed pixel embedding (``PIXELS``),
whose numbers can be worked out on paper.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from PIL import Image

from contract.scoring_models import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_DINO_MODEL,
    KNOWN_PARAMS,
    PIXELS,
    SCORED_POINTS,
    peak_with_scoring_gib,
    safetensors_params,
    scoring_memory_gib,
)
from contract.settings import SettingsError, load_settings, load_trainer_settings
from tests.tiny_scorers import build_pickle_only  # its fixture tiny_scorers: a plugin of conftest
from training.base_check import DEMO_MODEL
from training.scoring import Scorers, ScoringUnavailable, mean_pairwise_cosine, pixel_embeddings, scorer_ids

RED, DARK_RED, BLUE, GREY = (230, 20, 20), (150, 0, 0), (20, 20, 230), (128, 128, 128)


def solid(colour: tuple[int, int, int], size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


# ---------------------------------------------------------------- the maths
def test_mean_pairwise_cosine_averages_every_pair_and_ignores_length():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0]])  # not unit length: the cosine does not see it
    assert mean_pairwise_cosine(a, b) == pytest.approx(0.5)  # (1 + 0) / 2
    assert mean_pairwise_cosine(3 * a, a) == pytest.approx(0.5)  # pairs (0,0)=1, (0,1)=0, (1,0)=0, (1,1)=1
    assert mean_pairwise_cosine(a[:1], -a[:1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(a[:0], b)


def test_an_image_of_the_subject_scores_above_an_unrelated_one_on_constructed_embeddings():
    g = torch.Generator().manual_seed(0)
    subject = torch.randn(64, generator=g)
    photos = subject + 0.3 * torch.randn(5, 64, generator=g)  # five photos of one subject
    like = subject + 0.5 * torch.randn(3, 64, generator=g)  # generated images of it, noisier
    unrelated = torch.randn(3, 64, generator=g)
    assert mean_pairwise_cosine(like, photos) > 0.7 > 0.2 > abs(mean_pairwise_cosine(unrelated, photos))


def test_the_pixel_embedding_is_the_mean_colour_grid_as_a_direction_from_grey():
    red, dark, blue, tint = pixel_embeddings([solid(RED), solid(DARK_RED), solid(BLUE), solid((150, 115, 115))])
    assert red.shape == (192,) and float(red.norm()) == pytest.approx(1.0)
    assert float(red @ dark) > 0.8 and float(red @ blue) < 0  # same hue close, another colour opposite
    assert float(red @ tint) > 0.95  # a direction from mid-grey: a faint red tint points where saturated red does
    # the box filter averages each cell: a red/blue checkerboard finer than the 8x8 grid is purple throughout
    board = Image.new("RGB", (64, 64))
    board.putdata([RED if (x + y) % 2 else BLUE for y in range(64) for x in range(64)])
    assert torch.allclose(pixel_embeddings([board]), pixel_embeddings([solid((125, 20, 125))]), atol=0.01)


def test_pixel_scores_rank_the_subject_colour_above_another_and_skip_the_class_image():
    scorers = Scorers.load(PIXELS, None, "cpu", torch.float32)
    assert scorers.models == {"dino": PIXELS}
    photos = scorers.photo_embeddings([solid((230 - 10 * i, 20 + 5 * i, 20)) for i in range(4)])
    same = scorers.score([solid(RED)], ["sks on the beach"], [True], photos)
    other = scorers.score([solid(BLUE)], ["sks on the beach"], [True], photos)
    assert same["dino"] > 0.9 > 0 > other["dino"]
    assert same["clip_i"] is None and same["clip_t"] is None  # no CLIP model loaded
    # the class prompt's image ("a dog", not the subject) is not compared with the photos
    mixed = scorers.score([solid(RED), solid(BLUE)], ["sks on the beach", "a dog"], [True, False], photos)
    assert mixed["dino"] == pytest.approx(same["dino"])
    assert scorers.score([solid(BLUE)], ["a dog"], [False], photos)["dino"] is None
    with pytest.raises(ValueError):
        scorers.score([solid(RED)], ["a", "b"], [True], photos)


# ---------------------------------------------------------------- the real loaders on tiny models
def test_tiny_scoring_models_load_and_score_in_range(tiny_scorers):
    scorers = Scorers.load(str(tiny_scorers["dino"]), str(tiny_scorers["clip"]), "cpu", torch.float16)
    assert scorers.models == {"dino": str(tiny_scorers["dino"]), "clip": str(tiny_scorers["clip"])}
    assert next(scorers._clip.model.parameters()).dtype == torch.float32  # half precision only on an accelerator
    photos = scorers.photo_embeddings([solid(RED, 40), solid(DARK_RED, 48), solid(GREY, 40)])
    assert set(photos) == {"dino", "clip_i"}
    for emb, dim in ((photos["dino"], 32), (photos["clip_i"], 16)):  # the tiny configs' hidden / projection sizes
        assert emb.shape == (3, dim) and emb.dtype == torch.float32 and emb.device.type == "cpu"
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    prompts = ["sks dog on the beach", "a dog " + "very " * 40 + "long"]  # past CLIP's 77 tokens: cut, not an error
    scores = scorers.score([solid(BLUE, 64), solid(RED, 70)], prompts, [True, False], photos)
    assert set(scores) == {"dino", "clip_i", "clip_t"}
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in scores.values())
    scorers.close()
    assert scorers._dino is None and scorers._clip is None and scorers.models  # freed; the record keeps the names


def test_a_pickle_only_model_is_refused_before_loading(tiny_scorers, tmp_path):
    folder = build_pickle_only(tiny_scorers["dino"], tmp_path / "pickled")
    with pytest.raises(ScoringUnavailable, match=r"has no model\.safetensors.*pytorch_model\.bin.*safetensors only"):
        Scorers.load(str(folder), None, "cpu", torch.float32)


def test_a_model_of_the_wrong_kind_or_a_missing_folder_is_refused(tiny_scorers, tmp_path):
    with pytest.raises(ScoringUnavailable, match="not a DINO model"):
        Scorers.load(str(tiny_scorers["clip"]), None, "cpu", torch.float32)
    with pytest.raises(ScoringUnavailable, match="not a CLIP model"):
        Scorers.load(PIXELS, str(tiny_scorers["dino"]), "cpu", torch.float32)
    with pytest.raises(ScoringUnavailable, match="no model.safetensors"):
        Scorers.load(str(tmp_path), None, "cpu", torch.float32)
    with pytest.raises(ScoringUnavailable, match="no such folder"):
        Scorers.load(str(tmp_path / "not" / "there"), None, "cpu", torch.float32)


def test_a_hub_scoring_model_downloads_its_files_only_and_works_offline_from_the_cache(
        fakehub, tiny_scorers, tmp_path, monkeypatch):  # fmt: skip
    from huggingface_hub import HfApi, constants, snapshot_download

    api, repo, pickled = HfApi(), f"alice/tiny-dino-{uuid.uuid4().hex[:6]}", f"alice/pickled-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(tiny_scorers["dino"]))
    api.upload_file(repo_id=repo, path_or_fileobj=b"a pickle: never fetched", path_in_repo="pytorch_model.bin")
    api.upload_file(repo_id=repo, path_or_fileobj=b"# not fetched", path_in_repo="README.md")
    scorers = Scorers.load(repo, None, "cpu", torch.float32)
    assert scorers.models == {"dino": repo} and scorers.photo_embeddings([solid(RED)])["dino"].shape == (1, 32)
    snapshot = Path(snapshot_download(repo, allow_patterns=["config.json"], local_files_only=True))
    cached = {p.name for p in snapshot.iterdir()}
    assert cached == {"config.json", "model.safetensors", "preprocessor_config.json"}  # no pickle, no README

    api.create_repo(pickled)
    api.upload_folder(repo_id=pickled, folder_path=str(build_pickle_only(tiny_scorers["dino"], tmp_path / "p")))
    with pytest.raises(ScoringUnavailable, match=r"has no model\.safetensors.*safetensors only"):
        Scorers.load(pickled, None, "cpu", torch.float32)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fakehub.clear_requests()
    assert Scorers.load(repo, None, "cpu", torch.float32).models == {"dino": repo}  # the cached copy
    with pytest.raises(ScoringUnavailable, match="not in the Hugging Face cache and the Hub is offline"):
        Scorers.load(f"alice/never-cached-{uuid.uuid4().hex[:6]}", None, "cpu", torch.float32)
    assert not fakehub.requests()  # offline: no request at all


# ---------------------------------------------------------------- which models: the settings
def test_scorer_ids_follow_the_settings_and_the_demo_model_scores_by_pixels():
    defaults = load_trainer_settings({})
    assert scorer_ids("some/model", defaults) == (DEFAULT_DINO_MODEL, DEFAULT_CLIP_MODEL)
    assert scorer_ids(DEMO_MODEL, defaults) == (PIXELS, None)
    chosen = load_trainer_settings({"SCORING_DINO_MODEL": "me/dino", "SCORING_CLIP_MODEL": "/models/clip"})
    assert scorer_ids("some/model", chosen) == ("me/dino", "/models/clip")
    assert scorer_ids(DEMO_MODEL, chosen) == ("me/dino", "/models/clip")  # set explicitly: the demo uses them too
    clip_only = load_trainer_settings({"SCORING_CLIP_MODEL": "me/clip"})
    assert scorer_ids(DEMO_MODEL, clip_only) == (PIXELS, "me/clip")
    off = load_trainer_settings({"SCORING_DINO_MODEL": "", "SCORING_CLIP_MODEL": "none"})
    assert scorer_ids("some/model", off) == (None, None) and scorer_ids(DEMO_MODEL, off) == (None, None)
    assert off.sources()["scoring_dino_model"] == "SCORING_DINO_MODEL"


@pytest.mark.parametrize("env, message", [
    ({"SCORING_CLIP_MODEL": PIXELS}, "SCORING_CLIP_MODEL.*embeds images only"),
    ({"SCORING_DINO_MODEL": "not a repo!"}, "SCORING_DINO_MODEL.*is not a model repo id"),
    ({"SCORING_CLIP_MODEL": "owner/na me"}, "SCORING_CLIP_MODEL.*is not a model repo id.*openai/clip"),
])  # fmt: skip
def test_a_bad_scoring_model_setting_names_the_variable(env, message):
    for load in (load_settings, load_trainer_settings):
        with pytest.raises(SettingsError, match=message):
            load(env)


# ---------------------------------------------------------------- memory and time
def test_scoring_memory_counts_the_models_weights(tiny_scorers):
    assert scoring_memory_gib(None, None) == 0.0 == scoring_memory_gib(PIXELS, "")
    default = scoring_memory_gib(DEFAULT_DINO_MODEL, DEFAULT_CLIP_MODEL)
    weights = (KNOWN_PARAMS[DEFAULT_DINO_MODEL] + KNOWN_PARAMS[DEFAULT_CLIP_MODEL]) * 2 / 2**30
    assert 0.8 < weights < default < weights + 0.5  # fp16 weights (~0.84 GiB) and an activation allowance
    assert scoring_memory_gib(DEFAULT_DINO_MODEL, None, 4) > scoring_memory_gib(DEFAULT_DINO_MODEL, None, 2)
    # a local folder: its safetensors headers, exactly
    model = Scorers.load(str(tiny_scorers["dino"]), None, "cpu", torch.float32)._dino.model
    assert safetensors_params(tiny_scorers["dino"]) == sum(t.numel() for t in model.state_dict().values())


def test_scoring_does_not_push_a_configuration_that_fits_a_t4_out_of_it():
    from scheduler.memory_fit import usable_gib
    from training.memory import load_table

    t4 = usable_gib(16)
    scoring = scoring_memory_gib(DEFAULT_DINO_MODEL, DEFAULT_CLIP_MODEL)
    fitting = [r for r in load_table()["rows"] if r["estimated_peak_gib"] <= t4]
    assert len(fitting) > 20
    for row in fitting:
        assert peak_with_scoring_gib(row["estimated_peak_gib"], row["floor_gib"], scoring) <= t4, row
    # a full fine-tune's peak is its resident floor: scoring adds to it (the max is not always the training peak)
    assert any(peak_with_scoring_gib(r["estimated_peak_gib"], r["floor_gib"], scoring) > r["estimated_peak_gib"]
               for r in fitting)  # fmt: skip


def test_the_memory_plan_line_mentions_the_scoring_models():
    from contract.events import MemoryPlan
    from scheduler.trainer_process import memory_plan_message

    assert "scoring" not in memory_plan_message(MemoryPlan(estimate_gib=3.4))
    assert "scoring models 1.1 GiB while sampling" in memory_plan_message(MemoryPlan(estimate_gib=3.4, scoring_gib=1.09))


def test_the_estimate_adds_scoring_per_sampling_point():
    from training.utils.sampling import SAMPLES_PER_RUN
    from ui.estimate import describe, estimate

    assert SCORED_POINTS == SAMPLES_PER_RUN + 1  # the base model's point and the run's samples
    plain = estimate(800, "t4-small")
    five, ten = estimate(800, "t4-small", scoring_images=5), estimate(800, "t4-small", scoring_images=10)
    assert plain.scoring_s == 0 and "scoring" not in describe(plain, False)
    assert five.train_s == plain.train_s and 0 < five.scoring_s < ten.scoring_s < 2 * five.scoring_s  # + scorers
    assert five.total_s == pytest.approx(plain.total_s + five.scoring_s) and five.usd > plain.usd
    assert "min scoring" in describe(five, False)
    cpu = estimate(800, "local-cpu", scoring_images=5)
    assert cpu.scoring_s > five.scoring_s  # slower images, slower scorers
    demo = estimate(100, "local-cpu", base_model=DEMO_MODEL, scoring_images=5)
    assert 0 < demo.scoring_s < 60 and "training and scoring" in describe(demo, True)


def test_the_preload_lists_the_scoring_models_exact_files(capsys, monkeypatch, tiny_scorers):
    from training.preload import main, scoring_items

    assert main(["--scoring"]) == 0  # conftest's environment: pixels and no CLIP: nothing to preload
    assert capsys.readouterr().out.strip() == ""
    monkeypatch.delenv("SCORING_DINO_MODEL")
    monkeypatch.delenv("SCORING_CLIP_MODEL")
    assert main(["--scoring"]) == 0
    lines = capsys.readouterr().out.split()
    assert lines[0::2] == [DEFAULT_DINO_MODEL, DEFAULT_CLIP_MODEL]
    assert lines[1] == "config.json,model.safetensors,preprocessor_config.json"
    assert "model.safetensors" in lines[3].split(",") and not any(f.endswith(".bin") for f in lines[3].split(","))
    # another Hub repo: the loader's files that it has; a local folder or PIXELS: nothing
    listing = {"me/clip": ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"]}
    assert scoring_items(PIXELS, "me/clip", listing.__getitem__) == ["me/clip config.json,model.safetensors,tokenizer.json"]
    assert scoring_items(str(tiny_scorers["dino"]), None, listing.__getitem__) == []
