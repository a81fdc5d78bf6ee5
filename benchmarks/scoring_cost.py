"""Seconds and peak memory of one scoring point (``training.scoring``) at full size, with the default scoring models'
architectures (``contract.scoring_models``: DINOv2-small, CLIP ViT-L/14; ``--clip b32``: ViT-B/32) built from their
configs with random weights (no download), saved as safetensors and loaded as a run loads them.

    python benchmarks/scoring_cost.py                   # CPU proxy: 8 generated images at 512 px, 5 photos
    python benchmarks/scoring_cost.py --device cuda     # on a GPU (fp16 models; peak from torch.cuda)
    python benchmarks/scoring_cost.py --tiny --out X    # tiny models: the tests' check of the record, in seconds

A scoring point is, as in a run: ``Scorers.load`` (from the disk cache), ``score`` of the point's images and prompts,
``close``. The photos' embeddings are computed once per run (``photo_s``). Peak memory: on the CPU the process's
resident high-water mark (VmHWM, reset through /proc/self/clear_refs before the point) above the resident memory
before it, with the process's CPU seconds (``point_cpu_s``) and the load average (a shared machine's wall clock
waits for cores); on CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated before it. The record says the
machine and date; random weights cost what trained ones cost (same shapes and dtypes). Appended (one JSON object a
line) to ``benchmarks/results/scoring_cost-<date>-<device>[-tiny].jsonl`` unless ``--out`` says where.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.record_file import append_record, run_fields  # noqa: E402 - the repo root first

#: full-size architectures (the configs of the Hub repos: facebook/dinov2-small, openai/clip-vit-large-patch14 and
#: openai/clip-vit-base-patch32); image processors as those repos set them (DINOv2: resize 256, crop 224; CLIP: 224)
DINO_SMALL = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, image_size=518,
                  patch_size=14)  # fmt: skip
CLIP_ARCHS = {
    "l14": dict(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                 projection_dim=768),
                vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                   num_hidden_layers=24, image_size=224, patch_size=14, projection_dim=768),
                projection_dim=768),
    "b32": dict(text_config=dict(), vision_config=dict(patch_size=32), projection_dim=512),
}  # fmt: skip
CLIP_IDS = {"l14": "openai/clip-vit-large-patch14", "b32": "openai/clip-vit-base-patch32"}
PROMPTS = ["a photo of sks dog", "sks dog on the beach", "sks dog in the snow", "a photo of dog",
           "sks dog wearing a hat", "a painting of sks dog", "sks dog in the jungle", "sks dog on a sofa"]  # fmt: skip


def build_full(folder: Path, clip_arch: str) -> dict[str, Path]:
    """Random full-size DINOv2-small and CLIP models with their processors, saved as safetensors under ``folder``."""
    import torch
    import transformers as tf

    from training.demo import write_char_tokenizer

    torch.manual_seed(0)
    dino, clip = folder / "dino", folder / "clip"
    tf.Dinov2Model(tf.Dinov2Config(**DINO_SMALL)).save_pretrained(dino, safe_serialization=True)
    tf.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(dino)  # fmt: skip
    tf.CLIPModel(tf.CLIPConfig(**CLIP_ARCHS[clip_arch])).save_pretrained(clip, safe_serialization=True)
    write_char_tokenizer(folder / "tok")  # a character vocabulary: token ids only, the text tower is full size
    images = tf.CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    tokenizer = tf.CLIPTokenizer.from_pretrained(str(folder / "tok"))
    tf.CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(clip)
    return {"dino": dino, "clip": clip}


def build_tiny(folder: Path) -> dict[str, Path]:
    from tests.tiny_scorers import build_tiny_clip, build_tiny_dino

    return {"dino": build_tiny_dino(folder / "dino"), "clip": build_tiny_clip(folder / "clip")}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak(device: str) -> float:
    """Reset the peak and return the memory in use now (GiB)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**30
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS
    return _status_kib("VmRSS") / 2**20


def _peak(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**30
    return _status_kib("VmHWM") / 2**20


def measure(folders: dict[str, Path], *, device: str, images: int, size: int, photos: int) -> dict:
    """One run's photo embeddings, then one scoring point (load, score, close), timed and with its peak memory."""
    import numpy as np
    import torch
    from PIL import Image

    from training.scoring import Scorers

    rng = np.random.default_rng(0)
    generated = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(images)]
    shots = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(photos)]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]
    subject = [p != "a photo of dog" for p in prompts]
    dtype = torch.float16 if device == "cuda" else torch.float32
    dino, clip = str(folders["dino"]), str(folders["clip"])

    scorers = Scorers.load(dino, clip, device, dtype)  # the run's first load: photo embeddings (once per run)
    t = time.perf_counter()
    embedded = scorers.photo_embeddings(shots)
    photo_s = time.perf_counter() - t
    scorers.close()
    del scorers

    before = _reset_peak(device)
    load_before, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    scorers = Scorers.load(dino, clip, device, dtype)
    t1 = time.perf_counter()
    scores = scorers.score(generated, prompts, subject, embedded)
    t2 = time.perf_counter()
    scorers.close()
    t3, cpu3 = time.perf_counter(), time.process_time()
    peak = _peak(device)
    return {
        "load_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3), "close_s": round(t3 - t2, 3),
        "point_s": round(t3 - t0, 3), "point_cpu_s": round(cpu3 - cpu0, 3), "photo_s": round(photo_s, 3),
        "load_average": round(load_before, 2),
        "peak_gib": round(peak - before, 3), "peak_total_gib": round(peak, 3),
        "scores": {k: None if v is None else round(v, 4) for k, v in scores.items()},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--clip", default="l14", choices=sorted(CLIP_ARCHS), help="CLIP architecture (default: ViT-L/14)")
    ap.add_argument("--images", type=int, default=8, help="generated images per scoring point")
    ap.add_argument("--size", type=int, default=512, help="their side in pixels")
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="tiny random models (a check of the benchmark, in seconds)")
    ap.add_argument("--out", type=Path, help="the JSON-lines file to append the record to")
    args = ap.parse_args(argv)


    from contract.scoring_models import DEFAULT_DINO_MODEL, scoring_memory_gib

    with tempfile.TemporaryDirectory(prefix="scoring-cost-") as tmp:
        t = time.perf_counter()
        folders = build_tiny(Path(tmp)) if args.tiny else build_full(Path(tmp), args.clip)
        build_s = time.perf_counter() - t
        result = measure(folders, device=args.device, images=args.images, size=args.size, photos=args.photos)
        estimated = scoring_memory_gib(str(folders["dino"]), str(folders["clip"]), 2 if args.device == "cuda" else 4)
    record = {
        "benchmark": "scoring_cost",
        "models": {"dino": "tiny" if args.tiny else DEFAULT_DINO_MODEL,
                   "clip": "tiny" if args.tiny else CLIP_IDS[args.clip]},  # fmt: skip
        "weights": "random, built from the configs, saved as safetensors",
        **run_fields(args.device), "images": args.images, "size": args.size, "photos": args.photos, **result,
        "estimated_gib": round(estimated, 3), "build_s": round(build_s, 1),
    }  # fmt: skip
    append_record(record, args.out, tiny=args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
