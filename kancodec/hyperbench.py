"""``kancodec bench hyper``: what a FewSound model buys, measured on held-out clips.

For ``clips`` validation crops of a corpus (the split the model was trained with, so the
clips were not seen in training):

1. one shot: SI-SNR, LSD and PESQ of the predicted networks (float weights);
2. ``--hyper --refine R``: the same after R fitting steps from the prediction, next to
   R steps from a random start (the codec's usual fit);
3. how many steps a random start needs to reach the refined SNR: one random-start fit of
   ``max_steps`` (the standard preset's schedule stretched over them), SNR read every 10
   steps; the first step at or above the target is reported (or "not within").
4. the wall-clock time of ``kancodec.encode(..., hyper=...)`` on a 10 s clip.

SNR (not SI-SNR) is what the fit loop reports every 10 steps, so step 3 compares SNRs;
the table gives both for the end points.
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
from .hyper import load
from .train import clip_scores


def run_hyper_bench(data: str | Path, model_name: str, clips: int = 4, refine: int = 300, max_steps: int = 1000,
                    device: str | None = None, compile: bool = True, log=print) -> dict:
    dev = api.resolve_device(device)
    model, ref = load(model_name, dev)
    c = model.config
    cfg = c.inr
    s = ref.train.get("settings", {})
    corpus = load_corpus(data, c.sample_rate, c.window, s.get("val_fraction", 0.05), s.get("split", "auto"))
    x = torch.from_numpy(val_crops(corpus.val, c.window, clips)).to(dev)
    log(f"{len(x)} held-out clips of {len(corpus.val)} ({corpus.split} split), {c.window} samples at {c.sample_rate} Hz")
    feats = cfg.features(time_grid(c.window, dev))
    with torch.no_grad():
        t0 = time.perf_counter()
        pred_params = model(x)
        predict_s = time.perf_counter() - t0
        one = clip_scores(inr.forward_chunked(cfg, pred_params, feats), x, c.sample_rate, len(x))
    log(f"one shot: {one}")
    base = PRESETS["standard"]
    result = {"clips": len(x), "model": model_name, "train_steps": ref.train.get("steps_done"), "one_shot": one,
              "predict_seconds_per_window": predict_s / len(x)}

    def final_scores(params, pesq=True) -> dict:
        with torch.no_grad():
            return clip_scores(inr.forward_chunked(cfg, params, feats), x, c.sample_rate, len(x) if pesq else 0)

    refined = fit(cfg, x, replace(base, steps=refine, lr=api.REFINE_LR), c.sample_rate,
                  init={k: v.clone() for k, v in pred_params.items()}, compile=compile)
    result["refine"] = {"steps": refine, **final_scores(refined.params)}
    log(f"hyper + refine {refine}: {result['refine']}")
    scratch = fit(cfg, x, replace(base, steps=refine), c.sample_rate, init=inr.init_params(cfg, len(x)), compile=compile)
    result["random_same_steps"] = {"steps": refine, **final_scores(scratch.params)}
    log(f"random start, {refine} steps: {result['random_same_steps']}")
    target = result["refine"]["snr"]
    trace: list[tuple[int, float]] = []
    long = fit(cfg, x, replace(base, steps=max_steps), c.sample_rate, init=inr.init_params(cfg, len(x)),
               compile=compile, progress=lambda p: trace.append((p.step, p.snr_db)))
    reached = next((step for step, value in trace if value >= target), None)
    result["random_to_reach"] = {"target_snr": target, "max_steps": max_steps, "steps": reached,
                                 "trace": trace[::10], **final_scores(long.params, pesq=False)}
    log(f"random start reaches {target:.2f} dB SNR at step {reached} of {max_steps}" if reached
        else f"random start does not reach {target:.2f} dB SNR within {max_steps} steps")
    ten = np.asarray(corpus.val[0], dtype=np.float32) / 32768
    ten = np.resize(ten, 10 * c.sample_rate)[None]
    t0 = time.perf_counter()
    api.encode(ten, c.sample_rate, hyper=model_name, device=dev)
    result["encode_10s_seconds"] = time.perf_counter() - t0
    log(f"encode --hyper of a 10 s clip: {result['encode_10s_seconds']:.2f} s (load, predict, quantise, check)")
    return result
