import numpy as np
import pytest
import torch

from kancodec.errors import KanError
from kancodec.quant import BITS_CHOICES, dequantise, pack_bits, packed_size, quantise, unpack_bits


@pytest.mark.parametrize("bits", [b for b in BITS_CHOICES if b != 32])
def test_pack_unpack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2**bits, size=(3, 101)).astype(np.uint32)
    packed = pack_bits(q, bits)
    assert packed.shape == (3, packed_size(101, bits))
    assert (unpack_bits(packed, bits, 101) == q).all()


@pytest.mark.parametrize("bits", [4, 6, 8, 16])
def test_quantisation_error_is_at_most_half_a_step(bits):
    g = torch.Generator().manual_seed(0)
    params = {"a": torch.randn(4, 7, 5, generator=g), "b": torch.rand(4, 3, 9, generator=g) * 10 - 3}
    stored = quantise(params, bits)
    back = dequantise(stored, {"a": (7, 5), "b": (3, 9)}, bits)
    for name, p in params.items():
        assert stored[f"step.{name}"].shape == p.shape[:2]  # one step per network and row
        step = torch.from_numpy(stored[f"step.{name}"]).unsqueeze(-1)
        assert ((back[name] - p).abs() <= step * 0.5 + 1e-6).all()
    # fewer bits, coarser steps: the error grows as the bits shrink
    assert stored["step.b"].max() <= 10 / (2**bits - 1) * 1.0001


def test_rows_of_different_scale_keep_their_own_precision():
    small = torch.linspace(-0.01, 0.01, 16)
    params = {"w": torch.stack([small, small * 100]).unsqueeze(0)}  # (1 network, 2 rows, 16)
    back = dequantise(quantise(params, 4), {"w": (2, 16)}, 4)["w"]
    err = (back - params["w"]).abs().amax(-1)[0]
    assert err[0] <= 0.02 / 15 / 2 + 1e-7  # the small row's step is set by its own range


def test_32_bits_is_lossless_and_constant_tensor_survives():
    params = {"a": torch.randn(2, 6), "c": torch.full((2, 3), 0.25)}
    back32 = dequantise(quantise(params, 32), {"a": (6,), "c": (3,)}, 32)
    assert torch.equal(back32["a"], params["a"])
    back8 = dequantise(quantise(params, 8), {"a": (6,), "c": (3,)}, 8)
    assert torch.allclose(back8["c"], params["c"])


def test_unsupported_bits_lists_the_choices():
    with pytest.raises(KanError, match="^bits 9 is not supported; choose one of: 2, 3"):
        quantise({"a": torch.zeros(1, 2)}, 9)
