"""The Flux.1 and Flux.2 [klein] families on tiny random models (``tests/tiny_flux.py``), on the CPU.

The LoRA runs here drive the family interface directly with a short loop of the trainer's shape (cached latents
and conditioning, per-sample generators, flow-matching step, AdamW, save): what ``training/train.py`` calls. The
saved files are then read back only through diffusers' own pipelines and converters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
from tests.tiny_models import make_images
from training.families.base import Components, LatentSet, ModelInfo, TextCond
from training.families.flux import COMFY_NAME, WEIGHTS_NAME, Flux1, shifted_sigmas
from training.families.flux2_klein import Flux2Klein

PROMPT = "a photo of sks dog"
RES = 32


class TinyFlux1(Flux1):
    """Flux.1 with 64 text tokens instead of 512 (the tiny encoders do not need more; the CPU is shared)."""

    max_sequence_length = 64


class TinyKlein(Flux2Klein):
    max_sequence_length = 64


@pytest.fixture(scope="module")
def flux1_dir(tmp_path_factory) -> Path:
    return build_tiny_flux1(tmp_path_factory.mktemp("tiny-flux1") / "model")


@pytest.fixture(scope="module")
def klein_dir(tmp_path_factory) -> Path:
    return build_tiny_flux2_klein(tmp_path_factory.mktemp("tiny-klein") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("instance")
    make_images(folder, 3, size=48)
    return folder


def model_info(folder: Path) -> ModelInfo:
    read = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    return ModelInfo(str(folder), read("model_index.json"), read("transformer/config.json"), read("vae/config.json"))


class CPU:
    """The accelerator surface ``generate`` uses (device, autocast), for the CPU."""

    device = torch.device("cpu")

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()


@dataclass
class Params:
    sample_inference_steps: int = 2


@dataclass
class Run:
    family: Any
    comps: Components
    latents: LatentSet
    cond: dict
    out: Path
    eval_before: float
    eval_after: float


def eval_loss(family, comps, latents: LatentSet, cond: dict) -> float:
    """Flow-matching loss on fixed noise and times (0.1 .. 0.9) for every cached latent."""
    g = torch.Generator().manual_seed(1234)
    losses = []
    with torch.no_grad():
        for i in range(len(latents)):
            for u in (0.1, 0.3, 0.5, 0.7, 0.9):
                x = latents.mean[i : i + 1]
                noise = torch.randn(x.shape, generator=g)
                t = torch.tensor([u])
                noisy, target = family.noisy_and_target(comps, x, noise, t)
                pred = family.predict(comps, comps.denoiser, noisy, t, cond, latents.time_ids[i : i + 1])
                losses.append(torch.mean((pred.float() - target) ** 2).item())
    return sum(losses) / len(losses)


def train_lora(family_cls, model_dir: Path, image_dir: Path, out: Path, *, steps=40, rank=4, alpha=8, lr=1e-2) -> Run:
    """A LoRA run over the family interface, in the trainer's order: text side and VAE first, cache, free the
    encoders, then the transformer; per-sample generators; save in diffusers format plus the extra layouts."""
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from training.data import load_images
    from training.utils.batches import sample_generator

    family = family_cls(model_info(model_dir))
    f32 = torch.float32
    kw = {"denoiser_dtype": f32, "text_dtype": f32, "weight_dtype": f32}
    comps = family.load(str(model_dir), {}, parts=("text", "vae", "scheduler"), **kw)
    assert comps.denoiser is None and all(te is not None for te in comps.text_encoders)
    latents = family.encode_images(comps, load_images(image_dir, RES), RES, flip=True)
    with torch.no_grad():
        cond = family.encode_prompt(comps, comps.text_encoders, family.tokenize(comps, PROMPT))
    family.release_text_encoders(comps)
    assert all(te is None for te in comps.text_encoders)  # freed: T5-XXL / Qwen3 do not stay in host RAM
    family.load(str(model_dir), {}, parts=("denoiser",), into=comps, **kw)

    torch.manual_seed(0)
    comps.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                          target_modules=family.lora_targets("transformer")))  # fmt: skip
    cast_training_params([comps.denoiser], dtype=torch.float32)
    params = [p for p in comps.denoiser.parameters() if p.requires_grad]
    before = eval_loss(family, comps, latents, cond)
    opt = torch.optim.AdamW(params, lr=lr)
    for step in range(steps):
        g = sample_generator(0, step)
        idx = int(torch.randint(len(latents), (1,), generator=g))
        x = latents.mean[idx : idx + 1] + latents.std[idx : idx + 1] * torch.randn(latents.mean.shape[1:], generator=g)
        noise = torch.randn(x.shape, generator=g)
        t = torch.tensor([family.draw_time(g, comps, None)], dtype=torch.float32)
        noisy, target = family.noisy_and_target(comps, x, noise, t)
        pred = family.predict(comps, comps.denoiser, noisy, t, cond, latents.time_ids[idx : idx + 1])
        torch.nn.functional.mse_loss(pred.float(), target.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    after = eval_loss(family, comps, latents, cond)

    out.mkdir(parents=True, exist_ok=True)
    layers = {"transformer": get_peft_model_state_dict(comps.denoiser)}
    meta = {"transformer": comps.denoiser.peft_config["default"].to_dict()}
    written = family.save_lora(comps, layers, meta, out)
    written += family.extra_lora_outputs(out, written)
    assert written == [WEIGHTS_NAME, COMFY_NAME]
    return Run(family, comps, latents, cond, out, before, after)


@pytest.fixture(scope="module")
def flux1_run(flux1_dir, images, tmp_path_factory) -> Run:
    return train_lora(TinyFlux1, flux1_dir, images, tmp_path_factory.mktemp("flux1-out"))


@pytest.fixture(scope="module")
def klein_run(klein_dir, images, tmp_path_factory) -> Run:
    return train_lora(TinyKlein, klein_dir, images, tmp_path_factory.mktemp("klein-out"))


def pipeline(family_cls, model_dir: Path):
    from diffusers import Flux2KleinPipeline, FluxPipeline

    pipe = (FluxPipeline if family_cls is Flux1 else Flux2KleinPipeline).from_pretrained(str(model_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_of(pipe) -> torch.Tensor:
    out = pipe(prompt=PROMPT, height=RES, width=RES, num_inference_steps=2, max_sequence_length=64,
               generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    return out.images[0]


def lora_deltas(pipe) -> dict[str, torch.Tensor]:
    """Each LoRA'd linear's weight change (scaling x B @ A) in a pipeline's transformer, by module name."""
    from peft.tuners.lora import LoraLayer

    return {
        name: m.scaling["default_0"] * m.lora_B["default_0"].weight @ m.lora_A["default_0"].weight
        for name, m in pipe.transformer.named_modules()
        if isinstance(m, LoraLayer) and "default_0" in m.lora_A
    }


# ---------------------------------------------------------------------------------------------------- detection
def test_detection_from_model_index_picks_the_family(flux1_dir, klein_dir, tmp_path):
    from tests.tiny_models import build_tiny_sd
    from training.families import family_for

    assert family_for(model_info(flux1_dir).index) is Flux1
    assert family_for(model_info(klein_dir).index) is Flux2Klein
    assert isinstance(model_info(flux1_dir).family, Flux1) and isinstance(model_info(klein_dir).family, Flux2Klein)
    sd_index = json.loads((build_tiny_sd(tmp_path / "sd") / "model_index.json").read_text())
    assert family_for(sd_index) not in (Flux1, Flux2Klein)
    with pytest.raises(Exception, match="FluxPipeline.*|.*Flux2KleinPipeline"):
        family_for({"_class_name": "QwenImageEditPipeline"})


def test_allow_lists_and_problems(flux1_dir, klein_dir):
    info = model_info(flux1_dir)
    assert Flux1.index_problem("m", info.index) is None
    assert Flux1.text_encoder_names(info.index) == ["text_encoder", "text_encoder_2"]
    assert Flux1.tokenizer_names(info.index) == ["tokenizer", "tokenizer_2"]
    broken = {k: v for k, v in info.index.items() if k != "text_encoder_2"}
    assert "text_encoder_2" in Flux1.index_problem("m", broken).message
    fam = Flux2Klein(model_info(klein_dir))
    with pytest.raises(KeyError, match="not an allowed class"):
        fam.component_class("text_encoder", "T5EncoderModel")  # a class of another family's slot is refused
    assert fam.component_class("text_encoder", "Qwen3ForCausalLM").__name__ == "Qwen3ForCausalLM"
    entry = Flux1.catalog_entry()
    assert entry["defaults"]["hardware"] == "l4x1" and entry["defaults"]["rank"] == 16
    assert entry["defaults"]["learning_rate"] == 1e-4 and entry["defaults"]["resolution"] == 512


# ---------------------------------------------------------------------------------------------------- the step
def test_sigma_shift_follows_the_scheduler_config():
    from diffusers import FlowMatchEulerDiscreteScheduler

    static = FlowMatchEulerDiscreteScheduler(shift=3.0)  # its training sigmas are the shifted grid
    grid = static.timesteps / 1000
    unshifted = torch.linspace(1.0, 1 / 1000, 1000)
    assert torch.allclose(shifted_sigmas(unshifted, static.config, 4096), grid, atol=1e-5)
    dynamic = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    u = torch.tensor([0.2, 0.5, 0.8])
    for seq_len, mu in ((256, 0.5), (4096, 1.15), (1024, 0.5 + 0.65 * 768 / 3840)):
        want = torch.tensor([dynamic.time_shift(mu, 1.0, x) for x in u.tolist()], dtype=torch.float32)
        assert torch.allclose(shifted_sigmas(u, dynamic.config, seq_len), want, atol=1e-6)
    assert (shifted_sigmas(u, dynamic.config, 4096) > shifted_sigmas(u, dynamic.config, 256)).all()  # hi-res: noisier


def test_time_draw_comes_from_the_sample_generator(flux1_dir):
    from training.utils.batches import sample_generator

    fam = Flux1(model_info(flux1_dir))
    draws = [fam.draw_time(sample_generator(0, i), None, None) for i in range(200)]
    assert draws == [fam.draw_time(sample_generator(0, i), None, None) for i in range(200)]  # exact resume
    assert all(0.0 < d < 1.0 for d in draws) and len(set(draws)) == 200
    mid = sum(0.25 < d < 0.75 for d in draws) / len(draws)
    assert 0.5 < mid < 0.8  # logit-normal(0, 1): about 63% of the mass in the middle half (uniform: 50%)


def test_noisy_input_and_target_are_flow_matching(klein_dir, flux1_dir):
    from diffusers import Flux2KleinPipeline

    for fam_cls, folder in ((Flux1, flux1_dir), (Flux2Klein, klein_dir)):
        fam = fam_cls(model_info(folder))
        comps = fam.load(str(folder), {}, parts=("vae", "scheduler"), denoiser_dtype=torch.float32,
                         text_dtype=torch.float32, weight_dtype=torch.float32)  # fmt: skip
        c = fam.info.vae_config["latent_channels"]
        x, noise = torch.randn(2, c, 8, 8), torch.randn(2, c, 8, 8)
        t = torch.tensor([0.0, 1.0])
        noisy, target = fam.noisy_and_target(comps, x, noise, t)
        model_x = fam.to_model_space(comps, x)
        model_noise = fam.noise_to_model_space(comps, noise)
        assert torch.allclose(noisy[0], model_x[0], atol=1e-5) and torch.allclose(noisy[1], model_noise[1], atol=1e-5)
        assert torch.allclose(target, model_noise - model_x, atol=1e-6)
    # klein: patchified 2x2 into 128 channels and normalised by the VAE's batch-norm statistics
    vae = Flux2KleinPipeline.from_pretrained(str(klein_dir)).vae
    patched = Flux2KleinPipeline._patchify_latents(x)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    assert model_x.shape == (2, 128, 4, 4)
    assert torch.allclose(model_x, (patched - vae.bn.running_mean.view(1, -1, 1, 1)) / std, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- LoRA runs
@pytest.mark.parametrize("run_name", ["flux1_run", "klein_run"])
def test_lora_training_lowers_the_loss(run_name, request):
    run = request.getfixturevalue(run_name)
    assert run.eval_after < 0.95 * run.eval_before, (run.eval_before, run.eval_after)


@pytest.mark.parametrize(
    "run_name,family_cls,model", [("flux1_run", Flux1, "flux1_dir"), ("klein_run", Flux2Klein, "klein_dir")]
)
def test_saved_lora_loads_with_the_pipeline_and_changes_its_output(run_name, family_cls, model, request):
    from peft.utils import get_peft_model_state_dict

    run, model_dir = request.getfixturevalue(run_name), request.getfixturevalue(model)
    saved = load_file(str(run.out / WEIGHTS_NAME))
    pipe = pipeline(family_cls, model_dir)
    base_image = image_of(pipe)
    pipe.load_lora_weights(str(run.out))
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="default_0")
    assert {f"transformer.{k}" for k in loaded} == set(saved)  # nothing missing, nothing unexpected
    assert all(torch.equal(loaded[k[len("transformer.") :]], v) for k, v in saved.items())
    assert (image_of(pipe) - base_image).abs().max() > 1e-3
    # the family's own sampling pipeline over the live trained modules, from cached conditioning
    img = run.family.generate(run.family.build_pipeline(run.comps), run.comps, [PROMPT], RES, Params(),
                              torch.Generator().manual_seed(0), CPU(), conds=[TextCond([], run.cond)])  # fmt: skip
    assert img[0].size == (RES, RES)


def test_flux1_comfy_copy_is_kohya_over_bfl_names_and_the_same_lora(flux1_run, flux1_dir):
    """Every key is ``lora_unet_<BFL module>`` with down/up/alpha and the BFL module's shapes; read back, the weight
    changes equal the diffusers file's (alpha 8 != rank 4: the strength is kept). diffusers' kohya converter reads
    the double blocks; it hard-codes FLUX.1's full widths (3072/12288) for the single blocks' fused linear1, so for
    the tiny model those are split back here by the BFL layout (q, k, v, mlp rows)."""
    from diffusers import FluxPipeline

    comfy = load_file(str(flux1_run.out / COMFY_NAME))
    pipe = pipeline(Flux1, flux1_dir)
    pipe.load_lora_weights(str(flux1_run.out))
    want = lora_deltas(pipe)
    tf = pipe.transformer
    inner, mlp = tf.inner_dim, tf.single_transformer_blocks[0].proj_mlp.out_features
    bfl_shapes = {  # (out, in) of the original FLUX.1 modules, from the diffusers modules they were split into
        "double_blocks_0_img_attn_qkv": (3 * inner, inner), "double_blocks_0_img_attn_proj": (inner, inner),
        "double_blocks_0_txt_attn_qkv": (3 * inner, inner), "double_blocks_0_txt_attn_proj": (inner, inner),
        "double_blocks_0_img_mlp_0": (4 * inner, inner), "double_blocks_0_img_mlp_2": (inner, 4 * inner),
        "double_blocks_0_txt_mlp_0": (4 * inner, inner), "double_blocks_0_txt_mlp_2": (inner, 4 * inner),
        "single_blocks_0_linear1": (3 * inner + mlp, inner),
    }  # fmt: skip
    modules = {k.rsplit(".", 2)[0] if k.endswith("weight") else k.rsplit(".", 1)[0] for k in comfy}
    assert modules == {f"lora_unet_{m}" for m in bfl_shapes}
    for m, (rows, cols) in bfl_shapes.items():
        down, up = comfy[f"lora_unet_{m}.lora_down.weight"], comfy[f"lora_unet_{m}.lora_up.weight"]
        assert up.shape[0] == rows and down.shape[1] == cols and up.shape[1] == down.shape[0]
        assert comfy[f"lora_unet_{m}.alpha"].item() == pytest.approx(2.0 * down.shape[0])  # alpha / rank = 8 / 4

    double = {k: v for k, v in comfy.items() if not k.startswith("lora_unet_single_blocks_")}
    converted = FluxPipeline.lora_state_dict(double)
    sd = converted[0] if isinstance(converted, tuple) else converted
    assert not any(k.startswith("text_encoder") for k in sd)
    got = {
        k[len("transformer.") : -len(".lora_A.weight")]: sd[k[: -len("lora_A.weight")] + "lora_B.weight"] @ v
        for k, v in sd.items()
        if k.endswith(".lora_A.weight")
    }  # fmt: skip  (diffusers loads it at alpha = rank)
    assert set(got) == {m for m in want if m.startswith("transformer_blocks.")}
    for m, delta in got.items():
        assert torch.allclose(delta, want[m], atol=1e-6), m

    # single block: linear1 = [q; k; v; mlp] rows
    down, up = (
        comfy["lora_unet_single_blocks_0_linear1.lora_down.weight"],
        comfy["lora_unet_single_blocks_0_linear1.lora_up.weight"],
    )
    delta = comfy["lora_unet_single_blocks_0_linear1.alpha"].item() / down.shape[0] * up @ down
    q, k, v, rest = torch.split(delta, [inner, inner, inner, mlp])
    for name, part in zip("qkv", (q, k, v), strict=True):
        assert torch.allclose(part, want[f"single_transformer_blocks.0.attn.to_{name}"], atol=1e-6)
    assert torch.count_nonzero(rest) == 0  # proj_mlp was not trained


def test_klein_comfy_copy_loads_through_diffusers_and_gives_the_same_weights(klein_run, klein_dir):
    """``diffusion_model.<BFL module>.lora_A/B`` (no alpha): diffusers' Flux.2 loader reads it; the weight changes
    and the image equal those of the diffusers-format file (alpha 8 != rank 4 baked into lora_B)."""
    comfy = load_file(str(klein_run.out / COMFY_NAME))
    assert all(k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in comfy)
    names = {k[len("diffusion_model.") :].rsplit(".", 2)[0] for k in comfy}
    assert names == {"double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "single_blocks.0.linear1",
                     "single_blocks.0.linear2"}  # fmt: skip
    ref = pipeline(Flux2Klein, klein_dir)
    ref.load_lora_weights(str(klein_run.out))
    other = pipeline(Flux2Klein, klein_dir)
    other.load_lora_weights(str(klein_run.out), weight_name=COMFY_NAME)
    want, got = lora_deltas(ref), lora_deltas(other)
    assert set(got) == set(want)
    for m in want:
        assert torch.allclose(got[m], want[m], atol=1e-6), m
    assert torch.allclose(image_of(other), image_of(ref), atol=1e-5)


# ---------------------------------------------------------------------------------------------------- cards
def test_card_licences(flux1_dir, klein_dir):
    dev = Flux1(model_info(flux1_dir))
    assert dev.card_license()["license_name"] == "flux-1-dev-non-commercial-license"
    info = dev.card_info(None)
    assert info.license == "other" and info.license_name == "flux-1-dev-non-commercial-license"
    assert info.license_link.startswith("https://huggingface.co/black-forest-labs/FLUX.1-dev/")
    assert info.pipeline_class == "FluxPipeline" and COMFY_NAME in info.weight_notes
    schnell_info = model_info(flux1_dir)
    schnell_info.denoiser_config = {**schnell_info.denoiser_config, "guidance_embeds": False}
    schnell = Flux1(schnell_info)
    assert schnell.card_license() == {"license": "apache-2.0"} and schnell.sampling_defaults()["guidance_scale"] == 0
    klein = Flux2Klein(model_info(klein_dir))
    assert klein.card_license() == {"license": "apache-2.0"} and klein.sampling_defaults()["guidance_scale"] == 4.0
    big = model_info(klein_dir)
    big.denoiser_config = {**big.denoiser_config, "joint_attention_dim": 12288}
    assert Flux2Klein(big).card_info(None).license_name == "flux-non-commercial-license"
    assert klein.card_info(None).prompt_keyword and klein.card_info(None).license == "apache-2.0"


# ---------------------------------------------------------------------------------------------------- the trainer
def run_trainer(workdir: Path, model_dir: Path, image_dir: Path, steps: int, **params) -> tuple[int, list[dict]]:
    """``python -m training`` in-process (``training.cli.main``) on a tiny Flux model; (exit code, events)."""
    from training.cli import main

    workdir.mkdir(parents=True, exist_ok=True)
    task = {"task_id": "t1", "base_model": str(model_dir), "instance_prompt": PROMPT, "images": str(image_dir),
            "output": None, "checkpoint": None,
            "params": {"resolution": RES, "steps": steps, "rank": 4, "alpha": 8, "learning_rate": 1e-3,
                       "checkpoint_every": 100, "sample_inference_steps": 2, **params}}  # fmt: skip
    (workdir.parent / f"{workdir.name}.json").write_text(json.dumps(task))
    events = workdir / "events.jsonl"
    events.unlink(missing_ok=True)
    rc = main(["--task", str(workdir.parent / f"{workdir.name}.json"), "--workdir", str(workdir),
               "--progress", str(events), "--progress-bar", "off"])  # fmt: skip
    return rc, [json.loads(line) for line in events.read_text().splitlines()]


@pytest.mark.parametrize("model,license_field", [("flux1_dir", "flux-1-dev-non-commercial-license"),
                                                 ("klein_dir", "license: apache-2.0")])  # fmt: skip
def test_trainer_trains_the_family_end_to_end_and_resumes_exactly(model, license_field, images, tmp_path, request):
    """The real DreamBooth loop: 6 steps straight, and 3 steps then extended to 6 from the checkpoint, give the
    same LoRA bit for bit (per-sample generators, restored optimizer); outputs, sample and card are there."""
    model_dir = request.getfixturevalue(model)
    rc, events = run_trainer(tmp_path / "straight", model_dir, images, 6, validation_prompts=[PROMPT + " on a beach"])
    assert rc == 0, events[-3:]
    out = tmp_path / "straight" / "output"
    assert {WEIGHTS_NAME, COMFY_NAME, "README.md"} <= {p.name for p in out.iterdir()}
    assert [e["step"] for e in events if e["event"] == "sample"] == [6]
    assert license_field in (out / "README.md").read_text()
    assert run_trainer(tmp_path / "resumed", model_dir, images, 3)[0] == 0
    rc, events = run_trainer(tmp_path / "resumed", model_dir, images, 6)
    assert rc == 0 and [e["step"] for e in events if e["event"] == "resumed"] == [3]
    # the last step's LoRA of each: the straight run's one scored point (step 6), the resumed run's last step (no
    # validation prompt and no scoring model: nothing sampled, the last checkpoint is the model)
    straight = load_file(str(out / WEIGHTS_NAME))
    resumed = load_file(str(tmp_path / "resumed" / "output" / WEIGHTS_NAME))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    ckpt = tmp_path / "resumed" / "checkpoints"
    at3, at6 = (load_file(str(ckpt / f"step-0000000{n}" / "trainable.safetensors")) for n in (3, 6))
    assert at3.keys() == at6.keys() and not all(torch.equal(at3[k], at6[k]) for k in at3)  # steps 4-6 trained


def test_flux1_comfy_layout_at_full_size_reads_back_through_diffusers_kohya_converter():
    """At FLUX.1's real widths (3072 / 12288, where diffusers' kohya converter also splits the single blocks'
    fused linear1), a LoRA on one double and one single block (random weights, no model) written by
    ``fuse_to_bfl`` comes back through ``FluxPipeline.lora_state_dict`` with the same updates (probed with a
    random vector), the untrained proj_mlp part as zeros."""
    from diffusers import FluxPipeline

    from training.export.bfl import flux1_bfl_groups, fuse_to_bfl

    g = torch.Generator().manual_seed(0)
    inner, mlp, rank = 3072, 12288, 4
    shapes = {f"transformer_blocks.0.attn.{m}": (inner, inner) for m in
              ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}  # fmt: skip
    shapes.update({"transformer_blocks.0.ff.net.0.proj": (inner, mlp), "transformer_blocks.0.ff.net.2": (mlp, inner)})
    shapes.update({f"single_transformer_blocks.0.attn.to_{x}": (inner, inner) for x in "qkv"})
    sd = {}
    for m, (n_in, n_out) in shapes.items():
        sd[f"transformer.{m}.lora_A.weight"] = torch.randn(rank, n_in, generator=g)
        sd[f"transformer.{m}.lora_B.weight"] = torch.randn(n_out, rank, generator=g)
    kohya = fuse_to_bfl(sd, lambda m: 2.0, flux1_bfl_groups(1, 1, inner), kohya=True)  # alpha 8 / rank 4
    back = FluxPipeline.lora_state_dict(kohya)
    back = back[0] if isinstance(back, tuple) else back
    for m, (n_in, _) in shapes.items():
        v = torch.randn(n_in, generator=g)
        want = 2.0 * sd[f"transformer.{m}.lora_B.weight"] @ (sd[f"transformer.{m}.lora_A.weight"] @ v)
        got = back[f"transformer.{m}.lora_B.weight"] @ (back[f"transformer.{m}.lora_A.weight"] @ v)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-3), m
        assert back[f"transformer.{m}.lora_A.weight"].shape[0] == rank  # split back to the rank it was trained at
    assert torch.count_nonzero(back["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"]) == 0
