"""The update stream on its own: framing, symbol range, round trip."""

import pytest
import torch

from compressai_lora import update_stream
from compressai_lora.update_stream import (
    DEFAULT_STEP_CODE,
    FORMAT_VERSION,
    MAX_SYMBOL,
    LayerUpdate,
    decode_update,
    encode_update,
)

SHAPES = [
    {"A": (2, 5), "B": (3, 2), "K": (2, 3, 3)},
    {"A": (2, 3), "B": (4, 2), "K": (2, 1, 1)},
    {"A": (2, 4), "B": (4, 2), "K": (2, 5, 5)},
]
FP, RANK = 0x1234, 2


def _random_update(shape, seed, scale=20.0):
    g = torch.Generator().manual_seed(seed)
    symbols = {
        k: (torch.randn(s, generator=g) * scale).round().to(torch.int32)
        for k, s in shape.items()
    }
    return LayerUpdate(symbols, update_stream.step_from_code(DEFAULT_STEP_CODE))


def _encode(updates):
    return encode_update(FP, RANK, len(SHAPES), updates, DEFAULT_STEP_CODE)


def _assert_same(decoded, updates):
    assert decoded.keys() == updates.keys()
    for i, update in updates.items():
        assert decoded[i].step == update.step
        for k, v in update.symbols.items():
            assert torch.equal(decoded[i].symbols[k], v), (i, k)


def test_no_update_is_empty():
    data = _encode({})
    assert data == b""
    assert decode_update(data, FP, RANK, SHAPES) == {}


def test_first_release_no_update_byte_still_decodes():
    """Files of format version 1 carry the single byte 0x10 for "no update"."""
    assert decode_update(bytes([FORMAT_VERSION << 4]), FP, RANK, SHAPES) == {}
    with pytest.raises(ValueError, match="trailing"):
        decode_update(bytes([FORMAT_VERSION << 4, 0]), FP, RANK, SHAPES)


@pytest.mark.parametrize("open_layers", [[0], [1, 2], [0, 1, 2]])
def test_round_trip(open_layers):
    updates = {i: _random_update(SHAPES[i], seed=i) for i in open_layers}
    _assert_same(decode_update(_encode(updates), FP, RANK, SHAPES), updates)


def test_escaped_values_round_trip():
    """Values far outside the prior's table travel in the coder's bypass mode."""
    update = _random_update(SHAPES[0], seed=0)
    update.symbols["A"][0, 0] = MAX_SYMBOL
    update.symbols["A"][0, 1] = -MAX_SYMBOL
    update.symbols["B"][0, 0] = 5000
    _assert_same(decode_update(_encode({0: update}), FP, RANK, SHAPES), {0: update})


@pytest.mark.parametrize("value", [MAX_SYMBOL + 1, -MAX_SYMBOL - 1, -(2**31)])
def test_encoder_refuses_out_of_range_symbols(value):
    update = _random_update(SHAPES[1], seed=0)
    update.symbols["B"][1, 1] = value
    with pytest.raises(ValueError, match="exceeds"):
        _encode({1: update})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1e12])
def test_quantize_refuses_non_finite_or_huge_factors(value):
    factors = {"A": torch.zeros(2, 3), "B": torch.zeros(4, 2)}
    factors["B"][0, 1] = value
    with pytest.raises(ValueError, match="factor B is non-finite or exceeds"):
        update_stream.quantize(factors, DEFAULT_STEP_CODE)


def test_decoder_refuses_out_of_range_symbols(monkeypatch):
    """A payload holding a value beyond the bound (as corruption can produce)."""
    update = _random_update(SHAPES[2], seed=0)
    update.symbols["A"][1, 2] = MAX_SYMBOL + 1
    monkeypatch.setattr(update_stream, "MAX_SYMBOL", 2 * MAX_SYMBOL)
    data = _encode({2: update})
    monkeypatch.undo()
    with pytest.raises(ValueError, match="out of range"):
        decode_update(data, FP, RANK, SHAPES)


def test_every_byte_is_needed():
    updates = {i: _random_update(SHAPES[i], seed=i) for i in (0, 2)}
    data = _encode(updates)
    assert decode_update(b"", FP, RANK, SHAPES) == {}  # empty is "no update"
    for n in range(1, len(data)):
        with pytest.raises(ValueError, match="update stream"):
            decode_update(data[:n], FP, RANK, SHAPES)
    with pytest.raises(ValueError, match="trailing"):
        decode_update(data + b"\x00", FP, RANK, SHAPES)


def test_padding_bits_are_checked():
    """Unused gate bits and the spare scale-index nibble must be zero."""
    updates = {0: _random_update(SHAPES[0], seed=0)}  # 3 tensors: 1 spare nibble
    data = bytearray(_encode(updates))
    gates_at = 5
    assert data[gates_at] == 0x80
    bad = bytearray(data)
    bad[gates_at] |= 0x01  # layer 7 of 3
    with pytest.raises(ValueError, match="gate bits"):
        decode_update(bytes(bad), FP, RANK, SHAPES)
    bad = bytearray(data)
    bad[gates_at + 3] |= 0x01  # step code, then 2 nibble bytes: low nibble spare
    with pytest.raises(ValueError, match="padding"):
        decode_update(bytes(bad), FP, RANK, SHAPES)
