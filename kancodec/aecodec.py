"""Coding audio with a trained autoencoder: ``encode --ae``, decoding its ``.kan`` files, ``mix``.

Each channel is resampled to the model's rate, divided by its peak (stored as ``gain``) and
encoded frame by frame. The vq kinds store codebook indices (``codebooks`` of them per frame:
the bitrate), kae/kvae store their latents quantised like INR weights. A file names its
model and the SHA-256 of the model file; decoding finds the model the usual way
(:func:`~kancodec.modelfile.find_model`) and refuses a file with another digest.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from . import ae as aemod
from .audio import read_audio, resample
from .errors import FormatError, InputError, KanError
from .kanfile import AEAudio, AEFile
from .loss import si_snr, snr
from .modelfile import file_sha256, find_model
from .quant import check_bits, dequantise, pack_bits, quantise, unpack_bits

DEFAULT_MODEL = "krvq"
SILENCE = 1e-6


def _read(source: str | Path | np.ndarray, sr: int | None, what: str = "encode") -> tuple[np.ndarray, int]:
    if isinstance(source, (str, Path)):
        return read_audio(source)
    if sr is None:
        raise InputError(f"{what}: an array needs its sample rate; pass sr=")
    x = np.atleast_2d(np.asarray(source, dtype=np.float32))
    if x.size == 0 or not np.isfinite(x).all():
        raise InputError(f"{what}: the array is empty or holds NaN/infinite samples")
    return x, int(sr)


def _latents(model: aemod.AutoEncoder, x: np.ndarray, sr: int, dev: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(C, n)`` audio at ``sr`` -> ``(latents (C, T, latent), gains (C,), audio at the model's rate)``."""
    xm = resample(x, sr, model.config.sample_rate)
    gains = np.abs(xm).max(-1)
    gains = np.where(gains >= SILENCE, gains, 0.0).astype(np.float32)
    xn = xm / np.maximum(gains, SILENCE)[:, None]
    with torch.inference_mode():
        z = model.encode(torch.from_numpy(np.ascontiguousarray(xn, dtype=np.float32)).to(dev))
    return z, gains, xm


def encode(source: str | Path | np.ndarray, sr: int | None = None, *, model: str | Path = DEFAULT_MODEL,
           codebooks: int | None = None, bits: int = 8, device: str | torch.device | None = None) -> AEFile:
    """Code audio with an autoencoder.

    Args:
        model: a model name or path (see ``modelfile.find_model``); ``krvq``: the one
            ``train-ae`` saves by default (bundled in models/).
        codebooks: vq kinds: how many codebooks to keep (1 … the model's; default all).
            Each one adds ``config.kbps(1)`` kbps.
        bits: kae/kvae: bits per stored latent value.
    """
    from .api import resolve_device

    dev = resolve_device(device)
    x, sr = _read(source, sr)
    m, train, path = aemod.load(model, dev)
    c = m.config
    if codebooks is not None and not c.quantized:
        raise KanError(f"--codebooks: the model {path.name} is a {c.kind} (no codebooks); use a kvq/krvq model or drop it")
    n_books = codebooks or c.codebooks
    if c.quantized and not 1 <= n_books <= c.codebooks:
        raise KanError(f"--codebooks {n_books}: the model {path.name} has 1 to {c.codebooks}")
    check_bits(bits)
    if c.quantized and bits != 8:
        raise KanError(f"--bits {bits}: the model {path.name} stores codebook indices ({c.code_bits} bits each); "
                       "choose the bitrate with --codebooks")
    start = time.perf_counter()
    z, gains, xm = _latents(m, x, sr, dev)
    channels, steps = z.shape[0], z.shape[1]
    tensors: dict[str, np.ndarray] = {"gain": gains}
    if c.quantized:
        codes = m.quantize(z, n_books).cpu().numpy().astype(np.uint32)  # (C, n, T)
        tensors["codes"] = pack_bits(codes.reshape(channels * n_books, steps), c.code_bits)
        code = {"codebooks": n_books}
    else:
        tensors.update(quantise({"latent": z.transpose(1, 2).cpu()}, bits))
        code = {"bits": bits}
    name = path.name.removesuffix(".safetensors")
    af = AEFile({"name": name, "sha256": file_sha256(path), "config": c.to_dict()},
                AEAudio(sample_rate=sr, channels=channels, frames=x.shape[1], model_sr=c.sample_rate,
                        model_frames=xm.shape[1], steps=steps), code, tensors,
                {"kancodec": __version__, "device": str(dev), "train_steps": train.get("steps_done")})
    y = _decode_with(m, af, dev)
    af.encode["seconds"] = round(time.perf_counter() - start, 3)
    ref, out = torch.from_numpy(xm), torch.from_numpy(y)
    af.encode["snr_db"] = round(float(snr(out, ref).mean()), 3)
    af.encode["si_snr_db"] = round(float(si_snr(out, ref).mean()), 3)
    return af


def load_model_for(af: AEFile, dev: torch.device, model: str | Path | None = None,
                   where: str = "the .kan file") -> aemod.AutoEncoder:
    """The model ``af`` was coded with, checked against the recorded SHA-256: ``model`` if
    given, else found by name (user data folder, then bundled models)."""
    name, sha = af.model["name"], af.model["sha256"]
    try:
        path = find_model(model or name)
    except InputError as e:
        raise InputError(f"{where} needs the autoencoder {name!r}; {e}".replace(
            "; give a path or train one", f"; put {name}.safetensors there or decode with --model PATH")) from None
    if file_sha256(path) != sha:
        raise FormatError(f"{where} was coded with model {name!r} (SHA-256 {sha[:12]}…), but {path} is a different "
                          "model; decode with the model file it was made with (decode --model PATH)")
    return aemod.load(path, dev)[0]


def _decode_with(m: aemod.AutoEncoder, af: AEFile, dev: torch.device) -> np.ndarray:
    """``(C, model_frames)`` audio at the model's rate."""
    c, a = m.config, af.audio
    if c.quantized:
        n = af.code["codebooks"]
        codes = unpack_bits(af.tensors["codes"], c.code_bits, a.steps).astype(np.int64)
        if codes.max(initial=0) >= c.codebook_size:
            raise FormatError(f"code {codes.max()} is past the model's {c.codebook_size} entries; the file is damaged")
        z = m.dequantize(torch.from_numpy(codes.reshape(a.channels, n, a.steps)).to(dev))
    else:
        z = dequantise(af.tensors, {"latent": (c.latent, a.steps)}, af.code["bits"])["latent"].transpose(1, 2).to(dev)
    with torch.inference_mode():
        y = m.decode(z.float(), a.model_frames).cpu().numpy()
    return y * af.tensors["gain"][:, None]


def decode(af: AEFile, sr: int | None = None, *, device: str | torch.device | None = None,
           model: str | Path | None = None) -> tuple[np.ndarray, int]:
    """Decode autoencoder codes -> ``((C, frames) float32, sr)``; ``sr`` defaults to the original's."""
    from .api import resolve_device

    dev = resolve_device(device)
    a = af.audio
    sr = int(sr or a.sample_rate)
    if not 1000 <= sr <= 384000:
        raise KanError(f"--sr {sr}: must be between 1000 and 384000 Hz")
    y = resample(_decode_with(load_model_for(af, dev, model), af, dev), a.model_sr, sr)
    n_out = round(a.frames * sr / a.sample_rate)
    return np.pad(y, ((0, 0), (0, max(0, n_out - y.shape[1]))))[:, :n_out].astype(np.float32), sr


def mix(a: str | Path | np.ndarray, b: str | Path | np.ndarray, ratio: float = 0.5, sr: int | None = None, *,
        model: str | Path = DEFAULT_MODEL, device: str | torch.device | None = None) -> tuple[np.ndarray, int]:
    """Blend two sounds in latent space: decode ``(1 - ratio) z_a + ratio z_b``.

    Both inputs need the same sample rate and channel count; the shorter is padded with
    silence. For vq models the blended continuous latents are decoded without quantising.
    Returns ``((C, frames) float32, sr)``.
    """
    from .api import resolve_device

    if not 0.0 <= ratio <= 1.0:
        raise KanError(f"--ratio {ratio}: must be between 0 (all of A) and 1 (all of B)")
    x, sr_a = _read(a, sr, "mix")
    y, sr_b = _read(b, sr, "mix")
    if sr_a != sr_b:
        raise InputError(f"mix: the inputs have different sample rates ({sr_a} and {sr_b} Hz); resample one to the other first")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"mix: the inputs have {x.shape[0]} and {y.shape[0]} channels; convert one to match first")
    n = max(x.shape[1], y.shape[1])
    x, y = (np.pad(v, ((0, 0), (0, n - v.shape[1]))) for v in (x, y))
    dev = resolve_device(device)
    m = aemod.load(model, dev)[0]
    za, ga, xm = _latents(m, x, sr_a, dev)
    zb, gb, _ = _latents(m, y, sr_a, dev)
    with torch.inference_mode():
        out = m.decode((1 - ratio) * za + ratio * zb, xm.shape[1]).cpu().numpy()
    out = out * ((1 - ratio) * ga + ratio * gb)[:, None]
    out = resample(out, m.config.sample_rate, sr_a)
    return np.pad(out, ((0, 0), (0, max(0, n - out.shape[1]))))[:, :n].astype(np.float32), sr_a
