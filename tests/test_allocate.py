"""The allocation between tensors (kancodec.allocate): finer steps where the output is sensitive."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import kancodec
from kancodec import allocate, entropy, inr
from kancodec.fit import FitSettings, fit, time_grid
from kancodec.inrfile import coded_names, flatten
from kancodec.rate import depth_for

from conftest import TINY, TINY_ENCODE

N = 2048


@pytest.fixture(scope="module")
def fitted():
    """Two tiny networks fitted to two voiced-like windows (float, no quantisation)."""
    t = np.arange(N) / 8000
    x = np.stack([0.5 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)),
                  0.4 * np.sin(2 * np.pi * 260 * t) + 0.2 * np.sin(2 * np.pi * 520 * t + 1)]).astype(np.float32)
    result = fit(TINY, torch.from_numpy(x), FitSettings(steps=150, spectral_weight=0.0), 8000)
    feats = inr.input_features(TINY, time_grid(N))
    return result.params, feats


def test_sensitivity_matches_the_output_change_of_a_larger_perturbation(fitted):
    """h predicts the output's mean squared change for noise of another size and kind."""
    params, feats = fitted
    compact = inr.compact(TINY, params)
    h = allocate.sensitivity(TINY, compact, feats)
    base = inr.forward_features(TINY, params, feats)
    gen = torch.Generator().manual_seed(5)
    for t, name in enumerate(coded_names(TINY)):
        v = compact[name]
        s = 0.003 * float(v.std())
        change = 0
        for _ in range(16):  # the mean over many Gaussian draws, against h from a few sign draws
            moved = dict(compact)
            moved[name] = v + s * torch.randn(v.shape, generator=gen)
            change = change + (inr.forward_features(TINY, inr.expand(TINY, moved), feats) - base).double().pow(2).mean(-1) / 16
        predicted = h[:, t] * s ** 2 * v[0].numel()
        assert torch.allclose(change, predicted, rtol=0.5), (name, change, predicted)


def test_scales_have_unit_geometric_mean_and_favour_sensitive_tensors(fitted):
    params, feats = fitted
    compact = inr.compact(TINY, params)
    h = allocate.sensitivity(TINY, compact, feats)
    a = allocate.scales(TINY, compact, h)
    counts = torch.tensor([float(compact[n][0].numel()) for n in coded_names(TINY)], dtype=torch.float64)
    assert torch.allclose((a.log() * counts).sum(-1) / counts.sum(), torch.zeros(2, dtype=torch.float64), atol=1e-9)
    sigma = torch.stack([compact[n].reshape(2, -1).double().std(-1, correction=0) for n in coded_names(TINY)], 1)
    energy = h * sigma ** 2  # where an error costs more per unit of spread, the step is finer
    for b in range(2):
        order = torch.argsort(energy[b])
        assert torch.all(torch.diff(a[b][order]) <= 1e-12)
    assert a.max() > 1.5 and a.min() < 0.7  # the measured sensitivities differ, so does the allocation


def test_silent_network_keeps_unit_scales(fitted):
    params, feats = fitted
    zero = {k: torch.zeros_like(v) for k, v in params.items()}
    a = allocate.allocation(TINY, zero, feats)
    assert torch.equal(a, torch.ones_like(a))


@pytest.mark.parametrize("payload_bits_per_weight", [3.0, 5.0])
def test_allocation_lowers_the_error_at_the_same_coded_size(fitted, payload_bits_per_weight):
    """The point of it: coded to the same size, the allocated networks decode closer to the fit."""
    params, feats = fitted
    compact = inr.compact(TINY, params)
    flat = flatten(TINY, compact)
    active = np.ones(2, bool)
    budget = payload_bits_per_weight * sum(p.shape[1] for p in flat) * 2
    a = allocate.allocation(TINY, params, feats).numpy()
    base = inr.forward_features(TINY, params, feats)

    def error(scales):
        depth = depth_for(flat, active, budget, scales=scales)
        coded = entropy.encode_networks(flat, depth, active, scales)
        size = 32 * coded["ans"].size
        out = entropy.decode_networks(coded, [p.shape[1] for p in flat], np.arange(2))
        stored = {n: torch.from_numpy(o).reshape(compact[n].shape) for n, o in zip(coded_names(TINY), out)}
        y = inr.forward_features(TINY, inr.expand(TINY, stored), feats)
        return float((y - base).pow(2).mean()), size

    plain, plain_size = error(None)
    alloc, alloc_size = error(a)
    assert alloc_size <= 1.03 * plain_size
    assert alloc < 0.8 * plain, (alloc, plain)


def test_encode_stores_the_allocated_steps_and_any_reader_decodes_them():
    x = (0.4 * np.sin(np.arange(6000) / 9.0) * np.sin(np.arange(6000) / 700.0)).astype(np.float32)
    kf = kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "bits": 6})
    steps = kf.tensors["step"]  # (B, T): one per tensor, now not proportional to each tensor's spread alone
    sigma = np.stack([p.std(-1) for p in flatten(TINY, inr.compact(TINY, kf.params()))], 1)
    ratio = steps / sigma
    assert (ratio.max(1) / ratio.min(1) > 2).all()
    back = kancodec.kanfile.from_bytes(kf.to_bytes())
    y = kancodec.decode(back, compile=False)[0]
    z = kancodec.decode(kf, compile=False)[0]
    assert np.array_equal(y, z)
