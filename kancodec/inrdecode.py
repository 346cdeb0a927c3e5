"""Decoding fitted INRs: every window evaluated on the output time grid, cross-faded, streamed.

Split from :mod:`kancodec.inrcodec` (which encodes and dispatches); :func:`eval_windows` is
what ``decode`` and ``stream`` run at or above the fitted rate.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from . import inr, postfilter, threads
from .audio import crossfade_weights
from .fit import time_grid
from .inrfile import KanFile
from .runtime import Event, Progress, tune_allocator, want_compile
from .schema import check_decode_work


def eval_windows(kf: KanFile, out_sr: int, n_out: int, dev: torch.device, compile: bool | str,
                  progress: Progress | None) -> Iterator[np.ndarray]:
    """Evaluate every window on the output grid (``out_sr`` >= fitted rate) and cross-fade:
    ``(C, n)`` float32 blocks, each yielded as soon as no later window reaches it, adding up
    to ``n_out`` samples. Memory: one batch of windows and the samples they span, refused
    (OptionError naming ``sr``) past :data:`~kancodec.schema.MAX_WORK_BYTES`; below the
    fitted rate the windows are evaluated at it, so the same bound holds."""
    a, config = kf.audio, kf.config
    check_decode_work(config, a.chunk, a.fit_sr, out_sr)
    tune_allocator()
    hop = a.chunk - a.overlap
    ratio = out_sr / a.fit_sr
    starts = np.arange(a.windows) * hop / a.fit_sr  # seconds
    first_m = np.ceil(starts * out_sr - 1e-9).astype(np.int64)
    span = int(math.ceil(a.chunk * ratio)) + 1
    base = 0  # output index of out[:, 0]: the samples before it were yielded
    out = np.zeros((a.channels, 0), dtype=np.float64)
    wsum = np.zeros(0, dtype=np.float64)
    shared = float(hop * ratio).is_integer()
    use_compile = want_compile(compile, a.windows * a.channels * span / 32768, pays_from=64)
    fn, features = inr.forward_fn(use_compile), inr.features_fn(use_compile)
    gains = kf.gains.reshape(a.channels, a.windows)
    per_batch = max(1, int(4 * 32768 / span / a.channels)) if dev.type == "cpu" else 64
    cache: dict = {}  # the shared features, when every window sees the same local grid
    post = kf.post  # unpacked once, not per batch
    for w0 in range(0, a.windows, per_batch):
        if dev.type == "cpu":
            threads.update()
        ws = np.arange(w0, min(a.windows, w0 + per_batch))
        m = first_m[ws, None] + np.arange(span)[None, :]  # (w, span) output sample indices
        tau = (m / out_sr - starts[ws, None]) * a.fit_sr  # position in fitted samples
        t = torch.from_numpy(-1.0 + 2.0 * tau / (a.chunk - 1)).float().to(dev)
        rows = (np.arange(a.channels)[:, None] * a.windows + ws[None, :]).reshape(-1)
        if not gains[:, ws].any():  # silence costs nothing: its samples are 0 whatever the networks say
            y = np.zeros((a.channels, len(ws), span))
        else:
            y = _forward(kf, rows, t, dev, features, fn, len(ws), cache if shared else None, out_sr, post)
        end = min(n_out, int(m[-1, -1]) + 1)
        if end - base > out.shape[1]:  # room for the samples this batch reaches
            grow = end - base - out.shape[1]
            out, wsum = np.pad(out, ((0, 0), (0, grow))), np.pad(wsum, (0, grow))
        for j, w in enumerate(ws):
            valid = (m[j] < n_out) & (tau[j] < a.chunk)
            wt = crossfade_weights(tau[j], a.chunk, a.overlap, w == 0, w == a.windows - 1) * valid
            sel = m[j][valid] - base
            out[:, sel] += y[:, j, valid] * gains[:, w, None] * wt[valid]
            wsum[sel] += wt[valid]
        final = n_out if ws[-1] + 1 == a.windows else min(n_out, int(first_m[ws[-1] + 1]))
        if final == n_out and n_out - base > out.shape[1]:  # a tail no window reaches: silence
            grow = n_out - base - out.shape[1]
            out, wsum = np.pad(out, ((0, 0), (0, grow))), np.pad(wsum, (0, grow))
        k = final - base
        if k > 0:
            yield (out[:, :k] / np.maximum(wsum[:k], 1e-12)).astype(np.float32)
            out, wsum, base = out[:, k:], wsum[k:], final
        if progress:
            progress(Event("decode", int(ws[-1]) + 1, a.windows))


def _forward(kf: KanFile, rows: np.ndarray, t: torch.Tensor, dev: torch.device, features, fn, n_ws: int,
             cache: dict | None, out_sr: int, post: np.ndarray | None) -> np.ndarray:
    """The networks ``rows`` at local times ``t`` ``(w, span)`` (samples at ``out_sr``), with
    the post-filter's codes ``post`` (``kf.post``, all networks) applied -> ``(C, w, span)``
    float64; ``cache`` (given when every window sees the same grid) keeps the first layer's
    features."""
    config, a = kf.config, kf.audio
    p = {k: v.to(dev) for k, v in kf.params(rows).items()}
    with torch.inference_mode():
        if cache is not None:
            if "feats" not in cache:
                cache["feats"] = features(config, t[0])
            feats = cache["feats"]
        else:  # (rows, span, F): row i is window ws[i % w] of channel i // w
            feats = features(config, t)[torch.arange(len(rows)) % n_ws]
        y = inr.forward_chunked(config, p, feats, fn)
        if post is not None:
            y = postfilter.apply(y, post[rows], out_sr, a.fit_sr)
    return y.reshape(a.channels, n_ws, -1).cpu().double().numpy()


def post_codes(kf: KanFile, originals, device: torch.device, per_batch: int = 16) -> np.ndarray:
    """The post-filter's codes ``(C × W, nb, BANDS)`` uint8 (``nb``: :func:`~kancodec.postfilter.blocks`
    of the file's window) for a file without them: each sounding
    window decoded on its fitted grid (as :func:`eval_windows` evaluates it at the fitted
    rate) against ``originals(rows)``, the windows as they were fitted ``(len(rows), chunk)``
    (before their gains). Silent windows keep unity gain."""
    a, config = kf.audio, kf.config
    nb = postfilter.blocks(a.chunk, a.fit_sr)
    codes = np.full((a.channels * a.windows, nb, postfilter.BANDS), postfilter.UNITY, np.uint8)
    active = np.flatnonzero(kf.gains > 0)
    if active.size == 0:
        return codes
    feats = inr.input_features(config, time_grid(a.chunk, device))
    for i in range(0, active.size, per_batch):
        rows = active[i:i + per_batch]
        p = {k: v.to(device) for k, v in kf.params(rows).items()}
        with torch.inference_mode():
            y = inr.forward_chunked(config, p, feats)
        x = torch.from_numpy(np.asarray(originals(rows), np.float64) / kf.gains[rows, None]).to(device)
        codes[rows] = postfilter.measure(y, x, a.fit_sr, nb)
    return codes
