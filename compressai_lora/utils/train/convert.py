"""``--convert``: rewrite an existing checkpoint and carry its JSON over."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ...checkpoint import load_state_dict_and_meta, save_checkpoint, sha256
from ..files import write_json
from .errors import TrainError
from .models import base_architectures
from .records import checkpoint_format, command_line, versions

__all__ = ["convert"]


def convert(args: argparse.Namespace) -> dict[str, Any]:
    """Rewrite a checkpoint with our save function; carry its JSON over."""
    src = Path(args.convert)
    if not src.is_file():
        raise TrainError(f"--convert: no file {str(src)!r}")
    state_dict, meta = load_state_dict_and_meta(src)
    arch = args.model or meta.get("arch")
    if arch not in base_architectures():
        raise TrainError(f"--convert: give the architecture (-m); meta says {arch!r}")
    net = base_architectures()[arch].from_state_dict(state_dict)
    stem = src.name.removesuffix(".tar").removesuffix(".pth")
    out = Path(args.output_dir) / f"{args.name or stem}.pth.tar"
    if out.resolve() == src.resolve():
        raise TrainError("--convert: the output would overwrite the source")
    digest = save_checkpoint(out, net, meta, half=args.half_storage)

    # check: same tensors as the source, up to the storage rounding
    back, _ = load_state_dict_and_meta(out)
    if back.keys() != state_dict.keys():
        raise TrainError(f"{out}: keys differ from {src}")
    max_err, tables_exact, fp32_exact = 0.0, True, True
    half = args.half_storage
    for k, v in state_dict.items():
        if not v.is_floating_point():
            tables_exact &= torch.equal(back[k], v)
        elif k.endswith((".weight", ".bias")) and half:
            max_err = max(
                max_err, float((back[k] - v).abs().max()) if v.numel() else 0.0
            )
        else:
            fp32_exact &= torch.equal(back[k], v)
    if not tables_exact:
        raise TrainError(f"{out}: entropy tables differ from {src}")

    src_json = src.with_name(f"{stem}.json")
    info: dict[str, Any] = {}
    if src_json.is_file():
        info = json.loads(src_json.read_text())
    else:
        info = {k: meta.get(k) for k in ("arch", "N", "M", "lmbda", "steps")}
    source = {"file": src.name, "sha256": sha256(src)}
    if info.pop("sha256", source["sha256"]) != source["sha256"]:
        raise TrainError(f"{src_json} describes another file (sha256 differs)")
    for key in ("format", "kodak_24_host_eval_model"):
        if key in info:
            source[key] = info.pop(key)
    info = {
        "file": out.name,
        "sha256": digest,
        "format": checkpoint_format(arch),
        "storage": "float16" if half else "float32",
        **{k: v for k, v in info.items() if k != "file"},
        "source": source,
        "conversion": {
            "command": command_line(args.argv),
            "max_abs_error_float16_tensors": max_err,
            "entropy_tables_identical": tables_exact,
            "other_tensors_identical": fp32_exact,
            "versions": versions(),
        },
    }
    write_json(out.with_name(f"{args.name or stem}.json"), info, newline=True)
    return info
