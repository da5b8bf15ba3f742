"""Reading and writing base-codec checkpoints, with optional float16 storage.

A checkpoint is CompressAI's ``{"state_dict": ..., "meta": ...}``, written
after ``net.update(force=True)`` so that the entropy tables are current; the
host reads it as it is::

    python -m compressai.utils.eval_model checkpoint IMAGES -a ARCH -p FILE

Half storage (``half=True``) nearly halves the file: the weights and biases
of the convolutions are stored as float16 (and tensors that float16 holds
exactly, such as the masks of masked convolutions), except the context model
and entropy-parameter network (:data:`KEEP_FLOAT32`).  Everything that
defines the entropy coder stays as trained: the integer tables
(:data:`compressai_lora.host.ENTROPY_BUFFERS`) and every floating tensor
of an entropy model (quantiles, density parameters, scale table) keep their
dtype, as do GDN parameters and bound buffers (small, and some below
float16's normal range).  So the tables that ``update(force=True)``
recomputes at load time are the trained ones, bit for bit; only the
transforms see float16 rounding.

:func:`load_state_dict_and_meta` (and :func:`load_state_dict`) restore
float32.  The host's ``eval_model checkpoint`` needs no help:
``load_state_dict`` of a float32 model copies float16 values into its float32
parameters, which gives the same model.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

from .host import ENTROPY_BUFFERS
from .utils.files import write_atomic

__all__ = [
    "ENTROPY_BUFFERS",
    "KEEP_FLOAT32",
    "WRAPPER_KEYS",
    "half_storage_keys",
    "to_half_storage",
    "to_float32",
    "unwrap",
    "CheckpointError",
    "load_state_dict_and_meta",
    "load_state_dict",
    "save_checkpoint",
    "sha256",
]

#: keys under which checkpoints keep the state dict, in the host's order
#: (``eval_model`` takes the last one present)
WRAPPER_KEYS = ("network", "state_dict", "model_state_dict")

#: layers kept in float32 by half storage: the autoregressive context model
#: and the entropy-parameter network set the means ``mu`` that decide every
#: rounding of ``y - mu``, re-run symbol by symbol in the decoder; float16
#: there flips symbols (see weights/README.md).  Small next to the transforms.
KEEP_FLOAT32 = ("context_prediction.", "entropy_parameters.")

PathLike = Union[str, os.PathLike]
_FP16_MAX = torch.finfo(torch.float16).max


def _entropy_model_prefixes(state_dict: Mapping[str, Tensor]) -> set[str]:
    """Module paths of the entropy models (they own the integer tables)."""
    suffix = "." + ENTROPY_BUFFERS[0]
    return {k[: -len(suffix)] + "." for k in state_dict if k.endswith(suffix)}


def half_storage_keys(
    state_dict: Mapping[str, Tensor], keep: Sequence[str] = KEEP_FLOAT32
) -> list[str]:
    """Keys that half storage writes as float16.

    Floating tensors outside the entropy models that float16 represents
    exactly (e.g. the 0/1 mask of a masked convolution), and the other
    ``*.weight``/``*.bias`` tensors (convolutions, linear layers: rounded)
    within float16's range, except those under the ``keep`` prefixes.
    """
    skip = tuple(_entropy_model_prefixes(state_dict))
    keep = tuple(keep)
    keys = []
    for k, v in state_dict.items():
        if not v.is_floating_point() or v.dtype == torch.float16:
            continue
        if skip and k.startswith(skip):
            continue
        if torch.equal(v.to(torch.float16).to(v.dtype), v):
            keys.append(k)  # exact
        elif keep and k.startswith(keep):
            continue
        elif k.endswith((".weight", ".bias")) and bool(v.abs().max() < _FP16_MAX):
            keys.append(k)  # rounded; inf/nan/overflow stay as they are
    return keys


def to_half_storage(
    state_dict: Mapping[str, Tensor], keep: Sequence[str] = KEEP_FLOAT32
) -> dict[str, Tensor]:
    """Copy of ``state_dict`` with :func:`half_storage_keys` in float16."""
    half = set(half_storage_keys(state_dict, keep))
    return {k: (v.to(torch.float16) if k in half else v) for k, v in state_dict.items()}


def to_float32(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy of ``state_dict`` with every floating tensor in float32.

    Integer tensors (the entropy tables) are returned unchanged.
    """
    return {
        k: (v.float() if v.is_floating_point() else v) for k, v in state_dict.items()
    }


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint (one-line message)."""


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Tensor]:
    """The state dict inside a checkpoint, found as the host finds it."""
    state_dict = checkpoint
    for key in WRAPPER_KEYS:
        if key in checkpoint:
            state_dict = checkpoint[key]
    return state_dict


def load_file(path: PathLike, map_location: Any = "cpu") -> Mapping[str, Any]:
    """The mapping a torch file holds (``weights_only``: no code is run).

    Raises:
        CheckpointError: the file is missing, unreadable or not a mapping.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        why = err.strerror or " ".join(str(err).split())
        raise CheckpointError(f"cannot read checkpoint {path}: {why}") from None
    except Exception as err:  # unpickling errors of every kind
        lines = str(err).strip().splitlines()
        first = lines[0][:200] if lines else ""
        raise CheckpointError(
            f"cannot load checkpoint {path} ({type(err).__name__}: {first})"
        ) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (found {type(obj).__name__})")
    return obj


def load_state_dict_and_meta(
    path: PathLike, map_location: Any = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, meta)`` of a checkpoint file; floating tensors float32.

    Accepts a bare state dict or one wrapped under ``"state_dict"``,
    ``"network"`` or ``"model_state_dict"`` (as the host's eval_model does);
    float16 storage is restored to float32 and the entropy tables are
    returned exactly as stored.  ``meta`` is the ``"meta"`` entry (empty if
    there is none).  The state dict goes to any model's ``from_state_dict``,
    ours and the host's::

        sd, meta = load_state_dict_and_meta("weights/cheng2020-attn-N64-q3.pth.tar")
        net = compressai_lora.zoo.model_architectures[
            "cheng2020-attn-lora"].from_state_dict(sd)

    Raises:
        CheckpointError: not a readable checkpoint, or one without a state dict.
    """
    obj = load_file(path, map_location)
    state_dict = unwrap(obj)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"checkpoint {path} holds no state dict")
    meta = obj.get("meta")
    return to_float32(state_dict), dict(meta) if isinstance(meta, Mapping) else {}


def load_state_dict(path: PathLike, map_location: Any = "cpu") -> dict[str, Tensor]:
    """The state dict of :func:`load_state_dict_and_meta`."""
    return load_state_dict_and_meta(path, map_location)[0]


def sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through a temporary file, so a crash never leaves half a
    file behind."""
    write_atomic(path, lambda f: torch.save(obj, f))


def save_checkpoint(
    path: PathLike,
    net: nn.Module,
    meta: Optional[Mapping[str, Any]] = None,
    half: bool = False,
) -> str:
    """Write ``{"state_dict", "meta"}`` for ``eval_model checkpoint``.

    Calls ``net.update(force=True)`` first (entropy tables current), stores on
    CPU, float16 for the transforms if ``half`` (see the module docstring).
    ``meta`` gets ``"storage"``.  Returns the file's SHA-256.
    """
    if hasattr(net, "update"):
        net.update(force=True)
    state_dict = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if half:
        state_dict = to_half_storage(state_dict)
    meta = dict(meta or {})
    meta["storage"] = "float16" if half else "float32"
    atomic_save({"state_dict": state_dict, "meta": meta}, path)
    return sha256(path)
