"""The Flux.1 family (``FluxPipeline``: FLUX.1 [dev] and [schnell]) and the flow-matching pieces the Flux families share.

Flux.1 conditions its transformer on CLIP's pooled output and T5's token embeddings, denoises 2x2-packed latents
of a 16-channel VAE (shifted and scaled by the VAE config), and [dev] embeds a guidance value (distilled CFG). It
is trained by rectified flow matching, as diffusers' own training helpers do it:

- per sample a ``u`` in (0, 1) is drawn from its own generator (``compute_density_for_timestep_sampling``,
  logit-normal by default), and shifted as the scheduler config says: a static ``shift``, or, with
  ``use_dynamic_shifting``, the resolution-dependent shift ``mu`` between ``base_shift`` and ``max_shift`` over
  the image sequence length (the scheduler's own exponential or linear time shift) -> ``sigma``;
- ``noisy = (1 - sigma) * x + sigma * noise``, target ``noise - x``, the transformer called at ``timestep = sigma``
  (the pipelines pass ``t / 1000``) with the image and text position ids; [dev]'s guidance is 1.0 while training;
- LoRA on the attention projections and feed-forwards of the double-stream blocks and the single blocks' q/k/v
  (the default of diffusers' ``train_dreambooth_lora_flux.py``).

Its LoRA is saved with ``FluxPipeline.save_lora_weights`` and copied into the kohya ``lora_unet_*`` layout over the
original (BFL) module names with ``.alpha``: the copy both ComfyUI and diffusers' kohya loader read (diffusers
does not read ComfyUI's ``diffusion_model.*`` layout for Flux.1). The fused BFL projections (``img_attn.qkv``,
``single_blocks.N.linear1`` = q/k/v/mlp) get one block-diagonal LoRA: the diffusers LoRAs' down matrices stacked,
their up matrices on the diagonal, zero blocks for untrained parts, so the weight change is exactly the same.

Imports no torch / diffusers at import time (the control plane reads the allow-list and defaults).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from training.export import COMFY_NAME  # noqa: F401  (re-exported: the families and tests import it here)
from training.families import register_family
from training.families.base import CardInfo, Components, FamilyDefaults, LatentSet, ModelFamily, TextCond

if TYPE_CHECKING:
    import torch

    from training.data import PreparedImage
    from training.families.rules import BaseModelProblem
    from training.spec import TrainParams

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"

#: diffusers' ``train_dreambooth_lora_flux.py`` default targets (double blocks; "attn.to_*" also hits the single
#: blocks' q/k/v)
FLUX1_LORA_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip

FLUX1_DEV_LICENSE = {
    "license": "other",
    "license_name": "flux-1-dev-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
}


# ============================================================================================== shared flow matching
class FlowMatchingFamily(ModelFamily):
    """What the Flux families share: flow-matching noise, target and time draw, staged loading with the big text
    encoders freed after caching, cached-conditioning sampling. Subclasses map latents into the transformer's
    space (``to_model_space``) and call it (``predict``)."""

    denoiser_name = "transformer"
    free_text_encoders_after_caching = True
    staged_loading = True
    supports_text_encoder_training = False
    #: ``compute_density_for_timestep_sampling``'s scheme for the time draw ("logit_normal", "mode", "none")
    timestep_sampling: ClassVar[str] = "logit_normal"
    logit_mean: ClassVar[float] = 0.0
    logit_std: ClassVar[float] = 1.0
    mode_scale: ClassVar[float] = 1.29
    #: the text encoders' token length (the pipelines' ``max_sequence_length`` default)
    max_sequence_length: ClassVar[int] = 512
    #: the ComfyUI copy's layout (``training.export.bfl``): kohya's ``lora_unet_*`` with ``.alpha`` (True), or
    #: ``diffusion_model.*`` with the scale baked into ``lora_B`` (False)
    comfy_kohya: ClassVar[bool] = True
    #: the transformer's LoRA target modules (a family that derives them from its config overrides ``lora_targets``)
    lora_target_modules: ClassVar[tuple[str, ...]] = ()
    #: the diffusers pipeline class its samples use, by name
    pipeline_name: ClassVar[str] = ""

    # ---- torch-free
    @classmethod
    def index_problem(cls, base_model: str, index: dict[str, Any]) -> BaseModelProblem | None:
        from training.families.rules import not_a_pipeline

        missing = [n for n in cls.components if n not in index]
        if missing:
            return not_a_pipeline(base_model, f"model_index.json has no {', '.join(missing)}", f"{cls.label} pipeline")
        return None

    def component_class(self, name: str, class_name: str) -> type:
        """Only the classes this family allow-lists for ``name`` (then the fixed table of ``families.classes``)."""
        allowed = self.components.get(name, ("", frozenset()))[1]
        if class_name not in allowed:
            raise KeyError(f"{class_name!r} is not an allowed class for {name!r} of a {self.label}")
        return super().component_class(name, class_name)

    def lora_targets(self, component: str) -> list[str]:
        """``lora_target_modules``, on the transformer only."""
        if component != self.denoiser_name:
            raise ValueError(f"{self.label}: LoRA trains the transformer only, not {component!r}")
        return list(self.lora_target_modules)

    def pipeline_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_name)

    def build_pipeline(self, comps: Components, *, denoiser=None, text_encoders=None):
        """``pipeline_class()`` over the live (or given) parts; ``pipeline_parts`` names the text encoders."""
        tes = text_encoders or comps.text_encoders
        pipe = self.pipeline_class()(scheduler=self.scheduler_for_sampling(comps), vae=comps.vae,
                                     transformer=denoiser or comps.denoiser, **self.pipeline_parts(comps, tes))  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def pipeline_parts(self, comps: Components, text_encoders: list[Any]) -> dict[str, Any]:
        """The pipeline's other arguments: one text encoder and its tokenizer."""
        return {"text_encoder": text_encoders[0], "tokenizer": comps.tokenizers[0]}

    def latent_multiple(self) -> int:
        """Image sizes must be multiples of this (VAE scale x the 2x2 patches)."""
        return 2 * self.vae_scale_factor()

    def check_params(self, params: TrainParams) -> None:
        from training.exitcodes import BadInputError

        super().check_params(params)
        m = self.latent_multiple()
        if params.resolution is not None and params.resolution % m:
            raise BadInputError(f"{self.label}: resolution must be a multiple of {m} (got {params.resolution})")

    # ---- loading
    def vae_dtype(self, weight_dtype: torch.dtype) -> torch.dtype:
        """The Flux VAEs are stable in bf16 (diffusers trains with them so); fp16 is not trusted: fp32 then."""
        import torch

        return torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float32

    def load(self, src, variants, *, denoiser_dtype, text_dtype, weight_dtype, parts=None, into=None,
             quantization_config: Any = None) -> Components:  # fmt: skip
        """Transformer (``denoiser_dtype``; ``quantization_config``: a diffusers quantization config for QLoRA, or
        None), VAE (bf16 with bf16 mixed precision, else fp32), text encoders (``text_dtype``) and tokenizers, and
        the repo's flow-matching scheduler; safetensors only, each from its chosen variant, all frozen."""
        want = _parts(parts)
        comps = into or Components(self.info, None, None, [], [], None)
        index = self.info.index

        def cls_of(name: str) -> type:
            return self.component_class(name, index[name][1])

        if want("text"):
            comps.text_encoders, comps.tokenizers = [], []
            for name, tok_name in zip(self.text_encoder_names(index), self.tokenizer_names(index), strict=True):
                comps.text_encoders.append(
                    cls_of(name).from_pretrained(
                        src, subfolder=name, torch_dtype=text_dtype, use_safetensors=True, variant=variants.get(name)
                    )
                )
                comps.tokenizers.append(cls_of(tok_name).from_pretrained(src, subfolder=tok_name))  # fmt: skip
        if want("vae"):
            comps.vae = cls_of("vae").from_pretrained(src, subfolder="vae", torch_dtype=self.vae_dtype(weight_dtype),
                                                      use_safetensors=True, variant=variants.get("vae"))  # fmt: skip
            self.on_vae_loaded(comps)
        if want("denoiser"):
            kwargs = {"quantization_config": quantization_config} if quantization_config is not None else {}
            comps.denoiser = cls_of("transformer").from_pretrained(
                src, subfolder="transformer", torch_dtype=denoiser_dtype, use_safetensors=True,
                variant=variants.get("transformer"), **kwargs,
            )  # fmt: skip
        if want("scheduler"):
            comps.noise_scheduler = cls_of("scheduler").from_pretrained(src, subfolder="scheduler")
        comps.extra["weight_dtype"] = weight_dtype
        for m in (comps.denoiser, comps.vae, *comps.text_encoders):
            if m is not None:
                m.requires_grad_(False)
        return comps

    def on_vae_loaded(self, comps: Components) -> None:
        """Keep what the step needs from the VAE (it leaves the GPU after caching)."""

    # ---- caching
    #: cache the posterior's mode (mean, std 0) instead of sampling it per step (diffusers' Flux.2 scripts)
    latent_mode: ClassVar[bool] = False

    def encode_images(self, comps: Components, images: list[PreparedImage], resolution: int, flip: bool) -> LatentSet:
        import numpy as np
        import torch

        vae = comps.vae
        means, stds = [], []
        with torch.no_grad():
            for img in images:
                pix = torch.from_numpy(np.asarray(img.image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
                if flip:
                    pix = torch.cat([pix, torch.flip(pix, dims=[3])])
                dist = vae.encode(pix.to(_device_of(vae), vae.dtype)).latent_dist
                means.append(dist.mean.float().cpu())
                stds.append(torch.zeros_like(means[-1]) if self.latent_mode else dist.std.float().cpu())
        mean, std = torch.stack(means), torch.stack(stds)  # [N, 1 or 2, C, h, w]
        return LatentSet(
            mean[:, 0],
            std[:, 0],
            mean[:, 1] if flip else None,
            std[:, 1] if flip else None,
            torch.zeros(len(images), 0),
        )

    def release_text_encoders(self, comps: Components) -> None:
        """Encoders freed from the GPU and host RAM (T5-XXL / Qwen3 are several GB); what sampling needs from
        them afterwards is cached first (``cache_before_release``)."""
        self.cache_before_release(comps)
        super().release_text_encoders(comps)  # the tokenizers are small: kept
        _free_memory()

    def cache_before_release(self, comps: Components) -> None:
        """Conditioning sampling needs beyond the prompts' own (Flux.2 [klein]: the empty negative prompt)."""

    # ---- the step
    def num_train_timesteps(self, comps: Components) -> int:
        return int(comps.noise_scheduler.config.num_train_timesteps)

    def draw_time(self, g, comps: Components, params: TrainParams) -> float:
        """``u`` in (0, 1) from ``g`` alone (``compute_density_for_timestep_sampling``); ``sigmas`` shifts it."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(
            self.timestep_sampling, 1, logit_mean=self.logit_mean, logit_std=self.logit_std,
            mode_scale=self.mode_scale, generator=g,
        )  # fmt: skip
        return float(u.clamp(0.0, 1.0))

    def sigmas(self, comps: Components, times: torch.Tensor, model_shape: torch.Size) -> torch.Tensor:
        """The noise levels of draws ``times`` for latents of ``model_shape`` (see ``shifted_sigmas``)."""
        return shifted_sigmas(times.float(), comps.noise_scheduler.config, self.image_seq_len(model_shape))

    def to_model_space(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents [B, C, h, w] -> the space the transformer denoises (normalised, maybe patchified)."""
        raise NotImplementedError

    def noise_to_model_space(self, comps: Components, noise: torch.Tensor) -> torch.Tensor:
        """Noise drawn in the raw latent shape, rearranged like the latents (i.i.d. Gaussian either way)."""
        return noise

    def image_seq_len(self, model_shape: torch.Size) -> int:
        """Transformer image tokens for model-space latents of this shape."""
        raise NotImplementedError

    def noisy_and_target(self, comps, latents, noise, times):
        """``(1 - sigma) x + sigma noise`` and the velocity target ``noise - x``, in the transformer's space."""
        x = self.to_model_space(comps, latents.float())
        n = self.noise_to_model_space(comps, noise.float())
        s = self.sigmas(comps, times.to(x.device), x.shape).view(-1, *([1] * (x.ndim - 1)))
        return (1.0 - s) * x + s * n, n - x

    def loss_weights(self, comps, times, params):
        """None: logit-normal time draws weight the loss by sampling (``compute_loss_weighting_for_sd3`` is 1)."""
        return None

    def model_dtype(self, comps: Components) -> torch.dtype:
        """The dtype the transformer's inputs are cast to: its own (diffusers' ``dtype``: that of its first
        floating-point weight, the compute dtype also when quantized), else the mixed-precision weight dtype."""
        return getattr(comps.denoiser, "dtype", None) or comps.extra["weight_dtype"]

    # ---- sampling
    def scheduler_for_sampling(self, comps: Components):
        """A fresh scheduler from the training one's config (a pipeline's ``set_timesteps`` mutates it)."""
        return type(comps.noise_scheduler).from_config(comps.noise_scheduler.config)

    def generate(self, pipe, comps, prompts, resolution, params, generator, acc, conds=None):
        """Images from the pipeline (decoded by it) under the accelerator's autocast, from cached conditioning
        (``conds``) when the text encoders are gone."""
        import torch

        kwargs = {"height": resolution, "width": resolution, "num_inference_steps": params.sample_inference_steps,
                  "generator": generator, **self.sampling_defaults()}  # fmt: skip
        if conds is not None:
            kwargs.update(self.cond_kwargs(comps, conds, acc.device))
        else:
            kwargs.update(prompt=list(prompts), max_sequence_length=self.max_sequence_length)
        with torch.no_grad(), acc.autocast():
            return list(pipe(**kwargs).images)

    def cond_kwargs(self, comps: Components, conds: list[TextCond], device) -> dict[str, Any]:
        """Pipeline keyword arguments carrying cached prompt conditioning."""
        raise NotImplementedError

    # ---- outputs
    def extra_lora_outputs(self, out_dir, written: list[str]) -> list[str]:
        """The ComfyUI copy of the LoRA (``COMFY_NAME``; ``training.export.bfl``), in the family's layout."""
        from training.export.bfl import write_comfy_copy

        out = Path(out_dir)
        write_comfy_copy(out / written[0], out / COMFY_NAME, self.bfl_groups(), kohya=self.comfy_kohya)
        return [COMFY_NAME]

    def bfl_groups(self) -> dict[str, list]:
        """BFL module name -> [(diffusers module, output rows)] for this model's transformer."""
        raise NotImplementedError

    def transformer_blocks(self, default: tuple[int, int]) -> tuple[int, int, int]:
        """(double-stream blocks, single-stream blocks, attention width) from the transformer's config."""
        cfg = self.info.denoiser_config
        inner = int(cfg.get("num_attention_heads", 24)) * int(cfg.get("attention_head_dim", 128))
        return int(cfg.get("num_layers", default[0])), int(cfg.get("num_single_layers", default[1])), inner


# ============================================================================================== Flux.1
@register_family("flux1")
class Flux1(FlowMatchingFamily):
    """FLUX.1 [dev] / [schnell]: CLIP-L (pooled) + T5-XXL conditioning, guidance embedding for [dev], packed latents."""

    label = "FLUX.1 ([dev] / [schnell])"
    pipelines = frozenset({"FluxPipeline"})
    pipeline_name = "FluxPipeline"
    lora_target_modules = tuple(FLUX1_LORA_TARGETS)
    components = {
        "transformer": ("diffusers", frozenset({"FluxTransformer2DModel"})),
        "vae": ("diffusers", frozenset({"AutoencoderKL"})),
        "text_encoder": ("transformers", frozenset({"CLIPTextModel"})),
        "tokenizer": ("transformers", frozenset({"CLIPTokenizer", "CLIPTokenizerFast"})),
        "text_encoder_2": ("transformers", frozenset({"T5EncoderModel"})),
        "tokenizer_2": ("transformers", frozenset({"T5TokenizerFast", "T5Tokenizer"})),
        "scheduler": ("diffusers", frozenset({"FlowMatchEulerDiscreteScheduler"})),
    }
    text_encoder_components = ("text_encoder", "text_encoder_2")
    defaults = FamilyDefaults(
        hardware="l4x1", resolution=512, learning_rate=1e-4, rank=16,
        hardware_note="FLUX.1 needs bf16 (an L4 or better); on a T4 it runs only with a 4-bit (NF4) base, several "
        "times slower",
    )  # fmt: skip
    denoiser_params = 11_901_408_320  # FLUX.1 [dev] transformer
    #: [dev]'s guidance embedding while training (diffusers trains with 1.0) and for samples (the pipeline's 3.5)
    train_guidance: ClassVar[float] = 1.0
    sample_guidance: ClassVar[float] = 3.5

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """[dev] and [schnell] share the 11.9 B transformer: "flux1"."""
        return "flux1"

    @property
    def has_guidance(self) -> bool:
        return bool(self.info.denoiser_config.get("guidance_embeds", False))

    # ---- caching
    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        """CLIP ids (its 77 tokens) and T5 ids (``max_sequence_length``), as ``FluxPipeline.encode_prompt``."""
        clip, t5 = comps.tokenizers
        lengths = (clip.model_max_length, self.max_sequence_length)
        return [tok(prompt, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
                for tok, n in zip((clip, t5), lengths, strict=True)]  # fmt: skip

    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """{"pooled": CLIP's pooled output [B, 768], "embeds": T5's last hidden state [B, L, 4096]}."""
        clip, t5 = encoders
        pooled = clip(token_ids[0].to(_device_of(clip)), output_hidden_states=False).pooler_output
        embeds = t5(token_ids[1].to(_device_of(t5)), output_hidden_states=False)[0]
        return {"embeds": embeds, "pooled": pooled}

    # ---- the step
    def to_model_space(self, comps, latents):
        """Shifted and scaled as the VAE config says (unpacked: [B, 16, h, w]; ``predict`` packs)."""
        cfg = comps.vae.config if comps.vae is not None else comps.extra["vae_config"]
        return (latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def on_vae_loaded(self, comps: Components) -> None:
        comps.extra["vae_config"] = comps.vae.config

    def image_seq_len(self, model_shape) -> int:
        return (model_shape[-2] // 2) * (model_shape[-1] // 2)

    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        """Pack 2x2, call the transformer at ``timestep = sigma`` with image/text ids (and [dev]'s guidance 1.0),
        unpack the velocity back to [B, 16, h, w]."""
        import torch
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        dtype, dev = self.model_dtype(comps), noisy.device
        sigma = self.sigmas(comps, times.to(dev), noisy.shape)
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w).to(dtype)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, dev, dtype)
        embeds = cond["embeds"].to(dev, dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=dev, dtype=dtype)
        guidance = torch.full((b,), self.train_guidance, device=dev) if self.has_guidance else None
        out = denoiser(
            hidden_states=packed, timestep=sigma.to(dtype), guidance=guidance,
            pooled_projections=cond["pooled"].to(dev, dtype), encoder_hidden_states=embeds,
            txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]  # fmt: skip
        return FluxPipeline._unpack_latents(out, h, w, 1)

    # ---- sampling
    def pipeline_parts(self, comps: Components, text_encoders: list[Any]) -> dict[str, Any]:
        """CLIP and T5, each with its tokenizer."""
        return {"text_encoder": text_encoders[0], "tokenizer": comps.tokenizers[0], "text_encoder_2": text_encoders[1],
                "tokenizer_2": comps.tokenizers[1]}  # fmt: skip

    def sampling_defaults(self) -> dict[str, Any]:
        """[dev]: the embedded guidance 3.5 (the pipeline's default); [schnell]: no guidance."""
        return {"guidance_scale": self.sample_guidance if self.has_guidance else 0.0}

    def cond_kwargs(self, comps, conds, device):
        import torch

        return {
            "prompt_embeds": torch.cat([c.tensors["embeds"] for c in conds]).to(device),
            "pooled_prompt_embeds": torch.cat([c.tensors["pooled"] for c in conds]).to(device),
        }

    # ---- outputs
    def bfl_groups(self) -> dict[str, list]:
        from training.export.bfl import flux1_bfl_groups

        return flux1_bfl_groups(*self.transformer_blocks((19, 38)))

    def card_info(self, comps: Components) -> CardInfo:
        return CardInfo(
            **self.card_license(),
            tags=("flux", "flux-diffusers", "template:sd-lora"),
            pipeline_class="FluxPipeline",
            weight_notes={
                WEIGHTS_NAME: "in diffusers format (`FluxPipeline.load_lora_weights`)",
                COMFY_NAME: "the same LoRA in the kohya `lora_unet_` layout over the original FLUX.1 module names, "
                "which ComfyUI's LoRA loader (and diffusers) read",
            },
        )

    def card_license(self) -> dict[str, str]:
        """The licence fields for the card's metadata ([dev]: the FLUX.1 [dev] non-commercial licence)."""
        return dict(FLUX1_DEV_LICENSE) if self.has_guidance else {"license": "apache-2.0"}


# ============================================================================================== helpers
def shifted_sigmas(u: torch.Tensor, config: Any, image_seq_len: int) -> torch.Tensor:
    """Noise levels from draws ``u`` in [0, 1] as a ``FlowMatchEulerDiscreteScheduler`` config says: without
    ``use_dynamic_shifting`` its static ``shift`` (``shift u / (1 + (shift - 1) u)``, as its training sigmas);
    with it the resolution-dependent shift ``mu`` (linear in the image sequence length from ``base_shift`` at
    ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len``, as ``FluxPipeline`` computes it) applied
    with the scheduler's time-shift type."""
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    if not get("use_dynamic_shifting", False):
        shift = float(get("shift", 1.0))
        return shift * u / (1 + (shift - 1) * u)
    base_len, max_len = int(get("base_image_seq_len", 256)), int(get("max_image_seq_len", 4096))
    base_shift, max_shift = float(get("base_shift", 0.5) or 0.5), float(get("max_shift", 1.15) or 1.15)
    mu = base_shift + (max_shift - base_shift) * (image_seq_len - base_len) / (max_len - base_len)
    u = u.clamp(1e-6, 1.0)
    if get("time_shift_type", "exponential") == "linear":
        return mu / (mu + (1 / u - 1))
    return math.exp(mu) / (math.exp(mu) + (1 / u - 1))


def chat_turn_ids(tokenizer: Any, prompt: str, max_length: int, *, thinking: bool) -> torch.Tensor:
    """``prompt`` as one user turn of ``tokenizer``'s chat template with the generation prompt (``thinking``: its
    ``enable_thinking``), padded and cut to ``max_length``: token ids [1, max_length] (the Qwen3-conditioned
    families, FLUX.2 [klein] and Z-Image)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=thinking)  # fmt: skip
    return tokenizer(text, return_tensors="pt", padding="max_length", truncation=True, max_length=max_length)["input_ids"]


def _device_of(module: Any):
    """The device of a module's first parameter (works through DDP wrappers, which have no ``.device``)."""
    return next(module.parameters()).device


def _parts(parts: Collection[str] | None):
    """``want(role)`` for ``load``'s ``parts`` (``training.families.base.LOAD_PARTS``)."""
    return (lambda role: True) if parts is None else (lambda role: role in parts)


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
