"""``kancodec bench hyper``: what a learned start buys, measured on held-out clips.

For ``clips`` validation crops of a corpus (the split the model was trained with, so the
clips were not seen in training), each fitted as ``kancodec encode --steps N`` would (the
``fast`` preset's schedule stretched over N steps; float weights, so the curve measures
fitting, not quantisation):

1. curves: SI-SNR, SNR, LSD and PESQ after each of ``curve`` steps (0 = the start itself)
   from three starts: ``random`` (the codec's per-window seeds), ``theta`` (a learned start
   from ``train-theta``, when one is given or found) and ``hyper`` (the FewSound model's
   one-shot prediction, refined at the refine learning rate);
2. ``--hyper --refine R`` next to R steps from a random start (from the curves when R is on them);
3. how many steps a random start needs to reach the refined SNR (``max_steps`` > 0): one
   random-start fit of ``max_steps``, SNR read every 10 steps;
4. the wall-clock time of ``kancodec.encode(..., hyper=...)`` on a 10 s clip.

SNR (not SI-SNR) is what the fit loop reports every 10 steps, so step 3 compares SNRs.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from . import api, inr
from .corpus import load_corpus, val_crops
from .fit import PRESETS, fit, time_grid
from .fitqueue import RandomInit, start_for
from .hyper import load
from .train import clip_scores


def run_hyper_bench(data: str | Path, model_name: str, clips: int = 4, refine: int = 300, max_steps: int = 1000,
                    device: str | None = None, compile: bool = True, log=print, curve: tuple[int, ...] = (),
                    theta: str | None = "auto") -> dict:
    dev = api.resolve_device(device)
    model, ref = load(model_name, dev)
    c = model.config
    cfg = c.inr
    s = ref.train.get("settings", {})
    corpus = load_corpus(data, c.sample_rate, c.window, s.get("val_fraction", 0.05), s.get("split", "auto"))
    x = torch.from_numpy(val_crops(corpus.val, c.window, clips)).to(dev)
    log(f"{len(x)} held-out clips of {len(corpus.val)} ({corpus.split} split), {c.window} samples at {c.sample_rate} Hz")
    feats = cfg.features(time_grid(c.window, dev))
    rows = np.arange(len(x))
    with torch.no_grad():
        t0 = time.perf_counter()
        pred_params = model(x)
        predict_s = time.perf_counter() - t0
    randoms = {k: v.to(dev) for k, v in RandomInit(cfg, 0)(x, rows).items()}
    starts = {"random": (randoms, PRESETS["fast"].lr), "hyper": (pred_params, api.REFINE_LR)}
    learned = None if theta in (None, "none") else start_for(theta, cfg, c.sample_rate, c.window, 0, dev, "theta")
    if learned is not None and learned.meta_key == "start":
        starts["theta"] = (learned(x, rows), PRESETS["fast"].lr)
    memo: dict[tuple[str, int], dict] = {}

    def at(start: str, steps: int, pesq: bool = True) -> dict:
        if (start, steps) not in memo:
            params, lr = starts[start]
            if steps:
                settings = replace(PRESETS["fast"], steps=steps, lr=lr)
                params = fit(cfg, x, settings, c.sample_rate, init={k: v.clone() for k, v in params.items()},
                             compile=compile).params
            with torch.no_grad():
                pred = inr.forward_chunked(cfg, params, feats)
            memo[(start, steps)] = {"steps": steps, **clip_scores(pred, x, c.sample_rate, len(x) if pesq else 0)}
        return memo[(start, steps)]

    one = {k: v for k, v in at("hyper", 0).items() if k != "steps"}
    log(f"one shot: {one}")
    result = {"clips": len(x), "model": model_name, "train_steps": ref.train.get("steps_done"), "one_shot": one,
              "predict_seconds_per_window": predict_s / len(x)}
    if curve:
        result["curves"] = {}
        if "theta" in starts:
            result["theta"] = learned.describe()
        for name in starts:
            result["curves"][name] = [at(name, n) for n in curve]
            log(f"{name}: " + ", ".join(f"{p['steps']} steps {p['si_snr']:.2f} dB" for p in result["curves"][name]))
    result["refine"] = at("hyper", refine)
    log(f"hyper + refine {refine}: {result['refine']}")
    result["random_same_steps"] = at("random", refine)
    log(f"random start, {refine} steps: {result['random_same_steps']}")
    if max_steps > 0:
        target = result["refine"]["snr"]
        trace: list[tuple[int, float]] = []
        long = fit(cfg, x, replace(PRESETS["standard"], steps=max_steps), c.sample_rate, init=starts["random"][0],
                   compile=compile, progress=lambda p: trace.append((p.step, p.snr_db)))
        reached = next((step for step, value in trace if value >= target), None)
        with torch.no_grad():
            final = clip_scores(inr.forward_chunked(cfg, long.params, feats), x, c.sample_rate, 0)
        result["random_to_reach"] = {"target_snr": target, "max_steps": max_steps, "steps": reached,
                                     "trace": trace[::10], **final}
        log(f"random start reaches {target:.2f} dB SNR at step {reached} of {max_steps}" if reached
            else f"random start does not reach {target:.2f} dB SNR within {max_steps} steps")
    ten = np.asarray(corpus.val[0], dtype=np.float32) / 32768
    ten = np.resize(ten, 10 * c.sample_rate)[None]
    t0 = time.perf_counter()
    api.encode(ten, c.sample_rate, hyper=model_name, device=dev)
    result["encode_10s_seconds"] = time.perf_counter() - t0
    log(f"encode --hyper of a 10 s clip: {result['encode_10s_seconds']:.2f} s (load, predict, quantise, check)")
    return result
