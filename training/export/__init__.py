"""LoRA files for other tools, each layout written once: ``kohya`` (A1111 / kohya / ComfyUI, Stable Diffusion) and
``bfl`` (ComfyUI's Black Forest Labs names, the Flux families). The families call them from ``extra_lora_outputs``."""
