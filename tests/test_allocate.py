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
        # a few sign draws estimate h within a factor of 2 (half a bit of allocation)
        assert ((predicted / change > 0.5) & (predicted / change < 2)).all(), (name, change, predicted)


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


def test_a_tensor_without_spread_keeps_one_and_the_rest_are_normalised(fitted):
    """A constant tensor (no spread, so no measurable h σ²) keeps 1 and stays out of the mean;
    the other tensors of the network are still allocated, with unit geometric mean."""
    params, feats = fitted
    names = coded_names(TINY)
    flat = dict(params)
    flat["l0.base"] = torch.full_like(params["l0.base"], 0.1)
    a = allocate.allocation(TINY, inr.compact(TINY, flat), feats)
    k = names.index("l0.base")
    rest = [i for i in range(len(names)) if i != k]
    assert torch.equal(a[:, k], torch.ones(2, dtype=torch.float64))
    counts = torch.tensor([float(params[names[i]][0].numel()) for i in rest], dtype=torch.float64)
    assert torch.allclose((a[:, rest].log() * counts).sum(-1) / counts.sum(), torch.zeros(2, dtype=torch.float64),
                          atol=1e-9)
    assert a[:, rest].max() > 1.5 and a[:, rest].min() < 0.7
    zero = {n: torch.zeros_like(v) for n, v in params.items()}  # nothing moves the output: all ones
    assert torch.equal(allocate.allocation(TINY, inr.compact(TINY, zero), feats),
                       torch.ones(2, len(names), dtype=torch.float64))


@pytest.mark.parametrize("arch", ["siren", "nerf"])
def test_mlp_networks_are_allocated_too(arch):
    """An MLP's last bias is a single weight (no spread): it keeps 1, the others are allocated."""
    cfg = inr.make_config(arch)
    params = inr.init_params(cfg, 2, seed=1)
    a = allocate.allocation(cfg, inr.compact(cfg, params), inr.input_features(cfg, time_grid(N)))
    names = coded_names(cfg)
    single = [i for i, n in enumerate(names) if params[n][0].numel() == 1]
    assert single and torch.equal(a[:, single], torch.ones_like(a[:, single]))
    assert a.max() / a.min() > 4


def test_one_window_is_allocated_the_same_alone_and_in_a_batch(fitted):
    params, feats = fitted
    compact = inr.compact(TINY, params)
    both = allocate.allocation(TINY, compact, feats)
    alone = allocate.allocation(TINY, {k: v[1:] for k, v in compact.items()}, feats)
    assert torch.allclose(both[1:], alone, rtol=1e-4)


@pytest.mark.parametrize("payload_bits_per_weight", [3.0, 5.0])
def test_allocation_lowers_the_error_at_the_same_coded_size(fitted, payload_bits_per_weight):
    """The point of it: coded to the same size, the allocated networks decode closer to the fit."""
    params, feats = fitted
    compact = inr.compact(TINY, params)
    flat = flatten(TINY, compact)
    active = np.ones(2, bool)
    budget = payload_bits_per_weight * sum(p.shape[1] for p in flat) * 2
    a = allocate.allocation(TINY, compact, feats).numpy()
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


@pytest.mark.parametrize("target", [{"bits": 6}, {"kbps": 40}])
def test_the_file_stores_what_the_fit_trained_through(target):
    """The stored steps carry the fit's allocation (one depth per network: step / (a σ) is the
    same for all its tensors), and at a given depth the file decodes to exactly the weights
    the quantisation-aware steps saw."""
    from kancodec import inrcodec
    from kancodec.fit import quantised
    from kancodec.fitqueue import FitQueue

    x = (0.4 * np.sin(np.arange(6000) / 9.0) * np.sin(np.arange(6000) / 700.0)).astype(np.float32)[None]
    opts = {k: v for k, v in TINY_ENCODE.items() if k not in ("compile", "device")}
    codec, cpu = inrcodec.InrCodec(), torch.device("cpu")
    job = codec.plan(x, 8000, device=cpu, **opts, **target)
    queue = FitQueue(cpu, False)
    queue.add(job)
    queue.flush()
    kf = codec.finish(job, False, 0.0)
    assert not np.all(job.scales == 1)
    flat = flatten(TINY, inr.compact(TINY, job.fitted))
    sigma = np.stack([p.std(-1) for p in flat], 1)
    steps = kf.tensors["step"].astype(np.float64)  # (B, T)
    assert ((steps / sigma).max(1) / (steps / sigma).min(1) > 2).all()  # not the spread alone
    per_depth = steps / (job.scales * sigma)  # 2^(3 - depth) for every tensor of a network
    assert np.allclose(per_depth, per_depth[:, :1], rtol=1e-5)
    if "bits" in target:
        want = quantised(TINY, job.fitted, job.bits, torch.from_numpy(job.scales))
        got = kf.params()
        for k in got:
            assert torch.allclose(got[k], want[k].detach(), atol=1e-6, rtol=1e-5), k
