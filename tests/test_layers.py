"""LoRAConv: the low-rank adapter around one host convolution."""

import copy

import pytest
import torch
import torch.nn as nn

from compressai_lora.layers import UPDATE_FORMS, LoRAConv

BASES = {
    "conv": lambda: nn.Conv2d(6, 5, 3, stride=2, padding=1),
    "conv1x1": lambda: nn.Conv2d(6, 5, 1),
    "deconv": lambda: nn.ConvTranspose2d(6, 5, 5, 2, padding=2, output_padding=1),
}


@pytest.fixture(params=sorted(BASES))
def base(request):
    torch.manual_seed(0)
    return BASES[request.param]()


@pytest.fixture(params=UPDATE_FORMS)
def form(request):
    return request.param


def _random_factors(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in layer.factor_shapes().items()}


def _reference_delta(layer, A, B, K=None):
    """dW written out per rank component, in the (C_out, C_in, kh, kw) layout.

    ``A`` and ``K`` are offsets from the fixed projection and the centre tap.
    """
    kh, kw = layer.kernel_size
    A = layer.projection() + A
    if K is not None:
        K = K.clone()
        K[:, kh // 2, kw // 2] += 1.0
    if layer.form == "full":
        d = sum(
            torch.outer(B[:, r], A[r]).view(-1, layer.in_channels, kh, kw)
            for r in range(layer.rank)
        )
    else:
        d = sum(
            torch.outer(B[:, r], A[r])[:, :, None, None] * K[r]
            for r in range(layer.rank)
        )
    return d.transpose(0, 1) if layer.transposed else d


def _x(layer):
    return torch.randn(
        2, layer.in_channels, 7, 9, generator=torch.Generator().manual_seed(1)
    )


def test_factor_shapes(base, form):
    layer = LoRAConv(base, rank=3, form=form)
    c_in, c_out = layer.in_channels, layer.out_channels
    kh, kw = layer.kernel_size
    assert (c_in, c_out) == (6, 5)
    expected = {"full": {"A": (3, c_in * kh * kw), "B": (c_out, 3)}}.get(
        form, {"A": (3, c_in), "B": (c_out, 3), "K": (3, kh, kw)}
    )
    assert layer.factor_shapes() == expected
    assert {k: tuple(v.shape) for k, v in layer.factors().items()} == expected


def test_delta_shape_and_value(base, form):
    layer = LoRAConv(base, rank=2, form=form)
    factors = _random_factors(layer)
    layer.set_factors(True, **factors)
    delta = layer.get_delta_weight()
    assert delta.shape == base.weight.shape
    expected = _reference_delta(layer, **factors)
    assert torch.allclose(delta, expected, atol=1e-5)


def test_initial_factors_give_zero_delta(base, form):
    layer = LoRAConv(base, form=form)
    init = layer.initial_factors()
    assert init.keys() == layer.factor_shapes().keys()
    assert all(torch.count_nonzero(v) == 0 for v in init.values())  # free to send
    assert torch.count_nonzero(layer.delta_from(**init)) == 0


def test_projection_is_a_fixed_sign_pattern(base, form):
    layer = LoRAConv(base, form=form)
    p = layer.projection()
    fan_in = layer.factor_shapes()["A"][1]
    assert p.shape == layer.factor_shapes()["A"]
    assert torch.allclose(p.abs(), torch.full_like(p, fan_in**-0.5))
    assert torch.equal(p, LoRAConv(base, form=form).projection())
    assert 0.3 < (p > 0).float().mean() < 0.7


def test_closed_gate_has_no_effect(base, form):
    layer = LoRAConv(base, form=form)
    layer.set_factors(False, **_random_factors(layer))
    assert torch.count_nonzero(layer.get_delta_weight()) == 0
    x = _x(layer)
    assert torch.equal(layer(x), base(x))


def _conv_with(base, weight):
    """A copy of the host convolution with ``weight`` as its kernel."""
    conv = copy.deepcopy(base)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def test_forward_with_open_gate_is_conv_with_updated_kernel(base, form):
    layer = LoRAConv(base, form=form)
    factors = _random_factors(layer)
    layer.set_factors(True, **factors)
    x = _x(layer)
    with torch.no_grad():
        out = layer(x)
        exact = _conv_with(base, base.weight + layer.get_delta_weight())(x)
        written_out = _conv_with(base, base.weight + _reference_delta(layer, **factors))
        assert torch.equal(out, exact)
        assert torch.allclose(out, written_out(x), atol=1e-5)
        assert not torch.allclose(out, base(x), atol=1e-3)


def test_merge_then_unmerge_restores_the_exact_weight(base, form):
    layer = LoRAConv(base, form=form)
    layer.set_factors(True, **_random_factors(layer))
    original = base.weight.detach().clone()
    x = _x(layer)
    with torch.no_grad():
        unmerged_out = layer(x)
        layer.merge()
        assert layer.merged
        assert not torch.equal(base.weight, original)
        assert torch.equal(base.weight, original + layer.get_delta_weight())
        assert torch.allclose(layer(x), unmerged_out, atol=1e-5)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert not layer.merged
    assert torch.equal(base.weight, original)
    layer.unmerge()  # a no-op when not merged
    assert torch.equal(base.weight, original)


def test_merge_with_closed_gate_changes_nothing(base):
    layer = LoRAConv(base)
    original = base.weight.detach().clone()
    layer.merge()
    assert not layer.merged
    assert torch.equal(base.weight, original)


def test_merge_refuses_non_finite_update(base):
    layer = LoRAConv(base)
    factors = _random_factors(layer)
    factors["B"][0, 0] = float("nan")
    layer.set_factors(True, **factors)
    original = base.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge()
    assert not layer.merged
    assert torch.equal(base.weight, original)


@pytest.mark.parametrize("merged", [False, True])
def test_eval_and_train_do_not_merge(base, form, merged):
    layer = LoRAConv(base, form=form)
    layer.set_factors(True, **_random_factors(layer))
    if merged:
        layer.merge()
    weight = base.weight.detach().clone()
    for _ in range(2):
        layer.eval()
        layer.train()
    layer.eval()
    assert layer.merged == merged
    assert layer.gate
    assert torch.equal(base.weight, weight)


def test_reset_closes_the_gate(base, form):
    layer = LoRAConv(base, form=form)
    original = base.weight.detach().clone()
    layer.set_factors(True, **_random_factors(layer))
    layer.merge()
    layer.reset()
    assert not layer.gate and not layer.merged
    assert torch.equal(base.weight, original)
    assert all(torch.count_nonzero(v) == 0 for v in layer.factors().values())
    x = _x(layer)
    assert torch.equal(layer(x), base(x))


def test_reset_changes_rank(base, form):
    layer = LoRAConv(base, rank=2, form=form)
    layer.reset(4)
    assert layer.rank == 4
    assert layer.factor_shapes()["B"] == (layer.out_channels, 4)
    with pytest.raises(ValueError, match="rank"):
        layer.reset(0)


def test_set_factors_checks_shapes(base, form):
    layer = LoRAConv(base, form=form)
    factors = _random_factors(layer)
    with pytest.raises(ValueError, match="Factor A has shape"):
        layer.set_factors(True, A=factors["A"][:1])
    with pytest.raises(ValueError, match="Unknown factor"):
        layer.set_factors(True, C=factors["A"])
    assert not layer.gate


def test_state_dict_has_the_host_keys(base, form):
    layer = LoRAConv(base, form=form)
    layer.set_factors(True, **_random_factors(layer))
    assert list(layer.state_dict()) == list(base.state_dict())
    fresh = LoRAConv(copy.deepcopy(base), form=form)
    with torch.no_grad():
        fresh.base.weight.zero_()
    fresh.load_state_dict(base.state_dict(), strict=True)
    assert torch.equal(fresh.base.weight, base.weight)


def test_rejects_unsupported_layers():
    with pytest.raises(TypeError):
        LoRAConv(nn.Linear(3, 4))
    with pytest.raises(ValueError, match="groups"):
        LoRAConv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="update form"):
        LoRAConv(nn.Conv2d(4, 4, 3), form="dense")


def test_branch_is_each_images_update_without_a_merged_kernel(base, form):
    """``branch`` gives ``conv(x[n], dW_n)`` for per-image factors, and the
    gradient of one image's output reaches only that image's factors."""
    layer = LoRAConv(base, form=form)
    factors = [_random_factors(layer, seed) for seed in range(3)]
    stacked = {
        k: torch.stack([f[k] for f in factors]).requires_grad_(True) for k in factors[0]
    }
    x = torch.randn(
        3, layer.in_channels, 7, 9, generator=torch.Generator().manual_seed(2)
    )
    out = layer.branch(x, **stacked)
    for n, f in enumerate(factors):
        delta = _reference_delta(layer, **f)
        with torch.no_grad():
            want = layer.conv(x[n : n + 1], delta) - layer.conv(x[n : n + 1], 0 * delta)
        assert torch.allclose(out[n : n + 1], want, rtol=1e-4, atol=1e-4)
    out[1].sum().backward()
    for value in stacked.values():
        assert value.grad[1].abs().sum() > 0
        assert torch.count_nonzero(value.grad[[0, 2]]) == 0


def test_forward_takes_per_image_factors_passed_in(base):
    """A trainer passes factors with ``functional_call``: stacked per image,
    each image gets its own update (as ``branch``); one image's, the kernel
    update ``merge`` adds."""
    layer = LoRAConv(base)
    x = _x(layer)  # two images
    gen = torch.Generator().manual_seed(0)
    shapes = layer.factor_shapes()
    per_image = {k: 0.1 * torch.randn(2, *s, generator=gen) for k, s in shapes.items()}
    layer.gate = True
    with torch.no_grad():
        out = torch.func.functional_call(layer, per_image, (x,))
        assert torch.equal(out, base(x) + layer.branch(x, **per_image))
        for n in range(2):
            one = {k: v[n] for k, v in per_image.items()}
            alone = torch.func.functional_call(layer, one, (x[n : n + 1],))
            layer.set_factors(**one)
            layer.merge()
            assert torch.allclose(alone, base(x[n : n + 1]), atol=1e-5)  # merged
            layer.unmerge()
            assert torch.allclose(out[n : n + 1], alone, rtol=1e-4, atol=1e-4)
