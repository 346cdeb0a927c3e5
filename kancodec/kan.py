"""B-spline KAN layer math, batched over independent networks.

A KAN layer maps ``x`` (``I`` inputs) to ``O`` outputs by summing one learnable
function per edge::

    y_o = sum_i  w_b[i, o] * SiLU(x_i) + w_s[i, o] * sum_j c[i, j, o] * B_j(x_i)

``B_j`` are B-splines of order ``k`` on a uniform grid of ``G`` intervals over
``[lo, hi]`` (extended by ``k`` knots on each side), so there are ``G + k`` basis
functions per input. Parameters carry a leading batch axis ``B``: one slice per
network, so ``B`` networks are evaluated with batched matrix products.

Why a closed form: on a uniform grid every basis function is a shifted copy of the
cardinal B-spline ``N_k``, which is a sum of truncated powers::

    N_k(z) = 1/k! * sum_{i=0}^{k+1} (-1)^i * C(k+1, i) * relu(z - i)^k,   z in [0, k+1]

This replaces the Cox-de Boor recursion (k + 1 rounds of divisions and masks) by a
handful of elementwise ops on a dense tensor, which is 3-6x faster on CPU and fuses
well under ``torch.compile``. ``z`` is clamped to ``[0, k+1]`` first: the formula is
exactly zero at ``k+1`` and the clamp keeps the cancelling terms small (no float32
blow-up far from the support).

For the orders in use (1, 2 and 3) ``N_k`` is symmetric about ``(k+1)/2`` and is written
in the distance ``a = |z - (k+1)/2|`` with one branch per piece, e.g. order 2::

    N_2 = 3/4 - a^2  (a < 1/2),   (3/2 - a)^2 / 2  (1/2 <= a < 3/2),   0 beyond

which needs about half the elementwise passes of the truncated powers (measured: the
compiled forward of 8 default KAN windows 23% faster on one CPU thread, eager 22%).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _truncated_power_coeffs(k: int) -> list[float]:
    return [(-1) ** i * math.comb(k + 1, i) / math.factorial(k) for i in range(k + 2)]


def positional_encoding(t: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """NeRF encoding ``[sin(2^0 π t), cos(2^0 π t), …, sin(2^{L-1} π t), cos(2^{L-1} π t)]``.

    Args:
        t: ``(N,)`` times in ``[-1, 1]``.
    Returns:
        ``(N, 2 L)``.
    """
    freqs = (2.0 ** torch.arange(n_freqs, dtype=t.dtype, device=t.device)) * math.pi
    ang = t.unsqueeze(-1) * freqs
    return torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)


def bspline_basis(x: torch.Tensor, grid: int, order: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Uniform B-spline basis values.

    Args:
        x: ``(..., I)`` inputs.
        grid: number of grid intervals ``G`` on ``[lo, hi]``.
        order: spline order ``k`` (degree; 1 = piecewise linear, 3 = cubic).
    Returns:
        ``(..., I, G + k)`` basis values; they sum to 1 inside ``[lo, hi]`` and
        fall to 0 at ``k`` grid intervals outside it.
    """
    h = (hi - lo) / grid
    n_basis = grid + order
    shifts = torch.arange(n_basis, device=x.device, dtype=x.dtype)
    # u is the position in knot units measured from the first (extended) knot.
    u = (x.unsqueeze(-1) - lo) / h + order
    if order in _SYMMETRIC:
        return _SYMMETRIC[order]((u - shifts - (order + 1) / 2).abs())
    z = (u - shifts).clamp(0.0, order + 1.0)
    out = None
    for i, c in enumerate(_truncated_power_coeffs(order)):
        term = F.relu(z - i)
        term = term if order == 1 else term.pow(order)
        out = c * term if out is None else out + c * term
    return out


#: N_k as a function of the distance from its centre, for the common orders
_SYMMETRIC = {
    1: lambda a: F.relu(1.0 - a),
    2: lambda a: torch.where(a < 0.5, 0.75 - a * a, 0.5 * F.relu(1.5 - a).square()),
    3: lambda a: torch.where(a < 1.0, 2.0 / 3.0 - a * a * (1.0 - 0.5 * a), F.relu(2.0 - a).pow(3) / 6.0),
}


def kan_features(x: torch.Tensor, grid: int, order: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Per-input features a KAN layer combines linearly: ``[SiLU(x), B_0(x) … B_{G+k-1}(x)]``.

    Args:
        x: ``(..., I)``.
    Returns:
        ``(..., I * (1 + G + k))``, laid out input-major to match :func:`kan_weight`.
    """
    basis = bspline_basis(x, grid, order, lo, hi)
    feats = torch.cat([F.silu(x).unsqueeze(-1), basis], dim=-1)
    return feats.flatten(-2)


def kan_weight(base: torch.Tensor, spline: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Fold a layer's parameters into one matrix acting on :func:`kan_features`.

    Args:
        base: ``(B, I, O)`` SiLU weights ``w_b``.
        spline: ``(B, I, G + k, O)`` spline coefficients ``c``.
        scale: ``(B, I, O)`` per-edge spline scales ``w_s``.
    Returns:
        ``(B, I * (1 + G + k), O)``.
    """
    w = torch.cat([base.unsqueeze(2), spline * scale.unsqueeze(2)], dim=2)
    return w.flatten(1, 2)


def kan_layer(x: torch.Tensor, base: torch.Tensor, spline: torch.Tensor, scale: torch.Tensor,
              grid: int, order: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Evaluate ``B`` KAN layers.

    Args:
        x: ``(B, N, I)``, or ``(N, I)`` when all networks see the same input.
    Returns:
        ``(B, N, O)``.
    """
    return torch.matmul(kan_features(x, grid, order, lo, hi), kan_weight(base, spline, scale))


def init_kan_layer(batch: int, n_in: int, n_out: int, grid: int, order: int,
                   generator: torch.Generator | None = None, noise: float = 0.1) -> dict[str, torch.Tensor]:
    """Random initial parameters for ``batch`` layers (efficient-kan's scheme, simplified).

    SiLU weights and spline scales are uniform in ``±1/sqrt(I)`` (PyTorch's default
    linear init); spline coefficients are small noise so every layer starts close to a
    SiLU network and the splines grow as they are needed.
    """
    bound = 1.0 / math.sqrt(n_in)

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    spline = torch.randn(batch, n_in, grid + order, n_out, generator=generator) * (noise / grid)
    return {"base": uniform(batch, n_in, n_out), "spline": spline, "scale": uniform(batch, n_in, n_out)}
