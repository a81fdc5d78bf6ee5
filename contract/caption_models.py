"""The model that writes captions for photos without their own ``.txt`` (issue 24), torch-free: its id, the exact
files it loads, its size and its time. ``training.captioner`` loads and runs it; the settings (CAPTION_MODEL), the
preload list and the form's estimate read this module.

The default is ``florence-community/Florence-2-base``: Microsoft's Florence-2-base (0.23 B parameters, MIT) converted
to transformers' own ``Florence2ForConditionalGeneration`` (transformers >= 4.56; no remote code), weights in
``model.safetensors``. It is the checkpoint transformers' Florence-2 docs and docstrings name, and the one its
conversion script (``convert_florence2_original_pytorch_to_hf.py``: ``save_pretrained`` of the model in float16 and of
the processor) writes. ``microsoft/Florence-2-base`` itself needs ``trust_remote_code`` and its tokenizer has no
``image_token`` under transformers 5: never load it here.
"""

from __future__ import annotations

DEFAULT_CAPTION_MODEL = "florence-community/Florence-2-base"

#: the files a captioner may load, those its repo has: weights from safetensors only; the processor's settings
#: (``preprocessor_config.json``; ``processor_config.json``, where transformers 5 saves the image processor too and
#: Florence-2 its post-processor), the tokenizer (a fast ``tokenizer.json``; BLIP's BERT ``vocab.txt``; BART's
#: ``vocab.json`` + ``merges.txt``) and the generation defaults
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
CAPTION_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.json", "merges.txt", "vocab.txt", *WEIGHTS_FILES)  # fmt: skip
#: the default repo's ``preload_from_hub`` item (which may list only files that exist): the files a transformers
#: 4.56 ``save_pretrained`` of the converted model and its processor writes and the load needs. NOT read from the
#: Hub's listing (no Hub access where this was written): check it with ``python -m training.preload --captions``
#: run with a token before relying on it, and drop a file the repo lacks.
PRELOAD_FILES = {
    DEFAULT_CAPTION_MODEL: ("config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
                            "processor_config.json", "tokenizer.json", "tokenizer_config.json"),
}  # fmt: skip

#: parameters of known captioning models, counted on the architecture built from the config
#: (``benchmarks/caption_cost.py``'s ``FLORENCE2_BASE_*``: DaViT-base + BART-base, vocabulary padded to 51,328; the
#: 0.23 B of Florence-2-base's model card): 463 MB of float16 ``model.safetensors``
KNOWN_PARAMS = {DEFAULT_CAPTION_MODEL: 231_443_968}

#: new tokens a caption may have at most (greedy decoding): a two-sentence detailed caption. The text encoders of
#: SD 1.5 / SDXL read 77 tokens of a prompt (CLIP's context), so longer captions would be cut there anyway
MAX_NEW_TOKENS = 77

#: seconds to caption one photo. On a CPU: measured (``benchmarks/results/caption_cost-2026-12-07-cpu.jsonl``:
#: Florence-2-base's architecture with random weights, float32, every caption forced to ``MAX_NEW_TOKENS`` new tokens,
#: 4 and 8 photos of 512 px in one batch, on 2 cores): 8.8 and 9.8 CPU seconds a photo (4.7 and 6.3 s of wall
#: clock), rounded up. On a GPU: an ASSUMPTION, not measured here (no GPU): a T4 or better runs the 0.23 B model in
#: fp16, batched, in well under a second a photo; measure it with ``benchmarks/caption_cost.py --device cuda`` and
#: replace this figure
CAPTION_CPU_S_PER_PHOTO = 10.0
CAPTION_GPU_S_PER_PHOTO = 0.5
#: seconds to load the captioner and free it. On a CPU: measured 0.2-0.5 s from the page cache (same record),
#: rounded up to 2 s for a cold disk (0.9 GB of float32 weights). On a GPU: an ASSUMPTION (0.46 GB of fp16 weights
#: read from the disk cache and moved to the GPU); a download on first use is not counted
CAPTION_CPU_LOAD_S = 2.0
CAPTION_GPU_LOAD_S = 10.0


def caption_seconds(n_photos: int, device: str) -> float:
    """Seconds that captioning ``n_photos`` photos adds to a run on ``device`` ("cpu", or an accelerator: "cuda", a
    GPU flavor): the captioner's load and free, and the photos' captions. 0 when there is no photo to caption."""
    if n_photos <= 0:
        return 0.0
    cpu = device == "cpu"
    per_photo = CAPTION_CPU_S_PER_PHOTO if cpu else CAPTION_GPU_S_PER_PHOTO
    return (CAPTION_CPU_LOAD_S if cpu else CAPTION_GPU_LOAD_S) + n_photos * per_photo
