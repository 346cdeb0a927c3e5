"""Benchmarks of the autoencoders: the rate–distortion table and the toy sinusoid task.

``kancodec bench ae``: held-out crops of a corpus (the split the first model was trained
with, so none was seen in training) are coded through the real codec path
(:class:`kancodec.aecodec.AECodec` -> ``.kan`` bytes -> decode) with every number of codebooks
1 … N of each model, and through Opus (soundfile's OGG/Opus writer at 24 kHz, bitrate found
by bisection on libsndfile's compression level) at the bitrates asked for. Scores: PESQ
(wide band, at 16 kHz), STOI, SI-SNR, LSD (:mod:`kancodec.metrics`) against the crop at
22.05 kHz. kbps: ``payload`` counts the codes only; ``file`` the whole ``.kan`` file
(its ~2 kB JSON header included) or the whole Ogg file.

``kancodec bench toy``: the KAN-AutoEncoder sanity check. 128-sample sinusoids of random
frequency (1–8 cycles per frame) and random phase go through a 5-number bottleneck and back;
a KAN autoencoder and an MLP one with the same parameter count get the same steps, batch
and learning rate; the table gives the test MSE (1,000 fixed sinusoids) per seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import aecodec, metrics
from .ae import AEConfig, AutoEncoder
from .ae import load as load_ae
from .corpus import load_corpus, val_crops
from .kanfile import from_bytes
from .runtime import resolve_device
from .quality import _opus

SCORES = ("pesq", "stoi", "si_snr", "lsd")


def _score(ref: np.ndarray, out: np.ndarray, sr: int) -> dict:
    got = metrics.score(ref, out, sr, SCORES)
    return {k: (v if isinstance(v, float) else None) for k, v in got.items()}


def _mean(rows: list[dict]) -> dict:
    return {k: (float(np.mean([r[k] for r in rows if r[k] is not None])) if any(r[k] is not None for r in rows) else None)
            for k in rows[0]}


def run_ae_bench(data: str | Path, models: list[str], clips: int = 8, length: int = 65536,
                 opus: tuple[float, ...] = (8, 10, 12), device: str | None = None, log=print) -> dict:
    """-> ``{"clips", "rows": [{"codec", "model", "codebooks", "payload_kbps", "file_kbps", scores…}]}``."""
    device = resolve_device(device)
    first, first_ref = load_ae(models[0], device)
    sr = first.config.sample_rate
    s = first_ref.train.get("settings", {})
    corpus = load_corpus(data, sr, length, s.get("val_fraction", 0.05), s.get("split", "auto"))
    x = val_crops(corpus.val, length, clips)
    seconds = length / sr
    log(f"{len(x)} held-out clips of {len(corpus.val)} ({corpus.split} split), {seconds:.2f} s each at {sr} Hz")
    rows = []
    for name in models:
        model, ref = load_ae(name, device)
        c = model.config
        for n in range(1, c.codebooks + 1) if c.quantized else [None]:
            t0 = time.perf_counter()
            scores, sizes = [], []
            for clip in x:
                af = aecodec.CODEC.encode(clip[None], sr, model=ref.path, codebooks=n, device=device)
                data_bytes = af.to_bytes()
                y = aecodec.CODEC.decode(from_bytes(data_bytes), sr, device=device, model=ref.path)
                scores.append(_score(clip, y[0], sr))
                sizes.append(len(data_bytes))
            row = {"codec": f"{c.kind}-{c.layer}", "model": ref.path.name, "codebooks": n,
                   "payload_kbps": c.kbps(n), "file_kbps": float(np.mean(sizes)) * 8 / seconds / 1000,
                   **_mean(scores), "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            log(row)
    for kbps in opus:
        scores, sizes = [], []
        for clip in x:
            y, size = _opus(clip, sr, kbps)
            scores.append(_score(clip, y, sr))
            sizes.append(size)
        # libsndfile's lowest Opus setting gives ~8.7 kbps files for 3 s clips (headers
        # included), so lower targets land there: the label keeps the target visible.
        row = {"codec": f"opus@{kbps:g}", "model": None, "codebooks": None, "payload_kbps": None, "target_kbps": kbps,
               "file_kbps": float(np.mean(sizes)) * 8 / seconds / 1000, **_mean(scores)}
        rows.append(row)
        log(row)
    return {"clips": len(x), "seconds_per_clip": seconds, "rows": rows}


def _sinusoids(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, size)`` sinusoids: 1–8 cycles per frame, random phase, amplitude 1."""
    t = torch.arange(size) / size
    f = 1 + 7 * torch.rand(n, 1, generator=gen)
    phase = 2 * math.pi * torch.rand(n, 1, generator=gen)
    return torch.sin(2 * math.pi * f * t + phase)


def run_toy(steps: int = 3000, seeds: tuple[int, ...] = (1, 2, 3), size: int = 128, latent: int = 5,
            hidden: int = 16, batch: int = 128, lr: float = 3e-3, log=print) -> dict:
    """KAN vs MLP autoencoder on sinusoids -> ``{"kan": [test MSE per seed], "mlp": […], "params": {…}}``."""
    out: dict = {"steps": steps, "size": size, "latent": latent, "kan": [], "mlp": [], "params": {}}
    for layer in ("kan", "mlp"):
        for seed in seeds:
            model = AutoEncoder(AEConfig(kind="kae", layer=layer, frame=size, hop=size // 2, hidden=(hidden,),
                                         latent=latent, grid=5, order=3), seed=seed)
            out["params"][layer] = sum(p.numel() for p in model.parameters())
            gen = torch.Generator().manual_seed(1000 + seed)
            test = _sinusoids(1000, size, torch.Generator().manual_seed(12345))
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            for step in range(steps):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                x = _sinusoids(batch, size, gen)
                loss = (model.decoder(model.encoder(x)) - x).square().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                mse = float((model.decoder(model.encoder(test)) - test).square().mean())
            out[layer].append(mse)
            log(f"{layer} seed {seed}: test MSE {mse:.5f} ({out['params'][layer]:,} params)")
    return out

