"""The captioner (``training.captioner``, issue 24) on tiny random Florence-2 and BLIP models built here: loading
(safetensors only, a Hub repo's exact files on the emulator, offline mode), captions equal to what transformers' own
``generate`` and post-processing give, batching, cleaning, the refusals, ``keep_trigger`` against
``training.data.caption_prompt``, the CAPTION_MODEL setting and the preload item. Nothing is mocked."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.caption_models import CAPTION_FILES, DEFAULT_CAPTION_MODEL, MAX_NEW_TOKENS, PRELOAD_FILES
from contract.events import ExitCode
from contract.settings import SettingsError, load_settings, load_trainer_settings
from tests.tiny_scorers import build_pickle_only
from training import captioner as captioner_module
from training.captioner import FLORENCE_TASK, Captioner, CaptionerUnavailable, clean_caption, keep_trigger
from training.data import MAX_CAPTION_CHARS, caption_prompt, trigger_word


def photos(n: int = 3, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


def direct_florence2(folder: Path, images: list[Image.Image]) -> list[str]:
    """transformers' documented Florence-2 call: generate, batch_decode keeping special tokens, then
    post_process_generation for the task (which strips <s> and </s>); the other special tokens (padding, and the
    <mask> a random model may write) and extra spaces dropped here."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    inputs = processor(text=[FLORENCE_TASK] * len(images), images=images, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
    texts = processor.batch_decode(ids, skip_special_tokens=False)
    done = [processor.post_process_generation(t, task=FLORENCE_TASK, image_size=im.size)[FLORENCE_TASK]
            for t, im in zip(texts, images, strict=True)]  # fmt: skip
    for token in processor.tokenizer.all_special_tokens:
        done = [t.replace(token, "") for t in done]
    return [" ".join(t.split()) for t in done]


def direct_blip(folder: Path, images: list[Image.Image]) -> list[str]:
    """transformers' documented BLIP captioning call: images only, generate, batch_decode skipping special tokens."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    ids = model.generate(**processor(images=images, return_tensors="pt"), max_new_tokens=MAX_NEW_TOKENS,
                         do_sample=False, num_beams=1)  # fmt: skip
    return [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]


# ---------------------------------------------------------------- captions
def test_the_tiny_captioners_are_tiny_safetensors_folders(tiny_captioners):
    for folder in tiny_captioners.values():
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names and not any(n.endswith(".bin") for n in names)
        assert names <= set(CAPTION_FILES)  # every file the loader needs is one it may load
        assert sum(p.stat().st_size for p in folder.iterdir()) < 400_000


@pytest.mark.parametrize("kind, direct", [("florence2", direct_florence2), ("blip", direct_blip)])
def test_captions_are_what_transformers_own_generate_gives_and_are_deterministic(tiny_captioners, kind, direct):
    folder, images = tiny_captioners[kind], photos()
    captioner = Captioner.load(str(folder), "cpu", torch.float16)  # float16 asked: the CPU runs float32
    assert captioner.kind == kind and next(captioner.model.parameters()).dtype == torch.float32
    captions = captioner.caption(images)
    assert captions == direct(folder, images)
    assert captioner.caption(images) == captions  # greedy: the same photos, the same words
    assert len(set(captions)) == 3 and all(captions)  # one caption per photo, in order, none empty
    assert captioner.caption(images[::-1]) == captions[::-1]
    assert not any(tok in c for c in captions for tok in ("<s>", "</s>", "<pad>", "[DEC]", "[SEP]", FLORENCE_TASK))
    captioner.close()
    assert captioner.model is None and captioner.processor is None
    with pytest.raises(RuntimeError, match="closed"):
        captioner.caption(images)


def test_photos_past_one_batch_are_captioned_in_several_batches_with_the_same_captions(tiny_captioners, monkeypatch):
    captioner = Captioner.load(str(tiny_captioners["florence2"]), "cpu", torch.float32)
    images = photos(5, seed=1) + [photos(1)[0].convert("L")]  # a grey photo is captioned as RGB
    whole = captioner.caption(images)
    monkeypatch.setattr(captioner_module, "BATCH", 2)
    assert captioner.caption(images) == whole and len(whole) == 6
    assert captioner.caption([]) == []


def test_clean_caption_drops_tokens_collapses_spaces_and_cuts_at_a_word():
    assert clean_caption("</s><s>A  dog\n on <loc_12>grass.<pad><pad>") == "A dog on grass."
    assert clean_caption("[DEC] a cat [SEP] [PAD]") == "a cat"
    assert clean_caption("<DETAILED_CAPTION> a <image>cat<|im_end|>", ["<|im_end|>"]) == "a cat"
    assert clean_caption("<pad></s>") == ""  # nothing usable: "", the caller decides
    long = clean_caption("word " * 400)
    assert len(long) <= MAX_CAPTION_CHARS and long.endswith("word") and long.startswith("word word")
    assert clean_caption("x" * 2000) == "x" * MAX_CAPTION_CHARS  # one endless word: cut at the bound


# ---------------------------------------------------------------- refusals
def test_a_pickle_only_or_missing_model_is_refused_with_the_reason(tiny_captioners, tmp_path):
    folder = build_pickle_only(tiny_captioners["blip"], tmp_path / "pickled")
    with pytest.raises(CaptionerUnavailable, match=r"captioning model .* has no model\.safetensors.*pytorch_model\.bin"
                                                   r".*safetensors only"):  # fmt: skip
        Captioner.load(str(folder), "cpu", torch.float32)
    with pytest.raises(CaptionerUnavailable, match="captioning model .*: no such folder"):
        Captioner.load(str(tmp_path / "not" / "there"), "cpu", torch.float32)
    error = CaptionerUnavailable("x")
    assert isinstance(error, ValueError) and error.exit_code == ExitCode.BAD_INPUT and error.kind == "bad_input"


def _retyped(source: Path, dest: Path, **changes) -> Path:
    shutil.copytree(source, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **changes}))
    return dest


def test_a_model_of_another_kind_remote_code_or_a_chat_model_is_refused(tiny_captioners, tiny_scorers, tmp_path):
    with pytest.raises(CaptionerUnavailable, match="is a 'dinov2', not one this app captions with"):
        Captioner.load(str(tiny_scorers["dino"]), "cpu", torch.float32)
    remote = _retyped(tiny_captioners["florence2"], tmp_path / "remote",
                      auto_map={"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"})
    with pytest.raises(CaptionerUnavailable, match="own modelling code.*never runs.*florence-community"):
        Captioner.load(str(remote), "cpu", torch.float32)
    chat = _retyped(tiny_captioners["blip"], tmp_path / "chat", model_type="qwen2_5_vl")
    with pytest.raises(CaptionerUnavailable, match=r"chat vision-language model \(qwen2_5_vl\).*torchvision"):
        Captioner.load(str(chat), "cpu", torch.float32)


def test_a_hub_captioner_downloads_its_files_only_and_works_offline_from_the_cache(
        fakehub, tiny_captioners, monkeypatch):  # fmt: skip
    from huggingface_hub import HfApi, constants, snapshot_download

    api, repo = HfApi(), f"alice/tiny-florence-{uuid.uuid4().hex[:6]}"
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(tiny_captioners["florence2"]))
    api.upload_file(repo_id=repo, path_or_fileobj=b"a pickle: never fetched", path_in_repo="pytorch_model.bin")
    api.upload_file(repo_id=repo, path_or_fileobj=b"# not fetched", path_in_repo="README.md")
    expected = Captioner.load(str(tiny_captioners["florence2"]), "cpu", torch.float32).caption(photos(2))
    assert Captioner.load(repo, "cpu", torch.float32).caption(photos(2)) == expected
    snapshot = Path(snapshot_download(repo, allow_patterns=["config.json"], local_files_only=True))
    assert {p.name for p in snapshot.iterdir()} == {p.name for p in tiny_captioners["florence2"].iterdir()}

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fakehub.clear_requests()
    assert Captioner.load(repo, "cpu", torch.float32).caption(photos(2)) == expected  # the cached copy
    with pytest.raises(CaptionerUnavailable, match=r"not in the Hugging Face cache.*training\.preload --captions"):
        Captioner.load(f"alice/never-cached-{uuid.uuid4().hex[:6]}", "cpu", torch.float32)
    assert not fakehub.requests()  # offline: no request at all


# ---------------------------------------------------------------- the trigger word
@pytest.mark.parametrize("caption, instance, klass, kept", [
    ("a brown dog on grass", "a photo of sks dog", None, "a brown sks dog on grass"),
    ("A Dog running. The dog is happy", "a photo of sks dog", "a photo of dog", "A sks Dog running. The dog is happy"),
    ("two dogs on a sofa", "a photo of sks dog", None, "two sks dogs on a sofa"),
    ("a hotdog stand", "a photo of sks dog", None, "a hotdog stand"),  # a word containing "dog" is not a mention
    ("a cat on a sofa", "a photo of sks dog", None, "a cat on a sofa"),  # no mention: caption_prompt prepends
    ("sks dog in snow", "a photo of sks dog", None, "sks dog in snow"),  # has it already
    ("a man in a red coat", "photo of ohwx man", "photo of a man", "a ohwx man in a red coat"),
    ("a golden retriever", "a photo of zwx golden retriever", "a photo of a golden retriever", "a golden zwx retriever"),
    ("a dog", "a photo of a dog", None, "a dog"),  # no trigger word ("dog" is the first uncommon word, no class)
])  # fmt: skip
def test_keep_trigger_puts_the_trigger_before_the_class_noun(caption, instance, klass, kept):
    assert keep_trigger(caption, instance, klass) == kept


def test_keep_trigger_agrees_with_the_trainers_caption_prompt():
    instance, klass = "a photo of sks dog", "a photo of dog"
    named = keep_trigger("a brown dog on grass", instance, klass)
    assert caption_prompt(named, instance, klass) == named  # trains on the caption as kept
    unnamed = keep_trigger("a cat on a sofa", instance, klass)
    assert caption_prompt(unnamed, instance, klass) == f"{instance}, a cat on a sofa"
    assert trigger_word(instance, klass) == "sks"
    near_limit = "dog " + "x" * (MAX_CAPTION_CHARS - 4)
    assert keep_trigger(near_limit, instance, klass) == near_limit  # would pass the bound: caption_prompt prepends


# ---------------------------------------------------------------- the setting and the preload item
def test_the_caption_model_setting_defaults_and_can_be_overridden(tmp_path):
    for load in (load_settings, load_trainer_settings):
        default = load({})
        assert default.caption_model == DEFAULT_CAPTION_MODEL and default.sources()["caption_model"] == "default"
        chosen = load({"CAPTION_MODEL": " me/my-captioner "})
        assert chosen.caption_model == "me/my-captioner" and chosen.sources()["caption_model"] == "CAPTION_MODEL"
        assert load({"CAPTION_MODEL": str(tmp_path)}).caption_model == str(tmp_path)
        assert load({"CAPTION_MODEL": "  "}).caption_model == DEFAULT_CAPTION_MODEL
        with pytest.raises(SettingsError, match="CAPTION_MODEL=.*is not a model repo id.*florence-community"):
            load({"CAPTION_MODEL": "owner/na me"})
    assert load_trainer_settings({"CAPTION_MODEL": "me/c"}, variables=("CAPTION_MODEL",)).caption_model == "me/c"


def test_the_preload_lists_the_captioners_exact_files(capsys, monkeypatch, tiny_captioners):
    from training.preload import caption_items, main

    assert main(["--captions"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line == f"{DEFAULT_CAPTION_MODEL} {','.join(PRELOAD_FILES[DEFAULT_CAPTION_MODEL])}"
    assert set(PRELOAD_FILES[DEFAULT_CAPTION_MODEL]) <= set(CAPTION_FILES)
    assert "model.safetensors" in line and ".bin" not in line
    listing = {"me/cap": ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "README.md"]}
    assert caption_items("me/cap", listing.__getitem__) == ["me/cap config.json,model.safetensors,tokenizer.json"]
    assert caption_items(str(tiny_captioners["blip"]), listing.__getitem__) == []  # a local folder: nothing
    monkeypatch.setenv("CAPTION_MODEL", str(tiny_captioners["blip"]))
    assert main(["--captions"]) == 0 and capsys.readouterr().out.strip() == ""
