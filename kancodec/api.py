"""The library API: ``encode``, ``decode``, ``evaluate``, ``describe``, ``load``, ``save``, ``mix``.

A thin façade over the codecs (:mod:`kancodec.inrcodec`, :mod:`kancodec.aecodec`): it takes
paths or arrays, picks the device and the codec, and hands over. The CLI is a thin layer over
these functions; Python users call them directly::

    import kancodec
    kan = kancodec.encode("speech.wav", preset_name="fast")
    kancodec.save(kan, "speech.kan")
    audio, sr = kancodec.decode("speech.kan", sr=44100)   # (channels, frames) float32
    scores = kancodec.evaluate("speech.wav", "speech.kan")  # metrics, per channel and mean

Errors about a parameter are :class:`~kancodec.errors.OptionError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import aecodec, inr, inrcodec
from .audio import check_out_rate, intake, read_audio, write_blocks
from .codec import Encoded
from .errors import InputError, OptionError
from .fit import FitSettings, time_grid
from .kanfile import codec_for, file_size, load
from .runtime import Event, Progress, resolve_device

REFINE_LR = inrcodec.REFINE_LR


def encode(source: str | Path | np.ndarray, sr: int | None = None, *, preset_name: str | None = None,
           steps: int | None = None, lr: float | None = None, bits: float | None = None,
           kbps: float | None = None, config: inr.INR | None = None, fit_sr: int | None = None, chunk: int | None = None,
           overlap: int | None = None, seed: int | None = None, device: str | torch.device | None = None,
           compile: bool | str | None = None, batch: int | None = None,
           hyper: str | Path | None = None, refine: int | None = None, start: str | Path | None = None,
           postfilter: bool | None = None, ae: str | Path | None = None, codebooks: int | None = None,
           progress: Progress | None = None) -> Encoded:
    """Encode an audio file or array: fit KAN INRs (default), predict them with a FewSound
    hypernetwork (``hyper``), or code with a trained autoencoder (``ae``).

    Args:
        source: a path soundfile reads, or a ``(channels, frames)`` / ``(frames,)`` float array.
        sr: the array's sample rate (required for arrays, ignored for paths).
        preset_name: ``auto`` (default: ``standard`` on CUDA, ``fast`` on CPU), ``fast``,
            ``standard``, ``paper``.
        steps, lr: override the preset's.
        bits: quantisation depth of the stored weights (default 8; see ``quant``): with the
            entropy coder fractional depths are allowed and each bit less halves the step.
        kbps: target bitrate of the file: chooses the depth (and, unless ``config`` is given,
            the KAN's width) so that the file lands within 10 % of it (INR codec only).
        config: the INR (default: the paper's KAN, :class:`~kancodec.inr.KANConfig`).
        fit_sr: sample rate to fit at; lower trades bandwidth for bits. Default: the input's,
            or just below it when that saves a nearly empty last window
            (:func:`kancodec.audio.tile_rate`; not with ``hyper``).
        chunk, overlap: window length (default 32,768; 16,384 for ``kbps`` below 64 without
            ``config``) and cross-fade (default 1,024), in samples at ``fit_sr``.
        seed: random seed of the initial networks (default 0).
        compile: ``"auto"`` (default), True or False: ``torch.compile`` the networks.
        batch: windows per optimisation (default: by device memory).
        hyper: a FewSound model (name or path, see ``modelfile.find_model``): each window's
            networks are predicted in one forward pass (the rate, window and architecture
            are the model's), then fitted for ``refine`` steps from there (default 0).
        start: where fitting starts: ``"random"`` (default), ``"auto"`` (the learned start
            ``theta-kan`` from ``train-theta`` when it was learned for this network, rate and
            window; else random), or a θ model's name or path.
        postfilter: store the post-filter, 16 band gains every 93 ms that the decoder applies
            (default True; :mod:`kancodec.postfilter`). False leaves the networks' output as it is.
        ae: an autoencoder model (name or path): code the audio with it instead of fitting
            (only ``codebooks``, ``bits`` and ``device`` apply).
        codebooks: with ``ae`` and a vq model: codebooks to keep (default all).
        progress: called with :class:`~kancodec.runtime.Event` reports.
    Returns:
        a :class:`~kancodec.inrfile.KanFile` or :class:`~kancodec.aecodec.AEFile`.
    """
    start = None if start == "random" else start
    fitting = {"kbps": kbps, "preset_name": preset_name, "steps": steps, "lr": lr, "config": config, "fit_sr": fit_sr,
               "chunk": chunk, "overlap": overlap, "seed": seed, "compile": compile, "batch": batch,
               "hyper": hyper, "refine": refine, "start": start,
               "postfilter": postfilter}
    given = {k: v for k, v in fitting.items() if v is not None}
    if ae is None and codebooks is not None:
        raise OptionError("{codebooks} needs {ae} MODEL (e.g. {ae} krvq)", "codebooks", "ae")
    if ae is not None and given:
        raise OptionError("{ae} codes with a trained autoencoder; drop " + ", ".join("{%s}" % k for k in given)
                          + " (they are for fitting)", "ae", *given)
    dev = resolve_device(device)
    x, rate = intake(source, sr)
    if ae is not None:
        return aecodec.CODEC.encode(x, rate, model=ae, codebooks=codebooks, bits=8 if bits is None else bits, device=dev)
    return inrcodec.CODEC.encode(x, rate, bits=bits, device=dev, progress=progress, **given)


#: decodes of more audio than this need an explicit ``max_seconds`` (``--max-seconds``)
MAX_SECONDS = 6 * 3600


def _to_decode(kan: Encoded | str | Path, sr: int | None, max_seconds: float) -> tuple[Encoded, int]:
    kf = load(kan) if isinstance(kan, (str, Path)) else kan
    if sr is not None and not (isinstance(sr, int) or isinstance(sr, float) and sr.is_integer()):
        raise OptionError(f"{{sr}} {sr}: must be a whole number of Hz", "sr")
    rate = check_out_rate(kf.audio.sample_rate if sr is None else int(sr))
    if not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise OptionError(f"{{max_seconds}} {max_seconds}: must be a number of seconds above 0", "max_seconds")
    if kf.audio.duration > max_seconds:
        raise OptionError(f"the file holds {kf.audio.duration / 3600:.2f} h of audio, more than {{max_seconds}} "
                          f"{max_seconds:g} s; raise {{max_seconds}} to decode it", "max_seconds")
    return kf, rate


def decode(kan: Encoded | str | Path, sr: int | None = None, *, device: str | torch.device | None = None,
           compile: bool | str = "auto", progress: Progress | None = None,
           model: str | Path | None = None, max_seconds: float = MAX_SECONDS) -> tuple[np.ndarray, int]:
    """Decode a ``.kan`` file (path or loaded) at any sample rate (default: the original's).

    INR files: at or above the fitted rate the networks are evaluated on the finer time
    grid; below it they are evaluated at the fitted rate and low-passed, so nothing aliases.
    Autoencoder files need the model they name (or ``model``, a name or path, which must be
    that same model file). Output length is ``round(duration × sr)``. Files of more than
    ``max_seconds`` of audio are refused (OptionError) unless it is raised.

    Returns:
        ``((channels, frames) float32, sr)``.
    """
    kf, rate = _to_decode(kan, sr, max_seconds)
    dev = resolve_device(device)
    return codec_for(kf).decode(kf, rate, device=dev, compile=compile, progress=progress, model=model), rate


def decode_to(kan: Encoded | str | Path, path: str | Path, sr: int | None = None, *, force: bool = False,
              device: str | torch.device | None = None, compile: bool | str = "auto",
              progress: Progress | None = None, model: str | Path | None = None,
              max_seconds: float = MAX_SECONDS) -> tuple[int, int, int]:
    """:func:`decode` straight into a WAV or FLAC file, block by block (INR files decode in
    memory bounded by a few windows, however long), written atomically.

    Returns:
        ``(frames, channels, sr)`` written.
    """
    kf, rate = _to_decode(kan, sr, max_seconds)
    dev = resolve_device(device)
    blocks = codec_for(kf).stream(kf, rate, device=dev, compile=compile, progress=progress, model=model)
    return write_blocks(path, blocks, rate, kf.audio.channels, force=force), kf.audio.channels, rate


def describe(kan: Encoded | str | Path, size: int | None = None) -> dict:
    """Everything about a ``.kan`` file as JSON-able values (what ``kancodec info --json`` prints).

    ``size``: the file's bytes (default: the file's size on disk, or the serialised size)."""
    kf = load(kan) if isinstance(kan, (str, Path)) else kan
    if size is None:
        size = file_size(kan) if isinstance(kan, (str, Path)) else kf.size_bytes()
    return codec_for(kf).describe(kf, size)


def evaluate(ref: str | Path | np.ndarray, out: str | Path | np.ndarray | Encoded, sr: int | None = None,
             out_sr: int | None = None, *, metrics: tuple[str, ...] | None = None,
             device: str | torch.device | None = None, keep_signals: bool = False) -> dict:
    """Score ``out`` against the reference ``ref`` with :mod:`kancodec.metrics`.

    Args:
        ref: an audio path, or a ``(C, n)``/``(n,)`` array at ``sr``.
        out: an audio path, a ``.kan`` path or encoded clip (decoded at the reference's
            rate), or an array at ``out_sr`` (default ``sr``).
        metrics: names from ``metrics.CORE + metrics.OPTIONAL`` (default: the core set).
        keep_signals: also return the compared arrays (see :func:`metrics.evaluate`).
    Returns:
        :func:`metrics.evaluate`'s dict plus ``"ref"``/``"out"`` names and, for a ``.kan``
        input, ``"kan": {"bytes", "kbps", "pcm16_kbps", "ratio_to_pcm16", "label", …}`` (the
        codec's facts: ``bits``/``arch`` for INRs, ``ae``/``model``/code for autoencoders).
    """
    from . import metrics as m

    chosen = tuple(metrics or m.CORE)
    unknown = [name for name in chosen if name not in m.CORE + m.OPTIONAL]
    if unknown:
        raise OptionError(f"unknown metric(s) {', '.join(unknown)}; choose from: {', '.join(m.CORE + m.OPTIONAL)}")
    x, rate = intake(ref, sr, "evaluate")
    extra = {}
    if isinstance(out, Encoded) or isinstance(out, (str, Path)) and Path(out).suffix.lower() == ".kan":
        kf = load(out) if isinstance(out, (str, Path)) else out
        size = file_size(out) if isinstance(out, (str, Path)) else len(kf.to_bytes())
        kbps = size * 8 / kf.audio.duration / 1000
        extra["kan"] = {"bytes": size, "kbps": kbps, "pcm16_kbps": kf.pcm_kbps(), "ratio_to_pcm16": kf.pcm_kbps() / kbps,
                        **codec_for(kf).brief(kf)}
        y, out_rate = decode(kf, sr=rate, device=device)
    elif isinstance(out, (str, Path)):
        y, out_rate = read_audio(out)
    else:
        if out_sr is None and sr is None:
            raise InputError("evaluate: the output array needs its sample rate")
        y, out_rate = intake(out, out_sr or rate, "evaluate")
    result = m.evaluate(x, y, rate, out_rate, chosen, keep_signals)
    result["ref"] = str(ref) if isinstance(ref, (str, Path)) else "array"
    result["out"] = str(out) if isinstance(out, (str, Path)) else type(out).__name__
    result.update(extra)
    return result


def mix(a: str | Path | np.ndarray, b: str | Path | np.ndarray, ratio: float = 0.5, sr: int | None = None, *,
        model: str | Path = aecodec.DEFAULT_MODEL, device: str | torch.device | None = None) -> tuple[np.ndarray, int]:
    """Blend two sounds in an autoencoder's latent space (see :func:`kancodec.aecodec.mix`).

    Both inputs need the same sample rate and channel count. Returns ``((C, frames) float32, sr)``."""
    x, sr_a = intake(a, sr, "mix")
    y, sr_b = intake(b, sr, "mix")
    if sr_a != sr_b:
        raise InputError(f"mix: the inputs have different sample rates ({sr_a} and {sr_b} Hz); resample one to the other first")
    return aecodec.mix(x, y, sr_a, ratio, model=model, device=resolve_device(device)), sr_a


def save(kan: Encoded, path: str | Path, force: bool = False) -> int:
    """Write a ``.kan`` file atomically; returns its size in bytes."""
    return kan.save(path, force)


__all__ = ["encode", "decode", "describe", "evaluate", "mix", "load", "save", "resolve_device", "Event",
           "FitSettings", "time_grid"]
