"""The trainer's diffusers-format LoRA file of each Flux family loads whole with the family's own pipeline.

The trainer (``python -m training``, in-process, 2 steps on the tiny models of ``tests/tiny_flux.py``) writes the
file; ``FluxPipeline`` / ``Flux2KleinPipeline.load_lora_weights`` read it: every tensor of the file lands in the
transformer, none is left over. (Written with diffusers' older ``lora.down`` names, the Flux.2 loader took 4 of 12.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_flux_families import run_trainer
from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
from tests.tiny_models import make_images
from training.families.flux import WEIGHTS_NAME


@pytest.mark.parametrize("family", ["flux1", "flux2-klein"])
def test_the_trainers_lora_file_loads_whole_with_the_familys_pipeline(family, tmp_path):
    from diffusers import Flux2KleinPipeline, FluxPipeline
    from peft.utils import get_peft_model_state_dict

    build, pipeline_cls = {"flux1": (build_tiny_flux1, FluxPipeline),
                           "flux2-klein": (build_tiny_flux2_klein, Flux2KleinPipeline)}[family]  # fmt: skip
    model_dir = build(tmp_path / "model")
    images = tmp_path / "photos"
    make_images(images, 2, size=48)
    rc, events = run_trainer(tmp_path / "run", model_dir, images, 2, validation_prompts=[])
    assert rc == 0, events[-3:]
    out: Path = tmp_path / "run" / "output"
    saved = load_file(str(out / WEIGHTS_NAME))
    assert saved and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in saved), sorted(saved)[:4]

    pipe = pipeline_cls.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    pipe.load_lora_weights(str(out), adapter_name="trained")
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name="trained")
    assert {f"transformer.{k}" for k in loaded} == set(saved)
    assert all(torch.equal(loaded[k[len("transformer.") :]], v) for k, v in saved.items())
