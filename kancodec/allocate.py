"""Bit allocation between a network's tensors: finer steps where an error costs more.

:mod:`kancodec.entropy` quantises each stored tensor ``t`` of network ``b`` with a uniform
step ``Δ_bt = a_bt · σ_bt · 2^(3 - bits)``. With every ``a = 1`` the step follows the
tensor's spread only, so a tensor of few weights the output leans on hard (a KAN's base
weights, its last layer) is stored as coarsely as the thousands of spline coefficients of
the first layer, relative to its spread.

At fine steps a weight's rounding error is uniform with variance ``Δ² / 12``, and the
output's mean squared error grows by ``h_t · Δ² / 12`` per weight, where ``h_t`` (the
tensor's *sensitivity*) is the mean over its weights of the squared derivative of the
output, averaged over the window's samples. For a fixed total of ``Σ n_t log2 Δ_t`` (the
coded size, up to a constant) the error is least when ``h_t Δ_t²`` is the same for every
tensor: ``Δ_t ∝ h_t^(-1/2)``. So ``a_bt ∝ (h_bt σ_bt²)^(-1/2)``, normalised so that its
geometric mean over the network's weights is 1: a depth then costs about what it did with
every ``a = 1``, and buys a smaller error.

``h`` is measured, not derived: each tensor in turn gets a small random perturbation
(±``PROBE`` of its spread; :data:`PROBES` sign patterns from a fixed seed, the same for
every network, so a window's allocation does not depend on the batch it is fitted in) and
the change of the output is measured (a randomised estimate of the trace of the
Gauss-Newton block; within a factor of about 2 of a many-draw average, half a bit of
allocation, in ``tests/test_allocate.py``). Every INR family is allocated; the gains
below were measured for the KAN only. Measured on eight
windows of tuning speech after 300 steps of a [16, 8, 4] KAN with L = 7, ``h σ²`` of the
base weights and of the last layer was 5 to 30 times that of the spline coefficients of
the first layer, and the allocation predicted 2.1 to 3.2 dB less output error at the same
size.

The steps are stored in the file, so decoding needs none of this: files written with or
without an allocation read the same way.
"""

from __future__ import annotations

import math

import torch

from . import inr
from .inrfile import coded_names

#: the perturbation, as a fraction of each tensor's standard deviation
PROBE = 0.01
#: random perturbations per tensor (their mean estimates ``h``)
PROBES = 4
#: the allocation is kept within ``[1 / LIMIT, LIMIT]`` (4 bits either way)
LIMIT = 16.0


@torch.no_grad()
def sensitivity(config: inr.INR, compact: dict[str, torch.Tensor], feats: torch.Tensor,
                fwd=inr.forward_features, seed: int = 0) -> torch.Tensor:
    """Each coded tensor's sensitivity ``h`` (see the module docstring).

    Args:
        compact: the networks' compact parameters, ``(B, …)`` each.
        feats: the first layer's input features on the windows' grid, ``(N, F)``.
    Returns:
        ``(B, T)`` float64, ``T`` = ``len(coded_names(config))``: the output's mean squared
        change per unit of squared error in each weight of the tensor.
    """
    names = coded_names(config)
    base = inr.forward_chunked(config, inr.expand(config, compact), feats, fwd)
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(base.shape[0], len(names), dtype=torch.float64)
    for t, name in enumerate(names):
        v = compact[name]
        flat = v.reshape(v.shape[0], -1)
        eps = PROBE * flat.std(-1, correction=0).clamp_min(1e-12)  # (B,)
        for _ in range(PROBES):
            # one sign pattern for every network: a window's result does not depend on its batch
            signs = torch.randint(0, 2, flat.shape[1:], generator=gen).to(v.device, v.dtype) * 2 - 1
            moved = dict(compact)
            moved[name] = (flat + signs * eps[:, None]).reshape(v.shape)
            y = inr.forward_chunked(config, inr.expand(config, moved), feats, fwd)
            change = (y - base).double().pow(2).mean(-1)  # (B,)
            out[:, t] += (change / (eps.double() ** 2 * flat.shape[1])).cpu() / PROBES
    return out


def scales(config: inr.INR, compact: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """The allocation ``a`` ``(B, T)`` float64 from sensitivities ``h`` ``(B, T)``: ``(h σ²)^(-1/2)``
    over its geometric mean weighted by each tensor's count, then kept within
    ``[1/LIMIT, LIMIT]`` (so the mean is 1 unless a value was clipped). A tensor without a
    measurable ``h σ²`` (a single weight such as an MLP's last bias, constant weights, an
    output that does not move) keeps 1 and stays out of the mean; a network with none
    keeps all ones."""
    names = coded_names(config)
    counts = torch.tensor([float(math.prod(compact[n].shape[1:])) for n in names], dtype=torch.float64)
    sigma = torch.stack([compact[n].reshape(compact[n].shape[0], -1).double().std(-1, correction=0).cpu()
                         for n in names], 1)
    energy = h.double() * sigma ** 2
    ok = torch.isfinite(energy) & (energy > 0)  # (B, T)
    log_a = torch.where(ok, -0.5 * energy.log(), torch.zeros_like(energy))
    weight = counts * ok  # (B, T)
    mean = (log_a * weight).sum(-1, keepdim=True) / weight.sum(-1, keepdim=True).clamp_min(1.0)
    log_a = torch.where(ok, log_a - mean, torch.zeros_like(log_a))
    return log_a.clamp(-math.log(LIMIT), math.log(LIMIT)).exp()


def allocation(config: inr.INR, compact: dict[str, torch.Tensor], feats: torch.Tensor,
               fwd=inr.forward_features) -> torch.Tensor:
    """``(B, T)`` step multipliers for fitted networks (their compact parameters, detached,
    ``(B, …)`` each) on the grid of ``feats``: :func:`scales` of :func:`sensitivity`."""
    return scales(config, compact, sensitivity(config, compact, feats, fwd))
