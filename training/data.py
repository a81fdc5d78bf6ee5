"""Instance and class images: fetching (local folder or Hub dataset), validation and preprocessing.

Everything here runs before any model is loaded, so a bad upload fails in seconds with a clear message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from training.exitcodes import BadInputError
from training.spec import HubFolder

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_IMAGES = 1


@dataclass
class PreparedImage:
    """A training image, EXIF-transposed, resized (shorter side = resolution) and center-cropped to a square."""

    image: Image.Image
    source: Path
    original_size: tuple[int, int]  # (height, width) after EXIF transpose, before resizing (SDXL micro-conditioning)
    crop_top_left: tuple[int, int]  # (top, left) of the crop in the resized image


def fetch_images(source: str | HubFolder, cache_dir: Path) -> Path:
    """Return a local folder holding the images: the folder itself, or a snapshot of the Hub dataset folder."""
    if isinstance(source, str):
        folder = Path(source)
        if not folder.is_dir():
            raise BadInputError(f"image folder does not exist: {folder}")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    sub = source.path.strip("/")
    try:
        local = snapshot_download(
            repo_id=source.repo_id,
            repo_type=source.repo_type,
            revision=source.revision,
            allow_patterns=[f"{sub}/*"] if sub else None,
            local_dir=cache_dir,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise BadInputError(f"image repo {source.repo_id} (revision {source.revision}) not found") from e
    except HfHubHTTPError as e:
        raise RuntimeError(f"downloading images from {source.repo_id} failed: {e}") from e
    folder = Path(local) / sub
    if not folder.is_dir():
        raise BadInputError(f"no folder {sub!r} in {source.repo_id} at revision {source.revision}")
    return folder


def list_image_files(folder: Path) -> list[Path]:
    """Image-like files (by extension) directly in ``folder``, sorted by name; hidden files are ignored."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def min_side_for(resolution: int) -> int:
    """The smallest acceptable shorter side of a training image (upscaling beyond 8x is refused)."""
    return max(16, resolution // 8)


def load_images(folder: Path, resolution: int, *, min_images: int = MIN_IMAGES, what: str = "instance") -> list[PreparedImage]:
    """Open, validate and preprocess every image in ``folder``; raise ``BadInputError`` naming every bad file."""
    files = list_image_files(folder)
    if len(files) < min_images:
        raise BadInputError(
            f"found {len(files)} {what} image(s) in the upload, need at least {min_images} "
            f"(accepted types: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    problems: list[str] = []
    prepared: list[PreparedImage] = []
    need = min_side_for(resolution)
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            problems.append(f"{path.name}: not a readable image ({type(e).__name__})")
            continue
        w, h = im.size
        if min(w, h) < need:
            problems.append(f"{path.name}: too small ({w}x{h} px; need at least {need} px on the shorter side)")
            continue
        prepared.append(_resize_crop(im, resolution, path))
    if problems:
        raise BadInputError(f"{len(problems)} bad {what} image(s): " + "; ".join(problems))
    return prepared


def _resize_crop(im: Image.Image, resolution: int, path: Path) -> PreparedImage:
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    resized = im.resize((nw, nh), Image.Resampling.LANCZOS) if (nw, nh) != (w, h) else im
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    return PreparedImage(cropped, path, (h, w), (top, left))
