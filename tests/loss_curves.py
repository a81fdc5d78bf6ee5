"""Record the built-in recipes' loss curves on the tiny models, to show a refactor keeps training bit-for-bit.

``python -m tests.loss_curves OUT.json`` trains each configuration below for a few steps on the CPU (tiny random
SD, SDXL, Flux.1 and Flux.2 [klein] pipelines, built in a temporary folder), and writes every logged loss (one per
step, as ``float.hex``) and a digest of the written weights. Run it before and after a change to the trainer and
compare the two files (``diff``): equal files mean the same losses and weights, to the last bit. Not a test: a
researcher who changes the loss on purpose changes these figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from contract.scores import SCORED_CHECKPOINTS_DIR
from tests.tiny_flux import build_tiny_flux1, build_tiny_flux2_klein
from tests.tiny_models import build_tiny_sd, build_tiny_sdxl, make_images

FAST = {"steps": 6, "resolution": 32, "log_every": 1, "checkpoint_every": 0, "sample_inference_steps": 2}

#: name -> (model, recipe, params, captions?)
CONFIGS = {
    "sd-lora": ("sd", "dreambooth-lora", {}, False),
    "sd-full": ("sd", "dreambooth-full", {}, False),
    "sd-lora-prior-te": (
        "sd",
        "dreambooth-lora",
        {"prior_preservation": True, "train_text_encoder": True, "num_class_images": 2, "class_prompt": None},
        False,
    ),
    "sd-lora-snr-offset-bs2": (
        "sd",
        "dreambooth-lora",
        {"snr_gamma": 5.0, "noise_offset": 0.1, "batch_size": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2},
        False,
    ),
    "sd-lora-captions": ("sd", "dreambooth-lora", {}, True),
    "sd-full-te": ("sd", "dreambooth-full", {"train_text_encoder": True}, False),
    "sdxl-lora": ("sdxl", "dreambooth-lora", {}, False),
    "flux1-lora": ("flux1", "dreambooth-lora", {}, False),
    "klein-lora": ("klein", "dreambooth-lora", {"validation_prompts": ["a photo of sks dog"]}, False),
}
BUILDERS = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "flux1": build_tiny_flux1, "klein": build_tiny_flux2_klein}


def run_one(name: str, root: Path, models: dict[str, Path]) -> dict:
    from training.cli import main

    kind, recipe, params, captions = CONFIGS[name]
    if kind not in models:
        models[kind] = BUILDERS[kind](root / "models" / kind)
    photos = root / "photos" / name
    paths = make_images(photos, 3, size=48)
    if captions:
        paths[0].with_suffix(".txt").write_text("a dog on a red sofa")
    params = {**FAST, **params}
    class_prompt = params.pop("class_prompt", "missing")
    task = {
        "task_id": name,
        "recipe": recipe,
        "base_model": str(models[kind]),
        "images": str(photos),
        "instance_prompt": "a photo of sks dog",
        "output": None,
        "params": {"validation_prompts": [], **params},
    }
    if class_prompt is None:
        task["class_prompt"] = "a photo of a dog"
    (root / f"{name}.json").write_text(json.dumps(task))
    events = root / f"{name}.events.jsonl"
    work = root / "work" / name
    rc = main(
        [
            "--task",
            str(root / f"{name}.json"),
            "--workdir",
            str(work),
            "--progress",
            str(events),
            "--progress-bar",
            "off",
        ]
    )
    steps = [json.loads(line) for line in events.read_text().splitlines()]
    losses = [
        e["loss"].hex() if isinstance(e.get("loss"), float) else e.get("loss")
        for e in steps
        if e.get("event") == "step"
    ]
    digest = hashlib.sha256()  # the tensors (names, shapes, values), not the file's bytes (metadata order varies)
    out = work / "output"  # the model's weights: not the scored checkpoints kept beside them (contract.scores)
    for f in sorted(f for f in out.rglob("*.safetensors") if f.relative_to(out).parts[0] != SCORED_CHECKPOINTS_DIR):
        for key, tensor in sorted(load_file(f).items()):
            digest.update(
                key.encode() + str(tuple(tensor.shape)).encode() + tensor.contiguous().view(-1).numpy().tobytes()
            )
    return {"rc": rc, "losses": losses, "weights_sha256": digest.hexdigest()[:16]}


def main(argv: list[str]) -> int:
    # Scoring stays on (its sampling points and validation loss must leave training as it was) with no scoring
    # model: no download is tried, and the last checkpoint is the model whose weights are hashed.
    os.environ.update(SCORING_DINO_MODEL="none", SCORING_CLIP_MODEL="none")
    out = Path(argv[0])
    names = argv[1:] or list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        record = {name: run_one(name, Path(tmp), models) for name in names}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({n: (r["rc"], r["losses"][-1:], r["weights_sha256"]) for n, r in record.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
