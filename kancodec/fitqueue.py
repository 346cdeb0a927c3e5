"""Windows to fit, how each starts, and the queue that fits them in batches, across files.

An encode cuts its audio into :class:`Windows` (:func:`cut`) and is planned as a :class:`Job`
(by :meth:`kancodec.inrcodec.InrCodec.plan`). A :class:`FitQueue` takes jobs one after
another and fits their active windows in batches of the device's size, windows of different
files side by side when they are fitted the same way (:meth:`Job.key`): a folder of short
clips fills a GPU batch as one long file does. A job is done when its last window is fitted.

Batching does not change results: the loss is summed per window (each window's gradient is
the one it would have alone), every window starts from networks seeded by its own index
(:class:`RandomInit`), and each window trains for its own file's depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import inr
from .allocate import allocation
from .audio import SILENCE, n_windows, resample
from .fit import FitProgress, FitSettings, fit, time_grid
from .inrfile import coded_names
from .runtime import Event, Progress, batch_size, fit_memory, want_compile


def memory_scale(config: inr.INR) -> float:
    """Floats per sample of a fit's intermediates (the B-spline bases of KAN layers, every
    layer's outputs) relative to the default KAN, whose peak :data:`~kancodec.runtime.STEP_BYTES`
    holds: how batch sizes and memory estimates carry over to other networks."""
    def floats(c: inr.INR) -> int:
        return sum(math.prod(s[:-1]) if len(s) == 3 else 0 for s in c.shapes().values()) + \
            sum(s[-1] for s in c.shapes().values())
    return max(0.05, floats(config) / floats(inr.make_config("kan")))


@dataclass(frozen=True)
class Windows:
    """The audio as the fit sees it: ``C × W`` windows of ``chunk`` samples at ``fit_sr`` (a
    view of ``xf``, not a copy), their peaks ``gains`` ``(C × W,)`` (0 = silent) and the rows
    ``active`` to fit; rows are channel-major."""

    xf: np.ndarray  # (C, T') the audio at fit_sr
    win: np.ndarray  # (C, W, chunk) read-only view of the zero-padded audio
    gains: np.ndarray
    active: np.ndarray
    per_channel: int

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Windows ``idx`` (rows of the ``C × W`` axis) -> ``(len(idx), chunk)`` float32 copies."""
        return self.win[idx // self.per_channel, idx % self.per_channel]


def cut(x: np.ndarray, sr: int, fit_sr: int, chunk: int, overlap: int) -> Windows:
    """Resample to the fitting rate and find each window's peak, one block of windows at a
    time: memory is the audio and its padded copy, whatever the window count."""
    xf = resample(x, sr, fit_sr)
    c, t = xf.shape
    n, hop = n_windows(t, chunk, overlap), chunk - overlap
    padded = np.zeros((c, (n - 1) * hop + chunk), dtype=np.float32)
    padded[:, :t] = xf
    win = np.lib.stride_tricks.sliding_window_view(padded, chunk, axis=1)[:, ::hop]  # (C, W, chunk)
    gains = np.concatenate([np.abs(win[ch, j:j + 256]).max(-1) for ch in range(c) for j in range(0, n, 256)])
    gains = np.where(gains >= SILENCE, gains, 0.0).astype(np.float32)
    return Windows(xf, win, gains, np.nonzero(gains)[0], n)


class RandomInit:
    """Window ``i`` (of its file) starts from random networks seeded with ``seed + i``."""

    meta_key = None

    def __init__(self, config: inr.INR, seed: int):
        self.config, self.seed = config, seed
        self.key = ("random",)

    def __call__(self, target: torch.Tensor, rows: np.ndarray) -> dict[str, torch.Tensor]:
        parts = [inr.init_params(self.config, 1, seed=self.seed + int(i)) for i in rows]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def describe(self) -> dict | None:
        return None


class ThetaInit:
    """Every window starts from a learned start θ (:mod:`kancodec.theta`)."""

    meta_key = "start"

    def __init__(self, name: str | Path, device: torch.device):
        from . import theta

        self.theta, self.ref = theta.load(name, device)
        self.key = ("theta", str(self.ref.path), self.ref.sha256)

    def __call__(self, target: torch.Tensor, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return self.theta.params(len(rows))

    def describe(self) -> dict:
        c = self.theta.config
        return {"model": self.ref.path.name, "sha256": self.ref.sha256, "inner_steps": c.inner_steps,
                "train_steps": self.ref.train.get("steps_done")}

    def fits(self, config: inr.INR, fit_sr: int, chunk: int) -> bool:
        """Whether θ was learned for this network, rate and window (the encoder passes the rate
        before the tiling lowers it, :func:`~kancodec.audio.tile_rate`: the network sees the same
        grid of ``chunk`` times, the audio runs at most 20 % slower)."""
        c = self.theta.config
        return c.inr == config and c.sample_rate == fit_sr and c.window == chunk


#: what ``start="auto"`` looks for by name (yours from train-theta; none is bundled)
AUTO_START = "theta-kan"
_loaded: dict[tuple, ThetaInit] = {}


def start_for(start: str | Path | None, config: inr.INR, fit_sr: int, chunk: int, seed: int,
              device: torch.device, option: str = "start"):
    """The initialiser ``start`` asks for: ``"random"`` or None (the default); ``"auto"`` (θ
    named :data:`AUTO_START` when one is found that was learned for this network, rate and
    window, else random); or a θ model's name or path (its network must be ``config``).

    Random is the default because the one θ trained here measured worse than random starts
    once quantised (see ``models/README.md``, theta-kan)."""
    import warnings

    from .errors import FormatError, InputError, OptionError
    from .modelfile import find_model

    if start in (None, "random"):
        return RandomInit(config, seed)
    auto = start == "auto"
    try:
        path = find_model(AUTO_START if auto else start)
    except InputError:
        if auto:
            return RandomInit(config, seed)
        raise
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, str(device))
    if key not in _loaded:
        try:
            made = ThetaInit(path, device)
        except FormatError as e:
            if not auto:
                raise
            warnings.warn(f"{e}; starting from random weights")
            return RandomInit(config, seed)
        _loaded.clear()
        _loaded[key] = made
    init = _loaded[key]
    if init.fits(config, fit_sr, chunk):
        return init
    if auto:
        return RandomInit(config, seed)
    if init.theta.config.inr != config:
        raise OptionError(f"{{{option}}} {path.name}: it is a start for {init.theta.config.inr.describe()}, not "
                          f"{config.describe()}; give a start learned for that network", option)
    return init  # another rate or window than it was learned for: allowed when asked for by name


class HyperInit:
    """Each window starts from a FewSound hypernetwork's one-shot prediction."""

    meta_key = "hyper"

    def __init__(self, name: str | Path, device: torch.device):
        from . import hyper

        self.model, self.ref = hyper.load(name, device)
        self.key = ("hyper", str(self.ref.path), self.ref.sha256)

    def __call__(self, target: torch.Tensor, rows: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return self.model(target)

    def describe(self) -> dict:
        c = self.model.config
        return {"model": self.ref.path.name, "sha256": self.ref.sha256, "mode": c.mode, "encoder": c.encoder,
                "train_steps": self.ref.train.get("steps_done")}


@dataclass(eq=False)
class Job:
    """One file's encode, planned (:meth:`~kancodec.inrcodec.InrCodec.plan`), and its fit as it fills in."""

    x: np.ndarray
    sr: int
    w: Windows
    config: inr.INR
    settings: FitSettings
    init: Any  # RandomInit, ThetaInit or HyperInit
    fit_sr: int
    chunk: int
    overlap: int
    bits: float
    budget: Any  # rate.Budget or None
    kbps: float | None
    preset_name: str
    device: torch.device
    name: str = ""
    postfilter: bool = True  # measure and store the post-filter (:mod:`kancodec.postfilter`)
    tiled: bool = False  # fit_sr was lowered so one window fewer holds the file (:func:`kancodec.audio.tile_rate`)
    fitted: dict = field(default_factory=dict)  # {name: (C × W, …)} on the CPU; silence stays 0
    depths: np.ndarray | None = None  # (C × W,)
    scales: np.ndarray | None = None  # (C × W, T): each network's allocation between tensors (:mod:`kancodec.allocate`)
    left: int = 0  # active windows not fitted yet

    @property
    def loss_sr(self) -> int:
        """The rate the loss's mel filters assume: the input's when :func:`~kancodec.audio.tile_rate`
        lowered the fitting rate (bands at most 20 % off in Hz, harmless to a fit), so that
        files at one input rate share batches whatever rate each was tiled to."""
        return self.sr if self.tiled else self.fit_sr

    def key(self) -> tuple:
        """Jobs with equal keys may share batches."""
        return (self.config, self.settings, self.loss_sr, self.chunk, self.bits == 32, self.init.key)

    def start(self) -> None:
        n = self.w.gains.shape[0]
        self.fitted = {k: torch.zeros((n, *shape)) for k, shape in self.config.shapes().items()}
        self.depths = np.full(n, 8.0 if self.budget is not None else float(self.bits))
        self.scales = np.ones((n, len(coded_names(self.config))))
        self.left = len(self.w.active)


def _depth(parts: list[tuple[Job, np.ndarray]]):
    """What :func:`~kancodec.fit.fit` trains a batch for: one depth, one per window, or (rate
    control) a function choosing each file's share from the batch's compact parameters."""
    if all(job.budget is None for job, _ in parts):
        depths = np.concatenate([np.full(len(r), float(job.bits)) for job, r in parts])
        return float(depths[0]) if (depths == depths[0]).all() else depths
    from .entropy import MAX_BITS

    def choose(compact: dict[str, torch.Tensor], scales: torch.Tensor):
        out, at = [], 0
        for job, r in parts:
            sub = {k: v[at:at + len(r)] for k, v in compact.items()}
            out.append(np.full(len(r), job.budget.chooser(job.config, len(r))(sub, scales[at:at + len(r)])
                               if job.budget is not None else min(float(job.bits), MAX_BITS)))
            at += len(r)
        return np.concatenate(out)
    return choose


class FitQueue:
    """Fits the active windows of the jobs given to :meth:`add` in batches (see the module
    docstring); :meth:`add` and :meth:`flush` return the jobs that are done.

    ``work``: the window-steps of the whole run when known ahead (a folder), for the compile
    choice; ``total``: the steps summed over batches for ``"fit"`` progress events."""

    def __init__(self, device: torch.device, compile: bool | str = "auto", batch: int | None = None,
                 progress: Progress | None = None, work: float | None = None, total: int = 0):
        self.device, self.compile, self.batch, self.progress = device, compile, batch, progress
        self.work, self.total, self.done = work, total, 0
        self.pending: dict[tuple, list[tuple[Job, int]]] = {}
        self.compiled: dict[tuple, bool] = {}
        self.batches = 0

    def plan(self, job: Job) -> tuple[bool, int]:
        """``(compile?, windows per batch)`` for the job's kind of fit."""
        key = job.key()
        if key not in self.compiled:
            work = self.work if self.work is not None else job.settings.steps * len(job.w.active)
            self.compiled[key] = want_compile(self.compile, work)
        use = self.compiled[key]
        return use, self.batch or batch_size(self.device, job.chunk, use, memory_scale(job.config))

    def describe(self, job: Job) -> dict:
        """The ``"plan"`` event of a one-job run (what encode prints before it starts)."""
        use, bsz = self.plan(job)
        active = len(job.w.active)
        made = job.init.describe()
        return {"windows": int(job.w.gains.shape[0]), "active": int(active), "batches": math.ceil(active / bsz),
                "batch": bsz, "steps": job.settings.steps, "device": str(self.device), "compile": use,
                "fit_sr": job.fit_sr, "sr": job.sr, "tiled": job.tiled, "hyper": made["model"] if job.init.meta_key == "hyper" else None,
                "start": made["model"] if job.init.meta_key == "start" else None,
                "memory_gb": round((fit_memory(self.device, job.chunk, min(bsz, max(1, active)), use,
                                               memory_scale(job.config)) + 3 * job.w.xf.nbytes) / 1e9, 2)}

    def add(self, job: Job) -> list[Job]:
        job.start()
        if not job.left:
            return [job]
        key = job.key()
        queue = self.pending.setdefault(key, [])
        queue.extend((job, int(i)) for i in job.w.active)
        _, bsz = self.plan(job)
        done = []
        while len(queue) >= bsz:
            done += self._fit(key, queue[:bsz])
            del queue[:bsz]
        return done

    def flush(self) -> list[Job]:
        done = []
        for key, queue in self.pending.items():
            if queue:
                done += self._fit(key, queue)
                queue.clear()
        return done

    def _fit(self, key: tuple, items: list[tuple[Job, int]]) -> list[Job]:
        parts: list[tuple[Job, np.ndarray]] = []
        for job, i in items:
            if parts and parts[-1][0] is job:
                parts[-1] = (job, np.append(parts[-1][1], i))
            else:
                parts.append((job, np.array([i])))
        job0 = parts[0][0]
        use_compile, _ = self.plan(job0)
        target = torch.from_numpy(np.concatenate([j.w.rows(r) / j.w.gains[r, None] for j, r in parts])).to(self.device)
        starts, at = [], 0
        for j, r in parts:
            starts.append(j.init(target[at:at + len(r)], r))
            at += len(r)
        start = {k: torch.cat([s[k].to(self.device) for s in starts]) for k in starts[0]}
        steps = job0.settings.steps
        depth = _depth(parts)
        first, base, mark = self.batches == 0, self.done, {}
        def reporter(p: FitProgress) -> None:
            self.progress(Event("fit", base + p.step, self.total, {"loss": p.loss, "snr": p.snr_db}))
            # the first steps compile (or warm up): the estimate times steps 10-30 only
            if first and p.step == 10:
                mark["at"] = p.elapsed
            if first and p.step == min(30, steps) and self.total > p.step:
                t0, s0 = (mark["at"], 10) if p.step > 10 else (0.0, 0)  # step 10 is always reported
                per_step = (p.elapsed - t0) / (p.step - s0)
                self.progress(Event("estimate", info={"seconds": per_step * (self.total - p.step)}))
        if steps:
            result = fit(job0.config, target, job0.settings, job0.loss_sr, init=start, compile=use_compile,
                         progress=reporter if self.progress else None, bits=depth)
            params, chosen, scales = result.params, result.bits, result.scales
        else:
            params, chosen, scales = start, None, None
        compact = {k: v.detach() for k, v in inr.compact(job0.config, params).items()}
        if scales is None and not job0.bits == 32:  # no quantisation-aware steps: allocate for the start
            feats = inr.input_features(job0.config, time_grid(target.shape[1], self.device))
            scales = allocation(job0.config, compact, feats)
        if chosen is None and callable(depth):
            chosen = depth(compact, scales)
        self.batches += 1
        self.done += steps
        finished, at = [], 0
        for j, r in parts:
            if chosen is not None:
                j.depths[r] = np.broadcast_to(np.asarray(chosen, np.float64), (len(items),))[at:at + len(r)]
            if scales is not None:
                j.scales[r] = scales[at:at + len(r)].cpu().numpy()
            for k, v in params.items():
                j.fitted[k][torch.from_numpy(r)] = v[at:at + len(r)].detach().cpu()
            j.left -= len(r)
            at += len(r)
            if not j.left:
                finished.append(j)
        return finished
