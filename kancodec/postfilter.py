"""The post-filter: an equaliser per window that follows it in time, measured by the encoder, applied by the decoder.

A fitted network that cannot follow a band leaves noise there at the level of the signal
(at ``--kbps 48`` the bands above ~5 kHz of a speech window are mostly the network's own
hiss; below 4 kHz, where PESQ listens, the band SNR falls from ~18 dB under 1 kHz to ~2 dB
at 2–4 kHz). The encoder compares each decoded window with the original and stores, per
window and per block of :data:`BLOCK_SECONDS` (93 ms; :func:`blocks` per window), the
least-squares gain of each of :data:`BANDS` bands, ``g_b = Re Σ X·conj(Y) / Σ |Y|²`` over
the band's STFT bins of the block's frames (``X`` the original, ``Y`` the decoded window):
a Wiener-style gain, near 1 where the fit is good and near 0 where it is noise. The decoder
multiplies each STFT frame by gains interpolated linearly in dB between the blocks' centres,
before the cross-fade. Side information: :data:`BANDS` codes of 4 bits per block (512 bits per
16,384-sample window at 22.05 kHz, 0.69 kbps), stored as ``post`` ``(networks, blocks,
BANDS // 2)`` uint8, two codes per byte (:func:`pack`), so every stored value is a valid code
(format version 5; version 4 files hold one block per window, ``(networks, BANDS // 2)``).

Bands are equally spaced on the HTK mel scale from 0 Hz to half the fitting rate; at a
higher output rate the bins above that are left as they are. Codes are gains in steps of
:data:`STEP_DB` dB, code :data:`UNITY` = 0 dB (-15 to +7.5 dB).

Measured (ours, not the paper's) on four Czech tuning clips (fillets-cs, 1.5 s, never used
for reporting), ``--kbps 48``, 300 steps, mean PESQ of the decoded file: without 2.81; on
saved decodes, 16 mel bands with float gains 3.10; 24 / 32 / 48 mel bands 3.04 / 3.11 / 3.12
(so 16); 17 hand-placed Bark-like bands 3.02; gains per half window 2.88 and per quarter 2.77
(worse: gains that jump from one block to the next add their own artefacts). Through the codec
(PESQ / the paper's LSD; without the filter 2.80 / 1.31), codes in 2.5 dB steps down to
-32.5 dB 3.16 / 1.96, floored at -20 dB 3.11 / 1.56, at -15 dB 3.09 / 1.40 (the paper's LSD
has no floor, so bands turned far down cost it dearly); the codes as here (1.5 dB steps,
-15 to +7.5 dB) 3.06 / 1.38, SI-SNR 9.09 -> 9.20 dB, with one block per window.
Gains over time, interpolated between block centres rather than switched: on saved 48 kbps
decodes of a Spanish tuxpaint tuning clip (three seeds, one block: PESQ 2.13 / 2.17 / 2.18),
float gains per 32 / 16 / 8 / 4 STFT frames (of 128 samples) gave 2.42 / 2.41 / 2.45,
2.60 / 2.58 / 2.57, 2.70 / 2.66 / 2.69 and 2.74 / 2.72 / 2.79; with 1.5 dB codes (seeds 0 and 2) 16 frames
2.58 / 2.57, 8 frames 2.69 / 2.67. Through the codec on eight clips of four tuning voices
(fillets-cs, asterisk es_MX and fr_CA; ``--kbps 48``, 300 steps, the codes' bits taken from
the weights' budget): one block per window 2.777, blocks of 16 frames 3.009 (every clip
better); 8 frames on the first three clips 3.33 against 3.37 for 16, at twice the bits. So 16.
Interpolating the gains linearly in dB rather than in amplitude: 3.025 against 3.009 (seven
clips higher, one equal); 32 bands (dB, twice the bits) 3.034, better on the Czech clips and
worse on the asterisk ones, so 16.
"""

from __future__ import annotations

import numpy as np
import torch

#: bands per window, equally spaced in HTK mel from 0 Hz to half the fitting rate
BANDS = 16
#: gain codes are 4 bits: 0 .. LEVELS - 1
LEVELS = 16
#: dB per code step, and the code of 0 dB (unity gain, i.e. no change): -15 dB to +7.5 dB
STEP_DB, UNITY = 1.5, 10
#: seconds of audio per block of gains (16 STFT frames at 22.05 kHz): a window of 16,384
#: samples at 22.05 kHz holds 8 blocks (see the module's docstring for the measurements)
BLOCK_SECONDS = 16 * 128 / 22050
#: the most blocks per window a file may hold (the reader's bound)
MAX_BLOCKS = 1024
#: the STFT's length at 22.05 kHz (23 ms); scaled with the rate so bins keep their width in Hz
N_FFT_22K = 512


def band_edges(fit_sr: int) -> np.ndarray:
    """``(BANDS + 1,)`` band edges in Hz, HTK-mel spaced from 0 to ``fit_sr / 2``."""
    top = 2595.0 * np.log10(1.0 + fit_sr / 2.0 / 700.0)
    return 700.0 * (10.0 ** (np.linspace(0.0, top, BANDS + 1) / 2595.0) - 1.0)


def _n_fft(sr: int, n: int) -> int:
    """The STFT length at ``sr`` for windows of ``n`` samples (no longer than the window)."""
    return min(2 * max(16, round(N_FFT_22K / 2 * sr / 22050)), 2 * (n // 2))


def _bands(n_fft: int, sr: int, fit_sr: int) -> torch.Tensor:
    """Each rfft bin's band ``(n_fft // 2 + 1,)``; :data:`BANDS` for bins above ``fit_sr / 2``."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = band_edges(fit_sr)
    band = np.searchsorted(edges, freqs, side="right") - 1
    band = np.where(freqs <= fit_sr / 2.0, np.clip(band, 0, BANDS - 1), BANDS)
    return torch.from_numpy(band)


def _stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    win = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    return torch.stft(x, n_fft, n_fft // 4, window=win, center=True, pad_mode="reflect", return_complex=True)


def blocks(chunk: int, fit_sr: int) -> int:
    """Blocks of gains per window of ``chunk`` samples at ``fit_sr``: one per :data:`BLOCK_SECONDS`
    (at most :data:`MAX_BLOCKS`, what the reader accepts)."""
    return min(MAX_BLOCKS, max(1, round(chunk / fit_sr / BLOCK_SECONDS)))


def _frame_blocks(frames: int, hop: int, n: int, nb: int) -> np.ndarray:
    """The block ``(frames,)`` of each STFT frame of a window of ``n`` samples: frame ``t``
    (centred on sample ``t · hop``) is in block ``floor(t · hop · nb / n)``."""
    return np.minimum(np.arange(frames) * hop * nb // max(1, n), nb - 1)


def _frame_interp(frames: int, hop: int, n: int, nb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How each STFT frame's gains come from the blocks': linearly between the blocks' centres
    (fraction ``(k + ½) / nb`` of the window), held flat before the first and after the last.
    Returns the blocks below and above each frame and the weight of the one above, ``(frames,)``."""
    u = np.clip(np.arange(frames) * hop / max(1, n) * nb - 0.5, 0.0, nb - 1.0)  # position in block centres
    lo = np.minimum(np.floor(u).astype(np.int64), nb - 1)
    return lo, np.minimum(lo + 1, nb - 1), u - lo


def measure(decoded: torch.Tensor, original: torch.Tensor, fit_sr: int, nb: int = 1) -> np.ndarray:
    """Codes for windows ``(B, N)`` at ``fit_sr`` (``decoded`` as the file decodes them,
    ``original`` on the same scale), ``nb`` blocks per window -> ``(B, nb, BANDS)`` uint8.
    A band a block of the decoded window leaves empty keeps unity gain."""
    decoded, original = decoded.double(), original.double()
    n = decoded.shape[-1]
    n_fft = _n_fft(fit_sr, n)
    band = _bands(n_fft, fit_sr, fit_sr).to(decoded.device)
    y, x = _stft(decoded, n_fft), _stft(original, n_fft)  # (B, bins, frames)
    frames = y.shape[-1]
    blk = torch.from_numpy(_frame_blocks(frames, n_fft // 4, n, nb)).to(decoded.device)
    sums = []
    for per_frame in ((x * y.conj()).real, y.abs().square()):  # (B, bins, frames) -> (B, BANDS + 1, nb)
        by_band = torch.zeros(decoded.shape[0], BANDS + 1, frames, dtype=torch.float64, device=decoded.device)
        by_band.index_add_(1, band, per_frame)
        by_block = torch.zeros(decoded.shape[0], BANDS + 1, nb, dtype=torch.float64, device=decoded.device)
        by_block.index_add_(2, blk, by_band)
        sums.append(by_block[:, :BANDS].transpose(1, 2).cpu().numpy())  # (B, nb, BANDS)
    num, den = sums
    empty = den <= 1e-12 * np.maximum(1e-30, den.sum((-1, -2), keepdims=True))
    gain = np.where(empty, 1.0, num / np.where(empty, 1.0, den))
    db = 20.0 * np.log10(np.maximum(gain, 1e-6))
    return np.clip(np.round(db / STEP_DB) + UNITY, 0, LEVELS - 1).astype(np.uint8)


def pack(codes: np.ndarray) -> np.ndarray:
    """``(..., BANDS)`` codes -> ``(..., BANDS // 2)`` uint8: band ``2i`` in the low nibble of byte ``i``."""
    codes = np.asarray(codes, np.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack`."""
    out = np.empty((*packed.shape[:-1], 2 * packed.shape[-1]), np.uint8)
    out[..., 0::2], out[..., 1::2] = packed & 0x0F, packed >> 4
    return out


def gains(codes: np.ndarray) -> np.ndarray:
    """``(..., BANDS)`` codes (or codes interpolated between blocks) -> linear gains."""
    return 10.0 ** ((codes.astype(np.float64) - UNITY) * STEP_DB / 20.0)


def apply(y: torch.Tensor, codes: np.ndarray, sr: int, fit_sr: int) -> torch.Tensor:
    """Windows ``(B, N)`` evaluated at ``sr`` (>= ``fit_sr``) and their codes ``(B, nb, BANDS)``
    -> the filtered windows, ``(B, N)`` in ``y``'s dtype. Each STFT frame's gains are
    interpolated in dB between the blocks' (:func:`_frame_interp`). Windows whose codes are all
    :data:`UNITY` come back unchanged."""
    codes = np.asarray(codes)
    change = np.flatnonzero((codes != UNITY).any((-1, -2)))
    if change.size == 0 or y.shape[-1] < 4:
        return y
    n, nb = y.shape[-1], codes.shape[1]
    n_fft = _n_fft(sr, n)
    band = _bands(n_fft, sr, fit_sr).to(y.device)
    sel = torch.from_numpy(change).to(y.device)
    rows = y[sel].double()
    spec = _stft(rows, n_fft)  # (b, bins, frames)
    lo, hi, frac = _frame_interp(spec.shape[-1], n_fft // 4, n, nb)
    c = codes[change].astype(np.float64)  # (b, nb, BANDS)
    # the codes (dB) interpolated from block to block, then made gains: (b, frames, BANDS)
    g = gains(c[:, lo] * (1.0 - frac)[:, None] + c[:, hi] * frac[:, None])
    g = np.concatenate([g, np.ones((*g.shape[:2], 1))], axis=2)  # the last: above fit_sr / 2
    spec = spec * torch.from_numpy(g).to(device=y.device)[:, :, band].transpose(1, 2)
    win = torch.hann_window(n_fft, dtype=rows.dtype, device=rows.device)
    out = y.clone()
    out[sel] = torch.istft(spec, n_fft, n_fft // 4, window=win, center=True, length=n).to(y.dtype)
    return out
