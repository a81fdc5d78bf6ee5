"""The Qwen-Image-Edit family (``QwenImageEditPlusPipeline``: Qwen-Image-Edit-2509 / 2511, Apache-2.0), trained on
before/after pairs (``training.pairs``): the LoRA learns the edit that turns each source into its target.

Everything of Qwen-Image (``training.families.qwen_image``) but the conditioning, which follows what the pipeline
does when it edits (there is no official diffusers training script; ai-toolkit and musubi-tuner train it so):

- the instruction goes into the edit template (a system turn asking to describe the input and apply the
  instruction; ``TEMPLATE_DROP`` = 64 of its tokens dropped) after "Picture 1: <vision tokens>", and Qwen2.5-VL
  reads it together with the source image, resized to about 384 x 384 px (``CONDITION_IMAGE_SIZE``, the aspect
  kept, sides multiples of 32) and cut into the vision tower's patches by the repo's image processor;
- the source's VAE latents (normalised like the target's, the posterior's mode as the pipeline takes it) are
  packed and appended to the noisy target's tokens, ``img_shapes`` names both, and only the target's part of the
  transformer's output is the prediction. The source is encoded at the training resolution (the target's crop);
  the pipeline encodes it at about 1024 x 1024 px, the same at the default resolution;
- every pair's conditioning is cached with its source latents (``pair_conds``); pairs never flip (an instruction
  may name a side), and the text encoder is not trained.

Samples: each held-out source (or the first pair's) edited with its instruction through the pipeline (the source
given as its ``image``, conditioning from the cache, true CFG 4.0 against the blank negative read with the same
image), saved as one picture: the source on the left, the result on the right.

Loading: ``Qwen2VLProcessor`` needs torchvision for its video part in transformers 5, and the family uses only its
image part: it loads the repo's ``processor/`` image processor (the PIL one) and tokenizer and expands the image
token as the processor does. Imports no torch / diffusers at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.families import register_family
from training.families.base import CardInfo, Components, FamilyDefaults, LatentSet, TextCond
from training.families.flux import COMFY_NAME, WEIGHTS_NAME, _device_of, _parts
from training.families.qwen_image import NEGATIVE_PROMPT, QwenImage, cut_to_longest

if TYPE_CHECKING:
    import torch

    from training.data import PreparedImage

#: ``QwenImageEditPlusPipeline.prompt_template_encode``
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
#: ``QwenImageEditPlusPipeline.prompt_template_encode_start_idx``
TEMPLATE_DROP = 64
#: the pipeline's turn that shows Qwen2.5-VL the source image
PICTURE_TURN = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"


@register_family("qwen-image-edit")
class QwenImageEdit(QwenImage):
    """Qwen-Image-Edit: Qwen-Image conditioned on a source image (read by Qwen2.5-VL with the instruction, and as
    latents beside the target's), trained on before/after pairs."""

    label = "Qwen-Image-Edit"
    pipelines = frozenset({"QwenImageEditPlusPipeline"})
    pipeline_name = "QwenImageEditPlusPipeline"
    edits = True
    supports_text_encoder_training = False
    components = {**QwenImage.components, "processor": ("transformers", frozenset({"Qwen2VLProcessor"}))}
    defaults = FamilyDefaults(
        hardware="l40sx1", resolution=1024, learning_rate=1e-4, rank=16, steps_per_image=100,
        hardware_note="Qwen-Image-Edit is Qwen-Image's 20B transformer reading the source image's tokens too: an "
        "L40S (48 GB) trains it at 1024 px with an 8-bit base, an A100 (80 GB) without one; a 24 GB GPU does not "
        "fit it at 1024 px",
    )  # fmt: skip

    @classmethod
    def memory_shape(cls, base_model: str, index: dict[str, Any] | None = None) -> str | None:
        """Qwen-Image's shape (the same transformer; the source's tokens are not in the table)."""
        return "qwen-image"

    def check_params(self, params) -> None:
        from training.exitcodes import BadInputError

        super().check_params(params)
        if params.prior_preservation:
            raise BadInputError(f"{self.label}: prior preservation is for subject photos, not edit pairs; turn it off")
        if params.auto_captions:
            raise BadInputError(f"{self.label}: a pair's .txt is its edit instruction, which a captioner cannot write; "
                                "turn auto_captions off")  # fmt: skip

    # ---- loading
    def load(self, src, variants, *, parts=None, **kwargs) -> Components:
        """Qwen-Image's components, and with the text side the repo's image processor (``comps.extra``)."""
        from transformers import Qwen2VLImageProcessorPil

        comps = super().load(src, variants, parts=parts, **kwargs)
        if _parts(parts)("text"):
            comps.extra["image_processor"] = Qwen2VLImageProcessorPil.from_pretrained(src, subfolder="processor")
        return comps

    def pipeline_parts(self, comps: Components, text_encoders: list[Any]) -> dict[str, Any]:
        """Qwen-Image's parts and no processor (samples are made from cached conditioning)."""
        return {**super().pipeline_parts(comps, text_encoders), "processor": None}

    # ---- caching
    def encode_images(self, comps: Components, images: list[PreparedImage], resolution: int, flip: bool) -> LatentSet:
        """The targets' latents, never flipped (an instruction may name a side)."""
        return super().encode_images(comps, images, resolution, False)

    def pair_conds(self, comps: Components, pairs: list[tuple[str, PreparedImage]]) -> list[TextCond]:
        """Each (instruction, source image)'s conditioning: {"embeds", "mask"} as the pipeline's ``encode_prompt``
        computes them with the image, padded to the longest, and "control": the source's normalised latents."""
        import torch

        conds = [self.image_cond(comps, instruction, source.image) for instruction, source in pairs]
        longest = max(c["embeds"].shape[1] for c in conds)
        out = []
        with torch.no_grad():
            for c, (_, source) in zip(conds, pairs, strict=True):
                pad = longest - c["embeds"].shape[1]
                c["embeds"] = torch.nn.functional.pad(c["embeds"], (0, 0, 0, pad))
                c["mask"] = torch.nn.functional.pad(c["mask"], (0, pad))
                c["control"] = self.control_latents(comps, source)
                out.append(TextCond([], c))
        return out

    def image_cond(self, comps: Components, instruction: str, image) -> dict[str, torch.Tensor]:
        """``QwenImageEditPlusPipeline.encode_prompt`` for one instruction and one source image (a PIL image):
        {"embeds": [1, L, H], "mask": [1, L] all true}."""
        import torch
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import (
            CONDITION_IMAGE_SIZE,
            calculate_dimensions,
        )

        te, tok, ip = comps.text_encoders[0], comps.tokenizers[0], comps.extra["image_processor"]
        w, h = calculate_dimensions(CONDITION_IMAGE_SIZE, image.width / image.height)
        small = VaeImageProcessor(vae_scale_factor=2 * self.vae_scale_factor()).resize(image, h, w)
        vision = ip(images=[small], return_tensors="pt")
        n_image_tokens = int(vision["image_grid_thw"].prod()) // ip.merge_size**2
        text = EDIT_TEMPLATE.format(PICTURE_TURN + instruction).replace(IMAGE_PAD, IMAGE_PAD * n_image_tokens)
        ids = tok(text, return_tensors="pt").input_ids
        dev = _device_of(te)
        with torch.no_grad():
            out = te(input_ids=ids.to(dev), attention_mask=torch.ones_like(ids).to(dev),
                     pixel_values=vision["pixel_values"].to(dev, te.dtype),
                     image_grid_thw=vision["image_grid_thw"].to(dev), output_hidden_states=True)  # fmt: skip
        embeds = out.hidden_states[-1][:, TEMPLATE_DROP:].detach()
        return {"embeds": embeds, "mask": torch.ones(embeds.shape[:2], dtype=torch.bool)}

    def control_latents(self, comps: Components, source: PreparedImage) -> torch.Tensor:
        """The source's VAE latents (the posterior's mode) in the model's space: [1, 16, h, w]."""
        mean = super().encode_images(comps, [source], source.image.height, False).mean
        return self.to_model_space(comps, mean)

    def sample_conds(self, comps: Components, sources: list[PreparedImage], instance_prompt: str) -> dict[str, TextCond]:
        """The samples' conditioning, by label ("<source file>: <instruction>"): each source's instruction (its
        caption, else the instance prompt) and the blank negative, both read with the source; the sources are kept
        for ``generate`` (``comps.extra["edit_sources"]``)."""
        conds, kept = {}, {}
        for source in sources:
            instruction = source.caption or instance_prompt
            label = f"{source.source.name}: {instruction}"
            pos, neg = self.image_cond(comps, instruction, source.image), self.image_cond(comps, NEGATIVE_PROMPT,
                                                                                          source.image)  # fmt: skip
            conds[label] = TextCond([], {**pos, "negative_embeds": neg["embeds"], "negative_mask": neg["mask"]})
            kept[label] = source.image
        comps.extra["edit_sources"] = kept
        return conds

    def cache_before_release(self, comps: Components) -> None:
        """Nothing: an edit's blank negative is read with each sample's source (``sample_conds``)."""

    # ---- the step
    def predict(self, comps, denoiser, noisy, times, cond, time_ids):
        """Qwen-Image's step with the source's latents appended to the noisy target's tokens (``img_shapes`` names
        both); the prediction is the target's part of the output."""
        import torch
        from diffusers import QwenImageEditPlusPipeline as Pipe

        b, c, h, w = noisy.shape
        control = cond["control"].to(noisy.device, noisy.dtype)
        ch, cw = control.shape[-2:]
        dtype, dev = self.model_dtype(comps), noisy.device
        sigma = self.sigmas(comps, times.to(dev), noisy.shape)
        embeds, mask = cut_to_longest(cond["embeds"], cond["mask"])
        target = Pipe._pack_latents(noisy, b, c, h, w)
        tokens = torch.cat([target, Pipe._pack_latents(control, b, c, ch, cw)], dim=1)
        out = denoiser(
            hidden_states=tokens.to(dtype), encoder_hidden_states=embeds.to(dev, dtype),
            encoder_hidden_states_mask=mask.to(dev), timestep=sigma.to(dtype),
            img_shapes=[[(1, h // 2, w // 2), (1, ch // 2, cw // 2)]] * b, return_dict=False,
        )[0]  # fmt: skip
        return Pipe._unpack_latents(out[:, : target.shape[1]], h, w, 1).squeeze(2)

    # ---- sampling
    def generate(self, pipe, comps, prompts, resolution, params, generator, acc, conds=None):
        """The held-out source of each label edited by the pipeline from cached conditioning: source | result."""
        import torch
        from PIL import Image

        out = []
        for label, cond in zip(prompts, conds or [], strict=True):
            source = comps.extra["edit_sources"][label]
            t, dev, dtype = cond.tensors, acc.device, self.model_dtype(comps)
            kwargs = {"image": [source], "height": resolution, "width": resolution, "generator": generator,
                      "num_inference_steps": params.sample_inference_steps, **self.sampling_defaults(),
                      "prompt_embeds": t["embeds"].to(dev, dtype), "prompt_embeds_mask": t["mask"].to(dev),
                      "negative_prompt_embeds": t["negative_embeds"].to(dev, dtype),
                      "negative_prompt_embeds_mask": t["negative_mask"].to(dev)}  # fmt: skip
            with torch.no_grad(), acc.autocast():
                result = pipe(**kwargs).images[0]
            side = Image.new("RGB", (2 * result.width, result.height))
            side.paste(source.resize(result.size), (0, 0))
            side.paste(result, (result.width, 0))
            out.append(side)
        return out

    # ---- outputs
    def card_info(self, comps: Components) -> CardInfo:
        return CardInfo(
            license="apache-2.0",
            tags=("qwen-image-edit", "qwen-image-diffusers", "template:sd-lora"),
            pipeline_class="QwenImageEditPlusPipeline",
            edits=True,
            weight_notes={
                WEIGHTS_NAME: "in diffusers format (`QwenImageEditPlusPipeline.load_lora_weights`)",
                COMFY_NAME: "the same LoRA as `diffusion_model.*` keys with `.alpha`, the layout ComfyUI's Qwen-Image "
                "LoRA loader reads (diffusers loads it too)",
            },
        )

