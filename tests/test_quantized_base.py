"""The quantized base model for LoRA (QLoRA): the memory plan's choice, the refusals, and the trainer's hand-off.

Why the quantized forward/backward is not run here: bitsandbytes 0.50's CPU backend does run an NF4
``Linear4bit`` forward and backward on the CPU, but diffusers 0.42's bitsandbytes quantizer refuses to load any
model with a ``BitsAndBytesConfig`` without a CUDA/XPU device (``validate_environment``: "No GPU found. A GPU is
needed for quantization."), and torchao (fp8) is not installed here. So on the CPU this file tests the pure
choice (``plan_quantization``) for the sizes and flavors that matter, every refusal path (spec, control-plane
validation, trainer), the configs built with diffusers' real classes, and that the trainer hands the config to
the family's ``load`` before any weight is read: a toy family registered from this module (a ``Flux1`` subclass
for a renamed tiny pipeline, the way a user adds a family) records what its ``load`` receives and then loads
unquantized, since diffusers cannot quantize here. The quantized training itself is the GPU benchmark's.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from contract.events import ExitCode
from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
from tests.tiny_models import make_images
from training.exitcodes import BadInputError
from training.families import _REGISTRY, register_family
from training.families.base import ModelInfo
from training.families.flux import WEIGHTS_NAME, Flux1
from training.precision import (
    QUANT_BYTES,
    lora_peak_gib,
    plan_memory,
    plan_quantization,
    quantization_config,
)
from training.spec import TrainSpec

FLUX1 = 11_901_408_320  # FLUX.1 [dev] transformer
KLEIN_4B, KLEIN_9B = 3_900_000_000, 9_100_000_000
SIZES = {"flux1": FLUX1, "klein4b": KLEIN_4B, "klein9b": KLEIN_9B, "zimage": 6_154_908_736,
         "qwen-image": 20_430_401_088}  # fmt: skip
#: GiB torch reports for each flavor's GPU (scheduler.memory_fit: 15/16 GiB per nominal GB)
T4, L4, A10G, L40S, A100 = 15.0, 22.5, 22.5, 45.0, 75.0
ADA, AMPERE_A10G, TURING, AMPERE_A100 = (8, 9), (8, 6), (7, 5), (8, 0)


def choose(params: int, budget: float | None, cc=ADA, *, fp8=False, res=512, requested="auto", lora=True,
           samples_per_step=1, **kw):  # fmt: skip
    return plan_quantization(
        requested, lora=lora, denoiser_params=params, budget_gib=budget, compute_capability=cc, fp8_available=fp8,
        weight_bytes=2, resolution=res, samples_per_step=samples_per_step, **kw,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- the plan (pure)
@pytest.mark.parametrize(
    "what,params,budget,cc,fp8,expected",
    [
        ("FLUX.1 on a T4: only NF4 fits", FLUX1, T4, TURING, False, "nf4"),
        ("FLUX.1 on an L4 without torchao: bitsandbytes 8-bit", FLUX1, L4, ADA, False, "int8"),
        ("FLUX.1 on an L4 with torchao: fp8", FLUX1, L4, ADA, True, "fp8"),
        ("FLUX.1 on an A10G: 8-bit, never fp8 (cc 8.6)", FLUX1, A10G, AMPERE_A10G, True, "int8"),
        ("FLUX.1 on an L40S: bf16, unquantized", FLUX1, L40S, ADA, True, "none"),
        ("klein 4B on an L4: bf16", KLEIN_4B, L4, ADA, True, "none"),
        ("klein 9B on an L4: needs an 8-bit base", KLEIN_9B, L4, ADA, False, "int8"),
        ("SD 1.5 on a T4: unquantized", 860_000_000, T4, TURING, False, "none"),
        ("no budget (CPU): unquantized", FLUX1, None, None, False, "none"),
    ],
)  # fmt: skip
def test_auto_choice_follows_the_gpu_memory_and_the_model_size(what, params, budget, cc, fp8, expected):
    choice = choose(params, budget, cc, fp8=fp8)
    assert choice.kind == expected, (what, choice)
    assert choice.reason
    if budget is not None:  # the chosen estimate fits what the budget leaves; the lighter ones before it did not
        from training.memory import usable_allocated_gib

        order = ["none", "fp8" if fp8 and cc >= ADA else "int8", "nf4"]
        assert choice.estimate_gib <= usable_allocated_gib(budget)
        for lighter in order[: order.index(expected)]:
            assert lora_peak_gib(params, lighter, weight_bytes=2, megapixels=0.262, samples_per_step=1) > (
                usable_allocated_gib(budget)
            )


def test_higher_resolution_and_no_checkpointing_never_choose_a_heavier_base():
    rank = {"none": 0, "int8": 1, "fp8": 1, "nf4": 2}
    at512, at1024 = choose(FLUX1, L4, res=512), choose(FLUX1, L4, res=1024)
    assert rank[at1024.kind] >= rank[at512.kind]
    same_kind = [choose(FLUX1, L4, res=r, requested="int8").estimate_gib for r in (512, 768, 1024)]
    assert same_kind == sorted(same_kind) and same_kind[0] < same_kind[-1]
    assert at1024.kind == "nf4"  # 8-bit FLUX.1 at 1024 px does not fit an L4's 18 GiB
    no_gc = choose(KLEIN_9B, L40S, gradient_checkpointing=False)
    assert no_gc.estimate_gib > choose(KLEIN_9B, L40S).estimate_gib


def test_when_nothing_fits_nf4_is_chosen_and_the_reason_says_so():
    choice = choose(FLUX1, 8.0)
    assert choice.kind == "nf4" and "more than" in choice.reason


def test_explicit_choice_is_kept_and_a_full_fine_tune_stays_unquantized_on_auto():
    assert choose(FLUX1, L40S, requested="nf4").kind == "nf4"  # would fit unquantized: the task decides
    assert choose(FLUX1, T4, requested="none").kind == "none"
    assert choose(FLUX1, T4, lora=False).kind == "none"


def test_memory_plan_records_the_choice_and_counts_quantized_weights():
    untabled = 5_000_000_000  # a denoiser size the memory table has no shape for: the formula counts the weights
    args = dict(device=torch.device("cpu"), frozen_params=untabled, trainable_params=10_000_000, unet_params=untabled,
                latent_size=64, samples_per_step=1, weight_bytes=2, gradient_checkpointing=True,
                use_8bit_adam=False, budget_gib=L4)  # fmt: skip
    plain = plan_memory(**args)
    nf4 = plan_memory(**args, quantized_base="nf4", quantization_reason="why")
    assert (plain.quantized_base, nf4.quantized_base, nf4.quantization_reason) == ("none", "nf4", "why")
    assert plain.source == nf4.source == "formula"
    saved = untabled * (2 - QUANT_BYTES["nf4"]) / 2**30
    assert nf4.estimate_gib == pytest.approx(plain.estimate_gib - saved, rel=0.02)


@pytest.mark.parametrize(
    "shape,budget,cc,res,expected",
    [
        ("flux1", T4, TURING, 512, "nf4"),
        ("flux1", L4, ADA, 512, "int8"),
        ("flux1", L40S, ADA, 512, "none"),
        ("klein4b", L4, ADA, 512, "none"),
        ("klein9b", L4, ADA, 512, "none"),  # just: 18.1 of 18.3 GiB with checkpointing
        ("klein9b", L4, ADA, 1024, "int8"),
        ("zimage", L40S, ADA, 1024, "none"),
        ("zimage", L4, ADA, 1024, "none"),  # 14.1 of 18.3 GiB with checkpointing
        ("zimage", T4, TURING, 1024, "int8"),  # 10.2 of 12.1 GiB (the caching phase: the Qwen3-4B encoder)
        ("qwen-image", A100, AMPERE_A100, 1024, "none"),  # 41.9 of 62.1 GiB
        ("qwen-image", L40S, ADA, 1024, "int8"),  # bf16 needs 41.9 of 37.1 GiB; int8 23.2
        ("qwen-image", L4, ADA, 512, "nf4"),  # 16.6 of 18.3 GiB (the caching phase: the Qwen2.5-VL encoder)
    ],
)  # fmt: skip
def test_with_a_tabled_shape_the_choice_and_its_estimate_come_from_the_memory_table(shape, budget, cc, res, expected):
    """The fake-CUDA estimator's rows (training/memory_table.json) decide where the table has the configuration;
    the same answers as the trainers' published per-flavor figures above, from the trainer's own code."""
    from training.memory import lookup, usable_allocated_gib

    choice = choose(SIZES[shape], budget, cc, res=res, model_shape=shape)
    assert choice.kind == expected, choice
    tabled = lookup(shape, "dreambooth-lora", res, gradient_checkpointing=True, precision="bf16",
                    quantized_base=None if expected == "none" else expected)  # fmt: skip
    assert choice.estimate_gib == pytest.approx(tabled) and tabled <= usable_allocated_gib(budget)
    # the batch of two is not tabled: the batch-1 row is scaled (activations by batch), never the rough formula
    batch2 = choose(SIZES[shape], budget, cc, res=res, model_shape=shape, samples_per_step=2)
    assert batch2.estimate_gib >= choice.estimate_gib


# ---------------------------------------------------------------------------------------------- refusals
def test_refusals_of_the_plan():
    with pytest.raises(BadInputError, match="full fine-tune"):
        choose(FLUX1, L4, requested="nf4", lora=False)
    with pytest.raises(BadInputError, match="8.9.*compute capability 8.6"):
        choose(FLUX1, A10G, AMPERE_A10G, fp8=True, requested="fp8")
    with pytest.raises(BadInputError, match="no GPU"):
        choose(FLUX1, None, None, fp8=True, requested="fp8")
    with pytest.raises(BadInputError, match="torchao"):
        choose(FLUX1, L4, ADA, fp8=False, requested="fp8")
    with pytest.raises(BadInputError, match="quantize_base"):
        choose(FLUX1, L4, requested="q4")
    assert choose(FLUX1, L4, ADA, fp8=True, requested="fp8").kind == "fp8"


def _task(recipe="dreambooth-lora", **params):
    return {"task_id": "t", "base_model": "/m", "instance_prompt": "sks", "images": "/i", "recipe": recipe,
            "params": params}  # fmt: skip


def test_the_task_param_is_validated_in_the_spec():
    assert TrainSpec.from_dict(_task()).params.quantize_base == "auto"
    assert TrainSpec.from_dict(_task(quantize_base=None)).params.quantize_base == "auto"
    assert TrainSpec.from_dict(_task(quantize_base="nf4")).params.quantize_base == "nf4"
    assert TrainSpec.from_dict(_task("dreambooth-full", quantize_base="none")).params.quantize_base == "none"
    for bad, match in ((4, "string"), ("fp4", "one of auto, none, nf4, int8, fp8")):
        with pytest.raises(BadInputError, match=match):
            TrainSpec.from_dict(_task(quantize_base=bad))
    with pytest.raises(BadInputError, match="cannot be quantized"):
        TrainSpec.from_dict(_task("dreambooth-full", quantize_base="int8"))


def test_the_control_plane_validation_agrees_with_the_spec(tmp_path):
    from scheduler.validation import validate_submission

    images = make_images(tmp_path, 3, size=96)

    def problems(recipe, quantize_base):
        found = validate_submission(instance_prompt="sks", images=images, hardware="l4x1", output_repo="u/m",
                                    recipe=recipe, quantize_base=quantize_base)  # fmt: skip
        return [p for p in found if p.startswith("Quantized base")]

    assert problems("dreambooth-lora", "nf4") == [] and problems("dreambooth-full", "none") == []
    assert "full fine-tune" in problems("dreambooth-full", "nf4")[0]
    assert "auto, none, nf4, int8, fp8" in problems("dreambooth-lora", "fp4")[0]
    for recipe, q in (("dreambooth-lora", "fp4"), ("dreambooth-full", "nf4"), ("dreambooth-lora", "int8")):
        spec_ok = True
        try:
            TrainSpec.from_dict(_task(recipe, quantize_base=q))
        except BadInputError:
            spec_ok = False
        assert spec_ok == (problems(recipe, q) == [])


# ---------------------------------------------------------------------------------------------- configs and sizes
def test_quantization_configs_are_diffusers_own():
    from diffusers import BitsAndBytesConfig

    nf4 = quantization_config("nf4", torch.bfloat16)
    assert isinstance(nf4, BitsAndBytesConfig) and nf4.load_in_4bit and not nf4.load_in_8bit
    assert (nf4.bnb_4bit_quant_type, nf4.bnb_4bit_compute_dtype, nf4.bnb_4bit_use_double_quant) == (
        "nf4", torch.bfloat16, True)  # fmt: skip
    int8 = quantization_config("int8", torch.bfloat16)
    assert isinstance(int8, BitsAndBytesConfig) and int8.load_in_8bit and not int8.load_in_4bit
    assert quantization_config("none", torch.bfloat16) is None


def test_denoiser_size_comes_from_the_config_when_the_family_does_not_fix_it(tmp_path):
    from diffusers import Flux2Transformer2DModel

    from training.utils.runtime import denoiser_param_count

    folder = build_tiny_flux2_klein(tmp_path / "klein")
    read = lambda name: json.loads((folder / name).read_text())  # noqa: E731
    info = ModelInfo(str(folder), read("model_index.json"), read("transformer/config.json"), read("vae/config.json"))
    assert info.family.denoiser_params == 0
    real = Flux2Transformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    assert denoiser_param_count(info) == sum(t.numel() for t in real.parameters())
    flux_info = ModelInfo("x", {"_class_name": "FluxPipeline"}, {}, {})
    assert denoiser_param_count(flux_info) == Flux1.denoiser_params


# ---------------------------------------------------------------------------------------------- the trainer's hand-off
CAPTURE_PIPELINE = "QuantCaptureFluxPipeline"
#: (parts, quantization_config) of every ``load`` call of the toy family
LOAD_CALLS: list[tuple[tuple[str, ...] | None, object]] = []


@register_family("flux1-quant-capture")
class CapturingFlux1(Flux1):
    """FLUX.1 for a tiny pipeline renamed ``QuantCaptureFluxPipeline``: records what the trainer passes to
    ``load``, then loads without quantization (diffusers' bitsandbytes quantizer needs a GPU)."""

    label = "FLUX.1 (capturing)"
    pipelines = frozenset({CAPTURE_PIPELINE})
    max_sequence_length = 64

    def load(self, src, variants, *, quantization_config=None, parts=None, **kwargs):
        LOAD_CALLS.append((tuple(parts) if parts is not None else None, quantization_config))
        return super().load(src, variants, parts=parts, quantization_config=None, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _unregister_toy_family():
    yield
    _REGISTRY.pop("flux1-quant-capture", None)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    return build_tiny_flux1(tmp_path_factory.mktemp("tiny-flux1") / "model")


@pytest.fixture(scope="module")
def capture_model(plain_model, tmp_path_factory) -> Path:
    """The tiny FLUX.1 pipeline with its ``_class_name`` renamed for the toy family."""
    src = plain_model
    dst = tmp_path_factory.mktemp("capture") / "model"
    shutil.copytree(src, dst)
    index = json.loads((dst / "model_index.json").read_text())
    (dst / "model_index.json").write_text(json.dumps({**index, "_class_name": CAPTURE_PIPELINE}))
    return dst


def run_trainer(tmp_path: Path, model: Path, **params) -> tuple[int, list[dict]]:
    from training.cli import main

    tmp_path.mkdir(parents=True, exist_ok=True)
    images = tmp_path / "images"
    images.mkdir()
    make_images(images, 2, size=48)
    task = _task(**{"resolution": 32, "steps": 3, "rank": 4, "learning_rate": 1e-3, "checkpoint_every": 0,
                    "sample_inference_steps": 2, **params})  # fmt: skip
    task.update(base_model=str(model), images=str(images), instance_prompt="a photo of sks dog")
    (tmp_path / "task.json").write_text(json.dumps(task))
    events = tmp_path / "events.jsonl"
    rc = main(["--task", str(tmp_path / "task.json"), "--workdir", str(tmp_path / "work"),
               "--progress", str(events), "--progress-bar", "off"])  # fmt: skip
    return rc, [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []


def test_trainer_passes_the_nf4_config_to_the_family_load_and_records_it(capture_model, plain_model, tmp_path, caplog):
    from diffusers import BitsAndBytesConfig, FluxPipeline

    LOAD_CALLS.clear()
    with caplog.at_level(logging.INFO, logger="training.train"):
        rc, events = run_trainer(tmp_path, capture_model, quantize_base="nf4")
    assert rc == 0, events[-3:]
    denoiser_loads = [cfg for parts, cfg in LOAD_CALLS if parts is None or "denoiser" in parts]
    assert len(denoiser_loads) == 1  # staged: text side first, the transformer after caching
    cfg = denoiser_loads[0]
    assert isinstance(cfg, BitsAndBytesConfig) and cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4"
    assert cfg.bnb_4bit_compute_dtype == torch.float32  # the CPU run's weight dtype
    assert any("base model weights: nf4" in r.getMessage() for r in caplog.records)
    out = tmp_path / "work" / "output"
    assert "quantized to nf4" in (out / "README.md").read_text()
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(x)) for x in losses)
    pipe = FluxPipeline.from_pretrained(str(plain_model))
    pipe.load_lora_weights(str(out), weight_name=WEIGHTS_NAME)  # into the unquantized pipeline
    assert any("lora" in n for n, _ in pipe.transformer.named_parameters())


def test_trainer_on_auto_without_a_gpu_loads_unquantized_and_refuses_fp8_before_loading(capture_model, tmp_path):
    LOAD_CALLS.clear()
    rc, events = run_trainer(tmp_path / "fp8", capture_model, quantize_base="fp8")
    assert rc == ExitCode.BAD_INPUT and LOAD_CALLS == []  # refused before any weight was read
    assert any("compute capability >= 8.9" in json.dumps(e) for e in events)
    # an 8 GiB budget would take FLUX.1 to nf4 on a GPU; without one diffusers cannot quantize: auto stays "none"
    rc, events = run_trainer(tmp_path / "auto", capture_model, steps=1, memory_budget_gib=8.0)
    assert rc == 0, events[-3:]
    assert LOAD_CALLS and all(cfg is None for _, cfg in LOAD_CALLS)
    assert "not quantized" in (tmp_path / "auto" / "work" / "output" / "README.md").read_text()
