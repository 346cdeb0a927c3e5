"""The fitting loss: ``λ_t · L1(x, x̂) + λ_f · multi-resolution mel-STFT``, as the paper's code computes it.

What the paper's code computes (github.com/gmum/fewsound, commit 634b51e: the loss in
``fewsound/systems/loss.py`` (``MultiSTFTLoss`` / ``STFTLoss``), its defaults in
``fewsound/cfg/__init__.py``, the weighting in ``inr/systems/main.py`` and
``fewsound/systems/main.py``):

- Five resolutions: FFT sizes 2048, 1024, 512, 256, 128; hops 512, 256, 128, 64, 32
  (a quarter FFT); window length = FFT size, ``torch.hann_window`` (periodic).
- ``torch.stft`` with its defaults otherwise: centred frames, reflect padding, not
  normalised, one-sided.
- Linear magnitudes, ``sqrt(max(re² + im², 1e-8))`` (not powers, no log).
- Mel filters from ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=128)`` (librosa 0.9.2
  pinned): fmin 0, fmax sr/2, Slaney's mel scale (``htk=False``: linear below 1 kHz, log
  above), triangles on the FFT bin frequencies, area-normalised (``norm='slaney'``: each
  triangle scaled by ``2 / (f_{i+2} - f_i)``, Hz), float32. Applied as ``fb @ |X|``.
  At 22.05 kHz and n_fft 128 or 256 some of the 128 triangles fall between bins and are
  all zero (librosa warns); they stay in the mean, as zeros.
- Per resolution ``mean|ΔM| + sqrt(mean ΔM²)``, the means over every mel band and frame
  (and, in the paper, every item of the batch); the resolutions averaged (no weights; the
  optional frequency weighting ``freq_weights_p`` defaults to 0, i.e. none).
- Total ``1.0 · L1 + 1.0 · spectral`` (``reconstruction_loss_lambda`` and
  ``perceptual_loss_lambda`` default to 1.0; the L1 is ``torch.nn.L1Loss``, a mean over
  samples). The audio is peak-normalised first (``data_norm``), as our windows are.

:func:`mel_filterbank` builds librosa's filters here (librosa is not a dependency).

Where we differ, and why:

- One distance per window, ``(B,)``, summed over windows in :func:`fit_loss`; the paper
  pools the means over its batch. Its per-recording INR fits (``inr/systems/main.py``) use
  a batch of one, where the two are identical; for more windows our sum keeps each window's
  gradient what it would be fitted alone.
- A resolution whose FFT is longer than the window is skipped (the paper's 32,768-sample
  clips never meet one); the rest are averaged.
- The filterbank is computed in float64 and cast to the signal's dtype (librosa rounds to
  float32 as it goes; the filters agree to float32 precision).

- A third term, ours: the mean absolute difference of ``log(M + LOG_EPS)`` over the same
  mel spectrograms (``log_mel_weight``; 0, i.e. off, in the paper's preset). The paper's
  linear-magnitude terms are dominated by the loud low bands, so a fit at 300 steps leaves
  the 2-8 kHz bands at the level of the signal (error/signal about -2 dB at 2-4 kHz, 0 dB
  at 4-8 kHz, +3 dB above, against -16 to -19 dB below 1 kHz): the network adds hiss where
  it cannot follow. The log term weighs every band by its relative error. Measured on four
  real Czech speech clips (fillets-cs, 1.5 s, 22.05 kHz; not the held-out clips) with the
  ``fast`` preset (L1 + 0.3 · spectral), the term on from the first step, mean PESQ / SI-SNR
  dB of the decoded file:
  ``--kbps 48``, 300 steps: weight 0 2.01 / 10.7; 0.05 2.46 / 9.4; **0.1 2.71 / 7.9**;
  0.2 2.58 / 4.7; 1.0 1.59 / -17.7; at 0.1 an offset of 1e-4 2.63. Default encode (8 bits),
  200 steps: weight 0 2.55 / 13.9, 0.1 3.74 / 10.8. It trades waveform SNR for perceived
  quality; the presets ``fast`` and ``standard`` use 0.1 for the KAN, added from 30 % of the
  steps on (``kancodec.fit.LOG_MEL_FROM``: 2.80 / 9.1 at ``--kbps 48``).

- A tilt, ours: in a window where hiss holds much of the power (a quarter or more above
  3 kHz), the presets ``fast`` and ``standard`` compare ``x[n] + 0.5 · x[n - 1]`` of both
  signals (:func:`tilt`; ``LOSS_TILT`` in :mod:`kancodec.fit`, where it is measured; on
  from the first step wherever the settings have a log-mel weight), weighting its low band
  up to 9.5 dB over its top band, so the hiss cannot take the whole fit from the voice under
  it. Other windows, and ``paper``, have none.

Before issue 15 this module used HTK-scale, unnormalised triangles, which made the spectral
term 30-146x the paper's on the same signals. That filterbank is still available as
``mel_filterbank(..., htk=True, norm=None)`` (the hypernetwork's ``SpectralEncoder`` uses it).
"""

from __future__ import annotations

import math

import torch

DEFAULT_FFTS = (2048, 1024, 512, 256, 128)
MAG_FLOOR = 1e-8  # floor on |X|² before the square root, as in the paper's code
#: the offset in the log-mel term, ``log(M + LOG_EPS)``, on the Slaney-normalised mel magnitudes of
#: a peak-normalised window (ours, not the paper's: see the module's docstring)
LOG_EPS = 1e-3

# Slaney's mel scale (librosa's htk=False): linear below 1 kHz (200/3 Hz per mel), log above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(f: torch.Tensor, htk: bool = False) -> torch.Tensor:
    """Hz -> mel on Slaney's scale (default) or the HTK formula ``2595 log10(1 + f/700)``."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    linear = f / _F_SP
    log = _MIN_LOG_MEL + torch.log(torch.clamp(f, min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(m: torch.Tensor, htk: bool = False) -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    linear = _F_SP * m
    log = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log, linear)


def mel_filterbank(n_fft: int, sr: int, n_mels: int = 128, *, fmin: float = 0.0, fmax: float | None = None,
                   htk: bool = True, norm: str | None = None) -> torch.Tensor:
    """Triangular mel filters on the rfft bins, ``(n_fft // 2 + 1, n_mels)`` float32.

    ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk,
    norm=norm).T``: ``n_mels + 2`` points equally spaced in mel from ``fmin`` to ``fmax``
    (default ``sr / 2``), triangles between consecutive points evaluated at the bin
    frequencies ``k · sr / n_fft``; with ``norm='slaney'`` each is scaled by
    ``2 / (f_{i+2} - f_i)`` so its area does not depend on its width. The defaults here
    (HTK scale, unnormalised) are the filters the hypernetwork's spectral encoder was built
    with; the loss uses :func:`slaney_filterbank`, librosa's defaults.
    """
    if norm not in (None, "slaney"):
        raise ValueError(f"norm {norm!r}: only None and 'slaney' are supported")
    fmax = sr / 2.0 if fmax is None else float(fmax)
    freqs = torch.linspace(0.0, sr / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor(float(fmin)), htk), hz_to_mel(torch.tensor(fmax), htk)
    pts = mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64), htk)
    diff = pts[1:] - pts[:-1]
    ramps = pts.unsqueeze(-1) - freqs  # (n_mels + 2, bins)
    up = -ramps[:-2] / diff[:-1].unsqueeze(-1)
    down = ramps[2:] / diff[1:].unsqueeze(-1)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)  # (n_mels, bins)
    if norm == "slaney":
        fb = fb * (2.0 / (pts[2:] - pts[:-2])).unsqueeze(-1)
    return fb.T.contiguous().float()


def slaney_filterbank(n_fft: int, sr: int, n_mels: int = 128) -> torch.Tensor:
    """The paper's filters: ``librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels).T``."""
    return mel_filterbank(n_fft, sr, n_mels, htk=False, norm="slaney")


class SpectralLoss:
    """The paper's multi-resolution mel-STFT distance, with cached windows and filterbanks.

    Call with ``(B, N)`` prediction and target; returns ``(B,)``, one distance per window
    (see the module's docstring for what it computes).
    """

    def __init__(self, sr: int, ffts: tuple[int, ...] = DEFAULT_FFTS, n_mels: int = 128):
        self.sr, self.ffts, self.n_mels = sr, tuple(ffts), n_mels
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _consts(self, n_fft: int, device: torch.device, dtype: torch.dtype):
        key = (n_fft, device, dtype)
        if key not in self._cache:
            win = torch.hann_window(n_fft, device=device, dtype=dtype)
            fb = slaney_filterbank(n_fft, self.sr, self.n_mels).to(device=device, dtype=dtype)
            self._cache[key] = (win, fb)
        return self._cache[key]

    def mel(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        """``(B, N)`` -> ``(B, frames, n_mels)`` mel-weighted magnitudes."""
        win, fb = self._consts(n_fft, x.device, x.dtype)
        spec = torch.stft(x, n_fft, hop_length=n_fft // 4, win_length=n_fft, window=win, center=True,
                          pad_mode="reflect", return_complex=True)
        # The floor (the paper's) keeps the square root's gradient finite where |X| is 0.
        mag = torch.sqrt(torch.clamp(spec.real.square() + spec.imag.square(), min=MAG_FLOOR))
        return torch.matmul(mag.transpose(-1, -2), fb)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.terms(pred, target)[0]

    def terms(self, pred: torch.Tensor, target: torch.Tensor, log: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The paper's distance and, with ``log``, the log-mel distance :data:`LOG_EPS` defines,
        from one pass over the spectrograms: two ``(B,)`` tensors (the second None without ``log``)."""
        total = pred.new_zeros(pred.shape[:-1])
        logd = pred.new_zeros(pred.shape[:-1]) if log else None
        used = [n for n in self.ffts if n <= pred.shape[-1]]
        for n_fft in used:
            mp, mt = self.mel(pred, n_fft), self.mel(target, n_fft)
            d = mp - mt
            # The tiny offset only keeps sqrt's gradient finite when pred == target exactly.
            total = total + d.abs().mean((-1, -2)) + torch.sqrt(d.square().mean((-1, -2)) + 1e-20)
            if log:
                logd = logd + (torch.log(mp + LOG_EPS) - torch.log(mt + LOG_EPS)).abs().mean((-1, -2))
        k = max(1, len(used))
        return total / k, (logd / k if log else None)


def tilt(x: torch.Tensor, b: float | torch.Tensor) -> torch.Tensor:
    """``x[n] + b · x[n - 1]`` along the last axis of ``(B, N)`` signals (the first sample
    kept as it is): a two-tap low-pass whose gain falls from ``1 + b`` at 0 Hz to ``1 - b`` at
    half the rate (9.5 dB at ``b`` = 0.5). ``b``: one number, or ``(B, 1)``, one per row (a
    row with 0 comes back unchanged); the number 0 returns ``x`` itself. Ours, not the
    paper's: see ``LOSS_TILT`` in :mod:`kancodec.fit`."""
    if not isinstance(b, torch.Tensor) and not b:
        return x
    return torch.cat([x[..., :1], x[..., 1:] + b * x[..., :-1]], -1)


def top_band(x: torch.Tensor, sr: int, above_hz: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, N)`` signals (2-D) -> ``(share, flatness)``, each ``(B,)``: the share of each
    row's power in the FFT bins at or above ``above_hz``, and those bins' spectral flatness
    (geometric over arithmetic mean of their power: near 1 for white noise, near 0 for a few
    pure tones). Both 0 for a silent row or when no bin reaches ``above_hz``."""
    power = torch.fft.rfft(x.double()).abs().square()
    top = power[:, torch.fft.rfftfreq(x.shape[-1], 1 / sr).to(x.device) >= above_hz]
    share = top.sum(-1) / power.sum(-1).clamp_min(1e-300)
    if not top.shape[-1]:
        return share, share
    mean = top.mean(-1)
    flat = torch.where(mean > 0, (top + 1e-300).log().mean(-1).exp() / mean.clamp_min(1e-300), 0.0)
    return share, flat


def fit_loss(pred: torch.Tensor, target: torch.Tensor, spectral: SpectralLoss,
             l1_weight: float = 1.0, spectral_weight: float = 1.0, log_mel_weight: float = 0.0) -> torch.Tensor:
    """``l1_weight · mean|x - x̂| + spectral_weight · SpectralLoss + log_mel_weight · log-mel L1``
    for ``(B, N)`` signals.

    The paper's weights are 1, 1 and 0 (it has no log term; see the module's docstring). The
    per-window losses are summed, not averaged: each window's gradient is then exactly what
    it would be if that window were fitted alone, so results do not depend on how windows
    are batched.
    """
    loss = l1_weight * (pred - target).abs().mean(-1)
    if spectral_weight or log_mel_weight:
        lin, logd = spectral.terms(pred, target, log=bool(log_mel_weight))
        if spectral_weight:
            loss = loss + spectral_weight * lin
        if log_mel_weight:
            loss = loss + log_mel_weight * logd
    return loss.sum()


def si_snr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB per row of ``(..., N)`` signals (means removed)."""
    pred = pred - pred.mean(-1, keepdim=True)
    target = target - target.mean(-1, keepdim=True)
    alpha = (pred * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True) + eps)
    s = alpha * target
    return 10 * torch.log10((s.square().sum(-1) + eps) / ((pred - s).square().sum(-1) + eps))


def snr(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Plain SNR in dB per row of ``(..., N)`` signals."""
    return 10 * torch.log10((target.square().sum(-1) + eps) / ((pred - target).square().sum(-1) + eps))
