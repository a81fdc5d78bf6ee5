"""Training speed and memory of ``python -m training`` per recipe (see ../shared/benchmarks/README.md).

GPU run (builds random-init full-size SD 1.5 / SDXL folders on the GPU and FLUX.1 / FLUX.2 [klein] folders
streamed to disk (``benchmarks/full_size_flux.py``, 16-34 GB each), then trains from them)::

    python benchmarks/train_speed.py                      # SD 1.5 recipes, the T4 profile, then FLUX
    python benchmarks/train_speed.py --only sd15-lora     # one configuration
    python benchmarks/train_speed.py --family flux        # only the FLUX configurations

FLUX configurations train LoRA rank 16 in bf16 at 512 and 1024 px, with the base unquantized or quantized
(``quantize_base``), under a 24 GB (L4) or a 16 GB (T4) memory cap: ``torch.cuda.set_per_process_memory_fraction``
on a bigger GPU, and ``memory_budget_gib`` so the trainer's memory plan decides as on that card. Precision stays
bf16 under the T4 cap (a real T4 has no bf16: its speed is not what a T4 does; the cap shows what fits).

CPU check of the same code path with tiny models::

    python benchmarks/train_speed.py --tiny

Each configuration runs in its own process (clean peak-memory counters, no leftovers), through the real trainer
(``training.cli.main``) with ``log_every=10``; steady steps/s is measured between the step events after warm-up.
Records are appended as JSON lines to ``benchmarks/results/train_speed-<date>-<device>.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.full_size import build_full_size  # noqa: E402 (the random-init full-size folders, shared)


@dataclass
class Config:
    """One measured configuration."""

    name: str
    model_shape: str  # sd15 | sdxl | flux1 | klein4b | klein9b | tiny-sd | tiny-sdxl | tiny-flux1 | tiny-klein
    recipe: str = "dreambooth-lora"
    resolution: int = 512
    prior_preservation: bool = False
    train_text_encoder: bool = False
    gradient_checkpointing: bool | str = False
    use_8bit_adam: bool | str = False
    t4_profile: bool = False
    params: dict = field(default_factory=dict)
    #: GPU memory cap (GB of the emulated card: 16 = T4, 24 = L4) and the budget the memory plan gets; None: none
    memory_cap_gb: float | None = None
    #: the LoRA's frozen base ("none", "int8", "nf4", "fp8" or "auto"); None: the task default
    quantize_base: str | None = None

    @property
    def is_flux(self) -> bool:
        return self.model_shape in FLUX_SHAPES or self.model_shape in ("tiny-flux1", "tiny-klein")


FLUX_SHAPES = ("flux1", "klein4b", "klein9b")
#: GiB torch sees per nominal GB of a card (scheduler.memory_fit.GIB_PER_NOMINAL_GB)
GIB_PER_GB = 15 / 16


def flux_configs() -> list[Config]:
    """FLUX LoRA (rank 16, bf16, gradient checkpointing by the plan) at 512 and 1024 px, base unquantized and
    quantized (8-bit under the L4 cap, NF4 under the T4 cap), per shape; klein 4B also unquantized on a T4 cap."""
    out = []
    for shape in FLUX_SHAPES:
        for res in (512, 1024):
            for cap, quant in ((24, "none"), (24, "int8"), (16, "nf4")):
                if shape == "klein4b" and cap == 16:
                    quant = "none" if res == 512 else "nf4"
                out.append(Config(f"{shape}-lora-{res}-{quant}-{cap}gb", shape, resolution=res,
                                  gradient_checkpointing="auto", use_8bit_adam="auto", memory_cap_gb=cap,
                                  quantize_base=quant, params={"rank": 16}))  # fmt: skip
    return out


GPU_CONFIGS = [
    Config("sd15-lora", "sd15"),
    Config("sd15-lora-prior", "sd15", prior_preservation=True),
    Config("sd15-lora-te-prior", "sd15", prior_preservation=True, train_text_encoder=True),
    Config("sd15-lora-gc", "sd15", gradient_checkpointing=True),
    Config("sd15-full-gc-prior", "sd15", "dreambooth-full", prior_preservation=True, gradient_checkpointing=True),
    Config("sdxl-lora-1024", "sdxl", resolution=1024),
    # T4 profile: fp16, 15 GiB cap, the trainer's automatic memory policy decides GC / 8-bit Adam.
    Config("t4-sd15-lora-te-prior", "sd15", prior_preservation=True, train_text_encoder=True,
           gradient_checkpointing="auto", use_8bit_adam="auto", t4_profile=True),  # fmt: skip
    Config("t4-sd15-full", "sd15", "dreambooth-full", gradient_checkpointing="auto", use_8bit_adam="auto",
           t4_profile=True),  # fmt: skip
    Config("t4-sdxl-lora-1024", "sdxl", resolution=1024, gradient_checkpointing="auto", use_8bit_adam="auto",
           t4_profile=True),  # fmt: skip
    *flux_configs(),
]
TINY_CONFIGS = [
    Config("tiny-sd-lora", "tiny-sd", resolution=32),
    Config("tiny-sd-lora-te-prior", "tiny-sd", resolution=32, prior_preservation=True, train_text_encoder=True),
    Config("tiny-sd-full-gc", "tiny-sd", "dreambooth-full", resolution=32, gradient_checkpointing=True),
    Config("tiny-sdxl-lora", "tiny-sdxl", resolution=64),
    Config("tiny-flux1-lora", "tiny-flux1", resolution=64, params={"rank": 16}),
    Config("tiny-klein-lora", "tiny-klein", resolution=64, params={"rank": 16}),
]


# ---------------------------------------------------------------------------------------------- models
def model_for(shape: str, cache: Path) -> Path:
    from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
    from tests.tiny_models import build_tiny_sd, build_tiny_sdxl

    path = cache / shape
    tiny = {"tiny-sd": build_tiny_sd, "tiny-sdxl": build_tiny_sdxl, "tiny-flux1": build_tiny_flux1,
            "tiny-klein": build_tiny_flux2_klein}  # fmt: skip
    if shape in tiny:
        return tiny[shape](path)
    if shape in FLUX_SHAPES:
        from benchmarks.full_size_flux import build_full_size_flux

        return build_full_size_flux(shape, path)
    return build_full_size(shape, path)


# ---------------------------------------------------------------------------------------------- one measurement
def run_one(cfg: Config, model: Path, work: Path, warmup: int, timed: int) -> dict:
    """Train ``cfg`` in this process and return its ``train_speed`` record."""
    import diffusers
    import torch

    from tests.tiny_models import make_images
    from training.cli import main

    cuda = torch.cuda.is_available()
    cap_gib = 15.0 if cfg.t4_profile else (cfg.memory_cap_gb * GIB_PER_GB if cfg.memory_cap_gb else None)
    if cap_gib and cuda:
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib / total))
    imgs = make_images(work / "instance", 5, size=cfg.resolution)
    cls = make_images(work / "class", 10, size=cfg.resolution) if cfg.prior_preservation else None
    steps = warmup + timed
    params = {
        "steps": steps, "learning_rate": 1e-4, "resolution": cfg.resolution, "batch_size": 1,
        "mixed_precision": ("bf16" if cfg.is_flux else "fp16") if cuda else "no",
        "prior_preservation": cfg.prior_preservation,
        "num_class_images": 10, "train_text_encoder": cfg.train_text_encoder,
        "gradient_checkpointing": cfg.gradient_checkpointing, "use_8bit_adam": cfg.use_8bit_adam,
        "checkpoint_every": 0, "log_every": 10 if steps >= 50 else 1, "random_flip": True,
        "memory_budget_gib": cap_gib, "score": False, **cfg.params,  # training speed only: scoring_cost.py times scores
    }  # fmt: skip
    if cfg.quantize_base is not None:
        params["quantize_base"] = cfg.quantize_base
    task = {"task_id": cfg.name, "recipe": cfg.recipe, "base_model": str(model), "instance_prompt": "a photo of sks dog",
            "class_prompt": "a photo of a dog" if cfg.prior_preservation else None, "images": str(imgs[0].parent),
            "class_images": str(cls[0].parent) if cls else None, "params": params, "output": None, "checkpoint": None}  # fmt: skip
    (work / "task.json").write_text(json.dumps(task))
    events_file = work / "events.jsonl"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rc = main(["--task", str(work / "task.json"), "--workdir", str(work / "run"), "--progress", str(events_file),
               "--progress-bar", "off"])  # fmt: skip
    events = [json.loads(x) for x in events_file.read_text().splitlines()]
    steps_ev = [e for e in events if e["event"] == "step"]
    after = [e for e in steps_ev if e["step"] >= warmup]
    rate = (after[-1]["step"] - after[0]["step"]) / (after[-1]["time"] - after[0]["time"]) if len(after) > 1 else 0.0
    error = next((e for e in events if e["event"] == "error"), None)
    record = {
        "benchmark": "train_speed",
        "config": cfg.name,
        "recipe": cfg.recipe,
        "prior_preservation": cfg.prior_preservation,
        "train_text_encoder": cfg.train_text_encoder,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "use_8bit_adam": cfg.use_8bit_adam,
        "model_shape": cfg.model_shape,
        "resolution": cfg.resolution,
        "batch_size": 1,
        "precision": params["mixed_precision"] if cuda else "fp32",
        "t4_profile": cfg.t4_profile,
        "memory_cap_gb": cfg.memory_cap_gb,
        "quantize_base": cfg.quantize_base,
        "memory_plan": next(({k: v for k, v in e.items() if k not in ("event", "time")} for e in events
                             if e["event"] == "memory_plan"), None),  # fmt: skip
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "steps_per_s": round(rate, 3),
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if cuda else None,
        "training_peak_allocated_gib": steps_ev[-1]["peak_mem_gib"] if (steps_ev and cuda) else None,
        "peak_rss_gib": None if cuda else (steps_ev[-1]["peak_mem_gib"] if steps_ev else None),
        "timed_steps": after[-1]["step"] - after[0]["step"] if len(after) > 1 else 0,
        "warmup_steps": warmup,
        "exit_code": int(rc),
        "error": error["message"][:300] if error else None,
        "optimizer": "AdamW (fused on CUDA) or 8-bit/Adafactor per the memory plan",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "date": dt.date.today().isoformat(),
    }
    return record


# ---------------------------------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script, not the GPU)")
    ap.add_argument("--only", action="append", default=[], help="configuration name(s) to run")
    ap.add_argument("--family", choices=("sd", "flux"), default=None, help="only this family's configurations")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 20 GPU, 3 tiny)")
    ap.add_argument("--timed", type=int, default=None, help="timed steps (default 100 GPU, 10 tiny)")
    ap.add_argument("--cache", default=os.environ.get("BENCH_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "bench-models")))
    ap.add_argument("--out", default=None, help="results file (default benchmarks/results/train_speed-<date>-<device>.jsonl)")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)  # child mode: JSON of (config, model, work)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per configuration")
    args = ap.parse_args(argv)

    if args.run_one:
        job = json.loads(args.run_one)
        rec = run_one(Config(**job["config"]), Path(job["model"]), Path(job["work"]), job["warmup"], job["timed"])
        print("RECORD " + json.dumps(rec), flush=True)
        return 0

    import torch

    configs = TINY_CONFIGS if args.tiny else GPU_CONFIGS
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    if args.family:
        configs = [c for c in configs if c.is_flux == (args.family == "flux")]
    warmup = args.warmup if args.warmup is not None else (3 if args.tiny else 20)
    timed = args.timed if args.timed is not None else (10 if args.tiny else 100)
    device = "cpu-tiny" if args.tiny else re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"train_speed-{dt.date.today().isoformat()}-{device}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    failures = 0
    for cfg in configs:
        model = model_for(cfg.model_shape, cache)
        work = Path(tempfile.mkdtemp(prefix=f"bench-{cfg.name}-"))
        job = {"config": asdict(cfg), "model": str(model), "work": str(work), "warmup": warmup, "timed": timed}
        cmd = [sys.executable, __file__, "--run-one", json.dumps(job)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RECORD ")]
            rec = json.loads(lines[-1][7:]) if lines else None
            if rec is None:
                rec = {"benchmark": "train_speed", "config": cfg.name, "error": proc.stderr[-500:], "device": device}
        except subprocess.TimeoutExpired:
            rec = {"benchmark": "train_speed", "config": cfg.name, "error": f"timeout {args.timeout}s", "device": device}
        if args.tiny:
            rec["note"] = "CPU, tiny random models: checks the benchmark path only; not a GPU speed figure"
        failures += bool(rec.get("error"))
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps({k: rec.get(k) for k in ("config", "steps_per_s", "peak_allocated_gib", "error")}), flush=True)
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
