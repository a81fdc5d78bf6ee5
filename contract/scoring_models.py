"""The models that score a run (``contract.scores``), torch-free: their ids, the exact files they load, their memory
and their time. ``training.scoring`` loads and runs them; the settings, the preload list, the memory plan and the
form's estimate read this module.

- subject fidelity (DINO): a DINOv2 model (``Dinov2Model``; a DINO ``ViTModel`` too), its CLS token;
- CLIP-I and CLIP-T: a CLIP model (``CLIPModel``), its projected image and text embeddings;
- ``PIXELS``: a fixed image embedding without a model, for the demo model and tests.

The CLIP default is ``openai/clip-vit-large-patch14`` (ViT-L/14, torchmetrics' CLIPScore default) and not ViT-B/32:
``openai/clip-vit-base-patch32`` has no ``model.safetensors`` on its main branch (only pickles and an unmerged
conversion pull request), and scoring models load from safetensors only, as base models do.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path

#: the fixed image embedding: the image resized to 8x8 RGB (box filter: each value the mean of its cell), values in
#: [0, 1] minus 0.5, flattened to 192 numbers: the colour layout as a direction from mid-grey. Two images' cosine is
#: 1 for the same layout (however faint: a light tint points where the saturated colour does), about 0 against
#: unrelated noise, negative for complementary colours. Subject fidelity only (no text).
PIXELS = "builtin:pixels"
DEFAULT_DINO_MODEL = "facebook/dinov2-small"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"
#: values of SCORING_DINO_MODEL / SCORING_CLIP_MODEL that turn the measure off
OFF_VALUES = ("", "none", "off")

#: the files a scoring model may load, those its repo has (the weights from safetensors only; a processor's settings in
#: ``preprocessor_config.json``, or ``processor_config.json`` as transformers 5 saves them)
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
DINO_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", *WEIGHTS_FILES)
CLIP_FILES = (*DINO_FILES, "merges.txt", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
              "vocab.json")  # fmt: skip
#: the files of ``DINO_FILES`` / ``CLIP_FILES`` that the default models' repos hold (one unsharded fp32
#: ``model.safetensors`` each): a Space's ``preload_from_hub`` items, which may list only files that exist
PRELOAD_FILES = {
    DEFAULT_DINO_MODEL: ("config.json", "model.safetensors", "preprocessor_config.json"),
    DEFAULT_CLIP_MODEL: ("config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
                         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"),
}  # fmt: skip

#: parameters of known scoring models (counted on the architectures built from their configs; x 4 bytes = the size
#: of their fp32 ``model.safetensors``: 88.2 MB, 1.71 GB and 605 MB)
KNOWN_PARAMS = {
    "facebook/dinov2-small": 22_056_576,
    "openai/clip-vit-large-patch14": 427_616_513,
    "openai/clip-vit-base-patch32": 151_277_313,
}
#: a scoring model of unknown size (a Hub repo other than the known ones) counts as ViT-L/14 CLIP: the largest here
UNKNOWN_PARAMS = KNOWN_PARAMS[DEFAULT_CLIP_MODEL]
#: activations of a scoring batch (``training.scoring.BATCH`` images at 224 px through ViT-L/14 in fp16: a few tens of
#: MB) with room for the CUDA context's allocator rounding
ACTIVATION_GIB = 0.25

#: sampling points a run scores by default: the base model's and the run's samples (``SAMPLES_PER_RUN`` = 4 of
#: ``training.utils.sampling``, the last at the end)
SCORED_POINTS = 5
#: the denoising steps of a sampling image cost this many training steps each (a forward pass of the denoiser at
#: batch 2 for classifier-free guidance, no backward, no optimizer step); an assumption, not measured here: SD 1.5
#: LoRA trains at about 1.1 steps/s on a T4, and 25 fp16 denoising steps at 512 px take a few seconds there
DENOISE_STEP_VS_TRAIN_STEP = 0.2
#: seconds the scoring models take at one sampling point (load from the disk cache, embed up to 8 images and their
#: prompts, free). On a GPU an assumption (1 GB of fp16 weights from the page cache, a few ViT forwards): measure it
#: with ``benchmarks/scoring_cost.py --device cuda``. On a CPU the full-size proxy's CPU seconds for a point, rounded
#: up (``benchmarks/results/scoring_cost-2026-12-07-cpu.jsonl``: 29 s of CPU, 8 images at 512 px, float32; its wall
#: clock on two cores shared with other jobs was 64 s)
SCORERS_GPU_S = 5.0
SCORERS_CPU_S = 30.0


def off(value: str | None) -> bool:
    """Whether a SCORING_*_MODEL value turns its measure off."""
    return value is None or value.strip().lower() in OFF_VALUES


def safetensors_params(folder: Path) -> int | None:
    """Parameters in a local folder's safetensors weights, read from their headers (None: no such file)."""
    total, found = 0, False
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        total += sum(prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
        found = True
    return total if found else None


def model_params(model: str | None) -> int:
    """Parameters of a scoring model: 0 for none or ``PIXELS``; a local folder's from its safetensors headers; a known
    Hub repo's from ``KNOWN_PARAMS``; ``UNKNOWN_PARAMS`` otherwise."""
    if off(model) or model == PIXELS:
        return 0
    assert model is not None
    if Path(model).expanduser().is_dir():
        counted = safetensors_params(Path(model).expanduser())
        if counted is not None:
            return counted
    return KNOWN_PARAMS.get(model, UNKNOWN_PARAMS)


def scoring_memory_gib(dino: str | None, clip: str | None, bytes_per_param: int = 2) -> float:
    """GPU memory the scoring models take while they score, in GiB: their weights at ``bytes_per_param`` (2: fp16 /
    bf16 on a GPU; 4: fp32 on the CPU) and ``ACTIVATION_GIB`` (0 when no model is loaded: none or ``PIXELS``).

    Scoring runs at a sampling point, after the training step's activations are freed and the sampling pipeline's
    modules went back where they live: it adds to the run's resident memory (weights, optimizer state: the memory
    table's ``floor_gib``), not to its training peak. ``peak_with_scoring_gib`` is the run's peak with it."""
    params = model_params(dino) + model_params(clip)
    return 0.0 if params == 0 else params * bytes_per_param / 2**30 + ACTIVATION_GIB


def peak_with_scoring_gib(peak_gib: float, floor_gib: float, scoring_gib: float) -> float:
    """A run's peak GPU memory with scoring: the training peak, or the resident floor plus the scoring models when
    that is more (a configuration whose training fills its GPU to the floor: a full fine-tune)."""
    return max(peak_gib, floor_gib + scoring_gib)


def scoring_seconds(points: int, images: int, train_steps_per_s: float, *, sample_steps: int = 25,
                    scorers_s: float = SCORERS_GPU_S) -> float:  # fmt: skip
    """Seconds that scoring adds to a run: at each of ``points`` sampling points, ``images`` generated images (one
    per scoring prompt, ``sample_steps`` denoising steps each, at ``DENOISE_STEP_VS_TRAIN_STEP`` of a training step
    at ``train_steps_per_s``) and the scoring models' ``scorers_s``. 0 when no image is asked for."""
    if points <= 0 or images <= 0 or train_steps_per_s <= 0:
        return 0.0
    image_s = sample_steps * DENOISE_STEP_VS_TRAIN_STEP / train_steps_per_s
    return points * (images * image_s + scorers_s)
