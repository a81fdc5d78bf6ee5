"""The Qwen-Image-Edit family (``training.families.qwen_image_edit``) against diffusers' ``QwenImageEditPlusPipeline``
on a tiny random pipeline built here (``tests/tiny_qwen_image.py``): the conditioning is the pipeline's (the
instruction read with the source image), the prediction is what the pipeline steps with and depends on the source,
and the trainer learns an edit from before/after pairs into a LoRA the pipeline loads whole."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file

from tests.test_flux_families import model_info, run_trainer
from tests.tiny_models import make_images
from tests.tiny_qwen_image import build_tiny_qwen_image_edit
from training.families.flux import COMFY_NAME, WEIGHTS_NAME
from training.families.qwen_image_edit import EDIT_TEMPLATE, TEMPLATE_DROP, QwenImageEdit
from training.files import choose_files
from training.spec import TrainParams

RES = 32
INSTRUCTION = "invert the colors"
F32 = {"denoiser_dtype": torch.float32, "text_dtype": torch.float32, "weight_dtype": torch.float32}


@pytest.fixture(scope="module")
def tiny_edit(tmp_path_factory) -> Path:
    return build_tiny_qwen_image_edit(tmp_path_factory.mktemp("tiny-qwen-image-edit") / "model")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Image.Image]:
    folder = tmp_path_factory.mktemp("edit-sources")
    out = []
    for path in sorted(make_images(folder, 3, size=48)):
        with Image.open(path) as im:
            out.append(ImageOps.exif_transpose(im).convert("RGB").resize((RES, RES)))
    return out


@pytest.fixture(scope="module")
def pairs(sources, tmp_path_factory) -> Path:
    """Two pairs (the after: the before inverted) with their instruction, and a held-out source."""
    folder = tmp_path_factory.mktemp("edit-pairs")
    for i, source in enumerate(sources):
        source.save(folder / f"p{i}_before.png")
        (folder / f"p{i}.txt").write_text(INSTRUCTION)
        if i < 2:
            ImageOps.invert(source).save(folder / f"p{i}_after.png")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_edit, pairs, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The trainer's 6-step LoRA run on the pairs: (work folder, events)."""
    work = tmp_path_factory.mktemp("edit-run") / "work"
    rc, events = run_trainer(work, tiny_edit, pairs, 6, validation_prompts=["unused: the held-out source is sampled"])
    assert rc == 0, events[-3:]
    return work, events


def loaded(model_dir: Path):
    family = QwenImageEdit(model_info(model_dir))
    return family, family.load(str(model_dir), {}, **F32)


def pipeline(model_dir: Path):
    """The edit pipeline as saved, its scheduler without the terminal stretch (a one-step call then runs at the
    sigma given); without its processor, which cannot be built here (see ``processor``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline

    pipe = QwenImageEditPlusPipeline.from_pretrained(str(model_dir), processor=None, torch_dtype=torch.float32)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift_terminal=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def processor(model_dir: Path):
    """transformers' ``Qwen2VLProcessor`` over the repo's image processor and tokenizer. Its constructor also
    wants the video processor, which needs torchvision (not installed here, nor needed by the trainer), so the
    object is made without ``__init__`` and its video part left out; the text and image processing under test is
    transformers' own ``__call__``."""
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    proc = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    proc.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), subfolder="processor")
    proc.image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir), subfolder="processor")
    proc.video_processor, proc.image_token, proc.video_token = None, "<|image_pad|>", "<|video_pad|>"
    proc.image_token_id, proc.video_token_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>"), None
    return proc


def test_conditioning_is_the_edit_pipelines_encode_prompt_with_the_source_image(tiny_edit, sources):
    """Template, "Picture 1" turn, the source at about 384 x 384 px through the vision tower, the first 64 tokens
    dropped: the family's embeddings equal the pipeline's ``encode_prompt`` of the same resized source; another
    source gives other embeddings (the text encoder reads the image)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import CONDITION_IMAGE_SIZE, calculate_dimensions

    family, comps = loaded(tiny_edit)
    pipe = pipeline(tiny_edit)
    pipe.processor = processor(tiny_edit)
    assert (pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx) == (EDIT_TEMPLATE, TEMPLATE_DROP)
    w, h = calculate_dimensions(CONDITION_IMAGE_SIZE, 1.0)
    for source in sources[:2]:
        with torch.no_grad():
            want, _ = pipe.encode_prompt(prompt=[INSTRUCTION], image=[pipe.image_processor.resize(source, h, w)])
        got = family.image_cond(comps, INSTRUCTION, source)
        assert got["embeds"].shape == want.shape and bool(got["mask"].all())
        assert torch.allclose(got["embeds"], want, atol=1e-6)
    one, other = (family.image_cond(comps, INSTRUCTION, s)["embeds"] for s in sources[:2])
    assert (one - other).abs().max() > 1e-3


def test_prediction_is_the_edit_pipelines_velocity_and_depends_on_the_source(tiny_edit, sources):
    """One Euler step of the pipeline (source given as its image, cached conditioning, no CFG) is ``noisy - sigma *
    predict`` with the pipeline's own encoding of that source as the control latents; the family's cached source
    latents are the pipeline's encoding at the training size; another source changes the prediction."""
    from diffusers import QwenImageEditPlusPipeline as Pipe

    family, comps = loaded(tiny_edit)
    pipe = pipeline(tiny_edit)
    source = sources[0]
    cond = family.image_cond(comps, INSTRUCTION, source)

    def pipeline_latents(image: Image.Image, size: int) -> torch.Tensor:  # the pipeline's _encode_vae_image
        pixels = pipe.image_processor.preprocess(image, size, size).unsqueeze(2)
        return pipe._encode_vae_image(pixels, torch.Generator().manual_seed(0)).squeeze(2)

    from training.data import PreparedImage

    cached = family.control_latents(comps, PreparedImage(source, Path("s.png"), (RES, RES), (0, 0)))
    assert torch.allclose(cached, pipeline_latents(source, RES), atol=1e-5)
    control = pipeline_latents(source, 1024)  # what the pipeline appends: the source at about 1024 x 1024 px
    with torch.no_grad():
        for u in (0.4, 0.9):
            noisy = torch.randn(1, 16, RES // 8, RES // 8, generator=torch.Generator().manual_seed(int(u * 10)))
            t = torch.full((1,), u)
            pred = family.predict(comps, comps.denoiser, noisy, t, {**cond, "control": control}, None)
            sigma = float(family.sigmas(comps, t, noisy.shape))
            out = pipe(image=[source], prompt_embeds=cond["embeds"], prompt_embeds_mask=cond["mask"], sigmas=[u],
                       num_inference_steps=1, true_cfg_scale=1.0, height=RES, width=RES, output_type="latent",
                       latents=Pipe._pack_latents(noisy, 1, 16, RES // 8, RES // 8)).images  # fmt: skip
            out = Pipe._unpack_latents(out, RES, RES, pipe.vae_scale_factor).squeeze(2)
            assert torch.allclose(out, noisy - sigma * pred, atol=1e-5), u
        other = family.predict(comps, comps.denoiser, noisy, t, {**cond, "control": pipeline_latents(sources[1], 1024)},
                               None)  # fmt: skip
        assert (other - pred).abs().max() > 1e-3


def test_the_trainer_learns_an_edit_from_pairs_into_a_lora_the_edit_pipeline_loads_whole(trained, tiny_edit, pairs):
    """The real loop on two pairs: the sample is the held-out source beside its edit, the validation loss is
    scored (no image score for an edit), the card is an image-to-image Apache-2.0 card whose snippet passes a
    source; the LoRA loads into ``QwenImageEditPlusPipeline`` with nothing missing or left over and changes its
    edit of the held-out source."""
    from peft.utils import get_peft_model_state_dict

    work, events = trained
    out = work / "output"
    assert {WEIGHTS_NAME, COMFY_NAME, "README.md"} <= {p.name for p in out.iterdir()}
    [sample] = [e for e in events if e["event"] == "sample"]
    with Image.open(sample["paths"][0]) as im:
        assert im.size == (2 * RES, RES)
        left = im.crop((0, 0, RES, RES)).convert("RGB")
    with Image.open(pairs / "p2_before.png") as held_out:
        assert list(left.getdata()) == list(held_out.convert("RGB").resize((RES, RES)).getdata())
    scores = [e for e in events if e["event"] == "scores"]
    assert scores and all(e["dino"] is None and e["val_loss"] is not None for e in scores)
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and "- image-to-image" in card and "- text-to-image" not in card
    assert 'pipe(image=[load_image("source.png")], prompt=' in card and "p2_before.png: invert the colors" in card

    saved = load_file(str(out / WEIGHTS_NAME))
    pipe = pipeline(tiny_edit)
    with Image.open(pairs / "p2_before.png") as im:
        source = im.convert("RGB")

    def edit() -> torch.Tensor:
        return pipe(image=[source], prompt_embeds=embeds["embeds"], prompt_embeds_mask=embeds["mask"], height=RES,
                    width=RES, num_inference_steps=2, true_cfg_scale=1.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    family, comps = loaded(tiny_edit)
    embeds = family.image_cond(comps, INSTRUCTION, source.resize((RES, RES)))
    before = edit()
    pipe.load_lora_weights(str(out), adapter_name="trained")
    loaded_lora = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    assert {f"transformer.{k}" for k in loaded_lora} == set(saved)  # nothing missing, nothing unexpected
    assert all(torch.equal(loaded_lora[k.removeprefix("transformer.")], v) for k, v in saved.items())
    assert (edit() - before).abs().max() > 1e-4


def test_edit_pairs_are_refused_settings_that_need_subject_photos_and_the_files_it_reads(tiny_edit):
    from training.exitcodes import BadInputError

    family = QwenImageEdit(model_info(tiny_edit))
    with pytest.raises(BadInputError, match="prior preservation is for subject photos"):
        family.check_params(TrainParams(prior_preservation=True))
    with pytest.raises(BadInputError, match="training the text encoder is not supported"):
        family.check_params(TrainParams(train_text_encoder=True))
    entry = QwenImageEdit.catalog_entry()
    assert entry["edits"] is True and entry["pipelines"] == ["QwenImageEditPlusPipeline"]
    assert entry["defaults"]["hardware"] == "l40sx1"
    index = model_info(tiny_edit).index
    assert "processor" not in QwenImageEdit.weight_components(index)  # an image processor: text files only
    files = {str(p.relative_to(tiny_edit)) for p in tiny_edit.rglob("*") if p.is_file()}
    chosen = choose_files(files, index)
    assert {"processor/preprocessor_config.json", "processor/tokenizer.json"} <= set(chosen.files)


def test_a_copy_of_the_pairs_without_instructions_trains_with_the_instance_prompt(tiny_edit, pairs, tmp_path):
    """A pair without its ``.txt`` is the instance prompt's edit: the held-out sample's label says so."""
    folder = tmp_path / "pairs"
    shutil.copytree(pairs, folder)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    rc, events = run_trainer(tmp_path / "work", tiny_edit, folder, 1, validation_prompts=["x"], score=False)
    assert rc == 0, events[-3:]
    card = (tmp_path / "work" / "output" / "README.md").read_text()
    assert "p2_before.png: a photo of sks dog" in card
