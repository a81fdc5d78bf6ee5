"""Host RAM of the shapes too big to measure here (``scheduler.host_ram.DERIVATIONS``: Qwen-Image), derived from file
sizes and a measured shape, and what the fit check does with it (a bitsandbytes base maps one shard at a time).

The arithmetic runs on records written to a temporary folder; the constants are checked against the real
architectures (meta device: no weights) and Qwen-Image's repo layout; the committed figures decide the form.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.host_ram import (
    DERIVATIONS,
    DERIVED,
    GIB,
    GPU_QUANTIZED,
    MEASURED,
    derived_figure,
    fits_host_ram,
    host_ram_figure,
    host_ram_gib,
)
from scheduler.task import Task
from training.base_check import Probe
from ui.fit_check import check_fit

ROOT = Path(__file__).resolve().parents[1]
QWEN = DERIVATIONS["qwen-image"]
PROBE = Probe("Qwen/Qwen-Image", local=False, files=["model_index.json"],
              index={"_class_name": "QwenImagePipeline",
                     "transformer": ["diffusers", "QwenImageTransformer2DModel"]})  # fmt: skip


def _rec(shape: str, phase: str, peak: float, weights: str = "bf16 files", date: str = "2026-12-07") -> dict:
    return {"benchmark": "host_ram", "model_shape": shape, "recipe": "dreambooth-lora", "phase": phase,
            "peak_rss_gib": peak, "weights": weights, "device": "cpu", "date": date}  # fmt: skip


def _write(folder: Path, recs: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "host_ram-2026-12-07-cpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return folder


def test_a_derived_figure_swaps_the_references_mapped_bytes_for_the_targets(tmp_path):
    zimage = [_rec("zimage", "load", 0.5), _rec("zimage", "cache", 7.5), _rec("zimage", "load_denoiser", 12.0),
              _rec("zimage", "first_step", 0.7), _rec("zimage", "load_denoiser", 30.0, date="2026-11-01")]  # fmt: skip
    folder = _write(tmp_path / "a", zimage)
    text = 7.5 + (QWEN.text_bytes[1] - QWEN.text_bytes[0]) / GIB
    whole = 12.0 + (QWEN.denoiser_bytes[1] - QWEN.denoiser_bytes[0]) / GIB
    shard = 12.0 + (QWEN.largest_shard_bytes - QWEN.denoiser_bytes[0]) / GIB
    figure = host_ram_figure("qwen-image", results_dir=folder)
    assert figure is not None and figure.source == DERIVED and "derived" in figure.basis
    assert figure.gib == pytest.approx(whole, abs=1e-3) and whole > text  # unquantized: the whole transformer mapped
    quantized = host_ram_figure("qwen-image", weights=GPU_QUANTIZED, results_dir=folder)
    assert quantized is not None and shard < text  # one shard at a time: the text side is the peak
    assert quantized.gib == pytest.approx(text, abs=1e-3) and quantized.source == DERIVED
    # without the reference's measurement there is nothing to derive from; a measurement of its own wins
    assert host_ram_figure("qwen-image", results_dir=_write(tmp_path / "b", zimage[:2])) is None
    own = _write(tmp_path / "c", [*zimage, _rec("qwen-image", "load_denoiser", 40.0)])
    assert host_ram_figure("qwen-image", results_dir=own).source == MEASURED
    assert host_ram_gib("qwen-image", results_dir=own) == 40.0
    # a shape without a derivation: its measured figure serves the bitsandbytes path too (an upper bound)
    assert derived_figure("zimage", results_dir=folder) is None
    assert host_ram_gib("zimage", weights=GPU_QUANTIZED, results_dir=folder) == 12.0


def test_the_derivations_bytes_are_the_real_architectures_and_qwen_images_largest_shard():
    import torch

    from benchmarks.full_size_flux import _unique_tensors, flux_modules

    with torch.device("meta"):
        ref, target = flux_modules(QWEN.reference_shape), flux_modules("qwen-image")

    def bf16_bytes(module) -> int:
        return 2 * sum(t.numel() for _, t in _unique_tensors(module))

    assert QWEN.text_bytes == (bf16_bytes(ref["text_encoder"]), bf16_bytes(target["text_encoder"]))
    assert QWEN.denoiser_bytes == (bf16_bytes(ref["transformer"]), bf16_bytes(target["transformer"]))
    layout = json.loads((ROOT / "benchmarks" / "layouts" / "qwen-image.json").read_text())
    shards = [f["size"] for f in layout["files"] if f["path"].startswith("transformer/") and "-of-" in f["path"]]
    assert len(shards) == 9 and QWEN.largest_shard_bytes == max(shards)


def test_the_committed_figures_let_qwen_image_load_on_an_l4_only_with_a_bitsandbytes_base():
    whole, quantized = host_ram_figure("qwen-image"), host_ram_figure("qwen-image", weights=GPU_QUANTIZED)
    assert whole is not None and quantized is not None and {whole.source, quantized.source} == {DERIVED}
    assert 38.0 < whole.gib < 41.0 and 15.0 < quantized.gib < 17.0  # the 38 GiB transformer / the 15.4 GiB encoder
    assert fits_host_ram("qwen-image", "l4x1") is False and fits_host_ram("qwen-image", "l40sx1") is True
    assert fits_host_ram("qwen-image", "l4x1", weights=GPU_QUANTIZED) is True
    assert fits_host_ram("qwen-image", "a10g-small", weights=GPU_QUANTIZED) is False  # 15 GB of host RAM
    # Z-Image is measured: Z-Image-Turbo's fp32 transformer, cast to bf16 on load, needs more than 15 GB flavors hold
    assert host_ram_figure("zimage").source == MEASURED
    assert fits_host_ram("zimage", "l4x1") is True and fits_host_ram("zimage", "a10g-small") is False


def _qwen_task(hardware: str, **params) -> Task:
    return Task(instance_prompt="a photo of sks dog", submitted_by="alice", base_model="Qwen/Qwen-Image",
                recipe="dreambooth-lora", hardware=hardware, params=params)  # fmt: skip


def test_the_fit_check_reads_the_host_ram_of_the_base_its_plan_loads():
    # a 24 GB L4 with a 4-bit base: the GPU fits it, and its 30 GB of host RAM hold the text side
    on_l4 = check_fit(_qwen_task("l4x1", resolution=512), PROBE)
    assert on_l4.problem is None and "4-bit base (NF4)" in on_l4.notes[0]
    # the same GPU with 15 GB of host RAM: refused, with the derived figure and a flavor that holds it
    small = check_fit(_qwen_task("a10g-small", resolution=512), PROBE)
    assert small.problem is not None and "host RAM (derived from its file sizes)" in small.problem, small.problem
    assert f"about {host_ram_gib('qwen-image', weights=GPU_QUANTIZED):.1f} GiB" in small.problem
