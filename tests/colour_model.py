"""A tiny SD 1.x-shaped model whose samples can take the photos' colour, for the end-to-end test in which a score
must move (tests/test_scores_move.py).

Why the demo model (``training.demo.build_tiny_sd``) cannot: its VAE normalizes with 32 groups over 32 channels in
its last block, one channel per group. A group norm over one channel subtracts that channel's mean over the image, so
a solid colour is erased before the last convolution: the demo VAE decodes every latent to about the same grey. (A
real SD 1.x VAE has 128 channels in 32 groups: the means survive as differences between the channels of a group.)
The demo UNet has the same one-channel groups at its end: a full fine-tune gets around them through its output
bias, a LoRA (attention layers only) cannot, and its samples stay grey.

``build_colour_sd`` builds the demo pipeline, then changes three things, keeping every weight's shape:

- the VAE: 8 norm groups, and weights set by hand (no training: fitting this VAE by gradient descent took minutes on
  two CPU cores and still lost colours) so that it is a plain 2x down- and up-sampler of colours. The encoder's
  latent channels 0-2 are the image's R, G, B in [-1, 1] at one pixel of each 2 x 2 block, channel 3 is zero, and
  the decoder repeats each latent pixel 2 x 2 times. Each colour channel goes through the final group norms beside
  its negation (the group's mean stays zero) and two constant channels (+1 and -1: the group's spread stays about
  fixed), so the norm is nearly linear in the colour; an affine calibration fitted by least squares on a few solid
  colours removes the rest (decode(encode(x)) is within 0.01 of a solid colour x, in [-1, 1] units);
- the UNet: the demo's random UNet with 8 norm groups (four channels per group), so that a LoRA can move it too;
- the scheduler: v-prediction (as SD 2.x). At high noise the target is about minus the photo's latent, a constant
  the untrained tiny UNet learns in a few dozen steps; with epsilon-prediction it must infer the colour from the
  noisy input, and 60 steps were not enough (measured: a LoRA did not move, a full fine-tune moved unreliably).

The text encoder and tokenizer are the demo's. Building takes a few seconds (no training).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from training.demo import build_tiny_sd

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL

__all__ = ["NORM_GROUPS", "SCALING_FACTOR", "build_colour_sd", "colour_vae"]

#: norm groups of the VAE and UNet: four or more channels in every group
NORM_GROUPS = 8
#: the VAE's latents are colours in [-1, 1] (standard deviation about 0.58 for uniform colours); scaled by this they
#: spread about as SD's scaled latents do (unit variance), so the sampler's starting noise matches them
SCALING_FACTOR = 1.7
#: how small a colour enters a group norm beside the +1 / -1 channels (small: the group's spread stays about fixed)
SMALL = 0.1
#: where the final norms put their output: silu is nearly linear there
OFFSET = 6.0
#: log-variance of the latent distribution: the latents the trainer samples are the means to within 0.0025
LOGVAR = -12.0


def _zero_branches(module: torch.nn.Module) -> None:
    """Turn every resnet and attention block under ``module`` into its shortcut: zero their last layer."""
    import torch
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for m in module.modules():
        last = m.conv2 if isinstance(m, ResnetBlock2D) else m.to_out[0] if isinstance(m, Attention) else None
        if last is not None:
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)


def _route(
    conv: torch.nn.Conv2d, pairs: dict[int, int], scale: float = 1.0, biases: dict[int, float] | None = None
) -> None:
    """Set ``conv`` to copy input channel ``i`` to output channel ``o`` (``pairs`` {o: i}; ``i`` < 0: input
    ``-i - 1`` negated) times ``scale`` at its centre tap, with constant outputs ``biases`` {o: value}; everything
    else zero."""
    import torch

    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    k = conv.weight.shape[-1] // 2
    with torch.no_grad():
        for o, i in pairs.items():
            conv.weight[o, i if i >= 0 else -i - 1, k, k] = scale if i >= 0 else -scale
        for o, v in (biases or {}).items():
            conv.bias[o] = v


def _norm_at(norm: torch.nn.GroupNorm, channels: list[int]) -> None:
    """The group norm ``norm`` passes ``channels`` on, shifted by ``OFFSET``; it silences the others."""
    import torch

    torch.nn.init.zeros_(norm.weight)
    torch.nn.init.zeros_(norm.bias)
    with torch.no_grad():
        norm.weight[channels] = 1.0
        norm.bias[channels] = OFFSET


def _calibrate(conv: torch.nn.Conv2d, rows: int, raw: torch.Tensor, target: torch.Tensor) -> None:
    """Fold the least-squares affine map from ``raw`` ([n, rows]) to ``target`` into ``conv``'s first ``rows``
    output channels."""
    import torch

    x = torch.cat([raw, torch.ones(len(raw), 1)], dim=1)
    sol = torch.linalg.lstsq(x, target).solution  # [rows + 1, rows]
    a, d = sol[:rows].T, sol[rows]
    with torch.no_grad():
        w = conv.weight[:rows].clone()
        conv.weight[:rows] = torch.einsum("oi,i...->o...", a, w)
        conv.bias[:rows] = a @ conv.bias[:rows] + d


def _colour_groups(group: int) -> dict[int, int]:
    """Colour ``c`` and its negation into the first two channels of norm group ``c`` (``group`` channels each)."""
    return {o: i for c in range(3) for o, i in ((group * c, c), (group * c + 1, -c - 1))}


def _constants(group: int) -> dict[int, float]:
    """+1 and -1 into the next two channels of norm groups 0-2."""
    return {group * c + d: v for c in range(3) for d, v in ((2, 1.0), (3, -1.0))}


def colour_vae() -> AutoencoderKL:
    """The hand-set VAE: latent channels 0-2 = R, G, B in [-1, 1] of every other pixel, decoded by repetition."""
    import torch
    from diffusers import AutoencoderKL

    from training.demo import tiny_vae

    vae = tiny_vae()
    vae.register_to_config(norm_num_groups=NORM_GROUPS, scaling_factor=SCALING_FACTOR)
    vae = AutoencoderKL.from_config(vae.config)
    enc, dec = vae.encoder, vae.decoder
    _zero_branches(vae)
    group = enc.conv_out.in_channels // NORM_GROUPS  # channels per group at the encoder's end (8)
    # encoder: RGB (scaled down) -> groups 0, 1, 2 of its last norm, each [colour, -colour, +1, -1, 0, ...]
    _route(enc.conv_in, {c: c for c in range(3)}, SMALL)
    _route(enc.down_blocks[0].downsamplers[0].conv, {c: c for c in range(enc.conv_in.out_channels)})
    _route(enc.down_blocks[1].resnets[0].conv_shortcut, _colour_groups(group), biases=_constants(group))
    _norm_at(enc.conv_norm_out, [group * c for c in range(3)])
    _route(enc.conv_out, {c: group * c for c in range(3)}, biases={4 + c: LOGVAR for c in range(4)})
    _route(vae.quant_conv, {c: c for c in range(8)})
    # decoder: latent 0-2 (scaled down) -> groups 0, 1, 2 of its last norm, each [colour, -colour, +1, -1]
    group = dec.conv_out.in_channels // NORM_GROUPS
    _route(vae.post_quant_conv, {c: c for c in range(4)})
    _route(dec.conv_in, {c: c for c in range(3)}, SMALL)
    _route(dec.up_blocks[0].upsamplers[0].conv, {c: c for c in range(dec.conv_in.out_channels)})
    _route(dec.up_blocks[1].resnets[0].conv_shortcut, _colour_groups(group), biases=_constants(group))
    _norm_at(dec.conv_norm_out, [group * c for c in range(3)])
    _route(dec.conv_out, {c: group * c for c in range(3)})
    # calibration on solid colours: encoder means -> the colour, then decoder output -> the colour
    cols = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = cols.view(-1, 3, 1, 1).expand(-1, 3, 8, 8)
    with torch.no_grad():
        raw = vae.encode(images).latent_dist.mean.mean((2, 3))[:, :3]
        _calibrate(vae.quant_conv, 3, raw, cols)
        latents = vae.encode(images).latent_dist.mean
        raw = vae.decode(latents).sample.mean((2, 3))
        _calibrate(dec.conv_out, 3, raw, cols)
    return vae.eval()


def _update_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}, indent=2))


def build_colour_sd(path: str | Path, seed: int = 0) -> Path:
    """Build the model at ``path`` unless it is there (safetensors, a diffusers folder like the demo model's).

    Built in a temporary folder beside ``path`` and renamed into place, so an interrupted build leaves nothing."""
    path = Path(path)
    if (path / "model_index.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        model = build_tiny_sd(tmp / "model", seed=seed)
        shutil.rmtree(model / "vae")
        colour_vae().save_pretrained(str(model / "vae"), safe_serialization=True)
        _update_json(model / "unet" / "config.json", norm_num_groups=NORM_GROUPS)
        _update_json(model / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
        model.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
