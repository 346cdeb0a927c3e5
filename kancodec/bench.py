"""``kancodec bench speed``: fit steps per second and decode throughput, measured, idle and under load.

Times the default architecture (paper Table 1 KAN) on random 32,768-sample windows at
22.05 kHz, eager and compiled: a full fit step (forward, loss, backward, AdamW) on a batch
of windows, and ``kancodec.decode`` of a file of that many windows at its own rate (the
whole decode path). Warm-up (and compile) time is reported separately. Each row also times
:func:`reference_forward` (a plain KAN forward written as efficient-kan writes it) on one
window in the same conditions, so speed-ups are measured, not remembered.

``busy``: conditions to measure, as the number of other processes that each keep one core
busy (started here, stopped after): ``[0, 1]`` measures idle, then with one core taken.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from . import inr, threads
from .runtime import resolve_device, tune_allocator
from .fit import FitSettings, fit
from .kan import positional_encoding

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


def reference_forward(config: inr.KANConfig, params: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """One network of ``params`` (batch index 0) on times ``t`` ``(N,)`` -> ``(N, 1)``, the plain
    way: B-spline bases by the Cox-de Boor recursion on a knot buffer per input, then one
    ``F.linear`` for the SiLU branch and one for the spline branch per layer (efficient-kan's
    structure). The yardstick of :func:`run_speed`; equal to :func:`kancodec.inr.forward`."""
    x = positional_encoding(t, config.n_freqs)
    g, k = config.grid, config.order
    lo, hi = config.grid_range
    for i in range(len(config.dims) - 1):
        base, spline, scale = (params[f"l{i}.{n}"][0] for n in ("base", "spline", "scale"))
        knots = (torch.arange(-k, g + k + 1, dtype=x.dtype) * (hi - lo) / g + lo).expand(x.shape[1], -1)
        u = x.unsqueeze(-1)
        b = ((u >= knots[:, :-1]) & (u < knots[:, 1:])).to(x.dtype)
        for p in range(1, k + 1):
            b = ((u - knots[:, :-(p + 1)]) / (knots[:, p:-1] - knots[:, :-(p + 1)]) * b[..., :-1]
                 + (knots[:, p + 1:] - u) / (knots[:, p + 1:] - knots[:, 1:-p]) * b[..., 1:])
        w = (spline * scale.unsqueeze(1)).permute(2, 0, 1).reshape(spline.shape[-1], -1)
        x = F.linear(F.silu(x), base.T) + F.linear(b.reshape(x.shape[0], -1), w)
    return x


def _time_reference(cfg: inr.KANConfig, repeats: int = 2) -> float:
    """Seconds of :func:`reference_forward` on one window (CPU, no gradients), after a warm-up."""
    p, t = inr.init_params(cfg, 1), torch.linspace(-1, 1, N)
    with torch.no_grad():
        reference_forward(cfg, p, t)
        t0 = time.perf_counter()
        for _ in range(repeats):
            reference_forward(cfg, p, t)
    return (time.perf_counter() - t0) / repeats


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes that each keep one core busy until stopped (:func:`stop_busy`). They
    stand for other programs: the thread governor does not count them as kancodec's own."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    threads.FOREIGN.update(p.pid for p in procs)
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
        threads.FOREIGN.discard(p.pid)


def run_speed(device: str = "auto", steps: int = 20, batches: list[int] | None = None,
              modes: list[bool] | None = None, busy: list[int] | None = None,
              console: Console | None = None) -> list[dict]:
    """Print and return one row per (busy cores, windows in batch, compiled)."""
    tune_allocator()
    console = console or Console()
    dev = resolve_device(device)
    cfg = inr.KANConfig()
    rows = []
    table = Table(title=f"kancodec bench speed: paper KAN ({cfg.n_params:,} params), {N}-sample windows at {SR} Hz, "
                        f"{dev}, up to {threads.GOVERNOR.max} threads")
    cols = ("busy cores", "threads", "windows", "compiled", "warm-up s", "fit step s", "s / window-step",
            "window-steps/s", "decode s / window", "decode x real time", "reference fwd s", "decode x reference",
            "fit x idle", "decode x idle")
    for col in cols:
        table.add_column(col, justify="right")
    idle: dict = {}
    for level in busy or [0]:
        procs = start_busy(level)
        try:
            time.sleep(1.0 if level else 0.0)
            threads.GOVERNOR.update(force=True)
            for batch in batches or [1]:
                for compiled in modes or [False, True]:
                    step, warm = _time_fit(cfg, batch, dev, steps, compiled)
                    dec_s, frames = _time_decode(cfg, batch, dev, compiled)
                    ref = _time_reference(cfg)
                    dec = dec_s / batch
                    row = {"busy": level, "threads": torch.get_num_threads(), "windows": batch, "compiled": compiled,
                           "warmup_s": warm, "step_s": step, "window_step_s": step / batch, "decode_s_per_window": dec,
                           "decode_samples_per_s": frames / dec_s, "decode_x_realtime": frames / SR / dec_s,
                           "reference_forward_s": ref, "decode_x_reference": ref / dec}
                    key = (batch, compiled)
                    if level == 0:
                        idle[key] = row
                    elif key in idle:
                        row["fit_x_idle"] = step / idle[key]["step_s"]
                        row["decode_x_idle"] = dec / idle[key]["decode_s_per_window"]
                    rows.append(row)
                    table.add_row(str(level), str(row["threads"]), str(batch), "yes" if compiled else "no",
                                  f"{warm:.1f}", f"{step:.3f}", f"{step / batch:.3f}", f"{batch / step:.1f}",
                                  f"{dec:.3f}", f"{row['decode_x_realtime']:.1f}", f"{ref:.3f}",
                                  f"{row['decode_x_reference']:.1f}",
                                  *(f"{row[k]:.2f}" if k in row else "-" for k in ("fit_x_idle", "decode_x_idle")))
        finally:
            stop_busy(procs)
    console.print(table)
    return rows
