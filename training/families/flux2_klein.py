"""The Flux.2 [klein] family (``Flux2KleinPipeline``: FLUX.2 [klein] 4B / 9B, base or step-distilled).

Differences from Flux.1 (``training.families.flux``, whose flow matching it shares):

- one text encoder, a Qwen3 causal LM: the prompt goes through its chat template, and the conditioning is its
  hidden states 9, 18 and 27 side by side ([B, L, 3 x hidden]); no pooled embedding, no guidance embedding;
- a 32-channel VAE (``AutoencoderKLFlux2``) whose latents are patchified 2x2 into 128 channels and normalised by
  the VAE's batch-norm running statistics; the posterior's mode is used (as diffusers' Flux.2 scripts do);
- 4-axis position ids (time, height, width, layer) for image and text tokens;
- LoRA on the double blocks' attention (q/k/v/out) and the single blocks' fused projection and output (the default
  of diffusers' ``train_dreambooth_lora_flux2_klein.py``);
- the ComfyUI copy is ``diffusion_model.<BFL name>.lora_A/lora_B.weight`` (what ComfyUI reads, and what diffusers'
  Flux.2 loader converts), the LoRA scale baked into ``lora_B``;
- samples: the base model with true CFG (guidance 4.0, the empty prompt as negative); a distilled one without.

Imports no torch / diffusers at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from training.families import register_family
from training.families.base import CardInfo, Components, FamilyDefaults
from training.families.flux import COMFY_NAME, WEIGHTS_NAME, FlowMatchingFamily, _device_of, chat_turn_ids

if TYPE_CHECKING:
    import torch

#: the Qwen3 hidden states Flux2KleinPipeline stacks into the prompt embedding
TEXT_ENCODER_LAYERS = (9, 18, 27)

KLEIN_4B_LICENSE = {"license": "apache-2.0"}
KLEIN_9B_LICENSE = {
    "license": "other",
    "license_name": "flux-non-commercial-license",
    "license_link": "https://huggingface.co/black-forest-labs/FLUX.2-klein-9B/blob/main/LICENSE.md",
}
#: the 9B transformer's text width (3 x Qwen3-8B's 4096); the 4B one reads 3 x Qwen3-4B's 2560
KLEIN_9B_JOINT_DIM = 12288


@register_family("flux2-klein")
class Flux2Klein(FlowMatchingFamily):
    """FLUX.2 [klein]: Qwen3 conditioning, patchified batch-normalised latents, no guidance embedding."""

    label = "FLUX.2 [klein]"
    pipelines = frozenset({"Flux2KleinPipeline"})
    pipeline_name = "Flux2KleinPipeline"
    components = {
        "transformer": ("diffusers", frozenset({"Flux2Transformer2DModel"})),
        "vae": ("diffusers", frozenset({"AutoencoderKLFlux2"})),
        "text_encoder": ("transformers", frozenset({"Qwen3ForCausalLM"})),
        "tokenizer": ("transformers", frozenset({"Qwen2TokenizerFast", "Qwen2Tokenizer"})),
        "scheduler": ("diffusers", frozenset({"FlowMatchEulerDiscreteScheduler"})),
    }
    text_encoder_components = ("text_encoder",)
    latent_mode = True
    comfy_kohya = False
    defaults = FamilyDefaults(
        hardware="l4x1", resolution=512, learning_rate=1e-4, rank=16,
        hardware_note="FLUX.2 [klein] trains in bf16 on an L4 (4B: about 8 GiB, 9B: about 18 GiB at 512 px); a T4 has "
        "no bf16 hardware, and 9B's text encoder alone (16 GiB while caching) does not fit it",
    )  # fmt: skip
    denoiser_params = 0  # 4B or 9B: read from the config (``denoiser_size``)
    #: true-CFG scale for samples of the base model (the pipeline's default); distilled models take none
    sample_guidance: ClassVar[float] = 4.0

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """ "klein9b" for a 9B repo (by its name, as ``is_9b`` falls back to), else "klein4b"."""
        return "klein9b" if "9b" in base_model.lower() else "klein4b"

    @property
    def is_distilled(self) -> bool:
        return bool(self.info.index.get("is_distilled", False))

    @property
    def is_9b(self) -> bool:
        joint = int(self.info.denoiser_config.get("joint_attention_dim", 0) or 0)
        return joint >= KLEIN_9B_JOINT_DIM or "9b" in self.info.base_model.lower()

    # ---- loading
    def on_vae_loaded(self, comps: Components) -> None:
        """The batch-norm statistics latents are normalised with (kept: the VAE leaves the GPU after caching)."""
        import torch

        bn, eps = comps.vae.bn, comps.vae.config.batch_norm_eps
        comps.extra["bn_mean"] = bn.running_mean.detach().float().cpu().view(1, -1, 1, 1)
        comps.extra["bn_std"] = torch.sqrt(bn.running_var.detach().float().cpu() + eps).view(1, -1, 1, 1)

    # ---- caching
    def tokenize(self, comps: Components, prompt: str) -> list[torch.Tensor]:
        """The prompt as one user turn of the chat template (generation prompt, thinking off), padded to
        ``max_sequence_length``, as ``Flux2KleinPipeline`` tokenizes it."""
        return [chat_turn_ids(comps.tokenizers[0], prompt, self.max_sequence_length, thinking=False)]

    def encode_prompt(self, comps: Components, encoders: list[Any], token_ids: list[torch.Tensor]) -> dict:
        """{"embeds": hidden states 9, 18, 27 side by side [B, L, 3 x hidden]} (attention mask: the non-pad
        tokens, as the tokenizer's own mask)."""
        import torch

        te = encoders[0]
        ids = token_ids[0].to(_device_of(te))
        mask = (ids != comps.tokenizers[0].pad_token_id).long()
        out = te(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        h = torch.stack([out.hidden_states[k] for k in TEXT_ENCODER_LAYERS], dim=1)  # [B, 3, L, H]
        b, n, length, hidden = h.shape
        return {"embeds": h.permute(0, 2, 1, 3).reshape(b, length, n * hidden)}

    def cache_before_release(self, comps: Components) -> None:
        """The empty prompt's conditioning: the negative of the base model's CFG samples."""
        import torch

        if self.is_distilled or comps.text_encoders[0] is None:
            return
        with torch.no_grad():
            cond = self.encode_prompt(comps, comps.text_encoders, self.tokenize(comps, ""))
        comps.extra["negative_embeds"] = cond["embeds"].detach()

    # ---- the step
    def to_model_space(self, comps, latents):
        """Patchified 2x2 ([B, 4C, h/2, w/2]) and normalised by the VAE's batch-norm statistics."""
        from diffusers import Flux2KleinPipeline

        x = Flux2KleinPipeline._patchify_latents(latents)
        mean = comps.extra["bn_mean"].to(x.device, x.dtype)
        std = comps.extra["bn_std"].to(x.device, x.dtype)
        return (x - mean) / std

    def noise_to_model_space(self, comps, noise):
        from diffusers import Flux2KleinPipeline

        return Flux2KleinPipeline._patchify_latents(noise)

    def image_seq_len(self, model_shape) -> int:
        return model_shape[-2] * model_shape[-1]

    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        """Pack the patchified latents into tokens, call the transformer at ``timestep = sigma`` with the 4-axis
        image and text ids (no guidance), unpack the velocity to [B, 4C, h/2, w/2]."""
        from diffusers import Flux2KleinPipeline

        b, c, h, w = noisy.shape
        dtype, dev = self.model_dtype(comps), noisy.device
        sigma = self.sigmas(comps, times.to(dev), noisy.shape)
        embeds = cond["embeds"].to(dev, dtype)
        out = denoiser(
            hidden_states=Flux2KleinPipeline._pack_latents(noisy).to(dtype), timestep=sigma.to(dtype), guidance=None,
            encoder_hidden_states=embeds, txt_ids=Flux2KleinPipeline._prepare_text_ids(embeds).to(dev),
            img_ids=Flux2KleinPipeline._prepare_latent_ids(noisy).to(dev), return_dict=False,
        )[0]  # fmt: skip
        return out[:, : h * w].permute(0, 2, 1).reshape(b, c, h, w)

    # ---- LoRA
    def lora_targets(self, component: str) -> list[str]:
        """The double blocks' q/k/v/out, the single blocks' fused q/k/v/mlp projection and (named one by one: a
        bare ``to_out`` would also match the double blocks' ``to_out`` list) their output projections."""
        if component != self.denoiser_name:
            raise ValueError(f"{self.label}: LoRA trains the transformer only, not {component!r}")
        n_single = int(self.info.denoiser_config.get("num_single_layers", 24))
        return ["to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj"] + [
            f"single_transformer_blocks.{i}.attn.to_out" for i in range(n_single)
        ]

    # ---- sampling
    def pipeline_parts(self, comps: Components, text_encoders: list[Any]) -> dict[str, Any]:
        return {**super().pipeline_parts(comps, text_encoders), "is_distilled": self.is_distilled}

    def sampling_defaults(self) -> dict[str, Any]:
        return {"guidance_scale": 1.0 if self.is_distilled else self.sample_guidance}

    def cond_kwargs(self, comps, conds, device):
        import torch

        embeds = torch.cat([c.tensors["embeds"] for c in conds]).to(device)
        kwargs = {"prompt_embeds": embeds}
        negative = comps.extra.get("negative_embeds")
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative.to(device).expand(embeds.shape[0], -1, -1)
        return kwargs

    # ---- outputs
    def bfl_groups(self) -> dict[str, list]:
        from training.export.bfl import flux2_bfl_groups

        return flux2_bfl_groups(*self.transformer_blocks((5, 20)))

    def card_info(self, comps: Components) -> CardInfo:
        return CardInfo(
            **self.card_license(),
            tags=("flux2", "flux2-klein", "flux-diffusers"),
            pipeline_class="Flux2KleinPipeline",
            prompt_keyword=True,  # its first argument is the reference image
            weight_notes={
                WEIGHTS_NAME: "in diffusers format (`Flux2KleinPipeline.load_lora_weights`)",
                COMFY_NAME: "the same LoRA over the original FLUX.2 module names (`diffusion_model.*`), the layout "
                "ComfyUI reads (diffusers loads it too)",
            },
        )

    def card_license(self) -> dict[str, str]:
        """[klein] 4B: Apache 2.0; 9B: the FLUX non-commercial licence."""
        return dict(KLEIN_9B_LICENSE if self.is_9b else KLEIN_4B_LICENSE)
