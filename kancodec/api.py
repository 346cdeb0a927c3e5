"""The library API: ``encode``, ``decode``, ``evaluate``, ``load``, ``save``.

The CLI is a thin layer over these functions; Python users call them directly::

    import kancodec
    kan = kancodec.encode("speech.wav", preset="fast")
    kancodec.save(kan, "speech.kan")
    audio, sr = kancodec.decode("speech.kan", sr=44100)   # (channels, frames) float32
    scores = kancodec.evaluate("speech.wav", "speech.kan")  # metrics, per channel and mean
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__, inr
from ._alloc import tune_allocator
from .audio import crossfade_weights, read_audio, resample, split_windows
from .errors import DeviceError, InputError, KanError
from .fit import FitProgress, FitSettings, fit, preset, preset_name as resolve_preset, time_grid
from .kanfile import AEFile, AudioInfo, KanFile, load
from .loss import si_snr, snr
from .quant import check_bits, quantise

DEVICES = ("auto", "cpu", "cuda")
#: peak learning rate of ``--refine`` (fitting from a hypernetwork's prediction): on 4 held-out
#: windows, 300 steps from the bundled model reached SI-SNR 28.59 dB at 5e-2, 25.05 dB at 1e-2
REFINE_LR = 5e-2
DEFAULT_CHUNK = 32768
SILENCE = 1e-6  # windows whose peak is below this are stored as silence (gain 0), not fitted


@dataclass
class Event:
    """Progress report passed to ``progress`` callbacks.

    ``stage`` is ``"plan"`` (once, ``info`` has the plan), ``"fit"`` (``done``/``total``
    steps summed over batches, ``info`` has loss and SNR), ``"estimate"`` (``info["seconds"]``:
    measured time left) or ``"decode"`` (windows done).
    """

    stage: str
    done: int = 0
    total: int = 0
    info: dict = field(default_factory=dict)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; refuses CUDA where there is none."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise KanError(f"--device {device!r} is not a device; choose one of: {', '.join(DEVICES)}")


def _batch_size(device: torch.device, n: int) -> int:
    """Windows per optimisation: bounded so memory stays flat however long the file is."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_window = 0.7e9 * n / 32768  # measured peak of a fit step, with margin
        return max(1, min(256, int(0.6 * free / per_window)))
    return 8  # CPU: 8 windows amortise the per-step overhead; more gains nothing


def _want_compile(compile: bool | str, work: float, pays_from: float = 200) -> bool:
    """``"auto"``: compile when the work pays back the ~10-25 s compile.

    Fitting: ``work`` in window-steps, where compiling saves ~0.6 s each on CPU, so from
    ~200. Decoding: ``work`` in windows, where it saves ~0.25 s each, so from ~64.
    """
    if compile == "auto":
        return work >= pays_from
    return bool(compile)


def encode(source: str | Path | np.ndarray, sr: int | None = None, *, preset_name: str = "auto",
           steps: int | None = None, lr: float | None = None, bits: int = 8,
           config: inr.INR | None = None, fit_sr: int | None = None, chunk: int | None = None,
           overlap: int = 1024, seed: int = 0, device: str | torch.device | None = None,
           compile: bool | str = "auto", batch: int | None = None,
           hyper: str | Path | None = None, refine: int | None = None,
           progress: Callable[[Event], None] | None = None) -> KanFile:
    """Fit KAN INRs to an audio file or array and return the quantised result.

    Args:
        source: a path soundfile reads, or a ``(channels, frames)`` / ``(frames,)`` float array.
        sr: the array's sample rate (required for arrays, ignored for paths).
        preset_name: ``auto`` (``standard`` on CUDA, ``fast`` on CPU), ``fast``, ``standard``, ``paper``.
        steps, lr: override the preset's.
        bits: quantisation bits per parameter (see ``quant.BITS_CHOICES``).
        fit_sr: sample rate to fit at (default: the input's); lower trades bandwidth for bits.
        chunk, overlap: window length (default 32,768) and cross-fade, in samples at ``fit_sr``.
        hyper: a FewSound model (name or path, see ``modelfile.find_model``): each window's
            networks are predicted in one forward pass (the rate, window and architecture
            are the model's), then fitted for ``refine`` steps from there (default 0).
    """
    tune_allocator()
    check_bits(bits)
    dev = resolve_device(device)
    model, hyper_info = None, None
    if hyper is not None:
        model, hyper_info = _load_hyper(hyper, dev, config, fit_sr, chunk)
        config, fit_sr, chunk = model.config.inr, model.config.sample_rate, model.config.window
        steps = refine or 0
        lr = lr or REFINE_LR
    elif refine is not None:
        raise KanError("--refine needs --hyper: it continues fitting from the hypernetwork's prediction")
    config = config or inr.KANConfig()
    chunk = chunk or DEFAULT_CHUNK
    if isinstance(source, (str, Path)):
        x, sr = read_audio(source)
    else:
        if sr is None:
            raise InputError("encode: an array needs its sample rate; pass sr=")
        x = np.atleast_2d(np.asarray(source, dtype=np.float32))
        if x.size == 0:
            raise InputError("encode: the array holds no samples; nothing to encode")
        if not np.isfinite(x).all():
            raise InputError("encode: the array contains NaN or infinite samples; clean it first")
    if chunk < 256 or not 0 <= overlap < chunk // 2:
        raise KanError(f"--chunk {chunk} / --overlap {overlap}: need chunk >= 256 and 0 <= overlap < chunk/2")
    fit_sr = int(fit_sr or sr)
    if not 1000 <= fit_sr <= 192000:
        raise KanError(f"--fit-sr {fit_sr}: must be between 1000 and 192000 Hz")
    settings = preset(preset_name, dev, config)
    settings = replace(settings, seed=seed, **({"steps": steps} if steps is not None else {}),
                       **({"lr": lr} if lr is not None else {}))
    if settings.steps < 0:
        raise KanError(f"--steps {settings.steps}: must be 0 or more")
    channels, frames = x.shape
    xf = resample(x, sr, fit_sr)
    win = split_windows(xf, chunk, overlap)  # (C, W, chunk)
    n_win = win.shape[1]
    flat = win.reshape(-1, chunk)
    gains = np.abs(flat).max(-1)
    gains = np.where(gains >= SILENCE, gains, 0.0).astype(np.float32)
    active = np.nonzero(gains)[0]
    target_all = torch.from_numpy(flat[active] / gains[active, None])
    bsz = batch or _batch_size(dev, chunk)
    n_batches = math.ceil(len(active) / bsz) if len(active) else 0
    use_compile = _want_compile(compile, settings.steps * len(active))
    total = settings.steps * n_batches
    if progress:
        progress(Event("plan", 0, total, {"windows": int(flat.shape[0]), "active": int(len(active)),
                                          "batches": n_batches, "batch": bsz, "steps": settings.steps,
                                          "device": str(dev), "compile": use_compile, "fit_sr": fit_sr,
                                          "hyper": hyper_info["model"] if hyper_info else None}))
    fitted = {k: torch.zeros_like(v) for k, v in inr.init_params(config, flat.shape[0], seed).items()}
    start = time.perf_counter()
    for b in range(n_batches):
        idx = active[b * bsz:(b + 1) * bsz]
        target = target_all[b * bsz:(b + 1) * bsz].to(dev)
        if model is not None:
            with torch.no_grad():
                init = model(target)
        else:
            init = inr.init_params(config, len(idx), seed=seed + b)
        reporter = None
        if progress:
            def reporter(p: FitProgress, b=b) -> None:
                progress(Event("fit", b * settings.steps + p.step, total, {"loss": p.loss, "snr": p.snr_db}))
                if b == 0 and p.step == min(20, settings.steps) and total > p.step:
                    rate = p.elapsed / p.step
                    progress(Event("estimate", info={"seconds": rate * (total - p.step)}))
        params = fit(config, target, settings, fit_sr, init=init, compile=use_compile,
                     progress=reporter).params if settings.steps else init
        for k, v in params.items():
            fitted[k][torch.from_numpy(idx)] = v.cpu()
    seconds = time.perf_counter() - start
    tensors = quantise(inr.compact(config, fitted), bits, config.keep_float)
    tensors["gain"] = gains
    audio = AudioInfo(sample_rate=int(sr), fit_sr=fit_sr, channels=channels, frames=frames,
                      fit_frames=xf.shape[1], chunk=chunk, overlap=overlap, windows=n_win)
    kf = KanFile(config, audio, bits, tensors, {
        "kancodec": __version__, "preset": resolve_preset(preset_name, dev), "settings": asdict(settings), "device": str(dev),
        "compile": use_compile, "seconds": round(seconds, 3), **({"hyper": hyper_info} if hyper_info else {}),
    })
    # Quality actually reached, measured on the quantised file at the fitted rate.
    y, _ = decode(kf, sr=fit_sr, device=dev)
    ref, out = torch.from_numpy(xf), torch.from_numpy(y)
    kf.encode["snr_db"] = round(float(snr(out, ref).mean()), 3)
    kf.encode["si_snr_db"] = round(float(si_snr(out, ref).mean()), 3)
    return kf


def _load_hyper(name: str | Path, dev: torch.device, config: inr.INR | None, fit_sr: int | None,
                chunk: int | None) -> tuple:
    """Load a FewSound model and check the encode options agree with it."""
    from . import hyper as hypermod
    from .modelfile import file_sha256, find_model

    path = find_model(name)
    model, train = hypermod.load(path, dev)
    c = model.config
    if config is not None and config != c.inr:
        raise KanError(f"--hyper: the model predicts {c.inr.describe()}; drop the architecture options")
    if fit_sr not in (None, c.sample_rate) or chunk not in (None, c.window):
        raise KanError(f"--hyper: the model works on {c.window}-sample windows at {c.sample_rate} Hz; "
                       "drop --fit-sr/--chunk")
    return model, {"model": path.name, "sha256": file_sha256(path), "mode": c.mode, "encoder": c.encoder,
                   "train_steps": train.get("steps_done")}


def _eval_windows(kf: KanFile, params: dict[str, torch.Tensor], out_sr: int, n_out: int,
                  dev: torch.device, compile: bool | str,
                  progress: Callable[[Event], None] | None) -> np.ndarray:
    """Evaluate every window on the output grid (``out_sr`` >= fitted rate) and cross-fade."""
    a, config = kf.audio, kf.config
    hop = a.chunk - a.overlap
    ratio = out_sr / a.fit_sr
    starts = np.arange(a.windows) * hop / a.fit_sr  # seconds
    first_m = np.ceil(starts * out_sr - 1e-9).astype(np.int64)
    span = int(math.ceil(a.chunk * ratio)) + 1
    out = np.zeros((a.channels, n_out), dtype=np.float64)
    wsum = np.zeros(n_out, dtype=np.float64)
    shared = float(hop * ratio).is_integer()
    use_compile = _want_compile(compile, a.windows * a.channels * span / 32768, pays_from=64)
    fn, features = inr.forward_fn(use_compile), inr.features_fn(use_compile)
    gains = kf.gains.reshape(a.channels, a.windows)
    per_batch = max(1, int(4 * 32768 / span / a.channels)) if dev.type == "cpu" else 64
    shared_feats = None
    for w0 in range(0, a.windows, per_batch):
        ws = np.arange(w0, min(a.windows, w0 + per_batch))
        m = first_m[ws, None] + np.arange(span)[None, :]  # (w, span) output sample indices
        tau = (m / out_sr - starts[ws, None]) * a.fit_sr  # position in fitted samples
        t = torch.from_numpy(-1.0 + 2.0 * tau / (a.chunk - 1)).float().to(dev)
        rows = torch.from_numpy((np.arange(a.channels)[:, None] * a.windows + ws[None, :]).reshape(-1))
        p = {k: v[rows].to(dev) for k, v in params.items()}
        with torch.inference_mode():
            if shared:  # every window sees the same local grid: features computed once
                if shared_feats is None:
                    shared_feats = features(config, t[0])
                feats = shared_feats
            else:  # (rows, span, F): row i is window ws[i % len(ws)] of channel i // len(ws)
                feats = features(config, t)[torch.arange(len(rows)) % len(ws)]
            y = inr.forward_chunked(config, p, feats, fn)
        y = y.reshape(a.channels, len(ws), span).cpu().double().numpy()
        for j, w in enumerate(ws):
            valid = (m[j] < n_out) & (tau[j] < a.chunk)
            wt = crossfade_weights(tau[j], a.chunk, a.overlap, w == 0, w == a.windows - 1) * valid
            sel = m[j][valid]
            out[:, sel] += y[:, j, valid] * gains[:, w, None] * wt[valid]
            wsum[sel] += wt[valid]
        if progress:
            progress(Event("decode", int(ws[-1]) + 1, a.windows))
    return (out / np.maximum(wsum, 1e-12)).astype(np.float32)


def decode(kan: KanFile | AEFile | str | Path, sr: int | None = None, *, device: str | torch.device | None = None,
           compile: bool | str = "auto", progress: Callable[[Event], None] | None = None,
           model: str | Path | None = None) -> tuple[np.ndarray, int]:
    """Decode a ``.kan`` file (path or loaded) at any sample rate.

    Files of autoencoder codes are decoded by :func:`kancodec.aecodec.decode` with the model
    they name (or ``model``, a name or path, which must be that same model file).

    At or above the fitted rate the networks are evaluated on the finer time grid; below
    it they are evaluated at the fitted rate and resampled with a proper low-pass, so
    nothing aliases. Output length is ``round(duration × sr)``.

    Returns:
        ``((channels, frames) float32, sr)``.
    """
    tune_allocator()
    kf = load(kan) if isinstance(kan, (str, Path)) else kan
    a = kf.audio
    sr = int(sr or a.sample_rate)
    if not 1000 <= sr <= 384000:
        raise KanError(f"--sr {sr}: must be between 1000 and 384000 Hz")
    if isinstance(kf, AEFile):
        from . import aecodec

        return aecodec.decode(kf, sr, device=device, model=model)
    dev = resolve_device(device)
    n_out = round(a.frames * sr / a.sample_rate)
    params = kf.params()
    if sr >= a.fit_sr:
        return _eval_windows(kf, params, sr, n_out, dev, compile, progress), sr
    n_fit = round(a.frames * a.fit_sr / a.sample_rate)
    y = _eval_windows(kf, params, a.fit_sr, n_fit, dev, compile, progress)
    y = resample(y, a.fit_sr, sr)
    if y.shape[1] != n_out:  # resample rounds from n_fit, which is itself rounded
        y = np.pad(y, ((0, 0), (0, max(0, n_out - y.shape[1]))))[:, :n_out]
    return y, sr


def evaluate(ref: str | Path | np.ndarray, out: str | Path | np.ndarray | KanFile, sr: int | None = None,
             out_sr: int | None = None, *, metrics: tuple[str, ...] | None = None,
             device: str | torch.device | None = None, keep_signals: bool = False) -> dict:
    """Score ``out`` against the reference ``ref`` with :mod:`kancodec.metrics`.

    Args:
        ref: an audio path, or a ``(C, n)``/``(n,)`` array at ``sr``.
        out: an audio path, a ``.kan`` path or :class:`KanFile` (decoded at the reference's
            rate), or an array at ``out_sr`` (default ``sr``).
        metrics: names from ``metrics.CORE + metrics.OPTIONAL`` (default: the core set).
        keep_signals: also return the compared arrays (see :func:`metrics.evaluate`).
    Returns:
        :func:`metrics.evaluate`'s dict plus ``"ref"``/``"out"`` names and, for a ``.kan``
        input, ``"kan": {"bytes", "kbps", "pcm16_kbps", "ratio_to_pcm16", "bits", "arch"}``.
    """
    from . import metrics as m
    from .kanfile import file_size

    chosen = tuple(metrics or m.CORE)
    unknown = [name for name in chosen if name not in m.CORE + m.OPTIONAL]
    if unknown:
        raise KanError(f"unknown metric(s) {', '.join(unknown)}; choose from: {', '.join(m.CORE + m.OPTIONAL)}")

    def as_array(x, rate, what):
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if rate is None:
            raise InputError(f"evaluate: the {what} array needs its sample rate")
        if x.size == 0 or not np.isfinite(x).all():
            raise InputError(f"evaluate: the {what} array is empty or holds NaN/infinite samples")
        return x, int(rate)

    if isinstance(ref, (str, Path)):
        x, rate = read_audio(ref)
    else:
        x, rate = as_array(ref, sr, "reference")
    extra = {}
    if isinstance(out, (str, Path)) and Path(out).suffix.lower() == ".kan" or isinstance(out, (KanFile, AEFile)):
        kf = load(out) if isinstance(out, (str, Path)) else out
        size = file_size(out) if isinstance(out, (str, Path)) else len(kf.to_bytes())
        kbps = size * 8 / kf.audio.duration / 1000
        extra["kan"] = {"bytes": size, "kbps": kbps, "pcm16_kbps": kf.pcm_kbps(), "ratio_to_pcm16": kf.pcm_kbps() / kbps}
        if isinstance(kf, KanFile):
            extra["kan"].update(bits=kf.bits, arch=kf.config.arch)
        else:
            extra["kan"].update(ae=kf.config.kind, model=kf.model["name"], **kf.code)
        y, out_rate = decode(kf, sr=rate, device=device)
    elif isinstance(out, (str, Path)):
        y, out_rate = read_audio(out)
    else:
        y, out_rate = as_array(out, out_sr or rate, "output")
    result = m.evaluate(x, y, rate, out_rate, chosen, keep_signals)
    result["ref"] = str(ref) if isinstance(ref, (str, Path)) else "array"
    result["out"] = str(out) if isinstance(out, (str, Path)) else type(out).__name__
    result.update(extra)
    return result


def save(kan: KanFile, path: str | Path, force: bool = False) -> int:
    """Write a ``.kan`` file atomically; returns its size in bytes."""
    return kan.save(path, force)


__all__ = ["encode", "decode", "evaluate", "load", "save", "resolve_device", "Event", "FitSettings", "time_grid"]
