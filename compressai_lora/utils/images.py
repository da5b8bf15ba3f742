"""Reading images of any Pillow mode as 8-bit RGB, and writing RGB PNGs.

One reader for every tool: 16-bit images are scaled to 8 bits, not clipped
at 255 as Pillow's ``convert("RGB")`` (and so the host's ``read_image``)
clips them; for 8-bit images the pixels are the host's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..host import image_extensions

__all__ = [
    "ImageError",
    "image_files",
    "read_image",
    "read_tensor",
    "to_rgb8",
    "png_writer",
    "is_png_name",
]

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """The input image cannot be read or converted."""


def _ignore(_: str) -> None:
    pass


def image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (the host's extensions), sorted."""
    extensions = image_extensions()
    walk = Path(folder).rglob("*") if recursive else Path(folder).iterdir()
    return sorted(p for p in walk if p.suffix.lower() in extensions and p.is_file())


def read_image(
    path: str | os.PathLike,
    warn: Callable[[str], None] = _ignore,
    orient: bool = True,
) -> np.ndarray:
    """Read ``path`` as an ``(H, W, 3)`` uint8 RGB array.

    The first frame of animations is used; EXIF orientation is applied if
    ``orient`` (the host's eval_model does not apply it).  ``warn`` receives
    one-line messages about what was dropped or rescaled.

    Raises:
        ImageError: the file is missing, unreadable, not an image or damaged.
    """
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            im.load()
            if frames > 1:
                warn(f"{path} has {frames} frames; only the first is encoded")
            if orient:
                im = ImageOps.exif_transpose(im)
            return to_rgb8(im, warn)
    except FileNotFoundError:
        raise ImageError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"cannot read {path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"cannot read {path}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image file Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path} is too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports damaged data as OSError/SyntaxError/ValueError/EOFError
        msg = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"cannot decode {path}: {msg}") from None


def read_tensor(
    path: str | os.PathLike, warn: Callable[[str], None] = _ignore
) -> torch.Tensor:
    """:func:`read_image` (not oriented) as the host's ``3xHxW`` float tensor in
    ``[0, 1]``: for 8-bit images exactly what the host's ``read_image`` gives."""
    rgb = read_image(path, warn, orient=False)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div(255)


def _scale_to_8bit(a: np.ndarray, full: float, warn, what: str) -> np.ndarray:
    """Map ``[0, full]`` linearly to 0..255 (rounded); else min-max with a warning."""
    a = a.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageError(f"{what} image contains NaN or infinite values")
    if lo < 0 or hi > full:
        warn(
            f"{what} values span [{lo:g}, {hi:g}], outside [0, {full:g}]; "
            "rescaled linearly to 0..255"
        )
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        full = 1.0
    return np.rint(a * (255.0 / full)).astype(np.uint8)


def to_rgb8(im: Image.Image, warn: Callable[[str], None]) -> np.ndarray:
    """Convert a Pillow image of any mode to an ``(H, W, 3)`` uint8 array.

    16-bit ('I;16*', and 'I' holding 0..65535) is scaled by 255/65535, not
    clipped; float ('F') is read as 0..1 (or 0..255 when larger); alpha is
    dropped with a warning; palettes and other colour spaces go through
    Pillow's conversion to RGB.
    """
    mode = im.mode
    if mode in _INT16_MODES or mode == "I":
        gray = _scale_to_8bit(np.asarray(im), 65535.0, warn, f"{mode} (16-bit)")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        a = np.asarray(im)
        full = 1.0 if a.size == 0 or float(np.nanmax(a)) <= 1.0 else 255.0
        gray = _scale_to_8bit(a, full, warn, "F (float)")
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "L", "RGB", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        warn(f"input has an alpha channel ({mode}); it is dropped, RGB is encoded")
        if mode == "La":
            im = im.convert("LA")
        im = im.convert("RGBA")
    try:
        rgb = im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert image mode {mode} to RGB: {e}") from None
    return np.array(rgb, dtype=np.uint8).reshape(rgb.height, rgb.width, 3)


def png_writer(rgb: np.ndarray) -> Callable[[BinaryIO], None]:
    """A writer of ``rgb`` (``(H, W, 3)`` uint8) as an 8-bit RGB PNG."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))

    def write(f: BinaryIO) -> None:
        image.save(f, format="PNG")

    return write


def is_png_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() == ".png"
