"""The model-family interface: everything the DreamBooth loop needs to know about one kind of base model.

A family is one class in one file of ``training/families/`` (``sd.py``: Stable Diffusion 1.x/2.x/SDXL), registered
with ``@register_family`` (``training.families``) and detected from the base model's ``model_index.json``
``_class_name`` (``pipelines``). The loop in ``training/train.py`` is written against this class only:

    validate: family_for(index) -> family(info)          allow-list, native resolution, files to fetch
    load:     family.load(...) -> Components             (text side first, denoiser later, when ``staged_loading``)
    cache:    family.encode_images(...) -> LatentSet     once per image (+ its flip)
              family.tokenize / family.encode_prompt     once per prompt when the text encoders are frozen
              family.release_text_encoders(comps)        encoders off the GPU (and out of host RAM when they are big)
    step:     family.draw_time(g)                        per sample, from the sample's own generator (exact resume)
              family.noisy_and_target(...)               the noised input and the loss target
              family.predict(...)                        the denoiser's forward call
              family.loss_weights(...)                   per-sample weights (SD: min-SNR), or None
    LoRA:     family.lora_targets(component)             target module names per component
    sample:   family.build_pipeline / family.generate    the inference pipeline over the live (trained) modules
    save:     family.save_lora(...) + family.extra_lora_outputs(...), family.card_info(...)

The recipe (LoRA / full fine-tune) stays orthogonal: LoRA asks ``lora_targets``; a full fine-tune trains
``denoiser_name`` (and the text encoders).

Rules for a family module: it imports no torch / diffusers / transformers at import time (the CPU Space reads the
allow-lists and defaults through ``training.base_check`` and ``python -m training --list-families``); classes are
looked up in fixed tables (``component_class``), never by the string a repo names; weights load from safetensors
only (``training.files.choose_files`` picks the files; ``load`` gets their variants).

Tensors: latents are cached as fp32 CPU tensors; a prompt's conditioning is a dict of tensors each with a leading
batch dimension of 1 (the loop concatenates prompts and repeats them per sample along dim 0).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from contract.catalog import FamilyDefaults

if TYPE_CHECKING:
    import torch

    from training.data import PreparedImage
    from training.families.rules import BaseModelProblem
    from training.spec import TrainParams


#: what ``ModelFamily.load(parts=...)`` can load separately: the denoiser, the VAE, the text encoders with their
#: tokenizers, and the training scheduler
LOAD_PARTS = ("denoiser", "vae", "text", "scheduler")
#: the values of ``ModelFamily.memory_fit``
LADDER, QUANTIZED_BASE = "ladder", "quantized_base"


# ============================================================================================== records
@dataclass
class ModelInfo:
    """What the trainer knows about a base model before loading any weights: its ``model_index.json``, the configs
    of the denoiser and the VAE, its file list and the Hub commit it was listed at (None: a local folder)."""

    base_model: str
    index: dict[str, Any]
    denoiser_config: dict[str, Any]
    vae_config: dict[str, Any]
    files: list[str] = field(default_factory=list)
    revision: str | None = None

    @property
    def family(self) -> ModelFamily:
        """The family instance for this model (detected from ``index``; ``BadInputError`` if none matches)."""
        from training.families import family_for

        cached = self.__dict__.get("_family")
        if cached is None or cached.info is not self:
            cached = family_for(self.index)(self)
            self.__dict__["_family"] = cached
        return cached

    # conveniences (what the loop, the memory plan and the CLI ask)
    @property
    def is_sdxl(self) -> bool:
        from training.families.rules import is_sdxl_index

        return is_sdxl_index(self.index)

    @property
    def vae_scale_factor(self) -> int:
        return self.family.vae_scale_factor()

    @property
    def native_resolution(self) -> int:
        return self.family.native_resolution()

    @property
    def text_encoder_names(self) -> list[str]:
        return self.family.text_encoder_names(self.index)

    @property
    def component_names(self) -> list[str]:
        """Every component the trainer loads."""
        return self.family.component_names(self.index)


@dataclass
class Components:
    """The loaded parts of a pipeline. ``denoiser`` is the UNet or transformer; text encoders and tokenizers are
    lists in the family's order (``text_encoder_names``); ``noise_scheduler`` is the training scheduler;
    ``extra`` holds whatever else a family loads (e.g. a second VAE statistic)."""

    info: ModelInfo
    denoiser: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> ModelFamily:
        return self.info.family

    @property
    def is_sdxl(self) -> bool:
        return self.info.is_sdxl

    @property
    def prediction_type(self) -> str:
        return getattr(self.noise_scheduler.config, "prediction_type", None) or "flow"


@dataclass
class LatentSet:
    """Cached VAE latent distributions (mean and std, fp32, CPU) for a set of images, optionally with their
    horizontal flips, and per-image micro-conditioning (``time_ids``: SDXL's original size / crop / target size;
    shape [N, 0] for a family without any)."""

    mean: torch.Tensor  # [N, C, h, w] in the VAE's raw latent space (before the family's shift / scaling)
    std: torch.Tensor
    flip_mean: torch.Tensor | None
    flip_std: torch.Tensor | None
    time_ids: torch.Tensor  # [N, k]

    def __len__(self) -> int:
        return self.mean.shape[0]


@dataclass
class TextCond:
    """Conditioning for one prompt: its token ids per tokenizer (kept for trained text encoders) and, when the
    encoders are frozen, the cached tensors of ``ModelFamily.encode_prompt`` (each [1, ...])."""

    token_ids: list[torch.Tensor]
    tensors: dict[str, torch.Tensor] | None = None

    # SD's names for the two cached tensors
    @property
    def embeds(self) -> torch.Tensor | None:
        return None if self.tensors is None else self.tensors.get("embeds")

    @property
    def pooled(self) -> torch.Tensor | None:
        return None if self.tensors is None else self.tensors.get("pooled")


@dataclass(frozen=True)
class CardInfo:
    """Model-card metadata of a family: licence, tags, the pipeline class named in the usage snippet and the files
    the card describes (``weight_notes``: file name -> one sentence)."""

    license: str
    tags: tuple[str, ...]
    #: for ``license="other"``: the licence's name and where to read it (the Hub card's ``license_name`` /
    #: ``license_link``)
    license_name: str | None = None
    license_link: str | None = None
    pipeline_class: str = "AutoPipelineForText2Image"
    weight_notes: dict[str, str] = field(default_factory=dict)
    #: the usage snippet passes the prompt as ``prompt=`` (a pipeline whose first argument is not the prompt)
    prompt_keyword: bool = False
    #: an edit model: the card says it learnt an edit from pairs, and the snippet passes a source image
    edits: bool = False


#: components that hold no weights besides the tokenizers (an edit model's image processor: text files only)
NO_WEIGHTS = frozenset({"scheduler", "processor"})


# ============================================================================================== the interface
class ModelFamily(ABC):
    """One model family. Class attributes and classmethods are torch-free (allow-list, catalog); the instance,
    made per base model (``family(info)``), does the work. Subclass an existing family to change one piece."""

    #: registry name (``register_family`` sets it), e.g. "sd", "flux1", "flux2-klein"
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    #: ``model_index.json`` ``_class_name`` values this family trains (its detection key)
    pipelines: ClassVar[frozenset[str]] = frozenset()
    #: the allow-list: component -> (library, allowed class names); only these components and classes load
    components: ClassVar[dict[str, tuple[str, frozenset[str]]]] = {}
    #: the component that is denoised with (trained fully by ``dreambooth-full``, LoRA'd by ``dreambooth-lora``)
    denoiser_name: ClassVar[str] = "unet"
    vae_name: ClassVar[str] = "vae"
    #: every text-encoder component name this family may have, in order (``text_encoder_names`` picks those present)
    text_encoder_components: ClassVar[tuple[str, ...]] = ("text_encoder",)
    #: free the frozen text encoders from host RAM after caching (big T5 / Qwen encoders) instead of keeping them
    #: on the CPU for samples; the family's ``generate`` then samples from cached prompt conditioning
    free_text_encoders_after_caching: ClassVar[bool] = False
    #: load the text side (encoders, tokenizers, VAE), cache, free the encoders, and only then load the denoiser
    #: (lower host-RAM peak); only with frozen text encoders and without class images to generate
    staged_loading: ClassVar[bool] = False
    #: an edit model, trained on before/after pairs (``training.pairs``; its conditioning ``pair_conds`` and its
    #: samples ``sample_conds``) instead of photos of a subject
    edits: ClassVar[bool] = False
    #: whether ``train_text_encoder`` is supported (``BadInputError`` at validation otherwise)
    supports_text_encoder_training: ClassVar[bool] = True
    defaults: ClassVar[FamilyDefaults] = FamilyDefaults()
    #: save the LoRA under diffusers' older ``lora.down`` / ``lora.up`` names (what SD's training scripts write and
    #: the kohya copy reads); False: peft's ``lora_A`` / ``lora_B`` names, which every pipeline's loader reads
    #: (diffusers' Flux.2 loader reads only some of the older names: half a LoRA would load)
    lora_file_uses_diffusers_names: ClassVar[bool] = False
    #: approximate denoiser size (parameters) for the catalog and the form's warnings; 0 when it varies
    denoiser_params: ClassVar[int] = 0

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    # ---------------------------------------------------------------------------------------- torch-free (class)
    @classmethod
    def matches(cls, index: dict[str, Any]) -> bool:
        """Whether this family trains a pipeline with this ``model_index.json`` (default: its ``_class_name``)."""
        name = index.get("_class_name")
        return isinstance(name, str) and name in cls.pipelines

    @classmethod
    def component_names(cls, index: dict[str, Any]) -> list[str]:
        """Every component the trainer loads for this ``model_index.json``, in loading order (default: the
        allow-listed components the index names, with a non-null class)."""
        return [n for n in cls.components if _named(index, n)]

    @classmethod
    def weight_components(cls, index: dict[str, Any]) -> list[str]:
        """The weight-bearing components (everything but tokenizers, processors and the scheduler)."""
        return [n for n in cls.component_names(index) if not n.startswith("tokenizer") and n not in NO_WEIGHTS]

    @classmethod
    def text_encoder_names(cls, index: dict[str, Any]) -> list[str]:
        """The text encoders this pipeline has, in order."""
        return [n for n in cls.text_encoder_components if _named(index, n)]

    @classmethod
    def tokenizer_names(cls, index: dict[str, Any]) -> list[str]:
        """The tokenizer of each text encoder (``text_encoder_2`` -> ``tokenizer_2``)."""
        return [n.replace("text_encoder", "tokenizer") for n in cls.text_encoder_names(index)]

    @classmethod
    def index_problem(cls, base_model: str, index: dict[str, Any]) -> BaseModelProblem | None:
        """A structural problem of this family's ``model_index.json`` beyond the allow-list (e.g. no denoiser);
        None when it is fine. Class names are checked by ``training.base_check`` against ``components``."""
        from training.families.rules import not_a_pipeline

        missing = [n for n in (cls.denoiser_name, cls.vae_name, *cls.text_encoder_components[:1]) if n not in index]
        if missing:
            return not_a_pipeline(base_model, f"model_index.json has no {', '.join(missing)}", f"{cls.label} pipeline")
        return None

    @classmethod
    def memory_fit(cls) -> str:
        """How the fit check (``ui.fit_check``) estimates a model of this family: ``QUANTIZED_BASE`` (a LoRA with the
        quantized base the trainer's plan picks for the GPU, for a model with a ``memory_shape``; without one the
        answer notes that the family has no estimate yet) or ``LADDER`` (the memory table's rows for every recipe, as
        asked, then with gradient checkpointing, then 8-bit Adam; a model without a shape is a tiny or custom one
        and is not checked)."""
        return QUANTIZED_BASE

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """The full-size shape of the memory table and host-RAM records (``training.memory.SHAPES``) that a base
        model of this family has (by its name, or its ``model_index.json`` ``index`` when known), or None (not
        tabled: the fit check then only warns)."""
        return None

    @classmethod
    def catalog_entry(cls) -> dict[str, Any]:
        """This family as ``python -m training --list-families`` prints it (read by ``contract.catalog``)."""
        d = cls.defaults
        return {
            "name": cls.name,
            "label": cls.label or cls.name,
            "pipelines": sorted(cls.pipelines),
            "denoiser": cls.denoiser_name,
            "denoiser_params": cls.denoiser_params,
            "supports_text_encoder_training": cls.supports_text_encoder_training,
            "edits": cls.edits,
            "defaults": {
                "hardware": d.hardware,
                "resolution": d.resolution,
                "steps_per_image": d.steps_per_image,
                "learning_rate": d.learning_rate,
                "rank": d.rank,
                "hardware_note": d.hardware_note,
            },
        }

    # ---------------------------------------------------------------------------------------- per model
    def run_record_family(self) -> str | None:
        """The model family the app's run record names for this model (estimates of later runs match on it): the
        family's name; None when the record should not name one."""
        return self.name

    def component_class(self, name: str, class_name: str) -> type:
        """The Python class for an allow-listed ``class_name`` of component ``name``, from a fixed table (default:
        ``training.families.classes``, which knows the diffusers / transformers classes of the built-in families)."""
        from training.families.classes import component_class

        return component_class(class_name)

    def config_components(self) -> tuple[str, str]:
        """The two components whose ``config.json`` is read at inspection: the denoiser's and the VAE's."""
        return self.denoiser_name, self.vae_name

    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (per side)."""
        return 2 ** (len(self.info.vae_config.get("block_out_channels", [1, 1, 1, 1])) - 1)

    def native_resolution(self) -> int:
        """The resolution the model was trained at (the default when the task gives none)."""
        if self.defaults.resolution:
            return self.defaults.resolution
        return int(self.info.denoiser_config.get("sample_size", 64)) * self.vae_scale_factor()

    def check_params(self, params: TrainParams) -> None:
        """Refuse settings this family cannot train (``BadInputError``), before any weight is loaded."""
        from training.exitcodes import BadInputError

        if params.train_text_encoder and not self.supports_text_encoder_training:
            raise BadInputError(f"{self.label}: training the text encoder is not supported; set train_text_encoder off")

    @abstractmethod
    def load(
        self,
        src: str,
        variants: dict[str, str | None],
        *,
        denoiser_dtype: torch.dtype,
        text_dtype: torch.dtype,
        weight_dtype: torch.dtype,
        parts: Collection[str] | None = None,
        into: Components | None = None,
        quantization_config: Any = None,
    ) -> Components:
        """Load the components from the local folder ``src`` (files chosen and fetched already; ``variants``: the
        weights variant per component) in the given dtypes, every parameter frozen (``requires_grad_(False)``).

        ``parts`` limits what is loaded to some of ``LOAD_PARTS`` (None: everything); ``into`` is the earlier
        ``Components`` to fill (staged loading: "text", "vae", "scheduler" first, "denoiser" after caching).
        Modules not loaded are None. ``quantization_config``: a diffusers ``BitsAndBytesConfig`` /
        ``TorchAoConfig`` for the frozen denoiser (QLoRA), or None."""

    def training_device_modules(self, comps: Components) -> list[Any]:
        """The modules that go to the GPU right after loading (the denoiser, the VAE, the text encoders)."""
        return [m for m in (comps.denoiser, comps.vae, *comps.text_encoders) if m is not None]

    # ---- caching
    @abstractmethod
    def encode_images(self, comps: Components, images: list[PreparedImage], resolution: int, flip: bool) -> LatentSet:
        """VAE latent distributions of every image (and of its horizontal flip when ``flip``), fp32 on the CPU, in
        the VAE's raw space (``noisy_and_target`` applies shift and scaling), with per-image micro-conditioning."""

    @abstractmethod
    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        """Token ids ([1, L]) of ``prompt`` for each tokenizer."""

    @abstractmethod
    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """The conditioning tensors of a batch of prompts (token ids stacked along dim 0) through ``encoders`` (the
        live, possibly DDP-wrapped text encoders, in ``text_encoder_names`` order), as the family's pipeline
        computes them; every tensor has the batch on dim 0 (e.g. SD: {"embeds", "pooled"})."""

    def release_text_encoders(self, comps: Components) -> None:
        """After caching with frozen encoders: off the GPU; out of host RAM too when
        ``free_text_encoders_after_caching`` (the list then holds None)."""
        if self.free_text_encoders_after_caching:
            comps.text_encoders = [None for _ in comps.text_encoders]
        else:
            for te in comps.text_encoders:
                te.to("cpu")

    # ---- the training step
    @abstractmethod
    def num_train_timesteps(self, comps: Components) -> int:
        """The size of the training time grid (SD: the DDPM scheduler's 1000 steps)."""

    @abstractmethod
    def draw_time(self, g: torch.Generator, comps: Components, params: TrainParams) -> float | int:
        """One sample's time from its generator ``g`` (SD: an integer DDPM timestep; flow matching: a sigma, or a
        timestep on the scheduler's grid, with the family's shift). Must use ``g`` only (exact resume)."""

    @abstractmethod
    def noisy_and_target(
        self, comps: Components, latents: torch.Tensor, noise: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From raw cached latents (on the device), the denoiser's noisy input and the loss target (SD: scaled
        latents through DDPM ``add_noise``, target epsilon or v; flow matching: (1-s)x + s*noise, target noise-x)."""

    @abstractmethod
    def predict(
        self, comps: Components, denoiser: Any, noisy: torch.Tensor, times: torch.Tensor, cond: dict,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """The denoiser's prediction (same shape as the target) under the caller's autocast. ``cond``: the batch's
        conditioning tensors (``encode_prompt``'s keys); ``time_ids``: the batch's micro-conditioning."""

    def loss_weights(self, comps: Components, times: torch.Tensor, params: TrainParams) -> torch.Tensor | None:
        """Per-sample loss weights (shape [B]) or None for a plain mean (SD: min-SNR-gamma when ``snr_gamma``)."""
        return None

    # ---- LoRA
    @abstractmethod
    def lora_targets(self, component: str) -> list[str]:
        """The LoRA target module names (peft ``target_modules``) for the denoiser or a text encoder."""

    def lora_save_kwargs(self, component: str) -> str:
        """The ``save_lora_weights`` keyword of a component's layers (``unet_lora_layers``, ...)."""
        return f"{component}_lora_layers"

    # ---- sampling
    @abstractmethod
    def build_pipeline(self, comps: Components, *, denoiser: Any = None, text_encoders: list[Any] | None = None):
        """An inference pipeline over the live modules (no copies), with the family's sampling scheduler."""

    @abstractmethod
    def pipeline_class(self) -> type:
        """The diffusers pipeline class (its ``save_lora_weights`` writes the LoRA; ``save_pretrained`` a full
        fine-tune)."""

    def sampling_defaults(self) -> dict[str, Any]:
        """Keyword arguments the pipeline is called with for samples (e.g. ``guidance_scale``)."""
        return {}

    @abstractmethod
    def generate(self, pipe: Any, comps: Components, prompts: list[str], resolution: int, params: TrainParams,
                 generator: torch.Generator, acc: Any, conds: list[TextCond] | None = None) -> list[Any]:  # fmt: skip
        """PIL images for ``prompts`` (``params.sample_inference_steps`` steps, seeded by ``generator``) under the
        accelerator's autocast. ``conds``: the cached conditioning of those prompts, when the text encoders are
        gone (``free_text_encoders_after_caching``)."""

    # ---- outputs
    def save_lora(self, comps: Components, layers: dict[str, dict], metadata: dict[str, dict], out_dir) -> list[str]:
        """Write the LoRA in diffusers format with the pipeline's ``save_lora_weights`` (``layers``/``metadata``:
        component name -> diffusers-format state dict / peft config dict); return the file names written."""
        kwargs = {self.lora_save_kwargs(n): sd for n, sd in layers.items()}
        kwargs.update({f"{n}_lora_adapter_metadata": m for n, m in metadata.items()})
        self.pipeline_class().save_lora_weights(str(out_dir), **kwargs, safe_serialization=True)
        return ["pytorch_lora_weights.safetensors"]

    def extra_lora_outputs(self, out_dir, written: list[str]) -> list[str]:
        """Other layouts of the saved LoRA (SD: the kohya/A1111 copy; Flux: ComfyUI's); the extra file names."""
        return []

    @abstractmethod
    def card_info(self, comps: Components) -> CardInfo:
        """Licence, tags and usage notes for the model card."""


def _named(index: dict[str, Any], name: str) -> bool:
    """``name`` is a component of this pipeline: present, and not the ``[null, null]`` of an absent optional one
    (a malformed entry counts as present, so the allow-list check reports it)."""
    if name not in index:
        return False
    entry = index[name]
    return not (isinstance(entry, list) and entry and entry[0] is None)
