"""Tiny random captioning models (``training.captioner``) built at test time, saved as safetensors like a Hub model,
and their session fixture: a Florence-2 (``Florence2ForConditionalGeneration``, DaViT + BART) and a BLIP
(``BlipForConditionalGeneration``), each a few hundred KB, over a character vocabulary written here (no network).

Importable without pytest side effects: ``build_tiny_florence2`` and ``build_tiny_blip`` are plain functions; the
session fixture ``tiny_captioners`` registers as a pytest plugin (tests/conftest.py). Random weights write gibberish
of the vocabulary's characters: use them for the plumbing (loading, batching, cleaning, storing), never for words.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest

__all__ = ["CHARS", "build_tiny_blip", "build_tiny_florence2", "florence2_processor", "save_florence2", "tiny_captioners"]
#: the tiny vocabularies' characters
CHARS = string.ascii_lowercase + string.digits + ".,'-"
#: the tiny models' image side (Florence-2: 4 stages of stride 4, 2, 2, 2 -> a 2 x 2 grid, 5 image tokens)
FLORENCE_SIZE, BLIP_SIZE = 64, 32
#: weights drawn wider than transformers' default (0.02) so that different photos give different random captions
INIT_STD = 0.5


def _widen(model, std: float = INIT_STD) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "norm" not in name:
                p.normal_(0.0, std)


def florence2_processor(side: int, image_seq_length: int):
    """A Florence-2 processor: a byte-level BPE tokenizer over ``CHARS`` (no merges) with ``<image>`` as its
    ``image_token`` (what ``Florence2Processor`` reads), a ``side`` px image processor (ImageNet mean and std, as
    Florence-2's) whose images make ``image_seq_length`` image tokens, the post-processor's ``pure_text`` task."""
    import transformers as tf

    vocab = {tok: i for i, tok in enumerate(("<s>", "<pad>", "</s>", "<unk>"))}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("\u0120" + c, len(vocab))  # byte-level BPE's "space + character"
    vocab["\u0120"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    tokenizer = tf.BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    size = {"height": side, "width": side}
    images = tf.CLIPImageProcessorPil(size=size, crop_size=size, do_center_crop=False, image_seq_length=image_seq_length,
                                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    return tf.Florence2Processor(image_processor=images, tokenizer=tokenizer, post_processor_config={"pure_text": {}})


def save_florence2(path: Path, vision: dict, text: dict, side: int, image_seq_length: int, *, seed: int = 0,
                   init_std: float | None = INIT_STD) -> Path:  # fmt: skip
    """A random ``Florence2ForConditionalGeneration`` of these vision and text (BART) configs, with
    ``florence2_processor``, saved as safetensors at ``path``; its vocabulary is ``text["vocab_size"]`` or the
    tokenizer's. ``init_std`` None keeps transformers' initialisation."""
    import torch
    import transformers as tf

    processor = florence2_processor(side, image_seq_length)
    tokenizer = processor.tokenizer
    text = {"vocab_size": len(tokenizer), "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
            "decoder_start_token_id": 2, **text}  # fmt: skip
    torch.manual_seed(seed)
    config = tf.Florence2Config(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id)
    model = tf.Florence2ForConditionalGeneration(config)
    if init_std is not None:
        _widen(model, init_std)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def build_tiny_florence2(path: str | Path, seed: int = 0) -> Path:
    """A random Florence-2 (DaViT with 4 one-block stages of width 8-16, a one-layer BART of width 16) and its
    processor (``florence2_processor`` at 64 px)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 8, 16, 16], num_heads=[1, 1, 2, 2], num_groups=[1, 1, 2, 2],
                  window_size=2, projection_dim=16, max_position_embeddings=8, max_temporal_embeddings=4,
                  drop_path_rate=0.0)  # fmt: skip
    text = dict(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128)  # fmt: skip
    return save_florence2(path, vision, text, FLORENCE_SIZE, 5, seed=seed)


def build_tiny_blip(path: str | Path, seed: int = 0) -> Path:
    """A random BLIP captioner (a one-layer ViT of width 16 on 32 px images, a one-layer BERT decoder) and its
    processor: a WordPiece tokenizer over ``CHARS`` whose BOS is ``[DEC]``, as BLIP's."""
    import torch
    import transformers as tf

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")
    vocab = {tok: i for i, tok in enumerate(specials)}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("##" + c, len(vocab))
    tokenizer = tf.BertTokenizer(vocab=vocab, bos_token="[DEC]")
    processor = tf.BlipProcessor(image_processor=tf.BlipImageProcessorPil(size={"height": BLIP_SIZE, "width": BLIP_SIZE}),
                              tokenizer=tokenizer)  # fmt: skip
    tower = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1)
    config = tf.BlipConfig(
        vision_config=dict(tower, image_size=BLIP_SIZE, patch_size=8),
        text_config=dict(tower, vocab_size=len(vocab), encoder_hidden_size=16, max_position_embeddings=128,
                         bos_token_id=vocab["[DEC]"], pad_token_id=0, sep_token_id=vocab["[SEP]"],
                         eos_token_id=vocab["[SEP]"]),  # fmt: skip
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = tf.BlipForConditionalGeneration(config)
    _widen(model)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory) -> dict[str, Path]:
    """{"florence2": folder, "blip": folder} of tiny random captioning models (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-captioners")
    return {"florence2": build_tiny_florence2(root / "florence2"), "blip": build_tiny_blip(root / "blip")}


@pytest.fixture(scope="session")
def tiny_captioner(tiny_captioners) -> Path:
    """The tiny random Florence-2: the default captioning model's kind (``CAPTION_MODEL`` in the run tests)."""
    return tiny_captioners["florence2"]
