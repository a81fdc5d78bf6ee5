"""Captions written for the user (issue 24): a vision-language model describes each photo that has no ``.txt`` of its
own, on the GPU before training; ``keep_trigger`` puts the subject's trigger word into the caption.

``Captioner.load`` loads the model CAPTION_MODEL names (``contract.caption_models``: the default, its files, its
cost) the way scoring models load (``training.hub_models``): a local folder or a Hub repo id, only the files it needs
(from the Hugging Face cache in offline mode), weights from ``model.safetensors`` only, transformers' own classes
(``AutoProcessor``, ``AutoModelForImageTextToText``), never remote code. ``close`` frees it: the trainer loads the
diffusion model on the same GPU next.

Prompt by model type (config ``model_type``):

- ``florence2``: the task token ``FLORENCE_TASK`` (a detailed caption);
- ``blip``: no prompt (BLIP's captioning head starts from its own BOS token);
- chat vision-language models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM, Idefics3): refused for now: their
  processors need torchvision, which this app does not install, so that path could not be built and tested here;
- anything else: refused, naming the type.

Decoding is greedy (``num_beams=1``, no sampling: the same photo gives the same caption), at most
``MAX_NEW_TOKENS`` new tokens, ``BATCH`` photos at once. Each caption is cleaned (``clean_caption``): special and task
tokens removed, whitespace collapsed, cut to ``training.data.MAX_CAPTION_CHARS`` at a word boundary. A caption can
come out empty (a model that stops at once): ``caption`` returns "" for it and the caller decides (the trainer then
trains that photo on the instance prompt, as a photo without a ``.txt``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from contract.caption_models import CAPTION_FILES, DEFAULT_CAPTION_MODEL, MAX_NEW_TOKENS
from training.data import COMMON_WORDS, MAX_CAPTION_CHARS, trigger_word
from training.exitcodes import BadInputError
from training.hub_models import ModelRole, model_type, safetensors_folder

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["BATCH", "FLORENCE_TASK", "Captioner", "CaptionerUnavailable", "clean_caption", "keep_trigger"]

#: photos captioned at once (bounds the activations: 8 x 577 image tokens through BART-base is a few hundred MB)
BATCH = 8
#: Florence-2's task token for a detailed caption (two or three sentences; "<CAPTION>" gives one short sentence)
FLORENCE_TASK = "<DETAILED_CAPTION>"
#: the model types captioned here, and their prompt (None: no text input)
PROMPTS: dict[str, str | None] = {"florence2": FLORENCE_TASK, "blip": None}
#: chat vision-language models: known, refused (see the module's docstring)
CHAT_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "smolvlm", "idefics3")
#: tokens no caption keeps, whatever the tokenizer declares special: BART's and BERT's specials, Florence-2's task
#: and location tokens, image placeholders
_TOKENS = re.compile(r"</?s>|<pad>|<unk>|<mask>|<image>|<loc_\d+>|<[A-Z][A-Z_]*>|\[(?:PAD|UNK|CLS|SEP|MASK|DEC)\]")


class CaptionerUnavailable(BadInputError):
    """The captioning model cannot be loaded, or is not one this app captions with; the message names it and says
    why (a bad input of the task: exit code ``BAD_INPUT``, before any training)."""


ROLE = ModelRole("captioning model", CaptionerUnavailable, "--captions")


def clean_caption(text: str, special: Iterable[str] = ()) -> str:
    """``text`` without ``special`` tokens and the tokens of ``_TOKENS``, whitespace collapsed to single spaces, cut
    at a word boundary to at most ``MAX_CAPTION_CHARS`` characters ("" when nothing is left)."""
    for token in special:
        if token:
            text = text.replace(token, " ")
    text = " ".join(_TOKENS.sub(" ", text).split())
    if len(text) > MAX_CAPTION_CHARS:
        cut = text[: MAX_CAPTION_CHARS + 1]
        text = cut[: cut.rfind(" ")] if " " in cut else cut[:MAX_CAPTION_CHARS]
    return text.strip()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def class_noun(instance_prompt: str, class_prompt: str | None = None) -> str | None:
    """The noun naming the subject's class: the last word of the class prompt that is not a common word ("dog" in
    "a photo of dog"), else the last such word of the instance prompt after its trigger word ("dog" in "a photo of
    sks dog"); None when there is none."""
    trigger = trigger_word(instance_prompt, class_prompt)
    nouns = [w for w in _words(class_prompt or "") if w not in COMMON_WORDS and w != trigger]
    if not nouns and trigger is not None:
        words = _words(instance_prompt)
        nouns = [w for w in words[words.index(trigger) + 1:] if w not in COMMON_WORDS]
    return nouns[-1] if nouns else None


def keep_trigger(caption: str, instance_prompt: str, class_prompt: str | None) -> str:
    """``caption`` with the subject's trigger word (``training.data.trigger_word``) in it: inserted before the first
    mention of the class noun (``class_noun``; its plural too: "a brown dog on grass" -> "a brown sks dog on grass").
    Unchanged when it has the trigger word already, when there is no trigger word or class noun, or when the caption
    does not name the class: ``training.data.caption_prompt`` then trains on "<instance prompt>, <caption>"."""
    trigger = trigger_word(instance_prompt, class_prompt)
    noun = class_noun(instance_prompt, class_prompt)
    if trigger is None or noun is None or trigger in _words(caption):
        return caption
    mention = re.search(rf"(?<![a-z0-9]){re.escape(noun)}(?:e?s)?(?![a-z0-9])", caption, re.IGNORECASE)
    if mention is None:
        return caption
    kept = f"{caption[: mention.start()]}{trigger} {caption[mention.start():]}"
    return kept if len(kept) <= MAX_CAPTION_CHARS else caption


def _check_type(model: str, kind: str, config: dict) -> None:
    """``CaptionerUnavailable`` unless ``model`` is of a type captioned here, with transformers' own code."""
    if config.get("auto_map"):
        raise CaptionerUnavailable(
            f"captioning model {model!r} ships its own modelling code (auto_map in its config.json), which this app "
            f"never runs; use a transformers-native conversion (for Florence-2: {DEFAULT_CAPTION_MODEL})")
    if kind in CHAT_TYPES:
        raise CaptionerUnavailable(
            f"captioning model {model!r} is a chat vision-language model ({kind}), not supported yet: its processor "
            f"needs torchvision, which this app does not install. Use a Florence-2 or BLIP model (default: "
            f"{DEFAULT_CAPTION_MODEL})")
    if kind not in PROMPTS:
        raise CaptionerUnavailable(
            f"captioning model {model!r} is a {kind or 'model of unknown type'!r}, not one this app captions with "
            f"({', '.join(PROMPTS)}; default: {DEFAULT_CAPTION_MODEL})")


@contextlib.contextmanager
def _load_errors(model: str) -> Iterator[None]:
    """transformers' load errors as ``CaptionerUnavailable`` naming ``model``."""
    try:
        yield
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as e:
        raise CaptionerUnavailable(f"captioning model {model!r} could not be loaded ({type(e).__name__}: {e})") from e


@dataclass
class Captioner:
    """A loaded captioning model: ``caption`` photos, then ``close``."""

    model: Any
    processor: Any
    kind: str  # config model_type: a key of PROMPTS
    name: str  # as CAPTION_MODEL gave it

    @classmethod
    def load(cls, model: str, device: Any, dtype: torch.dtype) -> Captioner:
        """Load ``model`` (a Hub repo id or a local folder) on ``device``: in ``dtype`` on an accelerator, float32 on
        the CPU. ``CaptionerUnavailable`` when it cannot be loaded or is not a model type captioned here."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = safetensors_folder(model, CAPTION_FILES, ROLE)
        kind, config = model_type(model, folder, ROLE)
        _check_type(model, kind, config)
        device = torch.device(device)
        dtype = dtype if device.type != "cpu" else torch.float32
        with _load_errors(model):
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            net = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True, local_files_only=True,
                                                              dtype=dtype)  # fmt: skip
        return cls(net.to(device).eval().requires_grad_(False), processor, kind, model)

    @torch.inference_mode()
    def caption(self, images: list[Image]) -> list[str]:
        """One cleaned caption per image, in order ("" where the model wrote nothing usable)."""
        if self.model is None:
            raise RuntimeError("the captioner was closed")
        out: list[str] = []
        for start in range(0, len(images), BATCH):
            out += self._batch([im.convert("RGB") for im in images[start: start + BATCH]])
        return out

    def _batch(self, images: list[Image]) -> list[str]:
        prompt = PROMPTS[self.kind]
        text = None if prompt is None else [prompt] * len(images)
        param = next(self.model.parameters())
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(param.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
        tokenizer = self.processor.tokenizer
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return [clean_caption(t, tokenizer.all_special_tokens) for t in texts]

    def close(self) -> None:
        """Free the model: references dropped, garbage collected, the GPU's cached blocks returned."""
        from training.utils.runtime import free_memory

        self.model = self.processor = None
        free_memory()
