"""Per-image captions: a ``.txt`` beside a photo (same stem) is its caption, the trigger word prepended when missing.

The rules (``training.data``), the trainer conditioning each drawn sample on its own image's caption (tiny SD and a
tiny Flux.1, real training on the CPU), exact resume with captions, and the upload: validated, stored beside its
photo in the queue (a local folder, and a Hub dataset repo on the emulator), copied with the photos into the
worker's run folder and removed wherever the photos are removed. Nothing is mocked.
"""

from __future__ import annotations

import functools
import logging
import shutil
import uuid
from pathlib import Path

import gradio as gr
import pytest
import torch

from contract.settings import load_settings
from scheduler.queue import make_queue
from scheduler.task import Task, TaskStatus
from scheduler.validation import Limits, split_captions, validate_submission
from tests.test_form import local_ctx, space_ctx, values
from tests.test_training import lora_weights, run_task
from tests.tiny_flux import build_tiny_flux1
from tests.tiny_models import make_images
from training.data import MAX_CAPTION_CHARS, caption_prompt, decode_caption, load_images, trigger_word
from training.exitcodes import BadInputError
from training.families.base import LatentSet
from training.spec import TrainParams
from training.utils.batches import make_batch
from ui.submission import image_paths, submit

PROMPT = "a photo of sks dog"
# no scores: the validation loss calls compute_loss too (counted below), and the main weights stay the last step's
FAST = {"resolution": 32, "checkpoint_every": 0, "sample_inference_steps": 2, "score": False}


# ---------------------------------------------------------------- what each step conditioned on
@pytest.fixture
def recorded(monkeypatch) -> list[dict]:
    """Records, for each run in this process, the images' caption conditioning (``batches.caption_conds``) and
    each step's drawn images with the conditioning tensors ``compute_loss`` got. The real functions still run."""
    from training import train
    from training.utils import batches

    runs: list[dict] = []
    real_conds, real_loss = batches.caption_conds, train.compute_loss

    def caption_conds(comps, images, spec, inst, *, frozen):
        out = real_conds(comps, images, spec, inst, frozen=frozen)
        runs.append({"sources": [im.source.name for im in images], "inst": inst, "conds": out.conds, "steps": []})
        return out

    def compute_loss(comps, denoiser, batch, cond, params, *, prior, autocast):
        runs[-1]["steps"].append({"index": batch["image_index"].tolist(), "cond": cond})
        return real_loss(comps, denoiser, batch, cond, params, prior=prior, autocast=autocast)

    monkeypatch.setattr(batches, "caption_conds", caption_conds)
    monkeypatch.setattr(train, "compute_loss", compute_loss)
    return runs


def captioned_photos(folder: Path, captions: dict[int, str], n: int = 3, size: int = 48) -> list[Path]:
    """``n`` photos in ``folder`` and a ``.txt`` caption for the photos whose index is in ``captions``."""
    photos = make_images(folder, n, size=size)
    for i, text in captions.items():
        photos[i].with_suffix(".txt").write_text(text, encoding="utf-8")
    return photos


# ---------------------------------------------------------------- the rules
def test_the_trigger_word_is_prepended_only_when_a_caption_lacks_it():
    assert trigger_word(PROMPT) == "sks" and trigger_word("a portrait of ohwx man", "a photo of a man") == "ohwx"
    assert trigger_word("a photo of") is None
    assert caption_prompt(None, PROMPT) == PROMPT
    assert caption_prompt("a dog on a red sofa", PROMPT) == "a photo of sks dog, a dog on a red sofa"
    assert caption_prompt("SKS dog asleep on a sofa", PROMPT) == "SKS dog asleep on a sofa"  # has the trigger word
    assert caption_prompt("a sksx toy", PROMPT) == "a photo of sks dog, a sksx toy"  # a whole word, not a part
    assert caption_prompt("a photo of, at night", "a photo of") == "a photo of, at night"  # no trigger: the prompt
    assert caption_prompt("a dog", "a photo of") == "a photo of, a dog"


def test_a_caption_file_is_utf8_text_of_bounded_length():
    assert decode_caption("\ufeff  a dog\n on a\tsofa \n".encode(), "a.txt") == "a dog on a sofa"  # BOM, whitespace
    assert decode_caption(b" \n ", "a.txt") is None  # empty: the instance prompt
    assert decode_caption("chien \u00e0 la plage".encode(), "a.txt") == "chien \u00e0 la plage"
    with pytest.raises(ValueError, match=r"caption b\.txt: not UTF-8"):
        decode_caption(b"caf\xe9", "b.txt")
    with pytest.raises(ValueError, match=rf"caption c\.txt: {MAX_CAPTION_CHARS + 1} characters"):
        decode_caption(b"x" * (MAX_CAPTION_CHARS + 1), "c.txt")
    with pytest.raises(ValueError, match=r"caption d\.txt: .* bytes"):
        decode_caption(b"x" * 10_000, "d.txt")


def test_load_images_reads_each_images_caption_and_names_every_bad_file(tmp_path, caplog):
    folder = tmp_path / "photos"
    photos = captioned_photos(folder, {0: "a dog on a sofa", 2: "sks dog in the snow"})
    (folder / "stray.txt").write_text("no image of this name")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        prepared = load_images(folder, 32)
    assert [(p.source.name, p.caption) for p in prepared] == [
        (photos[0].name, "a dog on a sofa"), (photos[1].name, None), (photos[2].name, "sks dog in the snow"),
    ]  # fmt: skip
    assert "stray.txt" in caplog.text  # an orphan caption is ignored with a warning
    assert all(p.caption is None for p in load_images(folder, 32, what="class"))  # class images: the class prompt

    photos[1].with_suffix(".txt").write_bytes(b"\xff\xfe not utf-8")
    photos[2].with_suffix(".txt").write_text("y" * (MAX_CAPTION_CHARS + 5))
    with pytest.raises(BadInputError) as err:
        load_images(folder, 32)
    assert f"{photos[1].stem}.txt: not UTF-8" in str(err.value) and f"{photos[2].stem}.txt:" in str(err.value)


def test_make_batch_names_the_image_each_instance_sample_drew():
    n, bs = 5, 4
    mean = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    std = torch.zeros_like(mean)
    latents = LatentSet(mean, std, mean.clone(), std.clone(), torch.zeros(n, 0))
    p = TrainParams(batch_size=bs)
    seen = set()
    for base in range(0, 40, bs):
        batch = make_batch(base, bs, latents, latents, p, 1000)
        index = batch["image_index"]
        assert index.shape == (bs,)
        assert torch.equal(batch["latents"][:bs, 0, 0, 0], index.float())  # the instance block's drawn images
        seen.update(index.tolist())
    assert seen == set(range(n))


# ---------------------------------------------------------------- the trainer
@functools.cache
def _sd_pipeline(model_dir: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(model_dir))


def _expected_embeds(model_dir: Path, prompt: str) -> torch.Tensor:
    """The base model's own encoding of ``prompt`` (its pipeline's tokenizer and text encoder)."""
    pipe = _sd_pipeline(model_dir)
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids  # fmt: skip
    with torch.no_grad():
        return pipe.text_encoder(ids)[0][0]


def test_each_drawn_sample_is_conditioned_on_its_own_images_caption(tiny_sd, tmp_path, recorded):
    photos = captioned_photos(tmp_path / "photos", {0: "a dog on a red sofa", 2: "sks dog in the snow"})
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(tmp_path / "photos"),
                          params={**FAST, "steps": 4, "batch_size": 2})  # fmt: skip
    assert rc == 0, events[-1]
    [run] = recorded
    assert run["sources"] == [p.name for p in photos]
    expected = [_expected_embeds(tiny_sd, q) for q in
                ("a photo of sks dog, a dog on a red sofa", PROMPT, "sks dog in the snow")]  # fmt: skip
    drawn = set()
    for step in run["steps"]:
        for row, image in enumerate(step["index"]):
            torch.testing.assert_close(step["cond"]["embeds"][row], expected[image], rtol=1e-5, atol=1e-5)
            drawn.add(image)
    assert len(drawn) >= 2, drawn  # 8 samples drew more than one image
    assert not torch.allclose(expected[0], expected[1])  # the captions really differ from the instance prompt
    assert run["conds"][1] is run["inst"]  # the uncaptioned image shares the instance prompt's cached encoding
    card = (tmp_path / "w" / "output" / "README.md").read_text()
    assert "per-image captions | yes (2 of 3 images; the others: the instance prompt)" in card


def test_a_trained_text_encoder_reads_each_samples_caption_and_class_samples_keep_the_class_prompt(tiny_sd, tmp_path,
                                                                                                  recorded):
    captioned_photos(tmp_path / "photos", {0: "a dog on a red sofa", 1: "a dog on a red sofa", 2: "sks dog in snow"})
    rc, events = run_task(tmp_path / "w", base_model=str(tiny_sd), images=str(tmp_path / "photos"),
                          class_prompt="a photo of dog",
                          params={**FAST, "steps": 2, "batch_size": 2, "train_text_encoder": True,
                                  "prior_preservation": True, "num_class_images": 2})  # fmt: skip
    assert rc == 0, events[-1]
    [run] = recorded
    assert run["conds"][0] is run["conds"][1] and run["conds"][0].tensors is None  # one tokenization per caption
    first = run["steps"][0]  # before the first update the text encoder's LoRA is still zero: the base encoder
    prompts = ["a photo of sks dog, a dog on a red sofa"] * 2 + ["sks dog in snow"]
    expected = [*(prompts[i] for i in first["index"]), "a photo of dog", "a photo of dog"]
    assert first["cond"]["embeds"].shape[0] == 4
    for row, prompt in enumerate(expected):
        torch.testing.assert_close(first["cond"]["embeds"][row], _expected_embeds(tiny_sd, prompt), rtol=1e-4,
                                   atol=1e-4)  # fmt: skip


def test_captioned_run_resumes_to_the_uninterrupted_weights(tiny_sd, tmp_path):
    captioned_photos(tmp_path / "photos", {0: "a dog on a red sofa", 1: "sks dog in the snow"})
    fields = dict(base_model=str(tiny_sd), images=str(tmp_path / "photos"),
                  params={**FAST, "steps": 6, "learning_rate": 1e-3, "checkpoint_every": 3, "batch_size": 2})  # fmt: skip
    assert run_task(tmp_path / "straight", **fields)[0] == 0
    assert run_task(tmp_path / "resumed", **{**fields, "params": {**fields["params"], "steps": 3}})[0] == 0
    rc, events = run_task(tmp_path / "resumed", **fields)
    assert rc == 0 and [e["step"] for e in events if e["event"] == "resumed"] == [3]
    straight, resumed = lora_weights(tmp_path / "straight"), lora_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6)
    # Other captions are other settings: their run does not resume from these checkpoints.
    (tmp_path / "photos" / "img01.txt").write_text("sks dog at the beach")
    rc, events = run_task(tmp_path / "resumed", **{**fields, "params": {**fields["params"], "steps": 7}})
    assert rc == 0 and not [e for e in events if e["event"] == "resumed"]


def test_the_flux_conditioning_path_takes_the_captions(tmp_path, recorded):
    model = build_tiny_flux1(tmp_path / "flux1")
    captioned_photos(tmp_path / "photos", {0: "a dog on a red sofa"}, n=2)
    rc, events = run_task(tmp_path / "w", base_model=str(model), images=str(tmp_path / "photos"),
                          params={**FAST, "steps": 3, "batch_size": 2, "checkpoint_every": 100})  # fmt: skip
    assert rc == 0, events[-3:]
    [run] = recorded
    inst, captioned = run["inst"], run["conds"][0]
    assert run["conds"][1] is inst and captioned is not inst
    for key in ("embeds", "pooled"):  # T5's and CLIP's conditioning both follow the caption
        assert not torch.allclose(captioned.tensors[key], inst.tensors[key])
    for step in run["steps"]:
        for row, image in enumerate(step["index"]):
            for key, tensor in run["conds"][image].tensors.items():
                assert torch.equal(step["cond"][key][row], tensor[0])
    assert "per-image captions | yes (1 of 2 images" in (tmp_path / "w" / "output" / "README.md").read_text()


# ---------------------------------------------------------------- the upload
def uploads(tmp_path: Path, captions: dict[int, str | bytes]) -> list[str]:
    """Fresh upload copies of 3 photos and the given captions (as Gradio hands them: one folder per file)."""
    source = tmp_path / "originals"
    if not source.exists():
        make_images(source, 3, size=128)
    photos = sorted(source.iterdir())
    files = []
    for i, photo in enumerate(photos):
        folder = tmp_path / f"upload-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        files.append(str(shutil.copy(photo, folder)))
        if i in captions:
            text = captions[i]
            caption = folder.parent / f"upload-{uuid.uuid4().hex[:6]}" / f"{photo.stem}.txt"
            caption.parent.mkdir()
            caption.write_bytes(text if isinstance(text, bytes) else text.encode())
            files.append(str(caption))
    return files


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"stray.txt": b"a dog"}, "Caption stray.txt: no photo named stray.*"),
        ({"big.txt": b"x" * 5000}, "Caption big.txt: 5,000 bytes"),
        ({"long.txt": b"x" * 1200}, "Caption long.txt: 1200 characters"),
        ({"latin.txt": b"caf\xe9"}, "Caption latin.txt: not UTF-8 text"),
    ],
)
def test_a_bad_caption_is_refused_before_anything_is_queued(tmp_path, bad, message):
    ctx = local_ctx(tmp_path)
    files = uploads(tmp_path, {0: "a dog on a sofa"})
    for name, raw in bad.items():
        if name != "stray.txt":  # give the bad caption a photo, so only its content is wrong
            photo = Path(files[-1])
            shutil.copy(photo, photo.with_name(Path(name).stem + photo.suffix))
            files.append(str(photo.with_name(Path(name).stem + photo.suffix)))
        (tmp_path / name).write_bytes(raw)
        files.append(str(tmp_path / name))
    outcome = submit(ctx, "local", files, values())
    assert not outcome.queued and outcome.message.startswith("**Nothing was queued.")
    assert message in outcome.message, outcome.message
    assert ctx.queue.list() == []


def test_image_limits_count_photos_only(tmp_path):
    files = [Path(f) for f in uploads(tmp_path, {0: "a", 1: "b", 2: "c"})]
    assert len(image_paths(files)) == 3 and len(files) == 6
    images, captions = split_captions(files)
    common = dict(instance_prompt=PROMPT, hardware="t4-small", output_repo="me/out", captions=captions)
    assert validate_submission(images=images, **common) == []
    assert validate_submission(images=images, **common, limits=Limits(max_images=3)) == []  # 3 photos + 3 captions
    assert "at most 2 allowed, got 3" in validate_submission(images=images, **common, limits=Limits(max_images=2))[0]


def test_a_submitted_caption_travels_with_its_photo_and_goes_with_it(tmp_path):
    """Local app: the submit stores each caption beside its photo in the queue, the worker copies both into its run
    folder, the trainer trains on them (its card says so), and captions go wherever the photos go."""
    ctx = local_ctx(tmp_path)
    files = uploads(tmp_path, {0: "a dog on a red sofa", 2: "sks dog in the snow"})
    outcome = submit(ctx, "local", files, values(steps=2))  # the built-in demo model
    assert outcome.queued and "with 3 photos" in outcome.message, outcome.message
    assert not any(Path(f).exists() for f in files)  # Gradio's upload copies of photos and captions are gone
    task = outcome.task
    stored = Path(task.images.path)
    assert sorted(p.name for p in stored.iterdir()) == ["000.png", "000.txt", "001.jpg", "002.png", "002.txt"]
    assert (stored / "002.txt").read_text() == "sks dog in the snow" and task.images.count == 3

    run_images = ctx.worker.run_dir(task.id) / "images"
    fetched = Path(ctx.queue.fetch_images(task, run_images))  # the worker's own fetch (Worker.train)
    assert {p.name for p in fetched.iterdir()} >= {"000.txt", "002.txt"}
    shutil.rmtree(run_images)

    action, _ = ctx.worker.step()
    assert action.kind.value == "claim_and_train"
    done = ctx.queue.get(task.id)
    assert done.status is TaskStatus.DONE, done.last_error
    assert "per-image captions | yes (2 of 3 images" in (Path(done.result_url) / "README.md").read_text()
    assert not stored.exists() and not run_images.exists()  # queue folder and run copy: photos and captions gone


def test_deleting_a_task_removes_its_captions(tmp_path):
    queue = make_queue(load_settings({"DATA_DIR": str(tmp_path / "data")}))
    files = [Path(f) for f in uploads(tmp_path, {1: "a dog"})]
    task = queue.enqueue(Task(instance_prompt=PROMPT, submitted_by="local"), files)
    folder = Path(task.images.path)
    assert (folder / "001.txt").read_text() == "a dog"
    queue.cancel(task.id)
    queue.delete(task.id)
    assert not folder.exists()


def test_a_space_submit_commits_each_caption_beside_its_photo(hub, tmp_path, tiny_sd, monkeypatch):
    import ui.submission

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    files = uploads(tmp_path, {1: "sks dog on a beach"})
    outcome = submit(ctx, "alice", files, values(base_model=str(tiny_sd), resolution=256, output_repo="alice/out"))
    assert outcome.queued, outcome.message
    task = outcome.task
    repo = ctx.queue.repo_id
    names = sorted(f for f in ctx.api.list_repo_files(repo, repo_type="dataset") if f.startswith(f"images/{task.id}/"))
    assert names == [f"images/{task.id}/{n}" for n in ("000.png", "001.jpg", "001.txt", "002.png")]
    fetched = Path(ctx.queue.fetch_images(task, ctx.worker.run_dir(task.id) / "images"))
    assert (fetched / "001.txt").read_text() == "sks dog on a beach" and (fetched / "001.jpg").is_file()
    ctx.queue.cancel(task.id)
    ctx.queue.delete(task.id)
    left = [f for f in ctx.api.list_repo_files(repo, repo_type="dataset") if f.startswith(f"images/{task.id}/")]
    assert left == []


def test_the_forms_file_field_accepts_captions_beside_photos(tmp_path):
    from gradio_client.utils import is_valid_file

    from tests.test_form import form_blocks

    [field] = [b for b in form_blocks(local_ctx(tmp_path)).values() if isinstance(b, gr.File)]
    assert is_valid_file("dog1.txt", field.file_types) and is_valid_file("dog1.jpg", field.file_types)
    assert not is_valid_file("notes.pdf", field.file_types)
