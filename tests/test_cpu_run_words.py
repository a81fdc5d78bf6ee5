"""A run on the CPU speaks of the CPU and its RAM, never of a GPU; a model card of a model that is not uploaded
says how to load it from its output folder (there is no repo to name).

The memory-plan message is checked on the trainer's own event as a CPU run writes it (the offline run in
``tests/test_offline_cache.py`` checks a real one too); the card is written by ``training.card`` from a real tiny
pipeline's components, without training.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from contract.events import MemoryPlan, parse_event
from scheduler.trainer_process import memory_plan_message


@pytest.mark.parametrize("estimate", [0.004, 2.5])
def test_a_cpu_runs_memory_plan_speaks_of_ram(estimate):
    line = MemoryPlan(estimate_gib=estimate, device="cpu").model_dump(mode="json")
    message = memory_plan_message(parse_event(json.loads(json.dumps(line))))
    assert "GPU" not in message and "RAM" in message and "CPU" in message, message
    assert ("under 0.1 GiB" if estimate < 0.05 else f"about {estimate:.1f} GiB") in message, message


def test_a_gpu_runs_memory_plan_speaks_of_gpu_memory():
    message = memory_plan_message(MemoryPlan(quantized_base="nf4", gradient_checkpointing=True, estimate_gib=9.87,
                                             device="cuda"))  # fmt: skip
    assert message == "Memory plan: NF4 base, gradient checkpointing, about 9.9 GiB of GPU memory"


@pytest.mark.parametrize("recipe", ["dreambooth-lora", "dreambooth-full"])
def test_a_local_model_cards_snippet_loads_from_its_output_folder(tiny_sd, tmp_path, recipe):
    from training.card import write_model_card
    from training.families.base import ModelInfo
    from training.spec import TrainSpec
    from training.utils.results import RunResult

    spec = TrainSpec.from_dict({"task_id": "t", "base_model": str(tiny_sd), "instance_prompt": "a photo of sks dog",
                                "images": str(tmp_path), "recipe": recipe, "output": None})  # fmt: skip
    out = tmp_path / "w" / "output"
    out.mkdir(parents=True)
    index = json.loads((Path(tiny_sd) / "model_index.json").read_text())
    comps = SimpleNamespace(family=ModelInfo(str(tiny_sd), index, {}, {}).family)  # what the card asks of them
    ctx = SimpleNamespace(spec=spec, output_dir=out, script=None)
    result = RunResult(recipe=recipe, steps=2, learning_rate=1e-4, warmup_steps=0, resolution=32,
                       mixed_precision="no")  # fmt: skip
    card = write_model_card(ctx, result, comps).read_text()
    assert "<this repo>" not in card
    call = "load_lora_weights" if recipe == "dreambooth-lora" else "from_pretrained"
    assert f"{call}({json.dumps(str(out.resolve()))})" in card, card
