"""Before/after pairs for an edit model (``training.pairs``): the naming rule, the upload's checks against the base
model's family before anything is queued, and how the queue stores a pair upload (numbered, roles kept)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from scheduler.queue.stored_names import stored_files
from scheduler.validation import check_captions, split_captions
from tests.test_form import local_ctx, space_ctx, values
from tests.tiny_models import make_images
from tests.tiny_qwen_image import build_tiny_qwen_image_edit
from training.data import load_pairs, load_training_images
from training.exitcodes import BadInputError
from training.pairs import caption_names, pair_problems, pair_role, sort_pairs
from ui.submission import submit

INSTRUCTION = "invert the colors"


def pair_upload(tmp_path: Path, n_pairs: int = 2, held_out: int = 1, extra: dict[str, str] | None = None) -> list[str]:
    """Fresh upload copies (one folder per file, as Gradio hands them) of ``n_pairs`` pairs ``pN_before.png`` /
    ``pN_after.png`` (the after: the before inverted) with ``pN.txt``, ``held_out`` sources alone, and ``extra``
    files (name -> a source file of the upload to copy, or text for a ``.txt``)."""
    originals = tmp_path / "originals"
    if not originals.exists():
        make_images(originals, 4, size=96)
    sources = sorted(originals.iterdir())
    made: dict[str, Path] = {}
    staging = tmp_path / f"staging-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    for i in range(n_pairs + held_out):
        with Image.open(sources[i]) as im:
            before = ImageOps.exif_transpose(im).convert("RGB")
        made[f"p{i}_before.png"] = staging / f"p{i}_before.png"
        before.save(made[f"p{i}_before.png"])
        if i < n_pairs:
            made[f"p{i}_after.png"] = staging / f"p{i}_after.png"
            ImageOps.invert(before).save(made[f"p{i}_after.png"])
        made[f"p{i}.txt"] = staging / f"p{i}.txt"
        made[f"p{i}.txt"].write_text(INSTRUCTION)
    for name, what in (extra or {}).items():
        made[name] = staging / name
        if name.endswith(".txt"):
            made[name].write_text(what)
        else:
            shutil.copy(made[what], made[name])
    files = []
    for name, path in made.items():
        folder = tmp_path / f"upload-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        files.append(str(shutil.copy(path, folder / name)))
    return files


def test_the_naming_rule_sorts_pairs_held_out_sources_and_the_rest():
    assert pair_role("cat_before.png") == ("cat", "_before") and pair_role("Cat_AFTER.JPG") == ("Cat", "_after")
    assert pair_role("_before.png") is None and pair_role("before.png") is None and pair_role("cat.png") is None
    found = sort_pairs(["b/x_after.png", "a/x_before.jpg", "y_before.png", "z_after.png", "dog.png",
                        "w_before.png", "w_before.jpg"])  # fmt: skip
    assert found.pairs == {"x": (Path("a/x_before.jpg"), Path("b/x_after.png"))}
    assert found.held_out == {"y": Path("y_before.png"), "w": Path("w_before.jpg")}
    assert found.others == [Path("dog.png")]
    assert found.problems == ["w_before.png: a second before image for w; keep one.",
                              "z_after.png: no z_before.* to go with it; add the source image or remove this one."]  # fmt: skip
    # a .txt may name a pair (or held-out source) only in an upload with pairs
    assert caption_names(["x_before.png", "x_after.png", "y_before.png"]) >= {"x", "y", "x_before"}
    assert "me" not in caption_names(["me_after.png", "dog.png"])


def test_an_edit_model_needs_pairs_and_any_other_model_refuses_them():
    pairs = ["a_before.png", "a_after.png", "b_before.png"]
    assert pair_problems(pairs, edits=True, family_label="Qwen-Image-Edit") == []
    [refusal] = pair_problems(pairs, edits=False, family_label="FLUX.1")
    assert "a_before.png and a_after.png are a before/after pair" in refusal and "FLUX.1" in refusal
    assert pair_problems(["me_after.png", "dog.png"], edits=False, family_label="SD") == []  # no pair: photos
    [photos] = pair_problems(["dog.png", "cat.png"], edits=True, family_label="Qwen-Image-Edit")
    assert photos.startswith("Pairs: none found") and "<name>_before.<ext>" in photos
    mixed = pair_problems([*pairs, "dog.png", "c_after.png"], edits=True, family_label="Qwen-Image-Edit")
    assert any("c_after.png: no c_before" in p for p in mixed) and any("dog.png" in p for p in mixed)


def test_a_pair_upload_is_stored_numbered_with_its_roles_and_instructions(tmp_path):
    files = [Path(f) for f in pair_upload(tmp_path, n_pairs=2, held_out=1)]
    images, captions = split_captions(files)
    assert check_captions(images, captions) == []  # p0.txt names the pair p0, not an image
    stored, count = stored_files(files)
    names = {name: path.name for name, path in stored}
    assert names == {"000_before.png": "p0_before.png", "000_after.png": "p0_after.png", "000.txt": "p0.txt",
                     "001_before.png": "p1_before.png", "001_after.png": "p1_after.png", "001.txt": "p1.txt",
                     "002_before.png": "p2_before.png", "002.txt": "p2.txt"}  # fmt: skip
    assert count == 5
    # photos of a subject keep the plain numbering
    plain, _ = stored_files([f for f in files if "after" not in f.name and f.suffix == ".png"][:1])
    assert [n for n, _ in plain] == ["000.png"]


def test_the_trainer_reads_pairs_and_refuses_them_for_a_model_that_does_not_edit(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for f in pair_upload(tmp_path, n_pairs=2, held_out=1):
        shutil.copy(f, folder)
    targets, held_out = load_pairs(folder, 32, "Qwen-Image-Edit")
    assert [t.source.name for t in targets] == ["p0_after.png", "p1_after.png"]
    assert [t.control.source.name for t in targets] == ["p0_before.png", "p1_before.png"]
    assert [t.caption for t in targets] == [INSTRUCTION] * 2 and targets[0].control.image.size == (32, 32)
    assert [(s.source.name, s.caption) for s in held_out] == [("p2_before.png", INSTRUCTION)]
    with pytest.raises(BadInputError, match="are a before/after pair, which only an edit model"):
        load_training_images(folder, 32, edits=False, label="Stable Diffusion")
    (folder / "p1_after.png").unlink()
    (folder / "stray.png").write_bytes((folder / "p0_after.png").read_bytes())
    with pytest.raises(BadInputError, match="stray.png"):
        load_pairs(folder, 32, "Qwen-Image-Edit")


@pytest.fixture(scope="module")
def tiny_edit(tmp_path_factory) -> Path:
    return build_tiny_qwen_image_edit(tmp_path_factory.mktemp("tiny-qwen-image-edit") / "model")


def test_the_form_refuses_pairs_for_a_model_that_does_not_edit_and_photos_for_one_that_does(tmp_path, tiny_edit):
    ctx = local_ctx(tmp_path)
    outcome = submit(ctx, "local", pair_upload(tmp_path), values(steps=2))  # the demo model: SD-shaped
    assert not outcome.queued and "are a before/after pair, which only an edit model" in outcome.message
    photos = [f for f in pair_upload(tmp_path, n_pairs=0, held_out=3) if f.endswith(".png")]
    renamed = []
    for f in photos:  # plain photo names
        renamed.append(str(Path(f).rename(Path(f).with_name(Path(f).name.replace("_before", "")))))
    outcome = submit(ctx, "local", renamed, values(base_model=str(tiny_edit), resolution=256, steps=2))
    assert not outcome.queued and "Pairs: none found; Qwen-Image-Edit trains on before/after pairs" in outcome.message
    assert ctx.queue.list() == []


def test_a_space_submit_commits_the_pairs_and_the_trainer_learns_the_edit_from_them(hub, tmp_path, tiny_edit,
                                                                                    monkeypatch):  # fmt: skip
    """On the emulator: the owner's pairs for the tiny Qwen-Image-Edit model are committed numbered with their
    roles and instructions; the worker's fetch of them is what the trainer trains on (one sample: the held-out
    source, shown beside its edit)."""
    import ui.submission
    from tests.test_flux_families import run_trainer

    monkeypatch.setattr(ui.submission, "WORKER_REPLY_S", 0.1)
    ctx = space_ctx(hub, tmp_path)
    outcome = submit(ctx, "alice", pair_upload(tmp_path), values(base_model=str(tiny_edit), resolution=256,
                                                                 hardware="l40sx1", output_repo="alice/edit"))  # fmt: skip
    assert outcome.queued and "queued** with 2 before/after pairs and 1 held-out source." in outcome.message, \
        outcome.message
    task = outcome.task
    prefix = f"images/{task.id}/"
    names = sorted(f.removeprefix(prefix) for f in ctx.api.list_repo_files(ctx.queue.repo_id, repo_type="dataset")
                   if f.startswith(prefix))  # fmt: skip
    assert names == ["000.txt", "000_after.png", "000_before.png", "001.txt", "001_after.png", "001_before.png",
                     "002.txt", "002_before.png"]  # fmt: skip
    fetched = Path(ctx.queue.fetch_images(task, ctx.worker.run_dir(task.id) / "images"))
    rc, events = run_trainer(tmp_path / "work", tiny_edit, fetched, 3, resolution=64, validation_prompts=["x"])
    assert rc == 0, events[-3:]
    [sample] = [e for e in events if e["event"] == "sample"]
    with Image.open(sample["paths"][0]) as im:
        assert im.size == (128, 64)  # the source, then its edit
    card = (tmp_path / "work" / "output" / "README.md").read_text()
    assert "002_before.png: invert the colors" in card and "load_image(" in card and "image-to-image" in card
    ctx.queue.cancel(task.id)
    ctx.queue.delete(task.id)


def test_the_forms_auto_steps_count_an_edit_models_pairs_not_its_files():
    from contract.catalog import FamilyInfo
    from ui.model_family import training_image_count

    files = [Path(n) for n in ("a_before.png", "a_after.png", "b_before.png", "b_after.png", "c_before.png")]
    edit = FamilyInfo(name="qwen-image-edit", label="Qwen-Image-Edit", pipelines=("QwenImageEditPlusPipeline",),
                      edits=True)  # fmt: skip
    assert training_image_count(files, edit) == 2  # two pairs; the held-out source is not trained on
    assert training_image_count(files, FamilyInfo(name="sd", label="SD", pipelines=())) == 5
    assert training_image_count(files, None) == 5
