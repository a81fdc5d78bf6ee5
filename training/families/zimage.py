"""The Z-Image family (``ZImagePipeline``: Z-Image and Z-Image-Turbo, Tongyi-MAI's 6B single-stream transformer).

It shares the Flux families' flow matching (``training.families.flux.FlowMatchingFamily``: time draw, static or
dynamic shift from the scheduler config, ``noisy = (1 - sigma) x + sigma noise``, velocity target ``noise - x``,
staged loading, sampling from cached conditioning). What is its own, as ``ZImagePipeline`` and diffusers'
``train_dreambooth_lora_z_image.py`` do it:

- one text encoder, Qwen3 (4B): the prompt is one user turn of its chat template with the generation prompt and
  ``enable_thinking=True`` (no empty think block), padded to ``max_sequence_length``; the conditioning is the
  second-to-last hidden state of the real (non-pad) tokens only, a variable-length list per prompt. It is cached
  padded (``embeds`` [B, L, H]) with its token mask (``mask`` [B, L]) and cut back to the real tokens per sample;
- the Flux 16-channel VAE, latents shifted and scaled by its config and fed unpacked: the transformer takes a list
  of [C, 1, h, w] latents (it patchifies 2x2 itself) and returns a list of the same shape;
- the transformer's time input is ``1 - sigma`` (0 = pure noise, 1 = clean; the pipeline passes
  ``(1000 - t) / 1000``) and its output is the negated velocity (the pipeline steps with ``-output``), so
  ``predict`` returns ``-output``: the velocity ``noise - x`` the loss compares with;
- LoRA on every attention block's q/k/v/out (the main layers and both refiners): the official script's default;
- the ComfyUI copy is ``diffusion_model.<diffusers module>.lora_A/lora_B.weight`` with ``.alpha``: ComfyUI's Z-Image
  (Lumina2) LoRA map reads diffusers module names under that prefix and slices them into its fused ``qkv``, and
  diffusers' Z-Image loader converts it back (``_convert_non_diffusers_z_image_lora_to_diffusers``);
- samples: the base model with true CFG (guidance 4.0, the empty prompt as negative); Turbo (its name says so)
  without CFG, as its card asks.

Imports no torch / diffusers at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from training.families import register_family
from training.families.base import CardInfo, Components, FamilyDefaults
from training.families.flux import COMFY_NAME, WEIGHTS_NAME, FlowMatchingFamily, _device_of, chat_turn_ids

if TYPE_CHECKING:
    import torch

#: the text encoder's hidden state ZImagePipeline conditions on (the second-to-last)
TEXT_HIDDEN_STATE = -2
#: diffusers' ``train_dreambooth_lora_z_image.py`` default targets (every ZImageTransformerBlock's attention)
ZIMAGE_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


@register_family("zimage")
class ZImage(FlowMatchingFamily):
    """Z-Image / Z-Image-Turbo: Qwen3 conditioning (masked tokens), unpacked 16-channel latents, time ``1 - sigma``."""

    label = "Z-Image"
    pipelines = frozenset({"ZImagePipeline"})
    pipeline_name = "ZImagePipeline"
    #: q/k/v/out of every attention (main layers, noise and context refiners), as the official script
    lora_target_modules = tuple(ZIMAGE_LORA_TARGETS)
    components = {
        "transformer": ("diffusers", frozenset({"ZImageTransformer2DModel"})),
        "vae": ("diffusers", frozenset({"AutoencoderKL"})),
        "text_encoder": ("transformers", frozenset({"Qwen3Model", "Qwen3ForCausalLM"})),
        "tokenizer": ("transformers", frozenset({"Qwen2Tokenizer", "Qwen2TokenizerFast"})),
        "scheduler": ("diffusers", frozenset({"FlowMatchEulerDiscreteScheduler"})),
    }
    text_encoder_components = ("text_encoder",)
    latent_mode = True  # the posterior's mode, as the official script caches it
    defaults = FamilyDefaults(
        hardware="l40sx1", resolution=1024, learning_rate=1e-4, rank=16,
        hardware_note="Z-Image (6B) trains in bf16 at 1024 px, about 1 s a step on an L40S; an L4 or an A10G large "
        "(24 GB) fits it too but is several times slower (the small A10G and the T4 small have too little host RAM "
        "to load it: about 19 GiB), and a T4 has no bf16 hardware",
    )  # fmt: skip
    denoiser_params = 6_154_908_736  # ZImageTransformer2DModel (dim 3840, 30 layers, 2 + 2 refiners)
    #: true-CFG scale for samples of the base model (its card: 3 to 5); Turbo takes none
    sample_guidance: ClassVar[float] = 4.0

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """ "zimage": Z-Image and Turbo share the 6.2 B transformer."""
        return "zimage"

    @property
    def is_turbo(self) -> bool:
        """Z-Image-Turbo (step-distilled, no CFG): told by its name only (its configs equal the base model's)."""
        return "turbo" in self.info.base_model.lower()

    # ---- loading
    def on_vae_loaded(self, comps: Components) -> None:
        comps.extra["vae_config"] = comps.vae.config

    # ---- caching
    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        """The prompt as one user turn of the chat template (generation prompt, ``enable_thinking=True``), padded
        to ``max_sequence_length``, as ``ZImagePipeline._encode_prompt`` tokenizes it."""
        return [chat_turn_ids(comps.tokenizers[0], prompt, self.max_sequence_length, thinking=True)]

    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """{"embeds": the second-to-last hidden state [B, L, H], "mask": its real tokens [B, L] (bool)}; the
        pipeline's conditioning of prompt ``i`` is ``embeds[i][mask[i]]``."""
        te = encoders[0]
        ids = token_ids[0].to(_device_of(te))
        mask = ids != comps.tokenizers[0].pad_token_id
        out = te(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return {"embeds": out.hidden_states[TEXT_HIDDEN_STATE], "mask": mask}

    def cache_before_release(self, comps: Components) -> None:
        """The empty prompt's conditioning [L, H]: the negative of the base model's CFG samples."""
        import torch

        if self.is_turbo or comps.text_encoders[0] is None:
            return
        with torch.no_grad():
            cond = self.encode_prompt(comps, comps.text_encoders, self.tokenize(comps, ""))
        comps.extra["negative_embeds"] = cond["embeds"][0][cond["mask"][0]].detach()

    # ---- the step
    def to_model_space(self, comps, latents):
        """Shifted and scaled as the VAE config says ([B, 16, h, w], unpacked: the transformer patchifies)."""
        cfg = comps.vae.config if comps.vae is not None else comps.extra["vae_config"]
        return (latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def image_seq_len(self, model_shape) -> int:
        """The transformer's image tokens (2x2 patches), as ``ZImagePipeline`` computes them for the shift."""
        return (model_shape[-2] // 2) * (model_shape[-1] // 2)

    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        """Each sample as a [C, 1, h, w] latent with its real caption tokens, the transformer at time ``1 - sigma``
        (fp32, as the pipeline passes it); its output negated: the velocity ``noise - x`` [B, C, h, w]."""
        import torch

        dtype, dev = self.model_dtype(comps), noisy.device
        sigma = self.sigmas(comps, times.to(dev), noisy.shape)
        embeds, mask = cond["embeds"].to(dev, dtype), cond["mask"].to(dev).bool()
        captions = [e[m] for e, m in zip(embeds, mask, strict=True)]
        latents = list(noisy.to(dtype).unsqueeze(2).unbind(dim=0))
        out = denoiser(latents, 1.0 - sigma.float(), captions, return_dict=False)[0]
        return -torch.stack(out, dim=0).squeeze(2)

    # ---- sampling
    def sampling_defaults(self) -> dict[str, Any]:
        """The base model: true CFG at ``sample_guidance``; Turbo: none (``guidance_scale`` 0 turns it off)."""
        return {"guidance_scale": 0.0 if self.is_turbo else self.sample_guidance}

    def cond_kwargs(self, comps, conds, device):
        """Cached conditioning as the pipeline's lists of [L_i, H] (real tokens only), with the cached empty
        negative under CFG."""
        dtype = self.model_dtype(comps)
        embeds = [e[m.bool()].to(device, dtype) for c in conds
                  for e, m in zip(c.tensors["embeds"], c.tensors["mask"], strict=True)]  # fmt: skip
        kwargs: dict[str, Any] = {"prompt_embeds": embeds}
        negative = comps.extra.get("negative_embeds")
        if negative is not None and self.sampling_defaults()["guidance_scale"] > 0:
            kwargs["negative_prompt_embeds"] = [negative.to(device, dtype) for _ in embeds]
        return kwargs

    # ---- outputs
    def extra_lora_outputs(self, out_dir, written: list[str]) -> list[str]:
        """The ComfyUI copy (``training.export.diffusion_model``)."""
        from training.export.diffusion_model import write_comfy_copy

        return write_comfy_copy(out_dir, written)

    def card_info(self, comps: Components) -> CardInfo:
        return CardInfo(
            license="apache-2.0",
            tags=("z-image", "template:sd-lora"),
            pipeline_class="ZImagePipeline",
            weight_notes={
                WEIGHTS_NAME: "in diffusers format (`ZImagePipeline.load_lora_weights`)",
                COMFY_NAME: "the same LoRA as `diffusion_model.*` keys with `.alpha`, the layout ComfyUI's Z-Image "
                "LoRA loader reads (diffusers loads it too)",
            },
        )

