"""Seconds to caption photos (``training.captioner``) at full size: Florence-2-base's architecture
(``contract.caption_models.DEFAULT_CAPTION_MODEL``) built from its config with random weights (no download), saved as
safetensors and loaded as a run loads it.

    python benchmarks/caption_cost.py                   # CPU: 4 photos at 512 px, float32
    python benchmarks/caption_cost.py --device cuda     # on a GPU (float16)
    python benchmarks/caption_cost.py --tiny --out X    # the tests' tiny Florence-2: a check of the record, in seconds

A run captions as here: ``Captioner.load`` (from the disk cache), ``caption`` of the photos (one batch of up to
``training.captioner.BATCH``), ``close``. Random weights never write the end-of-sequence token on purpose, so every
caption is forced to ``MAX_NEW_TOKENS`` new tokens (``min_new_tokens`` set on the loaded model's generation config):
the cost of the longest caption a run can get, an honest upper bound. The tokenizer is the tests' character
vocabulary (no download), which decodes none of the ids past its few dozen: the full-size captions come out empty
(``caption_chars`` 0); decoding costs nothing next to the 77 decoder steps over a 51,328-token vocabulary. The record gives the seconds per photo (wall
clock and this process's CPU seconds: a shared machine's wall clock waits for cores, with the load average), the
load and close seconds, the parameters, the tokens generated, the machine and the versions. Appended (one JSON object
a line) to ``benchmarks/results/caption_cost-<date>-<device>[-tiny].jsonl`` unless ``--out`` says where.
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

#: Florence-2-base's architecture (microsoft/Florence-2-base's config.json, as transformers' conversion script
#: ``convert_florence2_original_pytorch_to_hf.py`` carries it into florence-community/Florence-2-base): the DaViT
#: vision tower (its ``dim_embed``, ``depths``, ``num_heads``, ``num_groups``, ``window_size``, ``projection_dim``
#: 768, 50 image position embeddings, 100 temporal ones) and a BART-base language model (d_model 768, 6 + 6 layers,
#: 12 heads, FFN 3072, 1024 positions; its 51,289 tokens and the added ``<image>`` token padded to a multiple of 64 by
#: the conversion: 51,328). The image processor: 768 x 768 px, 24 x 24 + 1 = 577 image tokens
FLORENCE2_BASE_VISION = dict(depths=[1, 1, 9, 1], embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32],
                             num_groups=[4, 8, 16, 32], window_size=12, patch_size=[7, 3, 3, 3],
                             patch_stride=[4, 2, 2, 2], patch_padding=[3, 1, 1, 1],
                             patch_prenorm=[False, True, True, True], projection_dim=768, max_position_embeddings=50,
                             max_temporal_embeddings=100)  # fmt: skip
FLORENCE2_BASE_TEXT = dict(vocab_size=51_328, d_model=768, encoder_layers=6, decoder_layers=6,
                           encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                           decoder_ffn_dim=3072, max_position_embeddings=1024)  # fmt: skip
FLORENCE2_BASE_SIDE, FLORENCE2_BASE_IMAGE_TOKENS = 768, 577


def build(folder: Path, tiny: bool) -> Path:
    """The model folder: the tests' tiny Florence-2, or Florence-2-base's architecture with random weights."""
    from tests.tiny_captioner import build_tiny_florence2, save_florence2

    if tiny:
        return build_tiny_florence2(folder / "tiny")
    return save_florence2(folder / "full", FLORENCE2_BASE_VISION, FLORENCE2_BASE_TEXT, FLORENCE2_BASE_SIDE,
                          FLORENCE2_BASE_IMAGE_TOKENS, init_std=None)  # fmt: skip


def measure(folder: Path, *, device: str, photos: int, size: int) -> dict:
    """Load, caption ``photos`` photos of ``size`` px (every caption forced to ``MAX_NEW_TOKENS``), close; timed."""
    import numpy as np
    import torch
    from PIL import Image

    from contract.caption_models import MAX_NEW_TOKENS
    from training.captioner import Captioner

    rng = np.random.default_rng(0)
    shots = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(photos)]
    dtype = torch.float16 if device == "cuda" else torch.float32
    load_average, cpu0, t0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    captioner = Captioner.load(str(folder), device, dtype)
    t1, cpu1 = time.perf_counter(), time.process_time()
    params = sum(p.numel() for p in captioner.model.parameters())
    captioner.model.generation_config.min_new_tokens = MAX_NEW_TOKENS  # random weights: no early stop
    generated: list[int] = []
    generate = captioner.model.generate

    def counted(*args, **kwargs):
        ids = generate(*args, **kwargs)
        generated.append(int(ids.shape[0] * (ids.shape[1] - 1)))  # less the decoder's start token
        return ids

    captioner.model.generate = counted
    captions = captioner.caption(shots)
    if device == "cuda":
        torch.cuda.synchronize()
    t2, cpu2 = time.perf_counter(), time.process_time()
    captioner.close()
    t3 = time.perf_counter()
    return {
        "params": params, "max_new_tokens": MAX_NEW_TOKENS, "tokens_generated": sum(generated),
        "load_s": round(t1 - t0, 3), "load_cpu_s": round(cpu1 - cpu0, 3), "caption_s": round(t2 - t1, 3),
        "caption_cpu_s": round(cpu2 - cpu1, 3), "close_s": round(t3 - t2, 3),
        "s_per_photo": round((t2 - t1) / photos, 3), "cpu_s_per_photo": round((cpu2 - cpu1) / photos, 3),
        "load_average": round(load_average, 2), "threads": torch.get_num_threads(),
        "caption_chars": [len(c) for c in captions],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--photos", type=int, default=4, help="photos captioned (one batch up to training.captioner.BATCH)")
    ap.add_argument("--size", type=int, default=512, help="their side in pixels")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny Florence-2 (a check of the benchmark)")
    ap.add_argument("--out", type=Path, help="the JSON-lines file to append the record to")
    args = ap.parse_args(argv)


    from contract.caption_models import DEFAULT_CAPTION_MODEL

    with tempfile.TemporaryDirectory(prefix="caption-cost-") as tmp:
        t = time.perf_counter()
        folder = build(Path(tmp), args.tiny)
        build_s = time.perf_counter() - t
        result = measure(folder, device=args.device, photos=args.photos, size=args.size)
    record = {
        "benchmark": "caption_cost", "model": "tiny" if args.tiny else DEFAULT_CAPTION_MODEL,
        "weights": "random, built from the config, saved as safetensors; every caption forced to max_new_tokens",
        **run_fields(args.device), "photos": args.photos, "size": args.size, **result, "build_s": round(build_s, 1),
    }  # fmt: skip
    append_record(record, args.out, tiny=args.tiny)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
