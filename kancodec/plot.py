"""Spectrogram pictures for ``kancodec eval --plot`` (needs the optional extra ``kancodec[plot]``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .audio import atomic_path
from .errors import KanError, OutputError

FORMATS = (".png", ".pdf", ".svg", ".jpg")


def check_plot_path(path: str | Path) -> None:
    """Refuse an unsupported picture type, or a missing matplotlib, before any work."""
    if Path(path).suffix.lower() not in FORMATS:
        raise OutputError(f"--plot {path}: use one of: {', '.join(FORMATS)}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise KanError("--plot needs matplotlib: pip install 'kancodec[plot]' (or pip install matplotlib)") from None


def _db(x: np.ndarray, sr: int) -> np.ndarray:
    """``(n,)`` -> ``(freq, frames)`` power in dB: Hann, 1024-point at 22.05 kHz scaled with the rate."""
    n_fft = max(64, 2 ** round(np.log2(1024 * sr / 22050)))
    spec = torch.stft(torch.from_numpy(x.astype(np.float32)), n_fft, n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True)
    return 10 * np.log10(spec.abs().square().numpy() + 1e-10)


def spectrograms(ref: np.ndarray, out: np.ndarray, sr: int, path: str | Path, force: bool = False,
                 titles: tuple[str, str] = ("reference", "output")) -> None:
    """Draw the reference's and output's spectrograms and their difference side by side.

    Args:
        ref, out: ``(n,)`` signals at ``sr`` (the first channel of what ``eval`` compared).
    """
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = _db(ref, sr), _db(out, sr)
    extent = (0, len(ref) / sr, 0, sr / 2000)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    top = max(a.max(), b.max())
    for ax, img, title in ((axes[0], a, titles[0]), (axes[1], b, titles[1])):
        im = ax.imshow(img, origin="lower", aspect="auto", extent=extent, vmin=top - 90, vmax=top, cmap="magma")
        ax.set_title(title)
    fig.colorbar(im, ax=axes[:2], label="dB")
    diff = b - a
    im = axes[2].imshow(diff, origin="lower", aspect="auto", extent=extent, vmin=-30, vmax=30, cmap="coolwarm")
    axes[2].set_title("output - reference")
    fig.colorbar(im, ax=axes[2], label="dB")
    for ax in axes:
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lower().lstrip(".").replace("jpg", "jpeg"), dpi=110)
    plt.close(fig)
