"""The Qwen-Image family (``QwenImagePipeline``: Qwen-Image and its text-to-image updates, a 20B MMDiT, Apache-2.0).

It shares the Flux families' flow matching (``training.families.flux.FlowMatchingFamily``: time draw, the dynamic
shift from the scheduler config, ``noisy = (1 - sigma) x + sigma noise``, velocity target ``noise - x``, staged
loading, sampling from cached conditioning). What is its own, as ``QwenImagePipeline`` and diffusers'
``train_dreambooth_lora_qwen_image.py`` do it:

- one text encoder, Qwen2.5-VL (7B) used on text only: the prompt goes into the pipeline's fixed template (a system
  turn describing the image, the prompt as the user turn, the assistant turn opened); the conditioning is the last
  hidden state of the real tokens after the template's first ``TEMPLATE_DROP`` tokens (the system turn). It is
  cached padded to ``max_sequence_length`` (``embeds`` [B, L, H], zeros past the real tokens, as the pipeline pads)
  with its token mask (``mask`` [B, L]); a batch is cut back to its longest prompt before the transformer, whose
  attention then ignores the masked tokens (no mask when all are real: the pipeline passes none then);
- a video-style VAE (``AutoencoderKLQwenImage``: [B, C, frames, h, w], one frame here) whose 16-channel latents are
  normalised per channel by its config's ``latents_mean`` / ``latents_std`` (``(x - mean) / std``; the pipeline's
  decode undoes it), packed 2x2 into [B, h/2 * w/2, 64] like Flux, with ``img_shapes`` [(1, h/2, w/2)] per sample;
- the transformer's time input is ``sigma`` (the pipeline passes ``t / 1000``) and its output is the velocity the
  scheduler steps with (no sign change); no guidance embedding;
- LoRA on the image stream's attention q/k/v/out of every block: the official script's default;
- the ComfyUI copy is ``diffusion_model.<module>.lora_A/lora_B.weight`` with ``.alpha`` (ComfyUI's Qwen-Image
  module names are diffusers'; diffusers' ``_convert_non_diffusers_qwen_lora_to_diffusers`` reads it back);
- samples: true CFG (scale 4.0, the pipeline's default) against the model card's blank negative prompt " ".

Imports no torch / diffusers at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from training.families import register_family
from training.families.base import CardInfo, Components, FamilyDefaults, LatentSet
from training.families.flux import COMFY_NAME, WEIGHTS_NAME, FlowMatchingFamily, _device_of

if TYPE_CHECKING:
    import torch

    from training.data import PreparedImage

#: ``QwenImagePipeline.prompt_template_encode``: the prompt is the user turn of this chat
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
#: ``QwenImagePipeline.prompt_template_encode_start_idx``: the template's leading tokens (its system turn) dropped
TEMPLATE_DROP = 34
#: the model card's negative prompt for true CFG (a blank: "no specific concept to remove")
NEGATIVE_PROMPT = " "
#: diffusers' ``train_dreambooth_lora_qwen_image.py`` default targets (each block's image-stream attention)
QWEN_IMAGE_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


@register_family("qwen-image")
class QwenImage(FlowMatchingFamily):
    """Qwen-Image: Qwen2.5-VL conditioning (template, leading tokens dropped, masked), per-channel normalised
    video-VAE latents packed 2x2, time ``sigma``, true CFG samples."""

    label = "Qwen-Image"
    pipelines = frozenset({"QwenImagePipeline"})
    pipeline_name = "QwenImagePipeline"
    #: q/k/v/out of every block's image-stream attention, as the official script
    lora_target_modules = tuple(QWEN_IMAGE_LORA_TARGETS)
    components = {
        "transformer": ("diffusers", frozenset({"QwenImageTransformer2DModel"})),
        "vae": ("diffusers", frozenset({"AutoencoderKLQwenImage"})),
        "text_encoder": ("transformers", frozenset({"Qwen2_5_VLForConditionalGeneration"})),
        "tokenizer": ("transformers", frozenset({"Qwen2Tokenizer", "Qwen2TokenizerFast"})),
        "scheduler": ("diffusers", frozenset({"FlowMatchEulerDiscreteScheduler"})),
    }
    text_encoder_components = ("text_encoder",)
    defaults = FamilyDefaults(
        hardware="l40sx1", resolution=1024, learning_rate=1e-4, rank=16,
        hardware_note="Qwen-Image's 20B transformer alone is 41 GB in bf16: an L40S (48 GB) trains it at 1024 px only "
        "with an 8-bit base (fp8 or int8, about 23 GiB), an A100 (80 GB) without one (about 42 GiB); on a 24 GB L4 "
        "or A10G its 15 GiB Qwen2.5-VL text encoder leaves room only for a 4-bit base at 512 px (about 17 GiB), and "
        "a T4 does not fit it",
    )  # fmt: skip
    denoiser_params = 20_430_401_088  # QwenImageTransformer2DModel (60 blocks, 24 heads of 128, text width 3584)
    #: true-CFG scale for samples (``QwenImagePipeline``'s default ``true_cfg_scale``)
    sample_guidance: ClassVar[float] = 4.0

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """ "qwen-image": every QwenImagePipeline model has the same 20.4 B transformer."""
        return "qwen-image"

    def vae_scale_factor(self) -> int:
        """2 per temporal-downsample flag of the VAE (8 for Qwen-Image), as the pipeline computes it."""
        return 2 ** len(self.info.vae_config.get("temperal_downsample", [False, True, True]))

    # ---- loading
    def on_vae_loaded(self, comps: Components) -> None:
        """The per-channel latent statistics ([1, C, 1, 1]; the VAE leaves the GPU after caching)."""
        import torch

        cfg = comps.vae.config
        comps.extra["latents_mean"] = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        comps.extra["latents_std"] = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1)

    # ---- caching
    def encode_images(self, comps: Components, images: list[PreparedImage], resolution: int, flip: bool) -> LatentSet:
        """The posterior of each image (and its flip) through the video VAE as one-frame clips, frame axis dropped:
        [N, 16, h, w] in the raw latent space."""
        import numpy as np
        import torch

        vae = comps.vae
        means, stds = [], []
        with torch.no_grad():
            for img in images:
                pix = torch.from_numpy(np.asarray(img.image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
                if flip:
                    pix = torch.cat([pix, torch.flip(pix, dims=[3])])
                dist = vae.encode(pix.unsqueeze(2).to(_device_of(vae), vae.dtype)).latent_dist
                means.append(dist.mean[:, :, 0].float().cpu())
                stds.append(dist.std[:, :, 0].float().cpu())
        mean, std = torch.stack(means), torch.stack(stds)  # [N, 1 or 2, C, h, w]
        return LatentSet(mean[:, 0], std[:, 0], mean[:, 1] if flip else None, std[:, 1] if flip else None,
                         torch.zeros(len(images), 0))  # fmt: skip

    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        """The prompt in ``PROMPT_TEMPLATE``, right-padded to the dropped tokens plus ``max_sequence_length`` (the
        pipeline's embeddings are cut to that length after the drop; the encoder is causal, so the cut tokens
        change nothing before them)."""
        tok = comps.tokenizers[0]
        ids = tok(PROMPT_TEMPLATE.format(prompt), padding="max_length", padding_side="right", truncation=True,
                  max_length=TEMPLATE_DROP + self.max_sequence_length, return_tensors="pt").input_ids  # fmt: skip
        return [ids]

    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """{"embeds": the last hidden state after the template's first ``TEMPLATE_DROP`` tokens, zero past the
        real tokens [B, L, H], "mask": the real tokens [B, L] (bool)}: ``QwenImagePipeline.encode_prompt``'s
        tensors, padded to L."""
        te = encoders[0]
        ids = token_ids[0].to(_device_of(te))
        real = ids != comps.tokenizers[0].pad_token_id
        out = te(input_ids=ids, attention_mask=real.long(), output_hidden_states=True, use_cache=False,
                 logits_to_keep=1)  # fmt: skip
        mask = real[:, TEMPLATE_DROP:]
        return {"embeds": out.hidden_states[-1][:, TEMPLATE_DROP:] * mask.unsqueeze(-1), "mask": mask}

    def cache_before_release(self, comps: Components) -> None:
        """The blank negative prompt's conditioning ([1, L, H] and its mask): the CFG samples' negative."""
        import torch

        if comps.text_encoders[0] is None:
            return
        with torch.no_grad():
            cond = self.encode_prompt(comps, comps.text_encoders, self.tokenize(comps, NEGATIVE_PROMPT))
        comps.extra["negative_embeds"], comps.extra["negative_mask"] = cond["embeds"].detach(), cond["mask"]

    # ---- the step
    def to_model_space(self, comps, latents):
        """Normalised per channel by the VAE config's statistics, ``(x - latents_mean) / latents_std`` ([B, 16, h,
        w], unpacked: ``predict`` packs)."""
        mean = comps.extra["latents_mean"].to(latents.device, latents.dtype)
        std = comps.extra["latents_std"].to(latents.device, latents.dtype)
        return (latents - mean) / std

    def image_seq_len(self, model_shape) -> int:
        """The transformer's image tokens (2x2 patches): the sequence length the pipeline's shift ``mu`` reads."""
        return (model_shape[-2] // 2) * (model_shape[-1] // 2)

    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        """Pack 2x2, call the transformer at ``timestep = sigma`` with the batch's real caption tokens (mask, or
        none when all are real) and ``img_shapes`` [(1, h/2, w/2)], unpack the velocity to [B, 16, h, w]."""
        from diffusers import QwenImagePipeline

        b, c, h, w = noisy.shape
        dtype, dev = self.model_dtype(comps), noisy.device
        sigma = self.sigmas(comps, times.to(dev), noisy.shape)
        embeds, mask = cut_to_longest(cond["embeds"], cond["mask"])
        out = denoiser(
            hidden_states=QwenImagePipeline._pack_latents(noisy, b, c, h, w).to(dtype),
            encoder_hidden_states=embeds.to(dev, dtype), encoder_hidden_states_mask=None if mask.all() else mask.to(dev),
            timestep=sigma.to(dtype), img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False,
        )[0]  # fmt: skip
        return QwenImagePipeline._unpack_latents(out, h, w, 1).squeeze(2)

    # ---- sampling
    def sampling_defaults(self) -> dict[str, Any]:
        return {"true_cfg_scale": self.sample_guidance}

    def generate(self, pipe, comps, prompts, resolution, params, generator, acc, conds=None):
        """As the Flux families sample, with the blank negative prompt (true CFG) when the encoder is live."""
        import torch

        if conds is not None:
            return super().generate(pipe, comps, prompts, resolution, params, generator, acc, conds)
        kwargs = {"height": resolution, "width": resolution, "num_inference_steps": params.sample_inference_steps,
                  "generator": generator, "prompt": list(prompts), "negative_prompt": [NEGATIVE_PROMPT] * len(prompts),
                  "max_sequence_length": self.max_sequence_length, **self.sampling_defaults()}  # fmt: skip
        with torch.no_grad(), acc.autocast():
            return list(pipe(**kwargs).images)

    def cond_kwargs(self, comps, conds, device):
        """Cached conditioning cut to the batch's longest prompt, with its mask, and the cached blank negative."""
        import torch

        dtype = self.model_dtype(comps)
        embeds, mask = cut_to_longest(torch.cat([c.tensors["embeds"] for c in conds]),
                                      torch.cat([c.tensors["mask"] for c in conds]))  # fmt: skip
        kwargs = {"prompt_embeds": embeds.to(device, dtype), "prompt_embeds_mask": mask.to(device)}
        negative = comps.extra.get("negative_embeds")
        if negative is not None and self.sampling_defaults()["true_cfg_scale"] > 1:
            neg, neg_mask = cut_to_longest(negative, comps.extra["negative_mask"])
            kwargs["negative_prompt_embeds"] = neg.to(device, dtype).expand(len(embeds), -1, -1)
            kwargs["negative_prompt_embeds_mask"] = neg_mask.to(device).expand(len(embeds), -1)
        return kwargs

    # ---- outputs
    def extra_lora_outputs(self, out_dir, written: list[str]) -> list[str]:
        """The ComfyUI copy (``training.export.diffusion_model``), as Z-Image's."""
        from training.export.diffusion_model import write_comfy_copy

        return write_comfy_copy(out_dir, written)

    def card_info(self, comps: Components) -> CardInfo:
        return CardInfo(
            license="apache-2.0",
            tags=("qwen-image", "qwen-image-diffusers", "template:sd-lora"),
            pipeline_class="QwenImagePipeline",
            weight_notes={
                WEIGHTS_NAME: "in diffusers format (`QwenImagePipeline.load_lora_weights`)",
                COMFY_NAME: "the same LoRA as `diffusion_model.*` keys with `.alpha`, the layout ComfyUI's Qwen-Image "
                "LoRA loader reads (diffusers loads it too)",
            },
        )


def cut_to_longest(embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded conditioning [B, L, H] and its mask [B, L] cut to the longest prompt's real tokens (the batch the
    pipeline itself would have padded)."""
    n = int(mask.sum(dim=1).max())
    return embeds[:, :n], mask[:, :n]
