"""``kancodec bench speed``: fit steps per second and decode throughput, measured.

Times the default architecture (paper Table 1 KAN) on random 32,768-sample windows at
22.05 kHz, eager and compiled: a full fit step (forward, loss, backward, AdamW) on a batch
of windows, and ``kancodec.decode`` of a file of that many windows at its own rate (the
whole decode path). Warm-up (and compile) time is reported separately.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from . import inr
from .runtime import resolve_device, tune_allocator
from .fit import FitSettings, fit, time_grid

N, SR = 32768, 22050


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_fit(cfg: inr.KANConfig, batch: int, dev: torch.device, steps: int, compiled: bool) -> tuple[float, float]:
    target = (torch.rand(batch, N, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(dev)
    t0 = time.perf_counter()
    fit(cfg, target, FitSettings(steps=2), SR, compile=compiled)  # warm-up (and compile)
    _sync(dev)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit(cfg, target, FitSettings(steps=steps), SR, compile=compiled)
    _sync(dev)
    return (time.perf_counter() - t0) / steps, warm


def _time_decode(cfg: inr.KANConfig, windows: int, dev: torch.device, compiled: bool) -> tuple[float, int]:
    """Seconds and output samples of :func:`kancodec.decode` on a file of ``windows`` windows (whole
    path: features, networks, cross-fades), after one warm-up decode of the same file."""
    from .api import decode
    from .inrfile import AudioInfo, KanFile, store

    hop = N - 1024
    frames = N + hop * (windows - 1)
    audio = AudioInfo(sample_rate=SR, fit_sr=SR, channels=1, frames=frames, fit_frames=frames,
                      chunk=N, overlap=1024, windows=windows)
    tensors, scheme = store(cfg, inr.compact(cfg, inr.init_params(cfg, windows)), 8, np.ones(windows, bool))
    tensors["gain"] = np.ones(windows, np.float32)
    kf = KanFile(cfg, audio, 8, tensors, {}, scheme)
    decode(kf, device=dev, compile=compiled)
    _sync(dev)
    t0 = time.perf_counter()
    decode(kf, device=dev, compile=compiled)
    _sync(dev)
    return time.perf_counter() - t0, frames


def run_speed(device: str = "auto", steps: int = 20, batches: list[int] | None = None,
              modes: list[bool] | None = None, console: Console | None = None) -> list[dict]:
    """Print and return one row per (windows in batch, compiled)."""
    tune_allocator()
    console = console or Console()
    dev = resolve_device(device)
    cfg = inr.KANConfig()
    rows = []
    table = Table(title=f"kancodec bench speed: paper KAN ({cfg.n_params:,} params), {N}-sample windows at {SR} Hz, "
                        f"{dev} ({torch.get_num_threads()} threads)")
    for col in ("windows", "compiled", "warm-up s", "fit step s", "s / window-step", "window-steps/s",
                "decode s / window", "decode samples/s", "decode x real time"):
        table.add_column(col, justify="right")
    for batch in batches or [1]:
        for compiled in modes or [False, True]:
            step, warm = _time_fit(cfg, batch, dev, steps, compiled)
            dec_s, frames = _time_decode(cfg, batch, dev, compiled)
            dec = dec_s / batch
            row = {"windows": batch, "compiled": compiled, "warmup_s": warm, "step_s": step,
                   "window_step_s": step / batch, "decode_s_per_window": dec, "decode_samples_per_s": frames / dec_s,
                   "decode_x_realtime": frames / SR / dec_s}
            rows.append(row)
            table.add_row(str(batch), "yes" if compiled else "no", f"{warm:.1f}", f"{step:.3f}", f"{step / batch:.3f}",
                          f"{batch / step:.1f}", f"{dec:.3f}", f"{row['decode_samples_per_s']:,.0f}", f"{row['decode_x_realtime']:.1f}")
    console.print(table)
    return rows
