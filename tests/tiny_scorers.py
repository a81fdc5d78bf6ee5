"""Tiny random scoring models (``training.scoring``) built at test time, saved as safetensors like a Hub model, and
their session fixture.

Importable without pytest side effects: ``build_tiny_dino``, ``build_tiny_clip`` and ``build_pickle_only`` are plain
functions; the session fixture ``tiny_scorers`` registers as a pytest plugin (tests/conftest.py). Random weights give
meaningless scores: use them for the plumbing (loading, shapes, ranges), never to judge a run.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.demo import TINY_VOCAB_SIZE, write_char_tokenizer

__all__ = ["build_pickle_only", "build_tiny_clip", "build_tiny_dino", "pixel_scores", "pixel_scoring", "tiny_scorers"]
IMAGE_SIZE = 32


def build_tiny_dino(path: str | Path, seed: int = 0) -> Path:
    """A two-layer random ``Dinov2Model`` (hidden 32, 8 px patches of a 32 px image) and its image processor."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                          image_size=IMAGE_SIZE, patch_size=8)  # fmt: skip
    Dinov2Model(config).save_pretrained(path, safe_serialization=True)
    processor = BitImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip
    processor.save_pretrained(path)
    return path


def build_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """A two-layer random ``CLIPModel`` (hidden 32, projection 16) over the demo model's character vocabulary, and
    its processor (image processor at 32 px, CLIP tokenizer)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    torch.manual_seed(seed)
    tower = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=TINY_VOCAB_SIZE, max_position_embeddings=77, bos_token_id=0, eos_token_id=1),
        vision_config=dict(tower, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path, safe_serialization=True)
    tok_dir = path / "_tok_tmp"
    write_char_tokenizer(tok_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})  # fmt: skip
    CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir))).save_pretrained(path)
    shutil.rmtree(tok_dir, ignore_errors=True)
    return path


def build_pickle_only(source: str | Path, path: str | Path) -> Path:
    """A copy of the model folder ``source`` whose weights are a pickle (``pytorch_model.bin``) and no safetensors:
    what the loader must refuse."""
    import torch
    from safetensors.torch import load_file

    source, path = Path(source), Path(path)
    shutil.copytree(source, path, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(source / "model.safetensors"), path / "pytorch_model.bin")
    return path


@pytest.fixture(scope="session")
def tiny_scorers(tmp_path_factory) -> dict[str, Path]:
    """{"dino": folder, "clip": folder} of tiny random scoring models (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-scorers")
    return {"dino": build_tiny_dino(root / "dino"), "clip": build_tiny_clip(root / "clip")}


@contextlib.contextmanager
def pixel_scores() -> Iterator[None]:
    """Within it, runs (in this process or a child it starts) score images by the fixed pixel embedding
    (``contract.scoring_models.PIXELS``) and no CLIP: tests/conftest.py sets no scoring model for the other tests."""
    from contract.scoring_models import PIXELS

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCORING_DINO_MODEL", PIXELS)
        mp.setenv("SCORING_CLIP_MODEL", "none")
        yield


@pytest.fixture
def pixel_scoring() -> Iterator[None]:
    """``pixel_scores`` for the whole test."""
    with pixel_scores():
        yield
