"""The task's parameters with one set of bounds: what the form and the CLI (``scheduler.validation``) and the
trainer (``training.spec``) accept, read from this one table so that the two can never disagree.

Torch-free and dependency-free (it imports nothing from ui/, scheduler/ or training/). Each side words its own
messages from a ``Bound``: the trainer ``params.steps must be at least 1 (got 0)``, the form
``Steps: 0 is out of range; use 1 to 10000.``

Why these bounds (they are generous: what a model can really train at is the family's own check,
``ModelFamily.check_params``, e.g. Flux's latent multiple; these only refuse values that are nonsense for any
model):

- ``resolution``: 32 to 4096 in multiples of 8. The tiny test models train at 32 and 48 and the demo model at its
  native 64 (``training.demo.DEMO_RESOLUTION``); 8 is the smallest VAE scale factor of the families; past 4096 no
  GPU we rent holds the activations. The form's narrower choice for real models is a *policy*, a ``narrowed``
  copy of this bound (``scheduler.validation.Limits.resolution``), never a second set of numbers.
- ``rank``: 1 to 256. Past 256 a LoRA is about as large as the weights it adapts: use the full fine-tune recipe.
- ``learning_rate``: above 0 and at most 0.1. AdamW diverges above that for any model; the tiny test models are
  trained at up to 3e-2, real ones at 1e-6 to 1e-3.
- ``steps``: 1 to 10,000, the most a DreamBooth of 100 photos needs (the recipes' automatic steps stop at 2,400);
  ``lr_warmup_steps`` and the ``*_every`` periods share that upper end (0 is "never" for the periods).
- ``snr_gamma``: 0 to 100; 0 or null is no min-SNR weighting (the trainer's default; 5 is the paper's value), so the
  form's number field, which shows an empty value as 0, means what it shows. It, the warm-up and ``lr_scheduler``
  are the schedule settings the form offers beside the learning rate (``SCHEDULE_DEFAULTS``).
- The rest keep the trainer sane and the machine busy for a bounded time: ``seed`` fits numpy's 32-bit seed,
  ``batch_size`` up to 64, ``num_class_images`` up to 1000 (each is generated before training),
  ``sample_inference_steps`` up to 200, ``validation_prompts`` at most 8 of at most ``MAX_PROMPT_CHARS`` each,
  ``checkpoints_to_keep`` up to 100 (0 keeps them all), ``memory_budget_gib`` up to 1024 GiB.

Text fields (prompts, the base model) are one line of visible text: ``text_problem`` refuses the C0 controls (tab
and newline too), DEL, the C1 controls and the bidi embeddings, overrides and isolates (U+202A-U+202E,
U+2066-U+2069). An escape sequence in a prompt would retitle or clear the terminal of whoever prints the queue
(``python -m scheduler list``), and a bidi override makes a name read differently from what it is.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

#: the longest prompt (instance, class or validation prompt) and caption, in characters
MAX_PROMPT_CHARS = 1000
#: the most ``validation_prompts`` a task may ask for (each is sampled every ``validation_every`` steps)
MAX_VALIDATION_PROMPTS = 8

#: what no text field of a task may hold: C0 controls, DEL, C1 controls, bidi embeddings/overrides and isolates
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: ``params.quantize_base``: how the frozen denoiser of a LoRA run loads. "auto": the memory plan decides from the
#: GPU's memory and the model's size (``training.precision.plan_quantization``); "none": the mixed-precision
#: dtype; "nf4" / "int8": bitsandbytes; "fp8": torchao, compute capability >= 8.9 only.
QUANTIZE_BASE_CHOICES = ("auto", "none", "nf4", "int8", "fp8")
#: recipes that train the base weights themselves (an explicit quantization is refused for them)
FULL_RECIPES = ("dreambooth-full",)
#: ``params.mixed_precision``
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
#: ``params.lr_scheduler`` ("constant" with a warm-up: constant after a linear warm-up), and its name in the form
LR_SCHEDULER_CHOICES = ("constant", "linear", "cosine", "polynomial")
LR_SCHEDULER_LABEL = "Learning-rate schedule"
#: The trainer's defaults of the schedule settings the form offers among its advanced settings (``TrainParams``
#: declares its fields with them; a recipe's ``fixed_params`` replace them): no warm-up, no min-SNR weighting.
DEFAULT_LR_SCHEDULER, DEFAULT_LR_WARMUP_STEPS, DEFAULT_SNR_GAMMA = "constant", 0, None
SCHEDULE_DEFAULTS: Mapping[str, object] = MappingProxyType(
    {"lr_scheduler": DEFAULT_LR_SCHEDULER, "lr_warmup_steps": DEFAULT_LR_WARMUP_STEPS, "snr_gamma": DEFAULT_SNR_GAMMA}
)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Bound:
    """The values one numeric parameter may take: ``kind`` (int or float) from ``low`` to ``high``, each end
    included unless ``low_open``/``high_open``; ints also a multiple of ``multiple``. ``None`` ("auto") is not
    judged here: each side decides which keys may be null."""

    key: str
    #: the form's name of the parameter
    label: str
    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    multiple: int = 1

    def is_number(self, value: object) -> bool:
        """Whether ``value`` has this parameter's kind (ints are numbers too for a float; never a bool)."""
        if isinstance(value, bool):
            return False
        return isinstance(value, int) if self.kind is int else isinstance(value, int | float)

    def admits(self, value: object) -> bool:
        """Whether ``value`` is of the right kind and inside the bound."""
        if not self.is_number(value):
            return False
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v):
            return False
        above = self.low < v if self.low_open else self.low <= v
        below = v < self.high if self.high_open else v <= self.high
        return above and below and (self.multiple == 1 or int(v) % self.multiple == 0)

    def broken(self, value: float) -> str:
        """Which rule a number that ``admits`` refuses breaks, as the end of a sentence ("at least 1",
        "above 0", "at most 0.1", "a multiple of 8 between 32 and 4096")."""
        if self.multiple > 1:
            return f"a multiple of {self.multiple} between {_num(self.low)} and {_num(self.high)}"
        if not math.isfinite(value) or (value <= self.low if self.low_open else value < self.low):
            return f"above {_num(self.low)}" if self.low_open else f"at least {_num(self.low)}"
        return f"below {_num(self.high)}" if self.high_open else f"at most {_num(self.high)}"

    def span(self) -> str:
        """The range in words: "1 to 10000" (ints), "a value above 0 and at most 0.1" (floats)."""
        if self.kind is int:
            return f"{_num(self.low)} to {_num(self.high)}"
        low = f"above {_num(self.low)}" if self.low_open else f"from {_num(self.low)}"
        high = f"below {_num(self.high)}" if self.high_open else f"at most {_num(self.high)}"
        return f"a value {low} and {high}"

    def narrowed(self, *, low: float | None = None, high: float | None = None, multiple: int | None = None) -> Bound:
        """A policy inside this bound (e.g. the form's choice of resolutions for real models): every value it
        admits, this bound admits too. ``ValueError`` when it would reach outside."""
        narrow = replace(self, low=self.low if low is None else low, high=self.high if high is None else high,
                         multiple=self.multiple if multiple is None else multiple)  # fmt: skip
        inside = (self.admits(narrow.low) or narrow.low_open) and (self.admits(narrow.high) or narrow.high_open)
        if not inside or narrow.low > narrow.high or narrow.multiple % self.multiple:
            raise ValueError(f"{narrow} reaches outside {self}")
        return narrow


_BOUNDS = (
    Bound("steps", "Steps", int, 1, 10_000),
    Bound("learning_rate", "Learning rate", float, 0.0, 0.1, low_open=True),
    Bound("rank", "LoRA rank", int, 1, 256),
    Bound("alpha", "LoRA alpha", float, 0.0, 1024.0, low_open=True),
    Bound("resolution", "Resolution", int, 32, 4096, multiple=8),
    Bound("seed", "Seed", int, 0, 2**32 - 1),
    Bound("batch_size", "Batch size", int, 1, 64),
    Bound("lr_warmup_steps", "Warm-up steps", int, 0, 10_000),
    Bound("num_class_images", "Class images", int, 1, 1000),
    Bound("prior_loss_weight", "Prior loss weight", float, 0.0, 10.0),
    Bound("snr_gamma", "SNR gamma", float, 0.0, 100.0),
    Bound("noise_offset", "Noise offset", float, 0.0, 1.0, high_open=True),
    Bound("checkpoint_every", "Checkpoint every", int, 0, 10_000),
    Bound("checkpoints_to_keep", "Checkpoints to keep", int, 0, 100),
    Bound("validation_every", "Validation every", int, 0, 10_000),
    Bound("sample_inference_steps", "Sampling steps", int, 1, 200),
    Bound("memory_budget_gib", "Memory budget (GiB)", float, 0.0, 1024.0, low_open=True),
    Bound("log_every", "Log every", int, 0, 10_000),
)

#: every numeric parameter of a task (``training.spec.TrainParams``) and its one bound
PARAMS: Mapping[str, Bound] = MappingProxyType({b.key: b for b in _BOUNDS})


def text_problem(text: str) -> str | None:
    """Why ``text`` is not one line of visible text (a sentence without the field's name), or None."""
    found = CONTROL_CHARS.search(text)
    if found is None:
        return None
    char = found.group()
    name = unicodedata.name(char, "")
    what = f"U+{ord(char):04X}" + (f" ({name})" if name else "")
    return f"holds the control character {what} at character {found.start() + 1}; use one line of visible text"


def validation_prompts_problem(prompts: object) -> str | None:
    """What is wrong with a ``validation_prompts`` value (a sentence without the key), or None."""
    if not isinstance(prompts, list) or not all(isinstance(x, str) and x.strip() for x in prompts):
        return "must be a list of non-empty strings"
    if len(prompts) > MAX_VALIDATION_PROMPTS:
        return f"holds {len(prompts)} prompts; at most {MAX_VALIDATION_PROMPTS} are allowed"
    longest = max((len(x) for x in prompts), default=0)
    if longest > MAX_PROMPT_CHARS:
        return f"has a prompt of {longest} characters; at most {MAX_PROMPT_CHARS} are allowed"
    for prompt in prompts:
        if problem := text_problem(prompt):
            return "has a prompt with the " + problem.removeprefix("holds the ")
    return None
