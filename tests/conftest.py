"""Shared fixtures: small random-weight host and ``-lora`` models, tiny images.

Every model here is built from the host class with a small ``N`` (and ``M``),
so the tests run on a 2-core CPU in seconds.  ``-lora`` models are loaded
from the host model's state dict and have adaptation disabled: these tests
check the codec and its update stream, not the optimization.
"""

from __future__ import annotations

from types import SimpleNamespace

import compressai.zoo.image
import pytest
import torch
import torch.nn as nn

from compressai_lora.adapt import AdaptConfig
from compressai_lora.models import LoRAModelMixin
from compressai_lora.registry import host_registries
from compressai_lora.zoo import model_architectures

#: every registered ``-lora`` name (the tests are parametrized over these)
LORA_NAMES = sorted(model_architectures)

N, M = 8, 12
IMAGE_SIZE = 64  # mbt2018 and cheng2020 decode autoregressively: keep it small


def host_args(host_arch: str, n: int = N, m: int = M) -> tuple[int, ...]:
    """Constructor arguments of the host class (cheng2020 takes only N)."""
    arity = len(next(iter(compressai.zoo.image.cfgs[host_arch].values())))
    return (n, m)[:arity]


def build_host(host_arch: str, n: int = N, m: int = M, seed: int = 0) -> nn.Module:
    """A random-weight host model, entropy tables updated, in eval mode.

    The last analysis convolution is scaled up so that the rounded latents are
    not all zero and the latent strings carry real content.
    """
    torch.manual_seed(seed)
    net = compressai.zoo.image.model_architectures[host_arch](
        *host_args(host_arch, n, m)
    )
    with torch.no_grad():
        last = [c for c in net.g_a.modules() if isinstance(c, nn.Conv2d)][-1]
        last.weight.mul_(10)
        if last.bias is not None:
            last.bias.mul_(10)
    net.update(force=True)
    return net.eval()


def build_lora(name: str, state_dict: dict, **adapt: object) -> LoRAModelMixin:
    """A ``-lora`` model from a (host) state dict, adaptation disabled, eval."""
    net = model_architectures[name].from_state_dict(state_dict)
    net.adapt_config = AdaptConfig().replace(enabled=False, **adapt)
    return net.eval()


def set_random_update(
    model: LoRAModelMixin, seed: int = 0, scale: float = 0.05
) -> list[int]:
    """Open every other gate (0, 2, ...) with random factors; return them."""
    g = torch.Generator().manual_seed(seed)
    opened = []
    for i, m in enumerate(model.adapters().values()):
        if i % 2:
            continue
        factors = m.initial_factors()
        factors["A"] = 0.1 * torch.randn(factors["A"].shape, generator=g)
        factors["B"] = torch.randn(factors["B"].shape, generator=g) * scale
        if "K" in factors:
            factors["K"] = factors["K"] + 0.2 * torch.randn(
                factors["K"].shape, generator=g
            )
        m.set_factors(True, **factors)
        opened.append(i)
    return opened


def adapter_state(model: LoRAModelMixin) -> list[tuple[bool, bool, dict]]:
    """(gate, merged, factors) of every adapter, cloned."""
    return [
        (m.gate, m.merged, {k: v.clone() for k, v in m.factors().items()})
        for m in model.adapters().values()
    ]


def assert_same_state(model: LoRAModelMixin, weights: dict, adapters: list) -> None:
    """The model's weights and adapter state equal the snapshots, exactly."""
    now = model.state_dict()
    assert list(now) == list(weights)
    for key, value in weights.items():
        assert torch.equal(now[key], value), key
    for (gate, merged, factors), (gate0, merged0, factors0) in zip(
        adapter_state(model), adapters
    ):
        assert (gate, merged) == (gate0, merged0)
        assert factors.keys() == factors0.keys()
        for key in factors:
            assert torch.equal(factors[key], factors0[key])


def clone_state_dict(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One torch thread, as the host's eval_model sets: these models are tiny,
    and on a small shared CPU extra threads only contend (20x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def one_adaptation_thread():
    """The tools adapt with the process's CPUs unless ``--threads`` says
    otherwise; in the tests' process one thread (see ``one_thread``)."""
    from compressai_lora.utils import adapt_args

    real = adapt_args.default_threads
    adapt_args.default_threads = lambda: 1
    yield
    adapt_args.default_threads = real


@pytest.fixture(params=LORA_NAMES)
def name(request) -> str:
    """A registered ``-lora`` name."""
    return request.param


@pytest.fixture
def host_arch(name: str) -> str:
    return model_architectures[name].host_arch


@pytest.fixture
def host_model(host_arch: str) -> nn.Module:
    return build_host(host_arch)


@pytest.fixture
def lora_model(name: str, host_model: nn.Module) -> LoRAModelMixin:
    """The ``-lora`` model with the weights of ``host_model``."""
    return build_lora(name, host_model.state_dict())


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)


@pytest.fixture
def registries():
    """Snapshot the four host registries and restore them afterwards."""
    regs = host_registries()
    saved = {where: dict(reg) for where, reg in regs.items()}
    yield regs
    for where, reg in regs.items():
        reg.clear()
        reg.update(saved[where])


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """This module's helpers, for the test files (conftest is not imported)."""
    functions = (
        host_args,
        build_host,
        build_lora,
        set_random_update,
        adapter_state,
        assert_same_state,
        clone_state_dict,
    )
    return SimpleNamespace(
        **{fn.__name__: fn for fn in functions},
        LORA_NAMES=LORA_NAMES,
        N=N,
        M=M,
        IMAGE_SIZE=IMAGE_SIZE,
    )
