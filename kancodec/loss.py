"""The fitting loss: ``λ_t · L1(x, x̂) + λ_f · multi-resolution mel-STFT``.

As in the paper's reference code: FFT sizes 2048, 1024, 512, 256, 128, hops of a
quarter FFT, Hann windows, 128 mel bands on linear magnitudes; per resolution the
distance is ``mean|ΔM| + sqrt(mean ΔM²)``, averaged over resolutions. The mel
filterbank (HTK mel scale, triangular, unnormalised) is built here so the package does
not need torchaudio.
"""

from __future__ import annotations


import torch

DEFAULT_FFTS = (2048, 1024, 512, 256, 128)


def _hz_to_mel(f: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + f / 700.0)


def _mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, sr: int, n_mels: int = 128) -> torch.Tensor:
    """Triangular mel filters on the rfft bins: ``(n_fft // 2 + 1, n_mels)``.

    With many bands and a small FFT some triangles fall between bins and are all zero;
    they contribute nothing, as in the reference implementation.
    """
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(0.0, float(_hz_to_mel(torch.tensor(sr / 2.0))), n_mels + 2, dtype=torch.float64)
    pts = _mel_to_hz(mels)
    lower, centre, upper = pts[:-2], pts[1:-1], pts[2:]
    f = freqs.unsqueeze(-1)
    up = (f - lower) / (centre - lower)
    down = (upper - f) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class SpectralLoss:
    """Multi-resolution mel-STFT distance with cached windows and filterbanks.

    Call with ``(B, N)`` prediction and target; returns ``(B,)``, one distance per window.
    """

    def __init__(self, sr: int, ffts: tuple[int, ...] = DEFAULT_FFTS, n_mels: int = 128):
        self.sr, self.ffts, self.n_mels = sr, tuple(ffts), n_mels
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _consts(self, n_fft: int, device: torch.device, dtype: torch.dtype):
        key = (n_fft, device, dtype)
        if key not in self._cache:
            win = torch.hann_window(n_fft, device=device, dtype=dtype)
            fb = mel_filterbank(n_fft, self.sr, self.n_mels).to(device=device, dtype=dtype)
            self._cache[key] = (win, fb)
        return self._cache[key]

    def mel(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        """``(B, N)`` -> ``(B, frames, n_mels)`` mel magnitudes."""
        win, fb = self._consts(n_fft, x.device, x.dtype)
        spec = torch.stft(x, n_fft, hop_length=n_fft // 4, window=win, return_complex=True)
        # sqrt of power with a floor keeps the gradient finite where the magnitude is 0.
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + 1e-12)
        return torch.matmul(mag.transpose(-1, -2), fb)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(pred.shape[:-1])
        used = [n for n in self.ffts if n <= pred.shape[-1]]
        for n_fft in used:
            d = self.mel(pred, n_fft) - self.mel(target, n_fft)
            total = total + d.abs().mean((-1, -2)) + torch.sqrt(d.square().mean((-1, -2)) + 1e-12)
        return total / max(1, len(used))


def fit_loss(pred: torch.Tensor, target: torch.Tensor, spectral: SpectralLoss,
             l1_weight: float = 1.0, spectral_weight: float = 1.0) -> torch.Tensor:
    """``l1_weight · mean|x - x̂| + spectral_weight · SpectralLoss`` for ``(B, N)`` signals.

    The per-window losses are summed, not averaged: each window's gradient is then exactly
    what it would be if that window were fitted alone, so results do not depend on how
    windows are batched.
    """
    loss = l1_weight * (pred - target).abs().mean(-1)
    if spectral_weight:
        loss = loss + spectral_weight * spectral(pred, target)
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


