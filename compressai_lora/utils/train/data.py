"""Training images held in memory and the batches of each step."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from ...host import image_extensions
from ..images import ImageError, image_files, read_image
from .errors import TrainError

__all__ = [
    "REPO_ROOT",
    "DEFAULT_DATA",
    "TEST_SET_NAMES",
    "ImageBank",
    "step_seed",
    "step_generator",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
#: documented default: the shared training photos next to the source checkout
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "train" / "natural"
#: folder names of the benchmark test sets: never trained on
TEST_SET_NAMES = ("kodak", "ood")


class ImageBank:
    """Training images held in memory (uint8), sampled as random patches.

    Each image is downscaled to at most ``max_side`` pixels on its long side
    (and upscaled if a side is below the patch).  A patch is a random crop at a
    random scale in ``[scale_min, 1]`` (crop ``patch / scale`` pixels, resize to
    ``patch``), flipped horizontally with probability 1/2.

    Args:
        root: folder searched recursively for images
        patch: patch size ``(height, width)``
        max_side: long-side limit applied at load time
        scale_min: smallest random rescale factor (1: plain crops)
    """

    def __init__(
        self,
        root: os.PathLike | str,
        patch: tuple[int, int],
        max_side: int = 1024,
        scale_min: float = 0.5,
    ):
        root = Path(root)
        if not root.is_dir():
            raise TrainError(f"data folder {str(root)!r} does not exist")
        parts = {p.lower() for p in root.resolve().parts}
        if parts & set(TEST_SET_NAMES):
            raise TrainError(
                f"data folder {str(root)!r} looks like a test set "
                f"({'/'.join(TEST_SET_NAMES)}): train on training images only"
            )
        files = image_files(root)
        if not files:
            raise TrainError(
                f"data folder {str(root)!r} holds no images "
                f"({', '.join(image_extensions())})"
            )
        if not 0 < scale_min <= 1:
            raise TrainError(f"--scale-min must be in (0, 1], got {scale_min}")
        self.root, self.files = root, files
        self.patch, self.max_side, self.scale_min = patch, max_side, scale_min
        self.images = [self._load(p) for p in files]

    def _load(self, path: Path) -> torch.Tensor:
        try:
            img = Image.fromarray(read_image(path, orient=False))
        except ImageError as e:
            raise TrainError(str(e)) from None
        w, h = img.size
        scale = min(1.0, self.max_side / max(w, h))
        scale = max(scale, self.patch[0] / h, self.patch[1] / w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = img.resize(size, Image.LANCZOS)
        return pil_to_tensor(img)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` random patches as a float batch in ``[0, 1]``."""
        ph, pw = self.patch
        g = generator
        out = []
        for i in torch.randint(len(self.images), (size,), generator=g).tolist():
            img = self.images[i]
            _, h, w = img.shape
            s = self.scale_min + (1 - self.scale_min) * torch.rand((), generator=g)
            s = max(float(s), ph / h, pw / w)
            rh, rw = min(h, round(ph / s)), min(w, round(pw / s))
            top = int(torch.randint(h - rh + 1, (), generator=g))
            left = int(torch.randint(w - rw + 1, (), generator=g))
            x = img[:, top : top + rh, left : left + rw].float().div(255)
            if (rh, rw) != (ph, pw):
                x = F.interpolate(x[None], (ph, pw), mode="bilinear", antialias=True)[
                    0
                ].clamp(0, 1)
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
            out.append(x)
        return torch.stack(out)


def step_seed(seed: int, step: int) -> int:
    """The seed of ``step``'s randomness in a run seeded by ``seed``."""
    return seed * 1_000_003 + step


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of ``step``'s batch (same batches after a resume)."""
    return torch.Generator().manual_seed(step_seed(seed, step))
