"""LoRA files for other tools, each layout written once: ``kohya`` (A1111 / kohya / ComfyUI, Stable Diffusion),
``bfl`` (ComfyUI's Black Forest Labs names, the Flux families) and ``diffusion_model`` (diffusers' module names under
``diffusion_model.``: Z-Image, Qwen-Image). The families call them from ``extra_lora_outputs``."""

#: the ComfyUI copy's file name beside the diffusers LoRA (the transformer families)
COMFY_NAME = "pytorch_lora_weights_comfyui.safetensors"
