"""``kancodec bench speed``: fit steps per second and decode throughput, measured.

Times the default architecture (paper Table 1 KAN) on random 32,768-sample windows at
22.05 kHz: a full fit step (forward, loss, backward, AdamW) and a decode forward pass,
eager and compiled. Compile time is reported separately; the timed runs follow warm-up.
"""

from __future__ import annotations

import time

import torch
from rich.console import Console
from rich.table import Table

from . import inr
from ._alloc import tune_allocator
from .api import resolve_device
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


def _time_decode(cfg: inr.KANConfig, batch: int, dev: torch.device, compiled: bool, reps: int = 3) -> float:
    params = {k: v.to(dev) for k, v in inr.init_params(cfg, batch).items()}
    fn = torch.compile(inr.forward_features, dynamic=False) if compiled else inr.forward_features
    with torch.inference_mode():
        feats = inr.input_features(cfg, time_grid(N, dev))
        inr.forward_chunked(cfg, params, feats, fn)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(reps):
            inr.forward_chunked(cfg, params, inr.input_features(cfg, time_grid(N, dev)), fn)
        _sync(dev)
    return (time.perf_counter() - t0) / reps


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
            dec = _time_decode(cfg, batch, dev, compiled) / batch
            row = {"windows": batch, "compiled": compiled, "warmup_s": warm, "step_s": step,
                   "window_step_s": step / batch, "decode_s_per_window": dec, "decode_x_realtime": N / SR / dec}
            rows.append(row)
            table.add_row(str(batch), "yes" if compiled else "no", f"{warm:.1f}", f"{step:.3f}", f"{step / batch:.3f}",
                          f"{batch / step:.1f}", f"{dec:.3f}", f"{N / dec:,.0f}", f"{row['decode_x_realtime']:.1f}")
    console.print(table)
    return rows
