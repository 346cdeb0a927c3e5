"""Audio quality metrics, each defined here once (``kancodec eval`` and ``bench quality`` use them).

All functions take a reference ``ref`` and a test signal ``out`` as 1-D float arrays of
the same length and sample rate (:func:`evaluate` handles channels, rates and lengths).

LSD and PSNR compute what the paper's code computes (``fewsound/utils/metrics.py`` of
github.com/gmum/fewsound, with torchmetrics 0.9.3 as it pins); ``tests/paper_port.py``
re-implements that code and the tests hold these functions to it.

- **MSE** ``mean((ref - out)²)`` (the paper's too).
- **PSNR** (the paper's: torchmetrics' ``PeakSignalNoiseRatio()`` with no data range)
  ``10 log10(range² / MSE)`` dB with ``range = max(max ref, 0) - min(min ref, 0)``, the
  reference's span (which torchmetrics counts from 0). ``n/a`` for a silent reference.
  :func:`psnr_peak` is the peak-based ``10 log10(max|ref|² / MSE)``, kancodec's PSNR
  before issue #15 (not in :data:`CORE`); it is 0 to 6.02 dB lower, as the span is 1 to
  2 peaks (4.7 dB on the bundled ``inr-kan-8bit.kan`` fixture).
- **SNR** ``10 log10(Σ ref² / Σ (ref - out)²)`` dB (the paper's adds the float32 epsilon,
  1.2e-7, to both sums; here a perfect copy is ``inf``).
- **SI-SNR** scale-invariant SNR: both signals mean-removed, ``s = (<out, ref> / |ref|²) ref``,
  ``10 log10(|s|² / |out - s|²)`` dB. A pure gain does not change it; a delay does. (The
  paper's is the same with the float32 epsilon in each sum: within 1e-4 dB on real audio.)
- **LSD** log-spectral distance, the paper's: ``torch.stft`` with a periodic Hann window,
  ``n_fft = int(2048 / (44100 / sr))``, hop ``int(sr / 100)``, centred frames padded with
  zeros; with ``R``, ``O`` the magnitudes of ``ref``, ``out``:
  ``mean_frames sqrt(mean_bins log10(R² / (O + 1e-12)² + 1e-12)²)`` (log10, no ×10, no
  floor). Computed in float32 like the paper's code: where ``out`` leaves bins empty
  (band-limited output) the float32 rounding floor of its spectrum is part of the number.
  Asymmetric (``ref`` on top), and two silent signals score 12, as in the paper's code.
- **PESQ** ITU-T P.862.2 wide band on both signals resampled to 16 kHz; narrow band
  (P.862) at 8 kHz when the reference's rate is 8 kHz. ``n/a`` with the reason on silence.
- **STOI** short-time objective intelligibility (pystoi, which works at 10 kHz).
- **Spectral Wasserstein** (the paper's code has none to check it against): ``|FFT|`` of
  each signal as a probability distribution over the support ``[0, 1, 4, …, (n-1)²]``
  (squared bin indices), the 1-Wasserstein distance between the two, divided by the clip
  length in samples.
- Optional: **ViSQOL** (speech mode, MOS-LQO at 16 kHz; ``pip install visqol-python``)
  and **CDPAM** (``pip install 'kancodec[cdpam]'``: its learned perceptual distance at
  22.05 kHz, 0 = identical, lower is better); each reports why when it cannot run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .audio import resample
from .errors import InputError
from .loss import si_snr as _si_snr_t

CORE = ("mse", "psnr", "snr", "si_snr", "lsd", "pesq", "stoi", "wasserstein")
OPTIONAL = ("visqol", "cdpam")
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "snr": True, "si_snr": True, "lsd": False, "pesq": True,
                    "stoi": True, "wasserstein": False, "visqol": True, "cdpam": False}


class NotAvailable(str):
    """A metric that could not be computed: the string says why (shown as ``n/a``)."""


def mse(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean((ref.astype(np.float64) - out) ** 2))


def psnr(ref: np.ndarray, out: np.ndarray) -> float | NotAvailable:
    """The paper's PSNR: ``10 log10(range² / MSE)``, ``range`` the reference's span including 0."""
    ref = np.asarray(ref, np.float64)
    span = max(float(ref.max()), 0.0) - min(float(ref.min()), 0.0)
    if span == 0:
        return NotAvailable("the reference is silent (PSNR's range, max - min, is 0)")
    err = mse(ref, out)
    if err == 0:
        return math.inf
    return 10 * math.log10(span**2 / err)


def psnr_peak(ref: np.ndarray, out: np.ndarray) -> float:
    """Peak-based PSNR, ``10 log10(max|ref|² / MSE)`` (kancodec's ``psnr`` before it followed the paper)."""
    err = mse(ref, out)
    peak = float(np.max(np.abs(ref))) ** 2
    if err == 0:
        return math.inf
    return 10 * math.log10(max(peak, 1e-20) / err)


def snr(ref: np.ndarray, out: np.ndarray) -> float:
    err = float(np.sum((ref.astype(np.float64) - out) ** 2))
    if err == 0:
        return math.inf
    return 10 * math.log10(max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-20) / err)


def si_snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(_si_snr_t(torch.from_numpy(np.asarray(out, np.float64)), torch.from_numpy(np.asarray(ref, np.float64)),
                           eps=1e-20))


LSD_EPS = 1e-12  # the paper's code's epsilon, added to |O| and to the power ratio


def lsd_n_fft(sr: int) -> int:
    """LSD's frame as the paper's code sizes it: 2048 samples at 44.1 kHz, scaled and truncated."""
    return max(16, int(2048 / (44100 / sr)))  # the 16 only matters below 345 Hz


def lsd_hop(sr: int) -> int:
    """LSD's hop: 10 ms, truncated (``int(sr / 100)``, as the paper's code)."""
    return max(1, int(sr / 100))


def lsd(ref: np.ndarray, out: np.ndarray, sr: int) -> float:
    """The paper's log-spectral distance of ``out`` from ``ref`` (see the module's docstring)."""
    n_fft, hop = lsd_n_fft(sr), lsd_hop(sr)
    window = torch.hann_window(n_fft, dtype=torch.float32)

    def magnitude(x: np.ndarray) -> torch.Tensor:  # (bins, frames), float32 as in the paper's code
        return torch.stft(torch.from_numpy(np.ascontiguousarray(x, np.float32)), n_fft, hop, window=window,
                          center=True, pad_mode="constant", return_complex=True).abs()

    r, o = magnitude(ref), magnitude(out)
    d = torch.log10(r.square() / (o + LSD_EPS).square() + LSD_EPS)
    return float(d.square().mean(0).sqrt().mean())


def wasserstein(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.abs(np.fft.rfft(ref.astype(np.float64)))
    b = np.abs(np.fft.rfft(out.astype(np.float64)))
    if a.sum() == 0 or b.sum() == 0:
        return 0.0 if a.sum() == b.sum() else math.nan
    support = np.arange(len(a), dtype=np.float64) ** 2
    cdf_gap = np.abs(np.cumsum(a / a.sum()) - np.cumsum(b / b.sum()))[:-1]
    return float(np.sum(cdf_gap * np.diff(support)) / len(ref))


def pesq(ref: np.ndarray, out: np.ndarray, sr: int) -> float | NotAvailable:
    from pesq import pesq as _pesq

    if not np.any(ref) or not np.any(out):
        return NotAvailable("a signal is silent (PESQ needs speech in both)")
    mode, rate = ("nb", 8000) if sr == 8000 else ("wb", 16000)
    r = resample(ref[None].astype(np.float32), sr, rate)[0]
    o = resample(out[None].astype(np.float32), sr, rate)[0]
    if len(r) < rate // 4:
        return NotAvailable(f"needs at least 0.25 s, got {len(ref) / sr:.3f} s")
    try:
        return float(_pesq(rate, r, o, mode))
    except Exception as e:  # noqa: BLE001 - pesq raises its own types (NoUtterancesError, ...)
        msg = str(e).strip().removeprefix("b'").removesuffix("'")
        return NotAvailable(f"PESQ: {msg or type(e).__name__}")


def stoi(ref: np.ndarray, out: np.ndarray, sr: int) -> float | NotAvailable:
    from pystoi import stoi as _stoi

    if not np.any(ref):
        return NotAvailable("the reference is silent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystoi warns (and returns 1e-5) when it finds no speech frames
        value = float(_stoi(ref.astype(np.float64), out.astype(np.float64), sr, extended=False))
    if value == 1e-5:  # pystoi's answer when fewer than 30 frames (~0.4 s) of sound remain
        return NotAvailable("too short or too quiet: STOI needs about 0.4 s of sound")
    return value


def visqol(ref: np.ndarray, out: np.ndarray, sr: int) -> float | NotAvailable:
    try:
        from visqol import VisqolApi
    except ImportError:
        return NotAvailable("ViSQOL is not installed: pip install visqol-python")
    api = VisqolApi()
    api.create(mode="speech")
    r = resample(ref[None].astype(np.float32), sr, 16000)[0].astype(np.float64)
    o = resample(out[None].astype(np.float32), sr, 16000)[0].astype(np.float64)
    try:
        return float(api.measure_from_arrays(r, o, 16000).moslqo)
    except Exception as e:  # noqa: BLE001 - report, do not crash the other metrics
        return NotAvailable(f"ViSQOL failed: {e}")


def cdpam(ref: np.ndarray, out: np.ndarray, sr: int) -> float | NotAvailable:
    try:
        import cdpam as _cdpam
    except Exception as e:  # noqa: BLE001 - ImportError, or its own imports breaking on new numpy
        return NotAvailable(f"CDPAM is not usable ({type(e).__name__}): pip install 'kancodec[cdpam]' (cdpam, librosa, resampy)")
    try:
        # CDPAM's weights are a legacy torch pickle that torch >= 2.6's safe loader refuses. It
        # ships inside the installed package, whose code runs anyway, so that one load may
        # unpickle; kancodec's own files never do.
        import os

        old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notice that the variable above is set
                model = _cdpam.CDPAM(dev="cpu")
        finally:
            if old is None:
                os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            else:
                os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old
        r = resample(ref[None].astype(np.float32), sr, 22050) * 32768.0
        o = resample(out[None].astype(np.float32), sr, 22050) * 32768.0
        with torch.no_grad():
            return float(model.forward(torch.from_numpy(r), torch.from_numpy(o)).item())
    except Exception as e:  # noqa: BLE001
        return NotAvailable(f"CDPAM failed: {type(e).__name__}: {e}")


def score(ref: np.ndarray, out: np.ndarray, sr: int, metrics: tuple[str, ...] = CORE) -> dict[str, float | NotAvailable]:
    """Every metric in ``metrics`` for one channel: ``(n,)`` and ``(n,)`` at ``sr`` -> name -> value."""
    funcs = {"mse": lambda: mse(ref, out), "psnr": lambda: psnr(ref, out), "snr": lambda: snr(ref, out),
             "si_snr": lambda: si_snr(ref, out), "lsd": lambda: lsd(ref, out, sr), "pesq": lambda: pesq(ref, out, sr),
             "stoi": lambda: stoi(ref, out, sr), "wasserstein": lambda: wasserstein(ref, out),
             "visqol": lambda: visqol(ref, out, sr), "cdpam": lambda: cdpam(ref, out, sr)}
    return {m: funcs[m]() for m in metrics}


def evaluate(ref: np.ndarray, out: np.ndarray, sr: int, out_sr: int | None = None,
             metrics: tuple[str, ...] = CORE, keep_signals: bool = False) -> dict:
    """Score ``out`` against ``ref``, channel by channel.

    Args:
        ref: ``(C, n)`` reference at ``sr``.
        out: ``(C', n')`` at ``out_sr`` (default ``sr``); resampled to ``sr`` first. ``C'``
            must equal ``C``, or be 1 (compared with every reference channel).
    Returns:
        ``{"sample_rate", "frames", "ref_frames", "out_frames", "notes": [...],
        "channels": [{metric: value}, ...], "mean": {metric: value}}``; a value that
        could not be computed is a :class:`NotAvailable` string. With ``keep_signals``, also
        ``"signals": (ref, out)``, the two ``(C, frames)`` arrays that were compared.
    """
    notes = []
    out_sr = out_sr or sr
    if out_sr != sr:
        out = resample(out, out_sr, sr)
        notes.append(f"output resampled from {out_sr} Hz to the reference's {sr} Hz")
    if out.shape[0] != ref.shape[0]:
        if out.shape[0] != 1:
            raise InputError(f"channel counts differ: reference {ref.shape[0]}, output {out.shape[0]}; "
                             "compare files with the same channels (or a mono output)")
        out = np.repeat(out, ref.shape[0], 0)
    n = min(ref.shape[1], out.shape[1])
    if ref.shape[1] != out.shape[1]:
        notes.append(f"lengths differ (reference {ref.shape[1]}, output {out.shape[1]} samples at {sr} Hz): "
                     f"compared the first {n}")
    shortest = lsd_n_fft(sr) // 2 + 1  # at least half an LSD frame: less is not a spectrum worth scoring
    if n < shortest:
        raise InputError(f"nothing to compare: {n} sample(s) in common at {sr} Hz; eval needs at least {shortest} "
                         f"({1000 * shortest / sr:.0f} ms)")
    per_channel = [score(ref[c, :n], out[c, :n], sr, metrics) for c in range(ref.shape[0])]
    mean = {}
    for m in metrics:
        vals = [ch[m] for ch in per_channel]
        missing = [v for v in vals if isinstance(v, NotAvailable)]
        mean[m] = missing[0] if missing else float(np.mean(vals))
    result = {"sample_rate": sr, "frames": n, "ref_frames": int(ref.shape[1]), "out_frames": int(out.shape[1]),
              "notes": notes, "channels": per_channel, "mean": mean}
    if keep_signals:
        result["signals"] = (ref[:, :n], out[:, :n])
    return result
