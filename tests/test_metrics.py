"""Each metric against a case that can be checked by hand."""

import math

import numpy as np
import pytest

from kancodec import metrics as M
from kancodec.errors import InputError


def noise(n, seed=0):
    return np.random.default_rng(seed).normal(size=n).astype(np.float64) * 0.1


def test_identical_signals_score_perfectly(speech):
    x, sr = speech
    ref = x[0, 22050:22050 + 2 * sr]
    s = M.score(ref, ref.copy(), sr)
    assert s["mse"] == 0 and s["psnr"] == math.inf and s["snr"] == math.inf
    assert s["si_snr"] > 100
    assert s["lsd"] < 1e-8 and s["wasserstein"] == 0  # the paper's 1e-12 on |O| shows in float32 near-empty bins
    assert s["pesq"] > 4.5  # the top of the wide-band scale is 4.64
    assert s["stoi"] > 0.999


def test_known_snr_and_mse():
    ref = noise(16000)
    err = noise(16000, seed=1)
    err *= np.sqrt(np.sum(ref**2) / np.sum(err**2)) * 10 ** (-20 / 20)  # exactly 20 dB below ref
    out = ref + err
    assert M.snr(ref, out) == pytest.approx(20.0, abs=1e-9)
    assert M.mse(ref, out) == pytest.approx(np.mean(err**2), rel=1e-12)
    span = max(ref.max(), 0) - min(ref.min(), 0)  # the paper's (torchmetrics') range
    assert M.psnr(ref, out) == pytest.approx(10 * np.log10(span**2 / np.mean(err**2)), rel=1e-12)
    assert M.psnr_peak(ref, out) == pytest.approx(10 * np.log10(np.max(np.abs(ref)) ** 2 / np.mean(err**2)), rel=1e-12)
    assert M.si_snr(ref, out) == pytest.approx(20.0, abs=0.1)  # err is nearly orthogonal to ref


def test_si_snr_ignores_gain_but_not_delay():
    ref = noise(8000)
    assert M.si_snr(ref, 0.3 * ref) > 100
    assert M.si_snr(ref, -2.0 * ref) < -100 or M.si_snr(ref, -2.0 * ref) > 100  # a sign flip is still a gain
    delayed = np.roll(ref, 1)  # white noise shifted by one sample is uncorrelated with itself
    assert M.si_snr(ref, delayed) < -15
    assert M.snr(ref, 0.5 * ref) == pytest.approx(20 * np.log10(2), abs=1e-9)


def test_lsd_of_a_constant_gain_is_log10_of_the_power_ratio():
    ref = noise(22050)
    assert M.lsd(ref, 2 * ref, 22050) == pytest.approx(np.log10(4), rel=1e-6)
    assert M.lsd(ref, ref, 22050) == 0


def test_spectral_wasserstein_moves_mass_between_two_bins():
    n = 1024
    t = np.arange(n)
    a, b = 10, 30  # cosines exactly on FFT bins: all |FFT| mass on one bin each
    ref, out = np.cos(2 * np.pi * a * t / n), np.cos(2 * np.pi * b * t / n)
    assert M.wasserstein(ref, out) == pytest.approx((b**2 - a**2) / n, rel=1e-6)
    assert M.wasserstein(ref, 3 * ref) == pytest.approx(0, abs=1e-9)  # a distribution: scale-free


def test_silence_gives_reasons_not_crashes():
    z = np.zeros(16000)
    s = M.score(z, z, 16000)
    assert isinstance(s["pesq"], M.NotAvailable) and "silent" in s["pesq"]
    assert isinstance(s["stoi"], M.NotAvailable)
    assert s["mse"] == 0 and s["wasserstein"] == 0
    assert s["lsd"] == pytest.approx(12.0)  # the paper's LSD: log10(0 / 1e-24 + 1e-12)² in every bin
    assert isinstance(s["psnr"], M.NotAvailable) and "silent" in s["psnr"]


def test_pesq_narrow_band_at_8k_and_too_short_clips(speech_wav):
    import soundfile as sf

    x, sr = sf.read(speech_wav)
    assert sr == 8000
    assert M.pesq(x, x, sr) > 4.0  # narrow band tops out near 4.5
    short = M.pesq(x[:1000], x[:1000], sr)
    assert isinstance(short, M.NotAvailable) and "0.25 s" in short


def test_evaluate_resamples_trims_and_scores_each_channel():
    ref = np.stack([noise(16000), noise(16000, 2)])
    out = ref[:, :15000]
    r = M.evaluate(ref, out, 16000, metrics=("mse", "snr"))
    assert r["frames"] == 15000 and any("compared the first 15000" in n for n in r["notes"])
    assert len(r["channels"]) == 2 and r["mean"]["mse"] == 0
    from kancodec.audio import resample

    t = np.arange(16000) / 16000
    tones = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 3000 * t)]).astype(np.float32)
    up = resample(tones, 16000, 32000)
    r = M.evaluate(tones, up, 16000, 32000, metrics=("snr",))
    assert any("resampled from 32000" in n for n in r["notes"])
    assert r["mean"]["snr"] > 30  # soxr's round trip is near-transparent below Nyquist
    with pytest.raises(InputError, match="channel counts differ"):
        M.evaluate(ref, np.stack([ref[0]] * 3), 16000)
