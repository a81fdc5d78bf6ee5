"""Stateless helpers the training script (``training/train.py``) calls, in the style of diffusers'
``training_utils.py``: each module a few functions that take what they need and return what they make.

- ``batches``: per-sample randomness (exact resume), batches drawn from the cached latents, text conditioning
- ``sampling``: when to sample, validation samples, class images for prior preservation
- ``resume``: the run's checkpoints (save, find, restore) and the settings fingerprint that guards them
- ``runtime``: device and precision set-up, the quantized-base choice, trainable parameters, memory read-outs
- ``results``: ``RunResult``, what a run returns (read by the model card and the "done" event)
"""
