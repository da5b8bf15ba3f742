"""The seam to CompressAI: every use of the host's non-public API, in one place.

compressai_lora wraps CompressAI 1.2.x.  What it needs beyond the public API
(models, entropy models' ``compress``/``decompress``, the zoo factories) is
reached through this module only, and :data:`PROTECTED` lists it, so that a
new host version is checked here (``tests/test_host.py`` asserts that each
symbol exists) and nowhere else:

* the entropy models' likelihood functions and medians, which the adaptation
  differentiates through (:func:`bottleneck_medians`,
  :func:`bottleneck_likelihood`, :func:`gaussian_likelihood`);
* the serial coder of the autoregressive models, whose ``y_hat`` (the one
  the decoder rebuilds) ``compress`` leaves behind (:func:`coded_y_hat`);
* the C++ helper that turns a PMF into the coder's integer CDF
  (:func:`integer_cdf`);
* the names of the entropy models' integer tables (:data:`ENTROPY_BUFFERS`);
* the zoo's tables of sizes and weight URLs (:func:`zoo_sizes`,
  :func:`zoo_urls`, :func:`load_pretrained_state`);
* the functions of the host's ``eval_model`` script (:func:`eval_script`,
  :func:`inference`, :func:`image_extensions`...), whose module sets
  ``torch.set_num_threads(1)`` when imported;
* argparse's private subparser and group types (:func:`subparsers`,
  :data:`ArgumentGroup`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import types
from typing import Any, Callable, Iterator, Optional

import compressai
import torch
from torch import Tensor, nn

__all__ = [
    "PROTECTED",
    "SUPPORTED",
    "ENTROPY_BUFFERS",
    "PAD_MULTIPLE",
    "ArgumentGroup",
    "check_version",
    "bottleneck_medians",
    "bottleneck_likelihood",
    "gaussian_likelihood",
    "integer_cdf",
    "coded_y_hat",
    "zoo_sizes",
    "zoo_urls",
    "load_pretrained_state",
    "eval_script",
    "eval_setup_args",
    "collect_images",
    "load_pretrained_model",
    "compute_metrics",
    "psnr",
    "image_extensions",
    "inference",
    "inference_entropy_estimation",
    "latent_strides",
    "subparsers",
]

#: supported host versions: ``SUPPORTED[0] <= version < SUPPORTED[1]``
SUPPORTED = ((1, 2, 8), (1, 3, 0))
#: the host's internals used here: ``(module, attribute path)``; a path with
#: a ``()`` step names an attribute of an instance of that class
PROTECTED = (
    ("compressai.entropy_models", "EntropyBottleneck._get_medians"),
    ("compressai.entropy_models", "EntropyBottleneck._likelihood"),
    ("compressai.entropy_models", "GaussianConditional._likelihood"),
    ("compressai.entropy_models", "EntropyBottleneck()._quantized_cdf"),
    ("compressai.entropy_models", "EntropyBottleneck()._offset"),
    ("compressai.entropy_models", "EntropyBottleneck()._cdf_length"),
    ("compressai._CXX", "pmf_to_quantized_cdf"),
    ("compressai.models", "JointAutoregressiveHierarchicalPriors._compress_ar"),
    ("compressai.zoo.image", "cfgs"),
    ("compressai.zoo.image", "model_urls"),
    ("compressai.zoo.pretrained", "load_pretrained"),
    ("compressai.utils.eval_model.__main__", "setup_args"),
    ("compressai.utils.eval_model.__main__", "inference"),
    ("compressai.utils.eval_model.__main__", "inference_entropy_estimation"),
    ("compressai.utils.eval_model.__main__", "compute_metrics"),
    ("compressai.utils.eval_model.__main__", "psnr"),
    ("compressai.utils.eval_model.__main__", "collect_images"),
    ("compressai.utils.eval_model.__main__", "IMG_EXTENSIONS"),
    ("compressai.utils.eval_model.__main__", "load_pretrained"),
    ("argparse", "ArgumentParser()._actions"),
    ("argparse", "_SubParsersAction"),
    ("argparse", "_ArgumentGroup"),
)

#: integer tables of an entropy model (its coder state), always stored exactly
ENTROPY_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length")
#: the host's eval_model pads images to a multiple of this ("6 strides of 2")
PAD_MULTIPLE = 2**6
#: what ``ArgumentParser.add_argument_group`` returns
ArgumentGroup = argparse._ArgumentGroup


def check_version(found: Optional[str] = None) -> None:
    """Raise ImportError unless the installed compressai is supported."""
    found = compressai.__version__ if found is None else found
    try:
        parts = tuple(int(p) for p in found.split("+")[0].split(".")[:3])
    except ValueError:
        parts = ()
    if not (SUPPORTED[0] <= parts < SUPPORTED[1]):
        lo, hi = (".".join(map(str, v)) for v in SUPPORTED)
        raise ImportError(
            f"compressai_lora needs compressai>={lo},<{hi} (found {found}); it "
            "relies on compressai internals that change between minor versions "
            "(compressai_lora.host.PROTECTED lists them). Install a supported "
            f'version: pip install "compressai>={lo},<{hi}"'
        )


# -- entropy models ----------------------------------------------------------
def bottleneck_medians(eb: nn.Module) -> Tensor:
    """Medians of an ``EntropyBottleneck``, shaped ``(C, 1, 1)``."""
    return eb._get_medians()


def bottleneck_likelihood(eb: nn.Module, values: Tensor) -> Tensor:
    """Likelihoods of ``values`` (shaped ``(C, 1, -1)``), before the bound."""
    likelihood, _, _ = eb._likelihood(values)
    return likelihood


def gaussian_likelihood(
    gc: nn.Module, y_hat: Tensor, scales: Tensor, means: Optional[Tensor]
) -> Tensor:
    """Likelihoods of a ``GaussianConditional``, before the bound."""
    return gc._likelihood(y_hat, scales, means)


def integer_cdf(pmf: list[float], precision: int) -> list[int]:
    """The host coder's integer CDF of ``pmf`` (its last entry: the tail mass)."""
    from compressai._CXX import pmf_to_quantized_cdf as convert

    return convert(pmf, precision)


@contextlib.contextmanager
def coded_y_hat(model: nn.Module) -> Iterator[list[Tensor]]:
    """Inside, each image that an autoregressive model's ``compress`` codes
    appends its ``y_hat``: the serial coder writes it position by position
    into its (padded) input, from the same values the decoder rebuilds it
    from, so it is the decoder's ``y_hat`` without running the decoder.
    Patches ``model`` (one thread at a time)."""
    seen: list[Tensor] = []
    before = model.__dict__.get("_compress_ar")
    code = model._compress_ar

    def coding(y_hat, params, height, width, kernel_size, padding):
        string = code(y_hat, params, height, width, kernel_size, padding)
        rows, cols = slice(padding, padding + height), slice(padding, padding + width)
        seen.append(y_hat[:, :, rows, cols].clone())
        return string

    model._compress_ar = coding
    try:
        yield seen
    finally:
        if before is None:
            del model._compress_ar
        else:
            model._compress_ar = before


def latent_strides(model: nn.Module) -> tuple[int, ...]:
    """Strides of the latents in the order of the strings: ``(y,)`` or ``(y, z)``.

    ``downsampling_factor`` is the stride of the last latent; the hyper
    analysis ``h_a`` is probed on a small input for the ratio to ``y``.
    """
    stride = int(model.downsampling_factor)
    h_a = getattr(model, "h_a", None)
    if h_a is None:
        return (stride,)
    side = 16
    probe = next(model.parameters()).new_zeros(1, model.M, side, side)
    with torch.no_grad():
        ratio = side // h_a(probe).size(-1)
    return (stride // ratio, stride)


# -- the zoo -----------------------------------------------------------------
def zoo_sizes() -> dict[str, dict[int, tuple[int, ...]]]:
    """``{arch: {quality: (N, M) or (N,)}}`` of the host's image zoo."""
    from compressai.zoo.image import cfgs

    return cfgs


def zoo_urls() -> dict[str, Any]:
    """``{arch: {metric: {quality: url}}}`` of the host's published weights."""
    from compressai.zoo.image import model_urls

    return model_urls


def load_pretrained_state(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The host's renaming of old published state dicts to today's keys."""
    from compressai.zoo.pretrained import load_pretrained

    return load_pretrained(state_dict)


# -- the host's eval_model script -------------------------------------------
_SCRIPT = "compressai.utils.eval_model.__main__"


def eval_script(keep_threads: bool = False) -> types.ModuleType:
    """The host's ``eval_model`` module.

    Its first import sets ``torch.set_num_threads(1)``, as running the host
    script does; ``keep_threads`` restores the thread count after it.
    """
    threads = torch.get_num_threads()
    module = importlib.import_module(_SCRIPT)
    if keep_threads:
        torch.set_num_threads(threads)
    return module


def image_extensions() -> tuple[str, ...]:
    """File extensions of images, as the host's eval_model collects them."""
    return tuple(eval_script(keep_threads=True).IMG_EXTENSIONS)


def eval_setup_args() -> argparse.ArgumentParser:
    """The host eval_model's parser (all its flags and subcommands)."""
    return eval_script().setup_args()


def collect_images(folder: str) -> list:
    """The host eval_model's sorted image list of ``folder`` (recursive)."""
    return eval_script().collect_images(folder)


def load_pretrained_model(arch: str, metric: str, quality: int) -> nn.Module:
    """The host eval_model's ``load_pretrained`` (zoo weights, eval mode)."""
    return eval_script().load_pretrained(arch, metric, quality)


def compute_metrics(org: Tensor, rec: Tensor, max_val: int = 255) -> dict[str, Any]:
    """The host eval_model's PSNR and MS-SSIM of 8-bit images."""
    return eval_script().compute_metrics(org, rec, max_val)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """The host eval_model's PSNR of two images in 0..255."""
    return eval_script().psnr(a, b)


Metrics = Callable[[Tensor, Tensor, int], dict[str, Any]]


@functools.lru_cache(maxsize=None)
def _with_metrics(name: str, metrics: Metrics) -> Callable:
    """The host function ``name`` of eval_model, run with ``metrics`` in place
    of its ``compute_metrics``: the same code object, other globals, so the
    host module itself is never patched."""
    script = eval_script()
    wrapped = getattr(script, name)
    inner = getattr(wrapped, "__wrapped__", wrapped)  # under @torch.no_grad()
    scope = dict(inner.__globals__, compute_metrics=metrics)
    fn = types.FunctionType(
        inner.__code__, scope, inner.__name__, inner.__defaults__, inner.__closure__
    )
    return torch.no_grad()(fn)


def inference(
    model: nn.Module, x: Tensor, vbr_stage=None, vbr_scale=None, metrics=None
) -> dict[str, Any]:
    """The host's ``inference`` (real bitstreams), with ``metrics`` if given."""
    if metrics is None:
        return eval_script().inference(model, x, vbr_stage, vbr_scale)
    return _with_metrics("inference", metrics)(model, x, vbr_stage, vbr_scale)


def inference_entropy_estimation(
    model: Any, x: Tensor, vbr_stage=None, vbr_scale=None, metrics=None
) -> dict[str, Any]:
    """The host's ``inference_entropy_estimation``, with ``metrics`` if given."""
    name = "inference_entropy_estimation"
    if metrics is None:
        return getattr(eval_script(), name)(model, x, vbr_stage, vbr_scale)
    return _with_metrics(name, metrics)(model, x, vbr_stage, vbr_scale)


# -- argparse ----------------------------------------------------------------
def subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The subparsers of ``parser`` (argparse keeps them private)."""
    return [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
