"""Which base-model files training downloads (``training.files``), and that the trainer, the preload list in
README.md and the real repo layouts (benchmarks/layouts) agree.

The trainer runs against the Hub emulator with the real client, on a tiny model repo laid out like a real one
(fp32 + fp16 safetensors, non-EMA weights, .bin pickles, a root single-file checkpoint, a safety checker); what it
downloaded is read from the emulator's request log.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from contract.events import ExitCode
from tests.tiny_models import DECOYS, add_hub_layout, make_images
from training.exitcodes import BadInputError
from training.files import FileChoiceError, choose_files
from training.full import DreamBoothFull
from training.lora import DreamBoothLoRA
from training.models import inspect_base_model, load_components
from training.preload import main as preload_main
from training.preload import preload_files, read_layout, recipe_trainable_sets
from training.recipes import load_recipe_modules, registered_recipes
from training.spec import TrainParams

ROOT = Path(__file__).resolve().parents[1]
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LORA = DreamBoothLoRA.trainable_components(TrainParams())
FULL = DreamBoothFull.trainable_components(TrainParams())
FULL_TE = DreamBoothFull.trainable_components(TrainParams(train_text_encoder=True))


def readme_preload() -> dict[str, list[str]]:
    """README.md's ``preload_from_hub`` items: repo -> files."""
    front = (ROOT / "README.md").read_text().split("---")[1]
    items = yaml.safe_load(front)["preload_from_hub"]
    return {item.split(" ")[0]: item.split(" ")[1].split(",") for item in items}


def builtin_trainable_sets() -> list[frozenset[str]]:
    load_recipe_modules()
    return recipe_trainable_sets(c for c in registered_recipes() if c.name in ("dreambooth-lora", "dreambooth-full"))


# ---------------------------------------------------------------- the rule, on the real layouts
def test_the_readme_preload_line_is_choose_files_over_the_real_sd15_layout():
    files, index = read_layout(ROOT / "benchmarks/layouts/sd15.json")
    listed = readme_preload()[SD15]
    assert listed == preload_files(files, index, builtin_trainable_sets(), base_model=SD15)
    # it serves both built-in recipes: LoRA's fp16 UNet and the full fine-tune's fp32 one (and its text encoder)
    assert {
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    } <= set(listed)
    for chosen in (LORA, FULL, FULL_TE):
        assert set(choose_files(files, index, trainable=chosen).files) <= set(listed)
    sizes = {f["path"]: f["size"] for f in json.loads((ROOT / "benchmarks/layouts/sd15.json").read_text())["files"]}
    assert sum(sizes[f] for f in listed) < 0.15 * sum(sizes.values())  # ~6 GB of ~47 GB


def test_the_preload_command_prints_the_readme_item(capsys, tmp_path):
    assert preload_main([SD15, "--layout", str(ROOT / "benchmarks/layouts/sd15.json")]) == 0
    item = capsys.readouterr().out.strip()
    assert item == f"{SD15} {','.join(readme_preload()[SD15])}"
    files, index = read_layout(ROOT / "benchmarks/layouts/sd15.json")
    (tmp_path / "files.txt").write_text("\n".join(files))
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    args = [SD15, "--files", str(tmp_path / "files.txt"), "--index", str(tmp_path / "model_index.json")]
    assert preload_main([*args, "--recipe", "dreambooth-lora", "--revision", "a" * 40]) == 0
    lora_only = capsys.readouterr().out.strip().split(" ")
    assert lora_only[1].split(",") == choose_files(files, index).files and lora_only[2] == "a" * 40


SD15_LORA = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]


@pytest.mark.parametrize("shape", ["sd15", "sdxl"])
def test_frozen_components_read_fp16_and_trained_ones_fp32_on_the_real_layouts(shape):
    files, index = read_layout(ROOT / f"benchmarks/layouts/{shape}.json")
    encoders = {"text_encoder", "text_encoder_2"} if shape == "sdxl" else {"text_encoder"}
    lora = choose_files(files, index, trainable=LORA)
    assert lora.variants == dict.fromkeys(["unet", "vae", *sorted(encoders)], "fp16")
    if shape == "sd15":
        assert lora.files == SD15_LORA
    weights = [f for f in lora.files if not f.endswith((".json", ".txt"))]
    assert all(f.endswith(".fp16.safetensors") and f.count("/") == 1 for f in weights), weights
    assert not [f for f in lora.files if f.split("/")[0] in ("safety_checker", "feature_extractor", "vae_1_0")]
    full = choose_files(files, index, trainable=FULL)
    assert full.variants["unet"] is None and "unet/diffusion_pytorch_model.safetensors" in full.files
    assert "unet/diffusion_pytorch_model.fp16.safetensors" not in full.files
    assert all(full.variants[e] == "fp16" for e in encoders) and full.variants["vae"] == "fp16"
    full_te = choose_files(files, index, trainable=FULL_TE)
    assert all(full_te.variants[e] is None for e in encoders) and full_te.variants["vae"] == "fp16"
    before = choose_files(files, index, variant=None)
    assert set(before.variants.values()) == {None}
    assert [f for f in before.files if "fp16" in f] == []


# ---------------------------------------------------------------- the rule, on made-up repos
INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}
BASE = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/model.safetensors",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]
SHARDED = [
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
    "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
]


def test_sharded_checkpoints_take_their_index_and_its_shards():
    fp16_shards, fp32_shards = SHARDED[4:], SHARDED[1:3]
    read = {
        SHARDED[3]: {"weight_map": {"a": fp16_shards[0].split("/")[1], "b": fp16_shards[1].split("/")[1]}},
        SHARDED[0]: {"weight_map": {"a": fp32_shards[0].split("/")[1], "b": fp32_shards[1].split("/")[1]}},
    }.__getitem__
    for reader in (read, None):  # the index read, or the shards found by the names the libraries save
        frozen = choose_files(BASE + SHARDED, INDEX, read_index=reader)
        assert {f for f in frozen.files if f.startswith("unet/")} == {"unet/config.json", SHARDED[3], *fp16_shards}
        trained = choose_files(BASE + SHARDED, INDEX, trainable={"unet"}, read_index=reader)
        assert {f for f in trained.files if f.startswith("unet/")} == {"unet/config.json", SHARDED[0], *fp32_shards}
    with pytest.raises(FileChoiceError, match="missing shards"):
        choose_files(BASE + SHARDED[3:4], INDEX, read_index=read)


def test_fallbacks_and_refusals():
    plain = BASE + ["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"]
    choice = choose_files(plain, INDEX)  # no fp16 variant anywhere: the plain files
    assert choice.variants == {"unet": None, "vae": None, "text_encoder": None}
    assert "unet/diffusion_pytorch_model.bin" not in choice.files and "tokenizer/model.safetensors" not in choice.files
    fp16_only = [f for f in BASE if "vae/diffusion" not in f] + [
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    choice = choose_files(fp16_only, INDEX, trainable={"unet"})  # trained, but the repo has only fp16: upcast
    assert choice.variants["unet"] == "fp16" and choice.variants["vae"] == "fp16"
    bin_only = [f for f in plain if not f.startswith("vae/diffusion")] + ["vae/diffusion_pytorch_model.bin"]
    with pytest.raises(FileChoiceError) as err:
        choose_files(bin_only, INDEX, base_model="alice/x")
    assert err.value.problem.kind == "no_safetensors"
    assert str(err.value) == (
        "base model 'alice/x': component 'vae' has no .safetensors weights; safetensors are "
        "required (pickle-based .bin/.ckpt weights are never loaded)"
    )
    with pytest.raises(FileChoiceError) as err:
        choose_files([f for f in plain if f != "unet/config.json"], INDEX)
    assert err.value.problem.kind == "not_a_pipeline" and "unet/config.json" in str(err.value)
    with pytest.raises(FileChoiceError) as err:
        choose_files(plain, {**INDEX, "unet": ["os", "system"]})
    assert err.value.problem.kind == "not_allowed"


# ---------------------------------------------------------------- the trainer, against the emulator
def _upload(hub, tmp_path: Path, tiny_sd: Path, name: str, *, fp16: bool) -> tuple[str, Path]:
    from huggingface_hub import HfApi

    folder = tmp_path / name
    shutil.copytree(tiny_sd, folder)
    add_hub_layout(folder, fp16=fp16)
    repo = f"alice/{name}"
    HfApi().create_repo(repo, exist_ok=True)
    HfApi().upload_folder(repo_id=repo, folder_path=str(folder))
    return repo, folder


def _fetched(hub, repo: str) -> list[str]:
    """Files of ``repo`` downloaded (GET 200) since the request log was cleared, in order."""
    prefix = f"/{repo}/resolve/"
    gets = [r for r in hub.requests("GET") if r.path.startswith(prefix) and r.status == 200]
    return [r.path[len(prefix) :].split("/", 1)[1] for r in gets]


def _repo_files(folder: Path) -> list[str]:
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def layout_repo(fakehub, tiny_sd, tmp_path_factory) -> tuple[str, Path]:
    return _upload(fakehub, tmp_path_factory.mktemp("layout"), tiny_sd, "mf-tiny-sd-layout", fp16=True)


def test_a_lora_task_downloads_exactly_the_chosen_files_once(hub, layout_repo, tmp_path):
    from training.cli import main

    repo, folder = layout_repo
    images = tmp_path / "photos"
    make_images(images, 2, size=48)
    task = {
        "task_id": "mf",
        "base_model": repo,
        "images": str(images),
        "instance_prompt": "a photo of sks dog",
        "output": None,
        "checkpoint": None,
        "params": {"steps": 1, "resolution": 32, "checkpoint_every": 0, "validation_prompts": []},
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    hub.clear_requests()
    rc = main(["--task", str(tmp_path / "task.json"), "--workdir", str(tmp_path / "run"), "--progress-bar", "off"])
    assert rc == 0
    fetched = _fetched(hub, repo)
    index = json.loads((folder / "model_index.json").read_text())
    expected = choose_files(_repo_files(folder), index, trainable=LORA).files
    assert sorted(fetched) == expected  # each once, nothing else
    assert [f for f in expected if f.endswith(".safetensors")] == [
        "text_encoder/model.fp16.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    touched = {r.path for r in hub.requests() if f"/{repo}/" in r.path}
    assert not [p for p in touched for decoy in DECOYS if p.endswith("/" + decoy)]  # not even a HEAD


def _rounded(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def test_lora_loads_frozen_weights_from_fp16_and_a_full_finetune_the_unet_from_fp32(hub, layout_repo):
    repo, folder = layout_repo
    unet32 = load_file(str(folder / "unet/diffusion_pytorch_model.safetensors"))
    te32 = load_file(str(folder / "text_encoder/model.safetensors"))
    key, te_key = "conv_in.weight", "embeddings.token_embedding.weight"
    assert not torch.equal(_rounded(unet32[key]), unet32[key])  # the two files are told apart by their values

    info = inspect_base_model(repo)
    lora = load_components(info, unet_dtype=torch.float32, text_dtype=torch.float32, trainable=LORA)
    assert lora.denoiser.dtype == torch.float32 and lora.vae.dtype == torch.float32  # fp16 files, upcast on load
    assert torch.equal(lora.denoiser.state_dict()[key], _rounded(unet32[key]))
    assert torch.equal(lora.text_encoders[0].state_dict()[te_key], _rounded(te32[te_key]))

    hub.clear_requests()
    full = load_components(info, unet_dtype=torch.float32, text_dtype=torch.float32, trainable=FULL)
    assert torch.equal(full.denoiser.state_dict()[key], unet32[key])  # the fp32 master weights, exactly
    assert torch.equal(full.text_encoders[0].state_dict()[te_key], _rounded(te32[te_key]))  # still frozen: fp16
    assert _fetched(hub, repo) == ["unet/diffusion_pytorch_model.safetensors"]  # the rest is in the cache already

    weight_dtype = load_components(info, unet_dtype=torch.float16, text_dtype=torch.float16, trainable=LORA)
    assert weight_dtype.denoiser.dtype == torch.float16 and weight_dtype.vae.dtype == torch.float32  # VAE runs in fp32


def test_a_repo_without_fp16_variants_loads_its_plain_files(hub, tiny_sd, tmp_path):
    repo, folder = _upload(hub, tmp_path, tiny_sd, "mf-tiny-sd-plain", fp16=False)
    hub.clear_requests()
    comps = load_components(inspect_base_model(repo), unet_dtype=torch.float32, text_dtype=torch.float32)
    unet32 = load_file(str(folder / "unet/diffusion_pytorch_model.safetensors"))
    assert torch.equal(comps.denoiser.state_dict()["conv_in.weight"], unet32["conv_in.weight"])
    weights = sorted(f for f in _fetched(hub, repo) if f.endswith(".safetensors"))
    assert weights == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_a_component_without_usable_safetensors_fails_the_task_with_exit_2_before_loading(tiny_sd, tmp_path):
    from training.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_sd, model)  # a .safetensors file the libraries never load under that name, and a pickle
    (model / "unet/diffusion_pytorch_model.safetensors").rename(model / "unet/weights.safetensors")
    (model / "unet/diffusion_pytorch_model.bin").write_bytes(b"a pickle: never loaded")
    with pytest.raises(BadInputError, match="component 'unet' has no .safetensors weights"):
        load_components(inspect_base_model(str(model)), unet_dtype=torch.float32, text_dtype=torch.float32)
    images = tmp_path / "photos"
    make_images(images, 2, size=48)
    task = {
        "task_id": "mf",
        "base_model": str(model),
        "images": str(images),
        "instance_prompt": "a photo of sks dog",
        "output": None,
        "checkpoint": None,
        "params": {"steps": 1, "resolution": 32},
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    events = tmp_path / "events.jsonl"
    rc = main(
        [
            "--task",
            str(tmp_path / "task.json"),
            "--workdir",
            str(tmp_path / "run"),
            "--progress",
            str(events),
            "--progress-bar",
            "off",
        ]
    )
    assert rc == ExitCode.BAD_INPUT
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert lines[-1]["kind"] == "bad_input" and "'unet' has no .safetensors weights" in lines[-1]["message"]
    assert "loading" not in [e["phase"] for e in lines if e["event"] == "phase"]
