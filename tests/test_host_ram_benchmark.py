"""The host RAM benchmark (``benchmarks/host_ram.py``), its committed figures, and ``scheduler.host_ram``.

The benchmark runs for real on tiny models in a subprocess (every phase, the trainer's own code); the committed
full-size records are checked as data: each model's default flavor must hold the measured peak with a margin.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contract.flavors import FLAVORS, GPU_FLAVORS, Flavor
from scheduler.host_ram import MARGIN, fits_host_ram, host_ram_gib, read_records
from scheduler.task import Task

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "host_ram.py"
PHASES = ["load", "cache", "first_step"]
STAGED_PHASES = ["load", "cache", "load_denoiser", "first_step"]  # FLUX: the text side, then the transformer
SD_TINY, FLUX_TINY = ("tiny-sd", "tiny-sdxl"), ("tiny-flux1", "tiny-klein")
#: the staged (flow-matching) shapes measured at full size: their family's default flavor and resolution
FULL_FLUX = {"klein4b": ("l4x1", 512), "flux1": ("l4x1", 512), "klein9b": ("l4x1", 512), "zimage": ("l40sx1", 1024)}
#: as the repos store them: all bf16, or (Z-Image-Turbo's layout) an fp32 transformer beside bf16 encoder and VAE
FLUX_WEIGHTS = {"bf16 files", "bf16+fp32 files"}
WEIGHTS = {"fp32 files", "fp16 variant"}
RECORD_KEYS = {"benchmark", "model_shape", "recipe", "phase", "peak_rss_gib", "device", "date", "weights", "flavor",
               "flavor_ram_gib", "note"}  # fmt: skip
DEFAULT_FLAVOR = next(f.default for f in dataclasses.fields(Task) if f.name == "hardware")


# ---------------------------------------------------------------------------------------------- flavors' host RAM
def test_every_flavor_knows_its_host_ram():
    # Jobs-only flavors: hub-docs publish no host RAM for them (None: the fit check says "unknown").
    assert all(isinstance(f.ram_gib, int) and f.ram_gib > 0 for f in FLAVORS.values() if not f.jobs_only)
    table = {"t4-small": 15, "a10g-small": 15, "t4-medium": 30, "l4x1": 30, "a10g-large": 46, "l40sx1": 62,
             "a100-large": 142, "cpu-basic": 16, "cpu-upgrade": 32}  # fmt: skip
    assert {name: FLAVORS[name].ram_gib for name in table} == table
    # the multi-GPU flavors have more host RAM than their single-GPU siblings
    assert FLAVORS["l4x4"].ram_gib > FLAVORS["l4x1"].ram_gib
    assert FLAVORS["a10g-largex4"].ram_gib > FLAVORS["a10g-largex2"].ram_gib > FLAVORS["a10g-large"].ram_gib
    assert DEFAULT_FLAVOR in GPU_FLAVORS


# ---------------------------------------------------------------------------------------------- the benchmark, tiny
def _bare_torch_rss_gib() -> float:
    code = "import torch\nfor l in open('/proc/self/status'):\n    l.startswith('VmRSS') and print(l.split()[1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return int(out.stdout.split()[-1]) / 2**20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("host-ram")
    out = tmp / "host_ram.jsonl"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--models-dir", str(tmp / "models"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / "models", [json.loads(line) for line in out.read_text().splitlines()]


def _native_resolution(folder: Path) -> int:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def test_tiny_run_measures_every_phase_of_both_shapes(tiny_run):
    models, recs = tiny_run
    expected = [(s, p) for s in SD_TINY for p in PHASES] + [(s, p) for s in FLUX_TINY for p in STAGED_PHASES]
    assert [(r["model_shape"], r["phase"]) for r in recs] == expected
    for r in (r for r in recs if r["model_shape"] in SD_TINY):
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert "error" not in r
        assert r["benchmark"] == "host_ram" and r["recipe"] == "dreambooth-lora" and r["device"] == "cpu"
        assert r["weights"] in WEIGHTS
        assert r["flavor"] == DEFAULT_FLAVOR and r["flavor_ram_gib"] == FLAVORS[DEFAULT_FLAVOR].ram_gib
        assert dt.date.fromisoformat(r["date"])
        assert "meta" in r["note"] and "tiny" in r["note"]
        # T4 dtypes: frozen UNet and text encoders in fp16, the VAE in fp32
        assert r["dtypes"] == {"unet": "torch.float16", "vae": "torch.float32",
                               "text_encoders": ["torch.float16"] * (2 if r["model_shape"] == "tiny-sdxl" else 1)}  # fmt: skip
        assert r["resolution"] == _native_resolution(models / r["model_shape"]) and r["images"] == 5


def test_tiny_flux_runs_load_the_text_side_first_and_free_it_before_the_transformer(tiny_run):
    """The FLUX families' staged loading as the trainer does it: bf16 (their L4 default), the transformer read in
    its own phase after the text encoders were freed, on the family's default flavor."""
    from training.families.flux import Flux1

    _, recs = tiny_run
    flux = [r for r in recs if r["model_shape"] in FLUX_TINY]
    for r in flux:
        assert "error" not in r and RECORD_KEYS <= set(r)
        assert r["flavor"] == Flux1.defaults.hardware == "l4x1" and r["precision"] == "bf16"
        assert r["weights"] == "fp32 files"  # the tiny builders save fp32; cast to bf16 while loading
        assert r["dtypes"]["denoiser"] == "torch.bfloat16" and r["dtypes"]["text_encoders"] == (
            ["torch.bfloat16"] * (2 if r["model_shape"] == "tiny-flux1" else 1)
        )
        assert "staged" in r["note"] and "tiny" in r["note"]
    for shape in FLUX_TINY:
        files = next(r for r in flux if r["model_shape"] == shape)["weight_files"]
        assert any(f.startswith("transformer/") for f in files) and any(f.startswith("text_encoder/") for f in files)


def test_tiny_run_peaks_are_ordered_sensibly(tiny_run):
    _, recs = tiny_run
    bare = _bare_torch_rss_gib()
    for r in recs:
        assert 0 < r["peak_rss_anon_gib"] <= r["peak_rss_gib"]
        assert r["end_rss_gib"] <= r["peak_rss_gib"]
        assert r["peak_rss_gib"] >= bare, (r, bare)  # the trainer imports torch and more
        assert r["peak_rss_gib"] < 4  # tiny models: a few MB of weights
    for shape in ("tiny-sd", "tiny-sdxl"):
        load = next(r for r in recs if r["model_shape"] == shape and r["phase"] == "load")
        assert load["peak_rss_gib"] >= load["import_rss_gib"] >= bare


def test_tiny_run_reports_the_weight_files_the_trainer_opened(tiny_run):
    models, recs = tiny_run
    for shape in ("tiny-sd", "tiny-sdxl"):
        folder = models / shape
        plain = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.safetensors") if p.name.count(".") == 1)
        variants = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.fp16.safetensors"))
        assert len(plain) == len(variants) == (4 if shape == "tiny-sdxl" else 3)  # unet, vae, text encoder(s)
        load = next(r for r in recs if r["model_shape"] == shape and r["phase"] == "load")
        # the trainer with training.files reads the frozen components' fp16 variants; before it, the plain files
        expected = "fp16 variant" if importlib.util.find_spec("training.files") else "fp32 files"
        assert load["weights"] == expected
        assert set(load["weight_files"]) <= set(plain) | set(variants)
        assert any(f.startswith("unet/") for f in load["weight_files"])


def test_fp16_variant_copies_are_exact_casts(tmp_path):
    import torch
    from safetensors.torch import load_file

    from benchmarks.full_size import add_fp16_variants, variant_name, weight_files, write_cast_copy
    from tests.tiny_models import build_tiny_sd

    folder = add_fp16_variants(build_tiny_sd(tmp_path / "model"))
    files = weight_files(folder)
    assert {f.parent.name for f in files} == {"unet", "vae", "text_encoder"}
    for plain in files:
        a, b = load_file(plain), load_file(variant_name(plain))
        assert list(a) == list(b)
        for k, t in a.items():
            assert b[k].dtype == (torch.float16 if t.is_floating_point() else t.dtype) and b[k].shape == t.shape
            assert torch.equal(b[k], t.to(b[k].dtype))
        back = load_file(write_cast_copy(variant_name(plain), tmp_path / "back.safetensors", torch.float32))
        assert all(
            back[k].dtype == torch.float32 and torch.equal(back[k], b[k].float()) for k in b if b[k].is_floating_point()
        )
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", variant="fp16", torch_dtype=torch.float16)
    assert next(unet.parameters()).dtype == torch.float16


# ---------------------------------------------------------------------------------------------- committed figures
def _committed() -> list[dict]:
    recs = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("host_ram-*.jsonl")):
        recs += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if not str(r.get("model_shape", "")).startswith("tiny")]


def test_committed_full_size_records_have_the_format():
    recs = _committed()
    if not recs:
        pytest.skip("no full-size host_ram records committed yet")
    for r in recs:
        assert "error" not in r, r
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["benchmark"] == "host_ram" and r["device"] == "cpu" and r["peak_rss_gib"] > 0
        assert r["flavor_ram_gib"] == FLAVORS[r["flavor"]].ram_gib
        if r["model_shape"] in FULL_FLUX:  # the repo's files, the staged phases, the family's default resolution
            flavor, resolution = FULL_FLUX[r["model_shape"]]
            assert r["phase"] in STAGED_PHASES and r["weights"] in FLUX_WEIGHTS and r["resolution"] == resolution
            assert r["flavor"] == flavor and 0 < r["peak_rss_anon_gib"] <= r["peak_rss_gib"]
            continue
        assert r["model_shape"] in ("sd15", "sdxl") and r["phase"] in PHASES and r["weights"] in WEIGHTS
        assert r["resolution"] == {"sd15": 512, "sdxl": 1024}[r["model_shape"]]


def _newest(recs: list[dict], shape: str) -> list[dict]:
    """The newest day's LoRA records of ``shape`` on the trainer's path for a repo with fp16 variant files (as the
    SD 1.5 and SDXL base repos have), or all of them when that path was not measured."""
    mine = [r for r in recs if r["model_shape"] == shape and r["recipe"] == "dreambooth-lora"]
    if any(r["weights"] == "fp16 variant" for r in mine):
        mine = [r for r in mine if r["weights"] == "fp16 variant"]
    newest = max(r["date"] for r in mine)
    return [r for r in mine if r["date"] == newest]


def test_committed_full_size_records_fit_the_default_flavor():
    """Data, not timing: SD 1.5 and SDXL LoRA run on the default flavor (t4-small, 15 GB of host RAM), the FLUX
    families on theirs (l4x1, 30 GB); the trainer's measured peak of every phase must stay under 85 % of it."""
    recs = _committed()
    if not recs:
        pytest.skip("no full-size host_ram records committed yet")
    for shape in sorted({r["model_shape"] for r in recs}):
        newest = _newest(recs, shape)
        flavor = FULL_FLUX[shape][0] if shape in FULL_FLUX else DEFAULT_FLAVOR
        limit = MARGIN * FLAVORS[flavor].ram_gib
        assert {r["phase"] for r in newest} == set(STAGED_PHASES if shape in FULL_FLUX else PHASES)
        for r in newest:
            assert r["peak_rss_gib"] <= limit, f"{shape} {r['weights']} {r['phase']}: {r['peak_rss_gib']} GiB > {limit}"
        assert host_ram_gib(shape) == max(r["peak_rss_gib"] for r in newest)
        assert fits_host_ram(shape, flavor) is True


def test_committed_flux_records_show_the_staged_loading_keeps_anonymous_memory_low():
    """FLUX weights stay mapped from their files (reclaimable page cache): the anonymous memory the kernel cannot
    drop stays a small part of the peak, and the text encoders are gone before the transformer loads."""
    recs = [r for r in _committed() if r["model_shape"] in FULL_FLUX and r["weights"] == "bf16 files"]
    if not recs:
        pytest.skip("no full-size FLUX host_ram records committed yet")
    for shape in sorted({r["model_shape"] for r in recs}):
        phases = {r["phase"]: r for r in _newest(recs, shape)}
        assert max(r["peak_rss_anon_gib"] for r in phases.values()) < 0.5 * max(
            r["peak_rss_gib"] for r in phases.values()
        )
        # after caching, the end of the phase holds no text encoder: far less than the phase's peak
        assert phases["cache"]["end_rss_gib"] < 0.5 * phases["cache"]["peak_rss_gib"]


def test_committed_zimage_records_show_an_fp32_transformer_is_cast_into_anonymous_memory():
    """Z-Image-Turbo's repo stores the transformer in fp32: the trainer's bf16 load makes anonymous copies (about
    the bf16 transformer, 11.5 GiB) while it maps the fp32 shards, far above the all-bf16 layout's peak."""
    recs = [r for r in _newest(_committed(), "zimage") if r["phase"] == "load_denoiser"]
    by = {r["weights"]: r for r in recs}
    if set(by) != {"bf16 files", "bf16+fp32 files"}:
        pytest.skip("Z-Image's two layouts not measured on one day")
    bf16_transformer_gib = 2 * 6_154_908_736 / 2**30
    assert by["bf16 files"]["peak_rss_anon_gib"] < 0.1 * bf16_transformer_gib  # mapped, not copied
    assert by["bf16+fp32 files"]["peak_rss_anon_gib"] > 0.95 * bf16_transformer_gib  # copied while cast
    assert by["bf16+fp32 files"]["peak_rss_gib"] > by["bf16 files"]["peak_rss_gib"] + 5
    assert by["bf16+fp32 files"]["layout"].startswith("Tongyi-MAI/Z-Image-Turbo") and "layout" not in by["bf16 files"]
    assert host_ram_gib("zimage") == by["bf16+fp32 files"]["peak_rss_gib"]  # the higher layout decides


def test_committed_records_show_the_fp16_variant_files_save_host_ram():
    """Where both loading paths were measured the same day, reading the fp16 variant files peaks lower at load."""
    recs = [r for r in _committed() if r["phase"] == "load"]
    pairs = {(r["model_shape"], r["date"]) for r in recs if r["weights"] == "fp16 variant"} & {
        (r["model_shape"], r["date"]) for r in recs if r["weights"] == "fp32 files"
    }
    if not pairs:
        pytest.skip("no model shape measured both ways on one day")
    for shape, date in pairs:
        peak = {r["weights"]: r["peak_rss_gib"] for r in recs if (r["model_shape"], r["date"]) == (shape, date)}
        assert peak["fp16 variant"] < peak["fp32 files"], (shape, peak)


# ---------------------------------------------------------------------------------------------- scheduler.host_ram
def _write(folder: Path, name: str, lines: list) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def _rec(shape: str, phase: str, peak: float, date: str = "2026-12-01", weights: str = "fp32 files", **kw) -> dict:
    return {"benchmark": "host_ram", "model_shape": shape, "recipe": "dreambooth-lora", "phase": phase,
            "peak_rss_gib": peak, "weights": weights, "device": "cpu", "date": date, **kw}  # fmt: skip


def test_host_ram_gib_is_the_highest_phase_of_the_newest_day(tmp_path):
    _write(tmp_path, "host_ram-2026-11-01-cpu.jsonl", [_rec("sdxl", "load", 20.0, "2026-11-01")])
    _write(tmp_path, "host_ram-2026-12-01-cpu.jsonl", [
        _rec("sdxl", "load", 9.5), _rec("sdxl", "cache", 6.0), _rec("sdxl", "first_step", 3.0),
        _rec("sdxl", "load", 7.0, weights="fp16 variant"), _rec("sd15", "load", 4.0),
        _rec("tiny-sd", "load", 99.0), "not json", {"benchmark": "host_ram", "model_shape": "sd15", "error": "boom"},
        _rec("sd15", "load", 50.0, recipe="dreambooth-full"),
    ])  # fmt: skip
    _write(tmp_path, "train_speed-2026-12-01-cpu.jsonl", [{"benchmark": "train_speed", "peak_rss_gib": 99.0}])
    assert host_ram_gib("sdxl", results_dir=tmp_path) == 7.0  # the fp16 variant path by default; November is older
    assert host_ram_gib("sdxl", weights="fp32 files", results_dir=tmp_path) == 9.5  # the highest phase that day
    assert host_ram_gib("sd15", results_dir=tmp_path) == 4.0  # only the fp32 files path measured
    assert host_ram_gib("sd15", weights="fp16 variant", results_dir=tmp_path) is None
    assert host_ram_gib("sd15", recipe="dreambooth-full", results_dir=tmp_path) == 50.0
    assert host_ram_gib("tiny-sd", results_dir=tmp_path) is None
    assert host_ram_gib("flux1", results_dir=tmp_path) is None
    assert {r.model_shape for r in read_records(tmp_path)} == {"sd15", "sdxl"}


def test_fits_host_ram_compares_with_the_flavors_ram_and_a_margin(tmp_path):
    _write(tmp_path, "host_ram-2026-12-01-cpu.jsonl", [
        _rec("sdxl", "load", 13.0), _rec("sd15", "load", 5.0), _rec("sd15", "load", 13.5, weights="fp32 files"),
        _rec("sd15", "cache", 3.0, weights="fp16 variant"),
    ])  # fmt: skip
    assert fits_host_ram("sd15", "t4-small", weights="fp32 files", results_dir=tmp_path) is False
    assert fits_host_ram("sd15", "t4-small", results_dir=tmp_path) is True
    assert fits_host_ram("sdxl", "t4-small", results_dir=tmp_path) is False  # 13 > 0.85 x 15
    assert fits_host_ram("sdxl", "t4-small", margin=0.9, results_dir=tmp_path) is True
    assert fits_host_ram("sdxl", "t4-medium", results_dir=tmp_path) is True
    assert fits_host_ram("sdxl", FLAVORS["a10g-small"], results_dir=tmp_path) is False
    assert fits_host_ram("flux1", "a100-large", results_dir=tmp_path) is None  # never measured
    assert fits_host_ram("sdxl", "no-such-flavor", results_dir=tmp_path) is None
    assert fits_host_ram("sdxl", Flavor("x", "X", 1.0, 1, 24), results_dir=tmp_path) is None  # RAM unknown


def test_the_host_ram_helper_imports_no_torch():
    code = "import sys, scheduler.host_ram; print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
