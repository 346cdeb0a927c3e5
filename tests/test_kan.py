import math

import pytest
import torch

from kancodec import inr
from kancodec.errors import KanError
from kancodec.kan import bspline_basis
from conftest import TINY


def cox_de_boor(x: torch.Tensor, grid: int, k: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Textbook recursion on the extended uniform knot vector, as an independent reference."""
    h = (hi - lo) / grid
    knots = torch.arange(-k, grid + k + 1, dtype=torch.float64) * h + lo
    x = x.double().unsqueeze(-1)
    b = ((x >= knots[:-1]) & (x < knots[1:])).double()
    for p in range(1, k + 1):
        left = (x - knots[: -(p + 1)]) / (knots[p:-1] - knots[: -(p + 1)]) * b[..., :-1]
        right = (knots[p + 1:] - x) / (knots[p + 1:] - knots[1:-p]) * b[..., 1:]
        b = left + right
    return b


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("grid", [5, 10, 17])
def test_closed_form_basis_matches_cox_de_boor(order, grid):
    x = torch.linspace(-1.6, 1.6, 2001)
    ours = bspline_basis(x, grid, order).double()
    ref = cox_de_boor(x, grid, order)
    assert ours.shape == ref.shape == (2001, grid + order)
    assert (ours - ref).abs().max() < 2e-5


def test_basis_is_partition_of_unity_inside_grid():
    x = torch.linspace(-1, 0.999, 777)
    s = bspline_basis(x, 10, 2).sum(-1)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-5)


def test_paper_table1_parameter_count():
    assert inr.KANConfig().n_params == 33768
    p = inr.init_params(inr.KANConfig(), 2)
    assert sum(v[0].numel() for v in p.values()) == 33768


def test_batched_forward_equals_one_by_one():
    p = inr.init_params(TINY, 3, seed=1)
    t = torch.linspace(-1, 1, 500)
    y = inr.forward(TINY, p, t)
    assert y.shape == (3, 500)
    for b in range(3):
        yb = inr.forward(TINY, {k: v[b:b + 1] for k, v in p.items()}, t)
        assert torch.allclose(y[b], yb[0], atol=1e-5)


def test_chunked_forward_equals_whole():
    p = inr.init_params(TINY, 2, seed=2)
    feats = inr.input_features(TINY, torch.linspace(-1, 1, 3000))
    whole = inr.forward_features(TINY, p, feats)
    chunked = inr.forward_chunked(TINY, p, feats, rows=256)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_compact_expand_keeps_the_function():
    p = inr.init_params(TINY, 2, seed=3)
    t = torch.linspace(-1, 1, 400)
    stored = inr.compact(TINY, p)
    assert not any(k.endswith(".scale") for k in stored)
    assert torch.allclose(inr.forward(TINY, inr.expand(TINY, stored), t), inr.forward(TINY, p, t), atol=1e-5)


def test_positional_encoding_values():
    pe = inr.positional_encoding(torch.tensor([0.5]), 2)
    expect = torch.tensor([math.sin(math.pi / 2), math.cos(math.pi / 2), math.sin(math.pi), math.cos(math.pi)])
    assert torch.allclose(pe[0], expect, atol=1e-6)


def test_bad_config_is_refused_with_a_clear_message():
    with pytest.raises(KanError, match="order"):
        inr.KANConfig(order=0)
    with pytest.raises(KanError, match="hidden"):
        inr.KANConfig(hidden=())
    with pytest.raises(KanError, match="unknown INR architecture 'foo'; known: kan"):
        inr.config_from_dict({"arch": "foo"})
