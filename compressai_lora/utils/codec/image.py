"""Image input/output of the codec tool: any Pillow mode in, 8-bit RGB PNG out."""

from __future__ import annotations

import os
from typing import BinaryIO, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageError", "read_image", "to_rgb8", "png_writer"]

_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_INT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageError(ValueError):
    """The input image cannot be read or converted."""


def read_image(path: str, warn: Callable[[str], None]) -> np.ndarray:
    """Read ``path`` as an ``(H, W, 3)`` uint8 RGB array.

    The first frame of animations is used; EXIF orientation is applied.
    ``warn`` receives one-line messages about what was dropped or rescaled.

    Raises:
        ImageError: the file is missing, unreadable, not an image or damaged.
    """
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            im.load()
            if frames > 1:
                warn(f"{path} has {frames} frames; only the first is encoded")
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
