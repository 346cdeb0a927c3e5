"""The INR codec: audio -> windows -> fitted (or predicted) networks -> quantised ``.kan`` file.

Encoding, in order: :meth:`InrCodec.plan` checks the options, resamples the audio to the
fitting rate and cuts it into overlapping windows (:func:`~kancodec.fitqueue.cut`); silent
windows are stored as a gain of 0. A :class:`~kancodec.fitqueue.FitQueue` fits the others,
peak-normalised, in batches (with other files' windows when several are encoded together),
each from random networks or a FewSound prediction; :meth:`InrCodec.finish` quantises and
entropy-codes the weights (:mod:`kancodec.entropy`) into a :class:`~kancodec.inrfile.KanFile`,
which is decoded once to store the quality reached. Decoding evaluates every window on the output
time grid and cross-fades them (:func:`decode`).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import soxr
import torch

from . import __version__, entropy, inr, postfilter, schema
from .audio import n_windows, resample, tile_rate
from .codec import bitrate, fact, fit_length, integrity, integrity_rows, measure_blocks
from .errors import FormatError, OptionError
from .fit import preset, preset_name as resolve_preset
from .inrfile import TAG, AudioInfo, KanFile, flatten, from_container, store
from .fitqueue import FitQueue, HyperInit, Job, cut, start_for
from .rate import Budget, check_kbps, choose_config, land, regime
from .postfilter import blocks as post_blocks_of  # plan's own postfilter flag hides the module
from .inrdecode import eval_windows as _eval_windows, post_codes
from .schema import MAX_CHUNK
from .runtime import Event, Progress, tune_allocator

#: peak learning rate of ``refine`` (fitting from a hypernetwork's prediction): on 4 held-out
#: windows, 300 steps from the bundled model reached SI-SNR 28.59 dB at 5e-2, 25.05 dB at 1e-2
REFINE_LR = 5e-2
DEFAULT_CHUNK = 32768
DEFAULT_OVERLAP = 1024
#: below the fitted rate, outputs of more fitted samples (all channels) than this are resampled as a stream
STREAM_FROM = 1 << 22


#: the most fitting steps an encode takes (about a day per window on a CPU)
MAX_STEPS = 1_000_000


def check_readable(config: inr.INR, shape: tuple[int, int], sr: int, fit_sr: int, chunk: int, overlap: int) -> None:
    """OptionError, before any fitting, unless the file this encode would write passes the
    reader's schema (:mod:`kancodec.schema`): kancodec never writes what it would refuse."""
    fit_frames = round(shape[1] * fit_sr / sr)
    audio = {"sample_rate": int(sr), "fit_sr": fit_sr, "channels": shape[0], "frames": shape[1],
             "fit_frames": fit_frames, "chunk": chunk, "overlap": overlap,
             "windows": n_windows(fit_frames, chunk, overlap)}
    try:
        schema.inr_config("encode", config.to_dict())
        schema.inr_audio("encode", audio)
    except FormatError as e:
        raise OptionError(str(e).replace("metadata ", "").replace(
            "; the file is damaged or crafted, re-encode the audio", ": kancodec could not read the file back; "
            "choose smaller settings or split the audio")) from None
    work = schema.decode_work(config, chunk, fit_sr, sr)
    if work > schema.MAX_WORK_BYTES:
        raise OptionError(f"decoding the file at {sr} Hz would need {work / 2**30:.1f} GiB per window (at most "
                          f"{schema.MAX_WORK_BYTES >> 30} GiB); raise {{fit_sr}} or lower {{chunk}}", "fit_sr", "chunk")


def check_fit_settings(steps: int, lr: float, seed: int, steps_name: str = "steps") -> None:
    """OptionError unless 0 <= steps <= MAX_STEPS, 0 < lr <= 1 (finite) and 0 <= seed < 2**63."""
    if not 0 <= steps <= MAX_STEPS:
        raise OptionError(f"{{{steps_name}}} {steps}: must be between 0 and {MAX_STEPS:,}", steps_name)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 1):
        raise OptionError(f"{{lr}} {lr}: must be a finite learning rate above 0 and at most 1 (the presets use "
                          "0.0001-0.05)", "lr")
    if not (isinstance(seed, int) and 0 <= seed < 2**63):
        raise OptionError(f"{{seed}} {str(seed)[:30]}: must be a whole number from 0 to 2^63 - 1", "seed")


def check_depth(bits: float) -> float:
    """OptionError unless ``bits`` is 32 (float) or a depth the entropy coder takes (1-16)."""
    if not (isinstance(bits, (int, float)) and (bits == 32 or entropy.MIN_BITS <= bits <= entropy.MAX_BITS)):
        raise OptionError(f"{{bits}} {bits}: choose a depth from {entropy.MIN_BITS:g} to {entropy.MAX_BITS:g} "
                          "(fractions allowed; each bit less halves the step), or 32 to store floats", "bits")
    return int(bits) if float(bits).is_integer() else float(bits)


class InrCodec:
    """Fitted (or predicted and refined) INRs; files tagged ``kancodec-inr``."""

    tag = TAG
    file_type = KanFile

    def encode(self, x: np.ndarray, sr: int, *, device: torch.device, compile: bool | str = "auto",
               batch: int | None = None, progress: Progress | None = None, **options) -> KanFile:
        """``(C, T)`` audio at ``sr`` -> :class:`KanFile`; see :func:`kancodec.api.encode` for the options."""
        job = self.plan(x, sr, device=device, **options)
        queue = FitQueue(device, compile, batch, progress)
        info = queue.describe(job)
        queue.total = job.settings.steps * info["batches"]
        if progress:
            progress(Event("plan", 0, queue.total, info))
        start = time.perf_counter()
        queue.add(job)
        queue.flush()
        return self.finish(job, queue.plan(job)[0], time.perf_counter() - start)

    def plan(self, x: np.ndarray, sr: int, *, preset_name: str = "auto", steps: int | None = None,
             lr: float | None = None, bits: float | None = None, kbps: float | None = None,
             config: inr.INR | None = None, fit_sr: int | None = None,
             chunk: int | None = None, overlap: int | None = None, seed: int = 0,
             device: torch.device, hyper: str | Path | None = None, refine: int | None = None,
             start: str | Path | None = None, postfilter: bool = True, name: str = "") -> Job:
        """Check the options and cut the audio: the :class:`~kancodec.fitqueue.Job` a
        :class:`~kancodec.fitqueue.FitQueue` fits and :meth:`finish` stores. Every option
        error is raised here, before any fitting."""
        tune_allocator()
        start = None if start == "random" else start
        if kbps is not None and bits is not None:
            raise OptionError("{kbps} chooses the depth itself: give {kbps} or {bits}, not both", "kbps", "bits")
        bits = check_depth(8 if bits is None else bits)
        if kbps is not None:
            check_kbps(kbps)
        if hyper is not None:
            if start is not None:
                raise OptionError("{start} with {hyper}: the hypernetwork's prediction is the start", "start", "hyper")
            init = HyperInit(hyper, device)
            c = init.model.config
            if config is not None and config != c.inr:
                raise OptionError(f"{{hyper}}: the model predicts {c.inr.describe()}; drop the architecture options",
                                  "hyper")
            if fit_sr not in (None, c.sample_rate) or chunk not in (None, c.window):
                raise OptionError(f"{{hyper}}: the model works on {c.window}-sample windows at {c.sample_rate} Hz; "
                                  "drop {fit_sr}/{chunk}", "hyper", "fit_sr", "chunk")
            if steps is not None:
                raise OptionError("{steps} with {hyper}: use {refine} N to fit N steps from the prediction",
                                  "steps", "hyper", "refine")
            config, fit_sr, chunk = c.inr, c.sample_rate, c.window
            steps, lr = refine or 0, REFINE_LR if lr is None else lr
        elif refine is not None:
            raise OptionError("{refine} needs {hyper}: it continues fitting from the hypernetwork's prediction",
                              "refine", "hyper")
        chosen = config is None and kbps is not None  # --kbps chooses the width too
        config = config or inr.KANConfig()
        if chunk is None:
            chunk = (regime(kbps).chunk if chosen else None) or DEFAULT_CHUNK
        overlap = DEFAULT_OVERLAP if overlap is None else overlap
        if not 256 <= chunk <= MAX_CHUNK or not 0 <= overlap < chunk // 2:
            raise OptionError(f"{{chunk}} {chunk} / {{overlap}} {overlap}: need 256 <= {{chunk}} <= {MAX_CHUNK:,} and "
                              f"0 <= {{overlap}} < {{chunk}}/2", "chunk", "overlap")
        tiled = fit_sr is None and hyper is None  # a hypernetwork fixes its rate; a given rate is kept
        fit_sr = tile_rate(x.shape[1], int(sr), chunk, overlap) if tiled else int(sr if fit_sr is None else fit_sr)
        # θ is matched against the rate before the tiling: a rate lowered only to drop a last window keeps it
        start_sr = int(sr) if tiled else fit_sr
        if not 1000 <= fit_sr <= 192000:
            raise OptionError(f"{{fit_sr}} {fit_sr}: must be between 1000 and 192000 Hz", "fit_sr")
        settings = replace(preset(preset_name, device, config), seed=seed,
                           **({"steps": steps} if steps is not None else {}), **({"lr": lr} if lr is not None else {}))
        check_fit_settings(settings.steps, settings.lr, seed, "refine" if hyper is not None else "steps")
        check_readable(config, x.shape, sr, fit_sr, chunk, overlap)
        w = cut(x, sr, fit_sr, chunk, overlap)
        post_blocks = post_blocks_of(chunk, fit_sr) if postfilter else 0
        if chosen:
            config = choose_config(kbps, x.shape[1] / sr, w.gains.shape[0], len(w.active), post_blocks)
            settings = replace(preset(preset_name, device, config), **{k: getattr(settings, k) for k in ("seed", "steps", "lr")})
        if hyper is None:  # after --kbps has chosen the network: θ must be learned for that one
            init = start_for(start, config, start_sr, chunk, seed, device)
        budget = None if kbps is None else Budget.of(kbps, x.shape[1] / sr, w.gains.shape[0], len(w.active), config,
                                                     post_blocks)
        return Job(x=x, sr=int(sr), w=w, config=config, settings=settings, init=init, fit_sr=fit_sr, chunk=chunk,
                   overlap=overlap, bits=bits, budget=budget, kbps=kbps, preset_name=preset_name, device=device,
                   name=name, postfilter=bool(postfilter), tiled=tiled and fit_sr != sr)

    def finish(self, job: Job, use_compile: bool, seconds: float) -> KanFile:
        """A fitted :class:`~kancodec.fitqueue.Job` -> its :class:`KanFile` (depths landed on
        the target for ``--kbps``, the quality the file holds measured by decoding it)."""
        x, sr, w, config, settings, init = job.x, job.sr, job.w, job.config, job.settings, job.init
        fitted, depths, budget, bits, kbps, device = job.fitted, job.depths, job.budget, job.bits, job.kbps, job.device
        fit_sr, chunk, overlap, preset_name = job.fit_sr, job.chunk, job.overlap, job.preset_name
        if not all(bool(torch.isfinite(v).all()) for v in fitted.values()):
            raise OptionError(f"the fit diverged (weights became infinite or NaN) at {{lr}} {settings.lr:g}; "
                              "lower {lr} or leave it to the preset; nothing was written", "lr")
        compact = inr.compact(config, fitted)
        active = w.gains > 0
        flat = flatten(config, compact) if bits != 32 or budget is not None else None
        if budget is not None:
            depths = land(flat, active, depths, budget,
                          lambda d: 32 * entropy.encode_networks(flat, d, active, job.scales)["ans"].size, job.scales)
            bits = round(float(depths[active].mean()), 2) if active.any() else 8
        tensors, scheme = store(config, compact, depths if budget is not None else bits, active, flat, job.scales)
        tensors["gain"] = w.gains
        audio = AudioInfo(sample_rate=int(sr), fit_sr=fit_sr, channels=x.shape[0], frames=x.shape[1],
                          fit_frames=w.xf.shape[1], chunk=chunk, overlap=overlap, windows=w.per_channel)
        made = init.describe()
        kf = KanFile(config, audio, bits, tensors, {
            "kancodec": __version__, "preset": resolve_preset(preset_name, device), "settings": asdict(settings),
            "device": str(device), "compile": use_compile, "seconds": round(seconds, 1),
            **({init.meta_key: made} if made else {}), **({"kbps_target": kbps} if kbps is not None else {})}, scheme)
        if job.postfilter:
            kf.tensors["post"] = postfilter.pack(post_codes(kf, w.rows, device))
        kf.encode.update(measure_blocks(self.stream(kf, fit_sr, device=device), w.xf))  # what the file holds
        return kf

    def decode(self, kf: KanFile, sr: int, *, device: torch.device, compile: bool | str = "auto",
               progress: Progress | None = None, **_) -> np.ndarray:
        """At or above the fitted rate the networks are evaluated on the finer time grid; below
        it they are evaluated at the fitted rate and resampled with a proper low-pass, so
        nothing aliases. Output length is ``round(frames × sr / sample_rate)``."""
        a = kf.audio
        n_out = round(a.frames * sr / a.sample_rate)
        if sr >= a.fit_sr:
            return np.concatenate(list(_eval_windows(kf, sr, n_out, device, compile, progress)), axis=1)
        n_fit = round(a.frames * a.fit_sr / a.sample_rate)
        y = resample(np.concatenate(list(_eval_windows(kf, a.fit_sr, n_fit, device, compile, progress)), axis=1),
                     a.fit_sr, sr)
        return y if y.shape[1] == n_out else fit_length(y, n_out)

    def stream(self, kf: KanFile, sr: int, *, device: torch.device, compile: bool | str = "auto",
               progress: Progress | None = None, **_) -> Iterator[np.ndarray]:
        """The same samples as :meth:`decode`, as ``(C, n)`` blocks in order, in memory bounded
        by a few windows: below the fitted rate long files are resampled as a stream (soxr's,
        equal to the one-shot resampler within its rounding), shorter ones as :meth:`decode`."""
        a = kf.audio
        n_out = round(a.frames * sr / a.sample_rate)
        n_fit = round(a.frames * a.fit_sr / a.sample_rate)
        if sr >= a.fit_sr:
            yield from _eval_windows(kf, sr, n_out, device, compile, progress)
        elif n_fit * a.channels <= STREAM_FROM:
            yield self.decode(kf, sr, device=device, compile=compile, progress=progress)
        else:
            rs, done = soxr.ResampleStream(a.fit_sr, sr, a.channels, dtype="float32", quality="HQ"), 0
            blocks = _eval_windows(kf, a.fit_sr, n_fit, device, compile, progress)
            for block in itertools.chain(blocks, [None]):
                y = rs.resample_chunk(np.zeros((0, a.channels), np.float32) if block is None else block.T,
                                      last=block is None).T[:, :n_out - done]
                done += y.shape[1]
                yield np.ascontiguousarray(y, dtype=np.float32)
            if done < n_out:
                yield np.zeros((a.channels, n_out - done), np.float32)

    def from_container(self, meta, tensors, where: str) -> KanFile:
        return from_container(meta, tensors, where)

    def describe(self, kf: KanFile, size: int) -> dict:
        a = kf.audio
        return {"format": TAG, "audio": {**a.__dict__, "duration": a.duration}, "inr": kf.config.to_dict(),
                "params_per_window": kf.config.n_params, "networks": a.channels * a.windows, "bits": kf.bits,
                "quant": kf.scheme, "bits_per_weight": round(kf.bits_per_weight(), 3),
                **({} if kf.post is None else {"postfilter": {"bands": postfilter.BANDS, "blocks_per_window": kf.post.shape[1],
                                                             "step_db": postfilter.STEP_DB,
                                                             "windows_changed": _changed(kf)}}),
                **bitrate(size, kf), **integrity(kf), "encode": kf.encode}

    def summary(self, kf: KanFile, size: int) -> list[tuple[str, str]]:
        a, e = kf.audio, kf.encode
        kbps = size * 8 / a.duration / 1000
        rows = [
            ("audio", f"{a.duration:.2f} s, {a.channels} ch, {a.sample_rate} Hz (fitted at {a.fit_sr} Hz)"),
            ("model", f"{kf.config.describe()}, {kf.config.n_params:,} params x {a.channels * a.windows} windows"),
            ("size", f"{size:,} bytes, {kbps:.1f} kbps ({kf.pcm_kbps() / kbps:.2f}x smaller than 16-bit PCM at "
                     f"{kf.pcm_kbps():.0f} kbps)" + (f", target {fact(e, 'kbps_target')} kbps" if "kbps_target" in e else "")
                     + (" (all this network takes: widen --hidden for more)" if _short(e, kbps) else "")),
            ("weights", f"depth {kf.bits} bits, " + (f"entropy-coded: {kf.bits_per_weight():.2f} bits per weight"
                                                     if kf.scheme != "affine-per-row" else "fixed-length")),
        ]
        rows.append(("post-filter", "none" if kf.post is None else
                     f"{postfilter.BANDS} band gains per window"
                     + (f" in {kf.post.shape[1]} blocks of {1000 * a.chunk / a.fit_sr / kf.post.shape[1]:.0f} ms"
                        if kf.post.shape[1] > 1 else "")
                     + f" ({_changed(kf)} of {kf.post.shape[0]} windows changed)"))
        if "snr_db" in e:
            rows.append(("quality", f"SNR {fact(e, 'snr_db', '.2f')} dB, SI-SNR {fact(e, 'si_snr_db', '.2f')} dB "
                                    f"(decoded file vs input at {a.fit_sr} Hz)"))
        steps = e.get("settings", {}).get("steps") if isinstance(e.get("settings"), dict) else None
        if "hyper" in e:
            rows.append(("encoded", f"one shot with {fact(e, 'hyper.model')} ({fact(e, 'hyper.mode')}, "
                                    f"{fact(e, 'hyper.encoder')} encoder)"
                                    + (f" + {fact(e, 'settings.steps')} refining steps, lr {fact(e, 'settings.lr')}"
                                       if steps else "")
                                    + f", {fact(e, 'device')}, {fact(e, 'seconds', '.1f')} s"))
        elif "settings" in e:
            rows.append(("encoded", f"preset {fact(e, 'preset')}, {fact(e, 'settings.steps')} steps, "
                                    f"lr {fact(e, 'settings.lr')}, "
                                    + (f"from the learned start {fact(e, 'start.model')}, " if "start" in e else
                                       f"seed {fact(e, 'settings.seed')}, ")
                                    + f"{fact(e, 'device')}, {fact(e, 'seconds', '.1f')} s"))
        return rows + integrity_rows(kf)

    def brief(self, kf: KanFile) -> dict:
        return {"label": f"{kf.config.arch}, {kf.bits} bits", "bits": kf.bits, "arch": kf.config.arch}


def _changed(kf: KanFile) -> int:
    """Windows the post-filter changes (some band gain other than unity)."""
    return int((kf.post != postfilter.UNITY).any((-1, -2)).sum())


def _short(e: dict, kbps: float) -> bool:
    """Whether a ``--kbps`` file fell short of its target because the depth reached its top."""
    target = e.get("kbps_target")
    return isinstance(target, (int, float)) and kbps < 0.9 * target


CODEC = InrCodec()
