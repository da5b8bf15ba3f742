"""Truncated, corrupted or foreign update streams raise ValueError, safely."""

import random

import pytest
import torch

from compressai_lora.zoo import model_architectures

FUZZ_TRIALS = 400


@pytest.fixture
def coded(lora_model, image, helpers):
    """Strings with a sample update, and the reconstruction they decode to."""
    with torch.no_grad():
        latent = lora_model.compress(image)
    helpers.set_random_update(lora_model, seed=2)
    update = lora_model.encode_update()
    lora_model.reset_adapters()
    strings = latent["strings"][:-1]
    x_hat = lora_model.decompress(strings + [[update]], latent["shape"])["x_hat"]
    return {
        "latent": strings,
        "shape": latent["shape"],
        "update": update,
        "x_hat": x_hat,
    }


def _decompress(model, coded, update):
    return model.decompress(coded["latent"] + [[update]], coded["shape"])["x_hat"]


def _assert_valid(decoded, model):
    """A decoded update has open layers of this model and their exact shapes."""
    adapters = list(model.adapters().values())
    assert set(decoded) <= set(range(len(adapters)))
    for i, update in decoded.items():
        shapes = adapters[i].factor_shapes()
        assert update.symbols.keys() == shapes.keys()
        for key, shape in shapes.items():
            assert tuple(update.symbols[key].shape) == shape, (i, key)


def test_every_truncation_raises(lora_model, coded, helpers):
    update = coded["update"]
    assert len(update) > 2
    weights = helpers.clone_state_dict(lora_model)
    adapters = helpers.adapter_state(lora_model)
    for n in range(1, len(update)):  # 0 bytes: no update (the file's check)
        with pytest.raises(ValueError, match="update stream"):
            _decompress(lora_model, coded, update[:n])
    helpers.assert_same_state(lora_model, weights, adapters)
    assert torch.equal(_decompress(lora_model, coded, update), coded["x_hat"])


def test_trailing_bytes_raise(lora_model, coded):
    for tail in (b"\x00", b"\xff\x01"):
        with pytest.raises(ValueError, match="trailing"):
            lora_model.decode_update(coded["update"] + tail)
    with pytest.raises(ValueError, match="trailing"):
        lora_model.decode_update(b"\x10\x00")


def _fuzz(name, model, coded, trials, seed):
    """Random flips of 1-3 bytes: ValueError, or a valid update of this model."""
    rng = random.Random(f"fuzz-{name}-{seed}")
    update = coded["update"]
    for _ in range(trials):
        data = bytearray(update)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= rng.randint(1, 255)
        try:
            decoded = model.decode_update(bytes(data))
        except ValueError:
            continue
        _assert_valid(decoded, model)
        try:  # e.g. a changed quantization step: decodes, or refuses to merge
            x_hat = _decompress(model, coded, bytes(data))
        except ValueError:
            continue
        assert x_hat.shape == coded["x_hat"].shape
    assert torch.equal(_decompress(model, coded, update), coded["x_hat"])


def test_random_byte_flips_never_pass_with_a_wrong_shape(name, lora_model, coded):
    _fuzz(name, lora_model, coded, FUZZ_TRIALS, seed=0)


@pytest.mark.slow
def test_random_byte_flips_long(name, lora_model, coded):
    _fuzz(name, lora_model, coded, 25 * FUZZ_TRIALS, seed=1)


def test_header_flips_raise(lora_model, coded):
    """Each bit of version/flags, fingerprint, rank and layer count is checked."""
    update = coded["update"]
    for pos in range(5):
        for bit in range(8):
            data = bytearray(update)
            data[pos] ^= 1 << bit
            with pytest.raises(ValueError, match="update stream"):
                lora_model.decode_update(bytes(data))


def test_not_bytes_raises(lora_model):
    with pytest.raises(ValueError, match="must be bytes"):
        lora_model.decode_update("\x10")


@pytest.mark.parametrize(
    "strings",
    [[], [[b"\x10"]], "not a list"],
    ids=["empty", "update only", "str"],
)
def test_malformed_strings_raise(lora_model, coded, strings):
    with pytest.raises(ValueError, match="strings"):
        lora_model.decompress(strings, coded["shape"])


def test_malformed_update_entry_raises(lora_model, coded):
    for entry in ([], [coded["update"], coded["update"]], coded["update"]):
        with pytest.raises(ValueError, match="last strings entry"):
            lora_model.decompress(coded["latent"] + [entry], coded["shape"])


@pytest.fixture(scope="module")
def foreign_updates(helpers):
    """A sample update stream per registered name (N=8 random models)."""
    streams = {}
    for other in helpers.LORA_NAMES:
        host = model_architectures[other].host_arch
        model = helpers.build_lora(other, helpers.build_host(host).state_dict())
        helpers.set_random_update(model, seed=3)
        streams[other] = model.encode_update()
    return streams


def test_update_for_another_architecture_raises(name, lora_model, foreign_updates):
    assert lora_model.decode_update(foreign_updates[name])  # ours decodes
    for other, update in foreign_updates.items():
        if other == name:
            continue
        with pytest.raises(
            ValueError, match="another architecture|adapted layers"
        ) as err:
            lora_model.decode_update(update)
        assert "update stream" in str(err.value), other


def test_update_for_another_rank_raises(name, host_model, lora_model, helpers):
    encoder = helpers.build_lora(name, host_model.state_dict(), rank=3)
    helpers.set_random_update(encoder)
    with pytest.raises(ValueError, match="rank 3.*rank 2"):
        lora_model.decode_update(encoder.encode_update())


def test_update_for_another_form_raises(name, host_model, lora_model, helpers):
    encoder = helpers.build_lora(name, host_model.state_dict(), form="full")
    helpers.set_random_update(encoder)
    with pytest.raises(ValueError, match="another architecture or adapted-layer set"):
        lora_model.decode_update(encoder.encode_update())


def test_update_for_another_size_raises(name, host_arch, lora_model, helpers):
    other = helpers.build_host(host_arch, n=2 * helpers.N, m=2 * helpers.M)
    encoder = helpers.build_lora(name, other.state_dict())
    helpers.set_random_update(encoder)
    with pytest.raises(ValueError, match="another architecture or adapted-layer set"):
        lora_model.decode_update(encoder.encode_update())


def test_model_usable_after_failed_decompress(lora_model, coded, helpers):
    weights = helpers.clone_state_dict(lora_model)
    adapters = helpers.adapter_state(lora_model)
    bad = [coded["update"][:-1], b"\x20", coded["update"] + b"\x00"]
    for update in bad:
        with pytest.raises(ValueError):
            _decompress(lora_model, coded, update)
        helpers.assert_same_state(lora_model, weights, adapters)
        x_hat = _decompress(lora_model, coded, coded["update"])
        assert torch.equal(x_hat, coded["x_hat"])
