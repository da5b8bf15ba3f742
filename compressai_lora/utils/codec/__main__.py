"""Compress an image to a file and back, with per-image adaptation.

    python -m compressai_lora.utils.codec encode IMAGE -o FILE [-a ARCH]
        [-q QUALITY | -p CHECKPOINT] [-m METRIC] [adaptation flags] [--cuda]
        [--recon RECON.png] [--max-pixels N] [--force] [-v]
    python -m compressai_lora.utils.codec decode FILE -o IMAGE.png
        [-p CHECKPOINT] [--cuda] [--max-pixels N] [--no-verify] [--force]
    python -m compressai_lora.utils.codec info FILE [--json]

The decoder needs only the file and the same weights: the zoo's pretrained
weights for the file's architecture, quality and metric, or the checkpoint the
encoder used (``-p``); it refuses weights whose fingerprint differs.  The
encoder decodes what it writes and stores a hash of that image; the decoder
checks its own output against it (``--no-verify`` skips the check).  Every
failure exits non-zero with one line on stderr, and no output file is left
behind or overwritten (unless ``--force``); an output that is one of the
inputs is refused even with ``--force``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stderr
from typing import Any, BinaryIO, Callable, Optional, Sequence

import numpy as np
import torch
from compressai.ops import compute_padding
from compressai.zoo import image_models
from compressai.zoo.image import model_architectures

from ... import __version__
from ...adapt.config import AdaptConfig
from ...latent_strings import check_and_pad
from ...layers import UPDATE_FORMS
from ...models import LoRAModelMixin
from ...zoo import image_models as lora_models
from ..adapt_args import (
    adapt_config_from_args,
    adaptation_flags_given,
    add_adaptation_args,
)
from .format import (
    FORMAT_VERSION,
    FormatError,
    Header,
    pack,
    reconstruction_digest,
    unpack,
)
from .format import weights_fingerprint as fingerprint
from .image import ImageError, is_png_name, png_writer, read_image
from .limits import PixelBudgetError, check_pixels

PROG = "compressai-lora"
DEFAULT_ARCH = "cheng2020-attn-lora"
DEFAULT_QUALITY = 3
MIN_DIV = 2**6  # pad to allow 6 strides of 2, as the host's eval_model


class CodecError(Exception):
    """A user-facing failure, reported as one line on stderr."""


def _oneline(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def architectures() -> list[str]:
    """Image architectures of the zoo (ours and the host's, without VBR)."""
    return sorted(n for n in image_models if not n.endswith("-vbr"))


# -- files -----------------------------------------------------------------
def check_output(path: str, force: bool) -> None:
    """Fail early (before any work) if ``path`` cannot or must not be written."""
    if os.path.isdir(path):
        raise CodecError(f"output {path} is a directory")
    if os.path.lexists(path) and not force:
        raise CodecError(f"output {path} exists (use --force to overwrite)")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CodecError(f"cannot write {path}: directory {parent} does not exist")


def refuse_same_file(output: str, inputs: Sequence[str]) -> None:
    """Fail if ``output`` is one of ``inputs`` (same real path or inode), which
    writing it would destroy, whatever ``--force`` says."""
    for path in inputs:
        same = os.path.realpath(output) == os.path.realpath(path)
        if not same and os.path.exists(output) and os.path.exists(path):
            same = os.path.samefile(output, path)
        if same:
            raise CodecError(
                f"output {output} is the input {path}: refusing to overwrite it"
            )


def write_atomic(path: str, write: Callable[[BinaryIO], None], force: bool) -> None:
    """Write through a temporary file in the same directory, then rename.

    Readers never see a partial file; without ``force`` an existing file is
    never replaced (``os.link`` refuses atomically where supported).
    """
    check_output(path, force)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(
            dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".part"
        )
    except OSError as e:
        raise CodecError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise CodecError(
                    f"output {path} exists (use --force to overwrite)"
                ) from None
            except OSError:  # no hard links here: check, then rename
                check_output(path, force)
                os.replace(tmp, path)
    except OSError as e:
        raise CodecError(f"cannot write {path}: {e.strerror or _oneline(e)}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CodecError(f"cannot read {path}: {e.strerror or _oneline(e)}") from None


# -- models ----------------------------------------------------------------
def load_checkpoint(path: str) -> tuple[dict, dict]:
    """``(state_dict, meta)`` of a CompressAI checkpoint (loaded weights-only)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CodecError(
            f"cannot read checkpoint {path}: {e.strerror or _oneline(e)}"
        ) from None
    except Exception as e:  # unpickling errors of every kind
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CodecError(
            f"cannot load checkpoint {path} ({type(e).__name__}: {first[:200]})"
        ) from None
    state_dict = ckpt
    if isinstance(ckpt, dict):
        for key in ("network", "state_dict", "model_state_dict"):
            if key in ckpt:
                state_dict = ckpt[key]
    if not isinstance(state_dict, dict) or not state_dict:
        raise CodecError(f"checkpoint {path} holds no state dict")
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    return state_dict, meta if isinstance(meta, dict) else {}


def build_model(
    arch: str,
    *,
    quality: Optional[int],
    metric: str,
    checkpoint: Optional[str],
    rank: int,
    form: str,
    device: str,
    progress: bool = False,
) -> tuple[torch.nn.Module, str, dict]:
    """``(model, weights label, checkpoint meta)``, updated and in eval mode."""
    meta: dict = {}
    if checkpoint:
        cls = model_architectures.get(
            arch, model_architectures.get(arch.replace("-", "_"))
        )
        if cls is None:
            raise CodecError(f"architecture {arch} cannot load checkpoints")
        state_dict, meta = load_checkpoint(checkpoint)
        try:
            net = cls.from_state_dict(state_dict)
        except Exception as e:
            raise CodecError(
                f"checkpoint {checkpoint} does not fit {arch}: {_oneline(e, 200)}"
            ) from None
        label = os.path.basename(checkpoint)
    else:
        if arch not in image_models:
            raise CodecError(f"unknown architecture {arch}")
        try:
            # torch.hub writes "Downloading: ..." to stderr even without progress
            quiet = nullcontext() if progress else redirect_stderr(io.StringIO())
            with quiet:
                net = image_models[arch](
                    quality, metric=metric, pretrained=True, progress=progress
                )
        except ValueError as e:
            raise CodecError(_oneline(e)) from None
        except Exception as e:
            raise CodecError(
                f"cannot load pretrained {arch} weights (quality {quality}, "
                f"{metric}): {_oneline(e, 150)}; pass a checkpoint with -p"
            ) from None
        label = f"q{quality}-{metric}"
    if isinstance(net, LoRAModelMixin):
        net.adapt_config = net.adapt_config.replace(rank=rank, form=form)
    net.update(force=True)
    return net.eval().to(device), label, meta


def _device(cuda: bool) -> str:
    if cuda and not torch.cuda.is_available():
        raise CodecError("--cuda given but no CUDA device is available")
    return "cuda" if cuda else "cpu"


def _padded(width: int, height: int):
    pad, _ = compute_padding(height, width, min_div=MIN_DIV)
    left, right, top, bottom = pad
    return height + top + bottom, width + left + right, top, left


def to_tensor(rgb: np.ndarray, device: str) -> torch.Tensor:
    """Zero-padded ``1x3xHxW`` float tensor in [0, 1] (one full-size copy)."""
    h, w = rgb.shape[:2]
    ph, pw, top, left = _padded(w, h)
    x = torch.zeros(1, 3, ph, pw, device=device)
    src = torch.from_numpy(rgb).to(device).permute(2, 0, 1)
    x[0, :, top : top + h, left : left + w].copy_(src)
    return x.div_(255)


def device_name(device: str) -> str:
    """The device as the file records it, e.g. "cpu x86_64, torch 2.14.1"."""
    if device == "cuda":
        name = f"cuda {torch.cuda.get_device_name()}"
    else:
        name = f"cpu {platform.machine()}"
    return f"{name}, torch {torch.__version__}"


def reconstruct(
    model: torch.nn.Module, strings: list, shape: Sequence[int], width: int, height: int
) -> np.ndarray:
    """Decode ``strings`` into the ``(height, width, 3)`` uint8 image."""
    ph, pw, _, _ = _padded(width, height)
    factor = model.downsampling_factor
    if tuple(shape) != (ph // factor, pw // factor):
        raise CodecError(
            f"corrupted file: latent shape {tuple(shape)} does not fit a "
            f"{width}x{height} image"
        )
    try:
        if not isinstance(model, LoRAModelMixin):  # ours check in decompress
            strings = check_and_pad(model, strings, shape)
        with torch.no_grad():
            x_hat = model.decompress(strings, list(shape))["x_hat"]
    except ValueError as e:  # the update stream rejects what it cannot parse
        raise CodecError(f"corrupted file: {_oneline(e)}") from None
    if tuple(x_hat.shape[-2:]) != (ph, pw):
        raise CodecError(
            f"corrupted file: decoded size {tuple(x_hat.shape[-2:])}, "
            f"expected {(ph, pw)}"
        )
    return to_uint8(x_hat, width, height)


def to_uint8(x_hat: torch.Tensor, width: int, height: int) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 image inside a padded decoder output."""
    _, _, top, left = _padded(width, height)
    x_hat = x_hat[0, :, top : top + height, left : left + width]
    x_hat = x_hat.clamp(0, 1).mul_(255).round_().to(torch.uint8)
    return x_hat.permute(1, 2, 0).cpu().numpy()


def _nbytes(n: int) -> str:
    return f"{n} byte" if n == 1 else f"{n} bytes"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- commands --------------------------------------------------------------
def _progress(cfg: AdaptConfig, verbose: bool):
    """A tqdm bar driven by the adaptation callback (None when not verbose)."""
    if not verbose or not cfg.enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=cfg.refine_steps + cfg.adapt_steps, file=sys.stderr, unit="step")

    def callback(info: dict[str, Any]) -> None:
        bar.update(1)
        if "loss" in info:
            bar.set_postfix_str(f"{info.get('phase', '')} loss {info['loss']:.4g}")

    return callback, bar


def _lmbda(args: argparse.Namespace, meta: dict, model) -> Optional[float]:
    if args.lmbda is not None:
        return args.lmbda
    value = meta.get("lmbda")
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    return getattr(model, "default_lmbda", None)


def encode(args: argparse.Namespace) -> None:
    refuse_same_file(args.output, [args.image])
    check_output(args.output, args.force)
    if args.recon:
        if os.path.abspath(args.recon) == os.path.abspath(args.output):
            raise CodecError("--recon and -o name the same file")
        refuse_same_file(args.recon, [args.image, args.output])
        check_output(args.recon, args.force)
    device = _device(args.cuda)
    rgb = read_image(args.image, _warn)
    height, width = rgb.shape[:2]
    if width > 2**20 or height > 2**20:
        raise CodecError(f"image {width}x{height} is too large (max side 2**20)")
    check_pixels(width, height, args.max_pixels, None, encode=True)

    lora = args.architecture in lora_models
    quality = None if args.path else (args.quality or DEFAULT_QUALITY)
    metric = args.metric or "mse"
    try:
        cfg = adapt_config_from_args(args, metric=metric)
    except ValueError as e:
        raise CodecError(_oneline(e)) from None
    model, label, meta = build_model(
        args.architecture,
        quality=quality,
        metric=metric,
        checkpoint=args.path,
        rank=cfg.rank,
        form=cfg.form,
        device=device,
        progress=args.verbose,
    )
    if args.path and args.metric is None and meta.get("metric") in ("mse", "ms-ssim"):
        metric = meta["metric"]
    adapting = lora and cfg.enabled
    check_pixels(width, height, args.max_pixels, getattr(model, "N", None), adapting)
    bar = None
    if lora:
        lmbda = _lmbda(args, meta, model)
        if lmbda is None and cfg.enabled:
            raise CodecError(
                f"no lambda for checkpoint {args.path}: pass --lmbda (or --no-adapt)"
            )
        callback, bar = _progress(cfg, args.verbose)
        model.adapt_config = cfg.replace(lmbda=lmbda, metric=metric, callback=callback)
        if model.default_lmbda is None:
            model.default_lmbda = lmbda
    elif adaptation_flags_given(args):
        _warn(f"{args.architecture} has no adapters: adaptation flags are ignored")

    weights = fingerprint(model.state_dict())  # what the decoder must load
    x = to_tensor(rgb, device)
    pad, _ = compute_padding(height, width, min_div=MIN_DIV)
    padding = model.input_padding(pad) if lora else nullcontext()
    start = time.perf_counter()
    try:
        with torch.no_grad(), padding:
            out = model.compress(x)
    finally:
        if bar is not None:
            bar.close()
    enc_time = time.perf_counter() - start
    del x
    strings = [list(group) for group in out["strings"]]
    shape = tuple(int(d) for d in out["shape"])
    # the decoder checks its output against the image decoded here: the one
    # the adaptation decoded from these strings, or a decode of them now
    x_hat = getattr(model, "last_reconstruction", None) if lora else None
    if x_hat is not None:
        recon = to_uint8(x_hat, width, height)
        model.last_reconstruction = None
    else:
        recon = reconstruct(model, strings, shape, width, height)
    header = Header(
        arch=args.architecture,
        metric=metric,
        quality=quality or 0,
        weights=weights,
        weights_label=label,
        rank=model.lora_rank if lora else 0,
        form=model.adapt_config.form if lora else "",
        width=width,
        height=height,
        shape=shape,
        cuda=device == "cuda",
        device=device_name(device),
        recon=reconstruction_digest(recon),
    )
    data = pack(header, strings)
    if args.recon:
        write_atomic(args.recon, png_writer(recon), args.force)
    write_atomic(args.output, lambda f: f.write(data), args.force)

    pixels = width * height
    parts = [
        f"{args.image} -> {args.output}: {width}x{height}, {_nbytes(len(data))}, "
        f"{len(data) * 8 / pixels:.4f} bpp"
    ]
    if lora:
        parts.append(f"update {_nbytes(len(strings[-1][0]))}")
        stats = getattr(model, "last_adaptation", None) or {}
        if stats.get("choice") == "disabled":
            parts.append("adaptation off")
        elif "choice" in stats:
            parts.append(f"sent {stats['choice']}")
    if args.recon:
        parts.append(f"PSNR {psnr(rgb, recon):.2f} dB (recon {args.recon})")
    parts.append(f"{enc_time:.2f} s")
    print(", ".join(parts))


def decode(args: argparse.Namespace) -> None:
    refuse_same_file(args.output, [args.file] + ([args.path] if args.path else []))
    check_output(args.output, args.force)
    if not is_png_name(args.output):
        _warn(f"{args.output} is written as PNG whatever its extension")
    device = _device(args.cuda)
    header, strings = unpack(read_bytes(args.file))
    check_pixels(header.width, header.height, args.max_pixels, None, encode=False)
    if header.arch not in image_models:
        raise CodecError(
            f"{args.file} needs architecture {header.arch!r}, unknown here"
        )
    lora = header.arch in lora_models
    if lora != (header.rank > 0) or (lora and header.form not in UPDATE_FORMS):
        raise CodecError(
            f"{args.file} needs {header.arch} adapters of rank {header.rank}, "
            f"form {header.form!r}, which this version cannot build"
        )
    if not header.quality and not args.path:
        raise CodecError(
            f"{args.file} was encoded with checkpoint weights "
            f"{header.weights_label!r}: pass them with -p"
        )
    model, label, _ = build_model(
        header.arch,
        quality=header.quality or None,
        metric=header.metric,
        checkpoint=args.path,
        rank=header.rank or 2,
        form=header.form or "separable",
        device=device,
    )
    got = fingerprint(model.state_dict())
    if got != header.weights:
        raise CodecError(
            f"weights do not match: {args.file} was encoded with "
            f"{header.weights_label!r} (fingerprint {header.weights.hex()}), "
            f"these are {label!r} ({got.hex()})"
        )
    n = getattr(model, "N", None)
    check_pixels(header.width, header.height, args.max_pixels, n, encode=False)
    rgb = reconstruct(model, strings, header.shape, header.width, header.height)
    verify(args, header, rgb, device)
    write_atomic(args.output, png_writer(rgb), args.force)
    print(f"{args.file} -> {args.output}: {header.width}x{header.height}")


def verify(args: argparse.Namespace, header: Header, rgb: np.ndarray, device: str):
    """Compare the decoded image with the encoder's (format version 2)."""
    if header.version < 2:
        _warn(f"{args.file} is a format version 1 file: it has no reconstruction check")
        return
    if args.no_verify or reconstruction_digest(rgb) == header.recon:
        return
    raise CodecError(
        f"{args.file}: the decoded image does not match the encoder's (encoded on "
        f"{header.device}, decoded on {device_name(device)}): the file is corrupted "
        "or this decoder computes differently; --no-verify writes it anyway"
    )


def describe(path: str, data: bytes) -> dict[str, Any]:
    """The header and sizes of a compressed file, as a JSON-able dict."""
    header, strings = unpack(data)
    lora = header.rank > 0
    latent = strings[:-1] if lora else strings
    string_bytes = sum(len(s) for group in strings for s in group)
    pixels = header.width * header.height
    ph, pw, _, _ = _padded(header.width, header.height)
    return {
        "file": path,
        "bytes": len(data),
        "format_version": header.version,
        "architecture": header.arch,
        "weights": header.weights_label,
        "quality": header.quality or None,
        "metric": header.metric,
        "fingerprint": header.weights.hex(),
        "rank": header.rank or None,
        "form": header.form or None,
        "width": header.width,
        "height": header.height,
        "padded": [pw, ph],
        "latent_shape": list(header.shape),
        "device": "cuda" if header.cuda else "cpu",
        "device_name": header.device or None,
        "reconstruction_check": header.recon.hex() or None,
        "latent_bytes": [sum(len(s) for s in group) for group in latent],
        "update_bytes": len(strings[-1][0]) if lora and strings[-1] else None,
        "bpp": len(data) * 8 / pixels,
        "bpp_strings": string_bytes * 8 / pixels,
    }


def info(args: argparse.Namespace) -> None:
    d = describe(args.file, read_bytes(args.file))
    if args.json:
        print(json.dumps(d, indent=2))
        return
    if d["quality"]:
        weights = f"zoo, quality {d['quality']}, {d['metric']}"
    else:
        weights = f"checkpoint {d['weights']!r}, {d['metric']}"
    if d["rank"]:
        update = d["update_bytes"]
        adapters = f"rank {d['rank']}, form {d['form']}; update {_nbytes(update)}"
        adapters += " (none sent)" if update == 0 or update == 1 else ""
    else:
        adapters = "none (base architecture)"
    rows = [
        ("file", f"{d['file']} ({d['bytes']} bytes, format version "
                 f"{d['format_version']})"),
        ("architecture", d["architecture"]),
        ("weights", f"{weights} (fingerprint {d['fingerprint']})"),
        ("adapters", adapters),
        ("image", f"{d['width']}x{d['height']} (coded as {d['padded'][0]}x"
                  f"{d['padded'][1]}), encoded on "
                  f"{d['device_name'] or d['device']}"),
        ("check", f"reconstruction {d['reconstruction_check']}"
                  if d["reconstruction_check"] else "none (format version 1)"),
        ("latents", f"shape {'x'.join(map(str, d['latent_shape']))}, "
                    f"strings {d['latent_bytes']} bytes"),
        ("bpp", f"{d['bpp']:.4f} (file), {d['bpp_strings']:.4f} (strings)"),
    ]  # fmt: skip
    for key, value in rows:
        print(f"{key + ':':14}{value}")


# -- command line ----------------------------------------------------------
def setup_args() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compress images to files and back with CompressAI models and "
        "per-image low-rank adaptation.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (file format {FORMAT_VERSION})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = sub.add_parser("encode", help="compress an image into a file")
    enc.add_argument("image", help="input image (any format and mode Pillow reads)")
    enc.add_argument("-o", "--output", required=True, help="compressed file to write")
    enc.add_argument(
        "-a",
        "--architecture",
        default=DEFAULT_ARCH,
        choices=architectures(),
        metavar="ARCH",
        help=f"model architecture (default: %(default)s); one of "
        f"{', '.join(architectures())}",
    )
    weights = enc.add_mutually_exclusive_group()
    weights.add_argument(
        "-q",
        "--quality",
        type=int,
        help=f"zoo quality level, pretrained weights (default: {DEFAULT_QUALITY})",
    )
    weights.add_argument("-p", "--path", help="checkpoint to use instead of the zoo")
    enc.add_argument(
        "-m", "--metric", choices=("mse", "ms-ssim"), help="metric (default: mse)"
    )
    enc.add_argument(
        "--recon", metavar="PNG", help="also write the encoder's reconstruction"
    )
    enc.add_argument("--cuda", action="store_true", help="run on the GPU")
    _max_pixels_arg(enc)
    enc.add_argument("--force", action="store_true", help="overwrite outputs")
    enc.add_argument("-v", "--verbose", action="store_true", help="progress bar")
    add_adaptation_args(enc)
    enc.set_defaults(func=encode)

    dec = sub.add_parser("decode", help="decompress a file into an RGB PNG")
    dec.add_argument("file", help="compressed file")
    dec.add_argument("-o", "--output", required=True, help="PNG image to write")
    dec.add_argument("-p", "--path", help="checkpoint the file was encoded with")
    dec.add_argument("--cuda", action="store_true", help="run on the GPU")
    _max_pixels_arg(dec)
    dec.add_argument(
        "--no-verify",
        action="store_true",
        help="write the image even if it differs from the encoder's "
        "reconstruction (accept drift between devices)",
    )
    dec.add_argument("--force", action="store_true", help="overwrite the output")
    dec.set_defaults(func=decode)

    inf = sub.add_parser("info", help="print the header of a compressed file")
    inf.add_argument("file", help="compressed file")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=info)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _max_pixels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-pixels",
        type=_positive_int,
        metavar="N",
        help="refuse images with more pixels (default: what fits in free memory)",
    )


def _fail(msg: str, code: int = 1) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str]) -> None:
    args = setup_args().parse_args(argv)
    try:
        args.func(args)
    except (CodecError, ImageError, PixelBudgetError) as e:
        _fail(str(e))
    except FormatError as e:
        _fail(f"{getattr(args, 'file', '')}: {e}")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemoryError:
        _fail("out of memory (try a smaller image or fewer adaptation steps)")
    except torch.cuda.OutOfMemoryError:
        _fail("out of GPU memory (try without --cuda or a smaller image)")
    except Exception as e:  # never a traceback for the user
        _fail(f"unexpected {type(e).__name__}: {_oneline(e)}")


def console_main() -> None:
    """Entry point of the ``compressai-lora`` console script."""
    main(sys.argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
