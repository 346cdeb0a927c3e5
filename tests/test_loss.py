"""kancodec.loss against the paper's loss (issue #15).

The paper's code (github.com/gmum/fewsound, commit 634b51e, ``fewsound/systems/loss.py``)
builds its mel filters with ``librosa.filters.mel`` and adds the mel-STFT distance to an L1
term with weights 1 and 1. librosa is not a dependency, so the filterbank is checked three
ways: values of ``librosa.filters.mel`` (librosa 0.11.0, computed once and pinned here), an
independent construction below (``np.interp`` triangles), and properties of the Slaney
normalisation. The loss is checked against our own port of the paper's loss, written from
reading its source, on the bundled speech clip.
"""

from __future__ import annotations

import math
from importlib import resources

import numpy as np
import pytest
import torch

from kancodec import inr, loss as L
from kancodec.audio import read_audio
from kancodec.fit import time_grid

SR = 22050
N = 32768  # the paper's clips: 1.4861 s at 22.05 kHz


# ---------------------------------------------------------------------------------------------
# Our port of the paper's loss (for these tests only).
# ---------------------------------------------------------------------------------------------

def port_slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4))


def port_slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * 6.4 ** ((m - 15.0) / 27.0))


def port_mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)`` rebuilt: (n_mels, bins)."""
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = port_slaney_mel_to_hz(np.linspace(0.0, port_slaney_hz_to_mel(sr / 2), n_mels + 2))
    out = np.zeros((n_mels, bins.size))
    for i in range(n_mels):
        a, b, c = edges[i:i + 3]
        out[i] = np.interp(bins, [a, b, c], [0.0, 1.0, 0.0], left=0.0, right=0.0) * 2.0 / (c - a)
    return out.astype(np.float32)


PAPER_FFTS = [2048, 1024, 512, 256, 128]
PAPER_HOPS = [512, 256, 128, 64, 32]


def paper_spectral(x: torch.Tensor, x_hat: torch.Tensor, sr: int = SR) -> torch.Tensor:
    """The paper's MultiSTFTLoss on a batch: the means pooled over the batch (a scalar)."""
    per_res = []
    for n_fft, hop in zip(PAPER_FFTS, PAPER_HOPS):
        window = torch.hann_window(n_fft)
        fb = torch.from_numpy(port_mel_filters(sr, n_fft, 128))[None]

        def mels(s):
            z = torch.stft(s.reshape(-1, s.shape[-1]), n_fft, hop, n_fft, window, return_complex=True)
            return fb @ torch.sqrt(torch.clamp(z.real ** 2 + z.imag ** 2, min=1e-8))

        diff = mels(x) - mels(x_hat)
        per_res.append(diff.abs().mean() + diff.pow(2).mean().sqrt())
    return torch.stack(per_res).mean()


def paper_total(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """``reconstruction_loss_lambda · L1Loss + perceptual_loss_lambda · MultiSTFTLoss``, both 1."""
    return torch.nn.L1Loss()(x, x_hat) + 1.0 * paper_spectral(x, x_hat)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """(2, N): the two 32,768-sample windows of the bundled clip, each peak-normalised."""
    with resources.as_file(resources.files("kancodec") / "data" / "demo_speech.flac") as p:
        x, sr = read_audio(p)
    assert sr == SR
    w = torch.from_numpy(x[0, :2 * N].copy()).reshape(2, N)
    return w / w.abs().amax(-1, keepdim=True)


def noisy(x: torch.Tensor, snr_db: float = 20.0, seed: int = 0) -> torch.Tensor:
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    n = n * (x.norm(dim=-1, keepdim=True) / n.norm(dim=-1, keepdim=True)) * 10 ** (-snr_db / 20)
    return x + n


def lowpassed(x: torch.Tensor, hz: float = 4000.0) -> torch.Tensor:
    X = torch.fft.rfft(x)
    X[..., int(hz / SR * x.shape[-1]):] = 0
    return torch.fft.irfft(X, n=x.shape[-1])


def kan_output(batch: int) -> torch.Tensor:
    cfg = inr.KANConfig()
    with torch.no_grad():
        return inr.forward(cfg, inr.init_params(cfg, batch, seed=0), time_grid(N)).reshape(batch, N)


# ---------------------------------------------------------------------------------------------
# The mel scale and filterbank
# ---------------------------------------------------------------------------------------------

def test_slaney_mel_scale_pinned():
    # librosa.hz_to_mel(f) (htk=False)
    f = torch.tensor([0.0, 500.0, 999.9, 1000.0, 1500.0, 4000.0, 11025.0], dtype=torch.float64)
    want = [0.0, 7.5, 14.9985, 15.0, 20.89752183, 35.16376031, 49.91059448]
    np.testing.assert_allclose(L.hz_to_mel(f).numpy(), want, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(L.mel_to_hz(L.hz_to_mel(f)).numpy(), f.numpy(), rtol=1e-10, atol=1e-9)
    # the HTK formula is still there, and differs
    assert abs(float(L.hz_to_mel(torch.tensor(1000.0), htk=True)) - 1000.0) < 0.1


# librosa.filters.mel(sr=22050, n_fft=2048, n_mels=128), librosa 0.11.0:
# row -> (argmax bin, value there, first and last non-zero bin, value at the first, row sum)
LIBROSA_22050_2048_128 = {
    0: (2, 0.03236570581793785, 1, 4, 0.016182852908968925, 0.09034588187932968),
    5: (14, 0.03271332383155823, 12, 16, 0.00034761932329274714, 0.09069349616765976),
    20: (50, 0.033756185322999954, 48, 52, 0.0013904772931709886, 0.09173636138439178),
    50: (129, 0.023956192657351494, 126, 132, 0.006300058215856552, 0.09186206758022308),
    90: (373, 0.009049039334058762, 363, 382, 0.0001194858705275692, 0.0928165465593338),
    127: (997, 0.0034852505195885897, 971, 1023, 7.184815331129357e-06, 0.09286924451589584),
}


def test_filterbank_matches_librosa_pinned_values():
    fb = L.slaney_filterbank(2048, SR, 128).T.numpy()  # librosa's (n_mels, bins) layout
    assert fb.shape == (128, 1025) and fb.dtype == np.float32
    for row, (k, peak, first, last, at_first, total) in LIBROSA_22050_2048_128.items():
        nz = np.nonzero(fb[row])[0]
        assert int(fb[row].argmax()) == k
        assert (int(nz[0]), int(nz[-1])) == (first, last)
        assert fb[row, k] == pytest.approx(peak, rel=1e-6)
        assert fb[row, first] == pytest.approx(at_first, rel=1e-5)
        assert fb[row].sum() == pytest.approx(total, rel=1e-6)
    assert fb.sum() == pytest.approx(11.886680603027344, rel=1e-6)
    assert fb[0, 1] == pytest.approx(0.016182852908968925, rel=1e-6)
    assert fb[1, 3] == pytest.approx(0.00977923534810543, rel=1e-6)
    assert fb[127, 1012] == pytest.approx(0.0015631235437467694, rel=1e-6)
    assert fb[40, 103] == 0.0 and fb[127, 1024] == 0.0


def test_filterbank_matches_librosa_other_rates():
    fb = L.slaney_filterbank(512, 16000, 80).T.numpy()  # librosa.filters.mel(sr=16000, n_fft=512, n_mels=80)
    for row, k, peak in [(0, 1, 0.022534560412168503), (40, 55, 0.014444176107645035), (79, 246, 0.0032521483954042196)]:
        assert int(fb[row].argmax()) == k and fb[row, k] == pytest.approx(peak, rel=1e-6)
    assert fb.sum() == pytest.approx(2.558260679244995, rel=1e-6)


def test_empty_filters_at_small_ffts_as_librosa():
    # librosa warns "Empty filters detected" for these; the rows are all zero
    empty = np.nonzero(L.slaney_filterbank(128, SR, 128).T.numpy().max(1) == 0)[0].tolist()
    assert empty == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 21, 22, 23, 24, 27, 28, 29, 30, 31,
                     34, 35, 36, 37, 38, 41, 42, 43, 46, 47, 48, 51, 52, 53, 56, 57, 60, 63, 64, 67, 72, 77]
    assert int((L.slaney_filterbank(256, SR, 128).max(0).values == 0).sum()) == 20


@pytest.mark.parametrize("sr,n_fft,n_mels", [(22050, 2048, 128), (22050, 1024, 128), (22050, 128, 128),
                                             (16000, 400, 80), (44100, 4096, 64), (8000, 256, 40)])
def test_filterbank_matches_independent_construction(sr, n_fft, n_mels):
    ours = L.slaney_filterbank(n_fft, sr, n_mels).T.numpy()
    np.testing.assert_allclose(ours, port_mel_filters(sr, n_fft, n_mels), rtol=1e-5, atol=1e-9)


def test_slaney_normalisation_gives_unit_area():
    # 2 / (f_{i+2} - f_i) makes each triangle's area in Hz one; the bin sums sample it
    fb = L.slaney_filterbank(2048, SR, 128)
    area = fb.sum(0) * (SR / 2048)
    assert torch.all((area - 1).abs() < 0.04), area
    assert torch.all((area[60:] - 1).abs() < 0.01), area[60:]  # wide triangles: many bins per triangle
    # the unnormalised HTK filters peak at one instead
    htk = L.mel_filterbank(2048, SR, 128)
    assert htk.max() == pytest.approx(1.0, abs=0.05) and htk.sum(0).min() > 1.0


def test_legacy_filterbank_unchanged():
    """The default of mel_filterbank is the pre-issue-15 HTK, unnormalised filterbank (the hypernetwork's
    spectral encoder uses it); here against that code's formula."""
    n_fft, sr, n_mels = 1024, 22050, 80
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + (sr / 2) / 700.0)
    pts = 700.0 * (10.0 ** (torch.linspace(0.0, top, n_mels + 2, dtype=torch.float64) / 2595.0) - 1.0)
    f = freqs[:, None]
    want = torch.clamp(torch.minimum((f - pts[:-2]) / (pts[1:-1] - pts[:-2]), (pts[2:] - f) / (pts[2:] - pts[1:-1])), min=0)
    torch.testing.assert_close(L.mel_filterbank(n_fft, sr, n_mels), want.float(), rtol=0, atol=1e-6)


def test_filterbank_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm"):
        L.mel_filterbank(512, SR, 40, norm="l2")


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["noise", "lowpass", "kan", "zeros"])
def test_spectral_loss_matches_paper_port(clip, kind):
    outs = {"noise": lambda: noisy(clip), "lowpass": lambda: lowpassed(clip),
            "kan": lambda: kan_output(2), "zeros": lambda: torch.zeros_like(clip)}
    pred = outs[kind]()
    ours = L.SpectralLoss(SR)(pred, clip)
    assert ours.shape == (2,)
    for b in range(2):  # the paper fits one recording at a time (batch 1)
        want = paper_spectral(clip[b:b + 1], pred[b:b + 1])
        assert float(ours[b]) == pytest.approx(float(want), rel=2e-5)
        total = L.fit_loss(pred[b:b + 1], clip[b:b + 1], L.SpectralLoss(SR), 1.0, 1.0)
        assert float(total) == pytest.approx(float(paper_total(clip[b:b + 1], pred[b:b + 1])), rel=2e-5)


def test_spectral_loss_pinned_values(clip):
    """Fixed deterministic pairs, so the loss and the port cannot drift together."""
    loss = L.SpectralLoss(SR)
    zeros = loss(torch.zeros_like(clip), clip)
    low = loss(lowpassed(clip), clip)
    np.testing.assert_allclose(zeros.numpy(), PINNED_ZEROS, rtol=1e-4)
    np.testing.assert_allclose(low.numpy(), PINNED_LOWPASS, rtol=1e-4)


PINNED_ZEROS = [0.3094369173049927, 0.2936992049217224]
PINNED_LOWPASS = [0.011977394111454487, 0.015959864482283592]


def test_spectral_term_on_the_papers_scale(clip):
    """At 20 dB SNR the paper's mel term is about the size of the L1 term (the HTK, unnormalised
    filters made it ~100x); from silence about 2.6x."""
    loss = L.SpectralLoss(SR)
    for pred, lo, hi in [(noisy(clip), 0.7, 1.4), (torch.zeros_like(clip), 2.0, 3.2), (kan_output(2), 2.0, 3.2)]:
        ratio = loss(pred, clip) / (pred - clip).abs().mean(-1)
        assert torch.all((ratio > lo) & (ratio < hi)), ratio


def test_batch_is_per_window_and_summed(clip):
    loss = L.SpectralLoss(SR)
    pred = noisy(clip, 10.0)
    both = loss(pred, clip)
    for b in range(2):
        assert float(both[b]) == pytest.approx(float(loss(pred[b:b + 1], clip[b:b + 1])[0]), rel=1e-5)
    total = L.fit_loss(pred, clip, loss, 1.0, 0.5)
    parts = (pred - clip).abs().mean(-1) + 0.5 * both
    assert float(total) == pytest.approx(float(parts.sum()), rel=1e-6)
    assert float(L.fit_loss(pred, clip, loss, 1.0, 0.0)) == pytest.approx(float((pred - clip).abs().mean(-1).sum()))


def test_identical_signals_score_zero_with_finite_gradients(clip):
    loss = L.SpectralLoss(SR)
    x = clip[:1, :4096].clone().requires_grad_(True)
    val = L.fit_loss(x, clip[:1, :4096], loss)
    assert val.item() < 1e-6
    val.backward()
    assert torch.isfinite(x.grad).all()
    z = torch.zeros(1, 4096, requires_grad=True)  # below the magnitude floor everywhere
    L.fit_loss(z, clip[:1, :4096], loss).backward()
    assert torch.isfinite(z.grad).all()


def test_ffts_longer_than_the_window_are_skipped():
    x = torch.randn(1, 700, generator=torch.Generator().manual_seed(1))
    y = x + 0.1 * torch.randn(1, 700, generator=torch.Generator().manual_seed(2))
    full = L.SpectralLoss(SR)(y, x)
    short = L.SpectralLoss(SR, ffts=(512, 256, 128))(y, x)
    assert float(full) == pytest.approx(float(short), rel=1e-6)


def test_float64_agrees_with_float32(clip):
    loss = L.SpectralLoss(SR)
    pred = lowpassed(clip)
    assert torch.allclose(loss(pred.double(), clip.double()).float(), loss(pred, clip), rtol=1e-4)


def test_log_mel_term_weighs_quiet_bands_by_their_relative_error():
    """The log-mel term (ours, not the paper's) is what makes hiss in a band the signal leaves
    empty cost as much as it is heard: an error 30 dB under a 200 Hz tone scores about the
    same in the paper's linear terms whether it is a 230 Hz tone or 6-8 kHz hiss (measured
    ratio 0.71), and 25x more as hiss in the log term."""
    n = 8192
    t = torch.arange(n) / SR
    x = (0.5 * torch.sin(2 * math.pi * 200 * t))[None]
    spec = torch.fft.rfft(torch.randn(1, n, generator=torch.Generator().manual_seed(0)))
    f = torch.fft.rfftfreq(n, 1 / SR)
    spec[:, (f < 6000) | (f > 8000)] = 0
    errors = [torch.fft.irfft(spec, n), torch.sin(2 * math.pi * 230 * t)[None]]
    loss = L.SpectralLoss(SR)
    (lin_hiss, log_hiss), (lin_low, log_low) = [loss.terms(x + e / e.norm() * x.norm() * 0.03, x, log=True)
                                                for e in errors]
    assert 0.3 < float(lin_hiss / lin_low) < 2
    assert float(log_hiss / log_low) > 10
    assert loss.terms(x, x)[1] is None and float(loss.terms(x, x, log=True)[1]) == 0.0
    # fit_loss adds it with its weight, and leaves it out at weight 0 (the paper's loss)
    pred = x + errors[0] * 0.01
    base = L.fit_loss(pred, x, loss, 1.0, 0.3)
    assert float(L.fit_loss(pred, x, loss, 1.0, 0.3, 0.0)) == float(base)
    both = L.fit_loss(pred, x, loss, 1.0, 0.3, 0.1)
    assert float(both) == pytest.approx(float(base + 0.1 * loss.terms(pred, x, log=True)[1].sum()), rel=1e-6)


def test_tilt_is_a_gentle_low_pass():
    """tilt(x, b) = x[n] + b·x[n-1]: gain 1 + b at 0 Hz, 1 - b at half the rate, the first
    sample kept; b = 0 is the identity (the paper's loss); one b per row leaves a row with 0
    exactly as it was."""
    n = 1024
    dc, nyquist = torch.ones(2, n), torch.tensor([1.0, -1.0]).repeat(n // 2)[None]
    assert torch.allclose(L.tilt(dc, 0.5)[:, 1:], torch.full((2, n - 1), 1.5))
    assert torch.allclose(L.tilt(nyquist, 0.5)[:, 1:], 0.5 * nyquist[:, 1:])
    assert torch.equal(L.tilt(dc, 0.5)[:, 0], dc[:, 0])
    x = torch.randn(3, 100)
    assert L.tilt(x, 0.0) is x
    rows = L.tilt(x, torch.tensor([[0.0], [0.5], [0.0]]))
    assert torch.equal(rows[0], x[0]) and torch.equal(rows[2], x[2])
    assert torch.allclose(rows[1], L.tilt(x[1:2], 0.5)[0])


def _voice_and_hiss(sr: int, n: int, hiss_gain: float) -> torch.Tensor:
    """Tones at 220 / 440 Hz (std 0.5) plus hiss above 3 kHz (std ``hiss_gain``), peak-normalised, (1, n)."""
    rng = np.random.default_rng(0)
    f = np.fft.rfftfreq(n, 1 / sr)
    hiss = np.fft.rfft(rng.standard_normal(n))
    hiss[f < 3000] = 0
    hiss = np.fft.irfft(hiss, n)
    t = np.arange(n) / sr
    voice = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 440 * t + 1)
    x = voice / voice.std() * 0.5 + (hiss / hiss.std() * hiss_gain if hiss_gain else 0)
    return torch.tensor(x / np.abs(x).max(), dtype=torch.float32)[None]


def test_tilted_fit_keeps_the_voice_under_loud_hiss(monkeypatch):
    """A window where hiss above 3 kHz holds four times the power of a voice-like pair of
    tones at 220 / 440 Hz: the fit without the tilt spends itself on the hiss and leaves the
    tones at 4.0-5.2 dB SNR (below 1 kHz; seeds 0-2, 150 steps of a [8, 4] KAN); with the
    presets' tilt, which such a window gets, it fits them to 10.0-12.6 dB."""
    from dataclasses import replace

    from kancodec import fit as F

    sr, n = 16000, 4096
    x = _voice_and_hiss(sr, n, 1.0)
    share, flatness = L.top_band(x, sr, F.HISS_HZ)
    assert float(share[0]) > 0.75 and float(flatness[0]) > 0.3
    cfg = inr.KANConfig(hidden=(8, 4), n_freqs=6)
    f = np.fft.rfftfreq(n, 1 / sr)

    def low_band_snr(tilt: float) -> float:
        monkeypatch.setattr(F, "LOSS_TILT", tilt)
        r = F.fit(cfg, x, replace(F.PRESETS["fast"], steps=150), sr, compile=False)
        err = np.fft.rfft(x[0].numpy() - inr.forward(cfg, r.params, time_grid(n))[0].detach().numpy())
        ref = np.fft.rfft(x[0].numpy())
        return 10 * math.log10((abs(ref[f < 1000]) ** 2).sum() / (abs(err[f < 1000]) ** 2).sum())

    assert F.LOSS_TILT == 0.5 and F.TILT_FROM == 0.25
    without, with_tilt = low_band_snr(0.0), low_band_snr(0.5)
    assert without < 7.0
    assert with_tilt > without + 3.0


def test_tilt_only_where_hiss_holds_a_quarter_of_the_power(monkeypatch):
    """The presets tilt a window only when a quarter or more of its power is above 3 kHz and
    noise-like there (not a tone); a batch of windows without gets exactly the untilted fit,
    and in a mixed batch each window gets its own. The tilt comes with the log-mel term: the
    paper's loss has neither."""
    from dataclasses import replace

    from kancodec import fit as F

    sr, n = 16000, 2048
    voice, hissy = _voice_and_hiss(sr, n, 0.0), _voice_and_hiss(sr, n, 1.0)
    fast = F.PRESETS["fast"]
    assert F.tilts(voice, fast, sr) == 0.0
    tone = torch.sin(2 * math.pi * 3500 * torch.arange(n) / sr)[None]  # a tone up there is no hiss
    assert float(L.top_band(tone, sr, F.HISS_HZ)[0][0]) > 0.99 and F.tilts(tone, fast, sr) == 0.0
    b = F.tilts(torch.cat([voice, hissy, torch.zeros(1, n)]), fast, sr)
    assert b.shape == (3, 1) and b[:, 0].tolist() == [0.0, 0.5, 0.0]
    assert F.tilts(hissy, F.PRESETS["standard"], sr).item() == 0.5
    assert F.tilts(hissy, F.PRESETS["paper"], sr) == 0.0
    cfg = inr.KANConfig(hidden=(4,), n_freqs=4)
    batch = torch.cat([voice, hissy])
    tilted = F.fit(cfg, batch, replace(fast, steps=5), sr, compile=False).params
    monkeypatch.setattr(F, "LOSS_TILT", 0.0)
    plain = F.fit(cfg, batch, replace(fast, steps=5), sr, compile=False).params
    assert all(torch.equal(tilted[k][0], plain[k][0]) for k in tilted)  # the voice: as without
    assert not all(torch.equal(tilted[k][1], plain[k][1]) for k in tilted)  # the hiss: tilted
