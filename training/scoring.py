"""The scoring models and the maths of ``contract.scores``: subject fidelity (DINO, CLIP-I) and prompt fidelity
(CLIP-T) of a sampling point's images, on the GPU right after sampling.

``Scorers.load`` loads the models ``scorer_ids`` names (``contract.scoring_models``: the ids, the exact files, the
memory and time they cost) the way base models load: from a local folder or a Hub repo id, only the files they
need (into the Hugging Face cache, where a Space's ``preload_from_hub`` puts them; the cached copy in offline mode),
weights from ``model.safetensors`` only (pickle ``.bin`` files can run code), classes from a fixed table (never
remote code). ``Scorers.close`` frees them before training resumes.

The embeddings: DINO is the CLS token of the last layer (after its layer norm: ``Dinov2Model``'s pooler output, as
the paper's DINO ViT-S/16 embedding); CLIP-I and CLIP-T are CLIP's projected image and text embeddings. Every
embedding is L2-normalised, so each score is a mean cosine similarity, on the paper's scale (CLIP-T about 0.3).

CLIP-T is computed here from the loaded ``CLIPModel`` rather than with torchmetrics' ``CLIPScore``, although
torchmetrics 1.9 takes an already-loaded model and processor through a callable: it normalises what
``get_image_features`` returns, which transformers 5 made a ``BaseModelOutputWithPooling`` instead of a tensor (it
fails with an AttributeError); it does not cast the pixels to a half-precision model's dtype, moves the model to the
images' device, and reports ``max(100 * cos, 0)``. The score is the same cosine, two lines here, without the extra
dependency.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from contract.scoring_models import CLIP_FILES, DINO_FILES, PIXELS, off
from training.base_check import DEMO_MODEL
from training.hub_models import ModelRole, model_type, safetensors_folder

if TYPE_CHECKING:
    from PIL.Image import Image

    from contract.settings import Settings

__all__ = ["PIXELS", "Scorers", "ScoringUnavailable", "mean_pairwise_cosine", "pixel_embeddings", "scorer_ids"]
log = logging.getLogger(__name__)

#: images embedded at once (bounds the scoring models' activations: ``contract.scoring_models.ACTIVATION_GIB``)
BATCH = 8
#: the side of the ``PIXELS`` embedding's image (8 x 8 RGB: 192 numbers)
PIXELS_SIDE = 8
#: the DINO model classes by config ``model_type``: DINOv2, and the first DINO (``facebook/dino-vits16``: a ViT)
DINO_CLASSES = {"dinov2": "Dinov2Model", "vit": "ViTModel"}


class ScoringUnavailable(Exception):
    """A scoring model cannot be loaded; the message names it and says why."""


def scorer_ids(base_model: str, settings: Settings) -> tuple[str | None, str | None]:
    """(subject model, CLIP model) for a run: SCORING_DINO_MODEL / SCORING_CLIP_MODEL (their defaults
    ``contract.scoring_models.DEFAULT_*``; None: the measure is off). For the demo model (``DEMO_MODEL``, as the task
    names it), whose samples are noise, a variable left unset gives ``PIXELS`` and no CLIP."""
    dino, clip = settings.scoring_dino_model, settings.scoring_clip_model
    if base_model == DEMO_MODEL:
        sources = settings.sources()
        dino = PIXELS if sources.get("scoring_dino_model", "default") == "default" else dino
        clip = None if sources.get("scoring_clip_model", "default") == "default" else clip
    return dino, clip


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The mean cosine similarity over every pair (row of ``a``, row of ``b``): [n, d] and [m, d] embeddings."""
    if a.ndim != 2 or b.ndim != 2 or not len(a) or not len(b):
        raise ValueError(f"mean_pairwise_cosine needs two non-empty [n, d] tensors, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")  # fmt: skip
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return float((a @ b.T).mean())


def pixel_embeddings(images: list[Image]) -> torch.Tensor:
    """``PIXELS``: each image as 8 x 8 RGB (box filter: the mean colour of each cell), values in [0, 1] less 0.5,
    flattened and L2-normalised ([n, 192]: the colour layout as a direction from mid-grey)."""
    from PIL.Image import Resampling

    side = (PIXELS_SIDE, PIXELS_SIDE)
    rows = [torch.tensor(list(im.convert("RGB").resize(side, Resampling.BOX).tobytes()), dtype=torch.float32)
            for im in images]  # fmt: skip
    return torch.nn.functional.normalize(torch.stack(rows) / 255.0 - 0.5, dim=-1)


# ---------------------------------------------------------------- finding and loading a model's files
#: how ``training.hub_models`` names a scoring model in a refusal, and what it raises
ROLE = ModelRole("scoring model", ScoringUnavailable, "--scoring")


def model_folder(model: str, files: tuple[str, ...]) -> Path:
    """A local folder with ``model``'s ``files`` (a local folder as it is; a Hub repo's cached snapshot) whose weights
    are safetensors; ``ScoringUnavailable`` otherwise (a folder with pickle weights only is refused)."""
    return safetensors_folder(model, files, ROLE)


def _placed(module: torch.nn.Module, device: Any, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` for inference: ``dtype`` on an accelerator, float32 on the CPU."""
    device = torch.device(device)
    return module.to(device, dtype if device.type != "cpu" else torch.float32).eval().requires_grad_(False)


# ---------------------------------------------------------------- the embedders
def _typed_folder(model: str, files: tuple[str, ...], kinds, what: str) -> tuple[Path, str]:
    """The local folder of ``model`` (``model_folder``) and its config's model type, which must be one of ``kinds``
    (``what`` names them in the refusal)."""
    folder = model_folder(model, files)
    kind, _ = model_type(model, folder, ROLE)
    if kind not in kinds:
        raise ScoringUnavailable(f"scoring model {model!r} is a {kind or 'model of unknown type'!r}, not {what}")
    return folder, kind


@contextlib.contextmanager
def _load_errors(model: str) -> Iterator[None]:
    """transformers' load errors as ``ScoringUnavailable`` naming ``model``."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise ScoringUnavailable(f"scoring model {model!r} could not be loaded ({e})") from e


class _Pixels:
    def images(self, images: list[Image]) -> torch.Tensor:
        return pixel_embeddings(images)


@dataclass
class _Dino:
    model: Any
    processor: Any

    @classmethod
    def load(cls, model: str, device: Any, dtype: torch.dtype) -> _Dino:
        import transformers

        folder, kind = _typed_folder(model, DINO_FILES, DINO_CLASSES, f"a DINO model ({', '.join(DINO_CLASSES)})")
        extra = {"add_pooling_layer": False} if kind == "vit" else {}
        with _load_errors(model):
            net = getattr(transformers, DINO_CLASSES[kind]).from_pretrained(
                folder, use_safetensors=True, local_files_only=True, **extra)
            processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        return cls(_placed(net, device, dtype), processor)

    @torch.inference_mode()
    def images(self, images: list[Image]) -> torch.Tensor:
        return _embedded(self.model, self.processor, images,
                         lambda px: self.model(pixel_values=px).last_hidden_state[:, 0])  # the CLS token


def _embedded(model: Any, processor: Any, images: list[Image],
              embed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """``embed(pixel_values)`` over ``images`` in batches of ``BATCH`` (prepared by ``processor``, on ``model``'s
    device and dtype): one L2-normalised float row per image, on the CPU."""
    param = next(model.parameters())
    out = []
    for i in range(0, len(images), BATCH):
        pixels = processor(images=[im.convert("RGB") for im in images[i:i + BATCH]], return_tensors="pt")
        out.append(embed(pixels["pixel_values"].to(param.device, param.dtype)).float().cpu())
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def _features(out: Any) -> torch.Tensor:
    """A CLIP ``get_*_features`` result as a tensor (transformers 5 returns an output whose pooler output it is)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@dataclass
class _Clip:
    model: Any
    processor: Any

    @classmethod
    def load(cls, model: str, device: Any, dtype: torch.dtype) -> _Clip:
        from transformers import CLIPModel, CLIPProcessor

        folder, _ = _typed_folder(model, CLIP_FILES, ("clip",), "a CLIP model ('clip')")
        with _load_errors(model):
            net = CLIPModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        return cls(_placed(net, device, dtype), processor)

    @torch.inference_mode()
    def images(self, images: list[Image]) -> torch.Tensor:
        return _embedded(self.model, self.processor, images,
                         lambda px: _features(self.model.get_image_features(pixel_values=px)))

    @torch.inference_mode()
    def texts(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        limit = self.model.config.text_config.max_position_embeddings  # CLIP's 77 tokens: longer prompts are cut
        out = []
        for i in range(0, len(texts), BATCH):
            tokens = self.processor(text=texts[i:i + BATCH], return_tensors="pt", padding=True, truncation=True,
                                    max_length=limit)  # fmt: skip
            out.append(_features(self.model.get_text_features(
                input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
            )).float().cpu())  # fmt: skip
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)


# ---------------------------------------------------------------- the scorers
@dataclass
class Scorers:
    """The loaded scoring models; ``models``: {"dino": id, "clip": id} for the measures that loaded."""

    models: dict[str, str] = field(default_factory=dict)
    _dino: Any = field(default=None, repr=False)
    _clip: Any = field(default=None, repr=False)

    @classmethod
    def load(cls, dino: str | None, clip: str | None, device: Any, dtype: torch.dtype) -> Scorers:
        """Load the subject model ``dino`` (a DINO model or ``PIXELS``) and the CLIP model ``clip`` (either None or
        empty: that measure is off) on ``device`` in ``dtype`` (float32 on the CPU). ``ScoringUnavailable`` when one
        cannot be loaded (none stays loaded then)."""
        scorers = cls()
        try:
            if not off(dino):
                assert dino is not None
                scorers._dino = _Pixels() if dino == PIXELS else _Dino.load(dino, device, dtype)
                scorers.models["dino"] = dino
            if not off(clip):
                assert clip is not None
                scorers._clip = _Clip.load(clip, device, dtype)
                scorers.models["clip"] = clip
        except BaseException:
            scorers.close()
            raise
        return scorers

    def photo_embeddings(self, photos: list[Image]) -> dict[str, torch.Tensor]:
        """{"dino": [n, d], "clip_i": [n, d]} of the training photos (the loaded measures): L2-normalised, float32 on
        the CPU, to compute once per run and pass to every ``score``."""
        out: dict[str, torch.Tensor] = {}
        if self._dino is not None:
            out["dino"] = self._dino.images(photos)
        if self._clip is not None:
            out["clip_i"] = self._clip.images(photos)
        return out

    def score(self, images: list[Image], prompts: list[str], subject: list[bool],
              photos: dict[str, torch.Tensor]) -> dict[str, float | None]:  # fmt: skip
        """{"dino", "clip_i", "clip_t"} of one sampling point: ``images[i]`` generated from ``prompts[i]``, showing the
        subject where ``subject[i]`` (``contract.scores.shows_subject``). dino / clip_i: the mean pairwise cosine
        between the subject images and ``photos`` (``photo_embeddings``); clip_t: the mean cosine of each image with
        its prompt (every image). None for a measure not loaded, or without images to score."""
        if not len(images) == len(prompts) == len(subject):
            raise ValueError(f"score: {len(images)} images, {len(prompts)} prompts, {len(subject)} subject flags")
        shown = [i for i, s in enumerate(subject) if s]
        out: dict[str, float | None] = {"dino": None, "clip_i": None, "clip_t": None}
        if self._dino is not None and shown and "dino" in photos:
            out["dino"] = mean_pairwise_cosine(self._dino.images([images[i] for i in shown]), photos["dino"])
        if self._clip is not None and images:
            embedded = self._clip.images(images)
            if shown and "clip_i" in photos:
                out["clip_i"] = mean_pairwise_cosine(embedded[shown], photos["clip_i"])
            out["clip_t"] = float((embedded * self._clip.texts(prompts)).sum(dim=-1).mean())
        return out

    def close(self) -> None:
        """Free the models before training resumes: references dropped, garbage collected, the GPU's cached blocks
        returned. ``models`` stays (the record names them)."""
        self._dino = self._clip = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
