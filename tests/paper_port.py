"""Our re-implementation of the metrics of the paper's code, for the tests only.

Written from reading ``fewsound/utils/metrics.py`` of github.com/gmum/fewsound (commit
634b51e) and, for the metrics it takes from torchmetrics, torchmetrics 0.9.3 (the version
its requirements pin). Nothing here is kancodec's: it is the yardstick kancodec.metrics is
checked against. Like the paper's training code, it works on float32 torch tensors
``(n,)`` or ``(batch, n)``; ``preds`` is the output, ``target`` the reference.

What the paper's code does, step by step:

- LSD (its ``log_spectral_distance``): hop ``int(sr / 100)``, frame
  ``int(2048 / (44100 / sr))``; ``torch.stft`` with a periodic Hann window of the frame's
  length, centred frames (torch's default) padded with zeros (``pad_mode="constant"``),
  magnitudes ``|X|`` (not powers). Per bin ``log10(T² / (P + 1e-12)² + 1e-12)²`` with T the
  reference's and P the output's magnitude; mean over bins, square root, mean over
  frames, then mean over the batch. No floor: a bin the output leaves empty counts
  ``log10(T² / 1e-24)``, and two silent signals score 12, not 0.
- PSNR: torchmetrics' ``PeakSignalNoiseRatio()`` with no arguments, so the range is
  learnt from the reference: ``max(max(target), 0) - min(min(target), 0)`` (its running
  min/max start at 0), then ``10 log10(range² / MSE)``, the MSE pooled over the batch.
- MSE: ``mean((preds - target)²)``.
- SNR: ``10 log10((Σ t² + ε) / (Σ (t - p)² + ε))``, ε the dtype's machine epsilon.
- SI-SNR: both means removed, ``α = (<p, t> + ε) / (<t, t> + ε)``, ``s = α t``,
  ``10 log10((Σ s² + ε) / (Σ (s - p)² + ε))``; SNR and SI-SNR average over the batch.

The paper's code has no spectral Wasserstein distance.
"""

from __future__ import annotations

import torch

EPS = 1e-12  # the LSD's epsilon in the paper's code


def _magnitudes(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``|STFT|`` as ``(..., frames, bins)``, framed the way the paper frames it."""
    window = torch.hann_window(n_fft, device=x.device)  # default dtype (float32), periodic
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=window, center=True, pad_mode="constant",
                      return_complex=True)
    return spec.abs().transpose(-1, -2)


def lsd(preds: torch.Tensor, target: torch.Tensor, sample_rate: int) -> torch.Tensor:
    hop = int(sample_rate / 100)
    n_fft = int(2048 / (44100 / sample_rate))
    ref_mag = _magnitudes(target, n_fft, hop)
    out_mag = _magnitudes(preds, n_fft, hop)
    per_bin = torch.log10(ref_mag.square() / (out_mag + EPS).square() + EPS).square()
    per_frame = per_bin.mean(-1).sqrt()
    return per_frame.mean(-1).mean()


def psnr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=target.dtype)
    data_range = torch.maximum(target.max(), zero) - torch.minimum(target.min(), zero)
    mse_ = (preds - target).square().sum() / target.numel()
    return (2 * torch.log(data_range) - torch.log(mse_)) * (10 / torch.log(torch.tensor(10.0)))


def mse(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (preds - target).square().sum() / target.numel()


def snr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(preds.dtype).eps
    noise = target - preds
    return (10 * torch.log10((target.square().sum(-1) + eps) / (noise.square().sum(-1) + eps))).mean()


def si_snr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(preds.dtype).eps
    t = target - target.mean(-1, keepdim=True)
    p = preds - preds.mean(-1, keepdim=True)
    alpha = ((p * t).sum(-1, keepdim=True) + eps) / (t.square().sum(-1, keepdim=True) + eps)
    s = alpha * t
    return (10 * torch.log10((s.square().sum(-1) + eps) / ((s - p).square().sum(-1) + eps))).mean()


def as_tensor(x) -> torch.Tensor:
    """A numpy signal as the float32 tensor the paper's code would hold."""
    return torch.as_tensor(x).to(torch.float32)
