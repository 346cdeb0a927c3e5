"""The autoencoder codec (``encode --ae``), its ``.kan`` files, and ``mix``.

Each channel is resampled to the model's rate, divided by its peak (stored as ``gain``) and
encoded frame by frame. The vq kinds store codebook indices (``codebooks`` of them per frame:
the bitrate), kae/kvae store their latents quantised like INR weights. A file names its
model and the SHA-256 of the model file; decoding finds the model the usual way
(:func:`~kancodec.modelfile.find_model`) and refuses a file with another digest.

The files use the container (:mod:`kancodec.container`) with the tag ``"kancodec-ae"``
(version 1) and, besides the container's own entries:

=====================  ==========================================================
``kancodec.model``     the model's ``name``, the ``sha256`` of its file and its ``config``
                       (``ae.AEConfig``): decoding needs that exact model
``kancodec.audio``     ``sample_rate``, ``channels``, ``frames``, ``model_sr``,
                       ``model_frames`` (at ``model_sr``), ``steps`` (latent frames)
``kancodec.code``      ``{"codebooks": n}`` (vq kinds) or ``{"bits": B}`` (stored latents)
``kancodec.encode``    how it was encoded: device, seconds, SNR
=====================  ==========================================================

Tensors: ``gain`` ``(channels,)`` float32 (each channel's peak), and ``codes``
``(channels × n, bytes)``: each row one codebook's indices over time, bit-packed at
``ceil(log2(codebook_size))`` bits; or ``q.latent``/``lo.latent``/``step.latent`` as in INR
files with one affine step per channel and latent dimension (rows of ``(latent, steps)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import __version__, container, schema
from . import ae as aemod
from .audio import SILENCE, resample
from .codec import Encoded, bitrate, fact, fit_length, integrity, integrity_rows, measure
from .errors import FormatError, InputError, KanError, OptionError
from .modelfile import MODEL_NAME, SHA256, find_by_hash
from .quant import BITS_CHOICES, check_bits, dequantise, pack_bits, packed_size, quantise, unpack_bits

TAG = "kancodec-ae"
DEFAULT_MODEL = "krvq"
#: samples (model-rate frames plus output frames, all channels) an autoencoder decode may hold
MAX_SAMPLES = 1 << 27


@dataclass(frozen=True)
class AEAudio:
    """Facts about audio coded by an autoencoder."""

    sample_rate: int
    channels: int
    frames: int
    model_sr: int
    model_frames: int
    steps: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class AEFile(Encoded):
    """Audio coded by an autoencoder: the model's identity, codes or latents, gains."""

    TAG = TAG
    model: dict  # {"name", "sha256", "config"}
    audio: AEAudio
    code: dict  # {"codebooks": n} or {"bits": B}
    tensors: dict[str, np.ndarray]
    encode: dict = field(default_factory=dict)

    @property
    def config(self) -> aemod.AEConfig:
        return aemod.AEConfig(**self.model["config"])

    def fields(self) -> dict:
        return {"model": self.model, "audio": asdict(self.audio), "code": self.code}


def _latents(model: aemod.AutoEncoder, x: np.ndarray, sr: int, dev: torch.device) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(C, n)`` audio at ``sr`` -> ``(latents (C, T, latent), gains (C,), audio at the model's rate)``."""
    xm = resample(x, sr, model.config.sample_rate)
    gains = np.abs(xm).max(-1)
    gains = np.where(gains >= SILENCE, gains, 0.0).astype(np.float32)
    xn = xm / np.maximum(gains, SILENCE)[:, None]
    with torch.inference_mode():
        z = model.encode(torch.from_numpy(np.ascontiguousarray(xn, dtype=np.float32)).to(dev))
    return z, gains, xm


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


def load_model_for(af: AEFile, dev: torch.device, model: str | Path | None = None,
                   where: str = "the .kan file") -> aemod.AutoEncoder:
    """The model ``af`` was coded with. The name in the file is only a name: the model is
    found among the known models by its SHA-256 (:func:`~kancodec.modelfile.find_by_hash`);
    ``model``, a name or path the user gave, must have that same SHA-256."""
    name, sha = af.model["name"], af.model["sha256"]
    if model is None:
        try:
            model = find_by_hash(name, sha, where)
        except InputError as e:
            raise InputError(str(e).replace("needs the model", "needs the autoencoder")) from None
    m, ref = aemod.load(model, dev)
    if ref.sha256 != sha:
        raise FormatError(f"{where} was coded with model {name!r} (SHA-256 {sha[:12]}…), but {ref.path} is a different "
                          "model; decode with the model file it was made with (decode --model PATH)")
    if m.config != af.config:
        raise FormatError(f"{where}: its metadata kancodec.model.config differs from the config of the model it names "
                          f"({ref.path.name}); the file is damaged or crafted, re-encode the audio")
    return m


class AECodec:
    """A trained autoencoder's codes (or latents); files tagged ``kancodec-ae``."""

    tag = TAG
    file_type = AEFile

    def encode(self, x: np.ndarray, sr: int, *, model: str | Path = DEFAULT_MODEL, codebooks: int | None = None,
               bits: int = 8, device: torch.device, **_) -> AEFile:
        """Code ``(C, T)`` audio at ``sr``.

        Args:
            model: a model name or path (see ``modelfile.find_model``); ``krvq``: the one
                ``train-ae`` saves by default (bundled with kancodec).
            codebooks: vq kinds: how many codebooks to keep (1 … the model's; default all).
                Each one adds ``config.kbps(1)`` kbps.
            bits: kae/kvae: bits per stored latent value.
        """
        m, ref = aemod.load(model, device)
        c = m.config
        if codebooks is not None and not c.quantized:
            raise OptionError(f"{{codebooks}}: the model {ref.path.name} is a {c.kind} (no codebooks); use a kvq/krvq "
                              "model or drop it", "codebooks")
        n_books = c.codebooks if codebooks is None else codebooks
        if c.quantized and not 1 <= n_books <= c.codebooks:
            raise OptionError(f"{{codebooks}} {n_books}: the model {ref.path.name} has 1 to {c.codebooks}", "codebooks")
        check_bits(bits)
        if c.quantized and bits != 8:
            raise OptionError(f"{{bits}} {bits}: the model {ref.path.name} stores codebook indices ({c.code_bits} bits "
                              "each); choose the bitrate with {codebooks}", "bits", "codebooks")
        start = time.perf_counter()
        z, gains, xm = _latents(m, x, sr, device)
        channels, steps = z.shape[0], z.shape[1]
        tensors: dict[str, np.ndarray] = {"gain": gains}
        if c.quantized:
            codes = m.quantize(z, n_books).cpu().numpy().astype(np.uint32)  # (C, n, T)
            tensors["codes"] = pack_bits(codes.reshape(channels * n_books, steps), c.code_bits)
            code = {"codebooks": n_books}
        else:
            tensors.update(quantise({"latent": z.transpose(1, 2).cpu()}, bits))
            code = {"bits": bits}
        af = AEFile({"name": ref.name, "sha256": ref.sha256, "config": c.to_dict()},
                    AEAudio(sample_rate=sr, channels=channels, frames=x.shape[1], model_sr=c.sample_rate,
                            model_frames=xm.shape[1], steps=steps), code, tensors,
                    {"kancodec": __version__, "device": str(device), "train_steps": ref.train.get("steps_done")})
        y = _decode_with(m, af, device)
        af.encode["seconds"] = round(time.perf_counter() - start, 3)
        af.encode.update(measure(y, xm))
        return af

    def decode(self, af: AEFile, sr: int, *, device: torch.device, model: str | Path | None = None, **_) -> np.ndarray:
        """``(C, round(frames × sr / sample_rate))`` float32; ``model`` overrides where the model is found."""
        a = af.audio
        n = (a.model_frames + round(a.frames * sr / a.sample_rate)) * a.channels
        if n > MAX_SAMPLES:
            raise OptionError(f"autoencoder files decode in one piece and this one would be {n:,} samples at {{sr}} "
                              f"{sr} (at most {MAX_SAMPLES:,}); decode at a lower {{sr}} or encode shorter files", "sr")
        y = resample(_decode_with(load_model_for(af, device, model), af, device), a.model_sr, sr)
        return fit_length(y, round(a.frames * sr / a.sample_rate)).astype(np.float32)

    def stream(self, af: AEFile, sr: int, *, device: torch.device, model: str | Path | None = None,
               **_) -> Iterator[np.ndarray]:
        """:meth:`decode` as one block (the model decodes a whole clip at once)."""
        yield self.decode(af, sr, device=device, model=model)

    def from_container(self, meta, tensors, where: str) -> AEFile:
        return _from_container(meta, tensors, where)

    def describe(self, af: AEFile, size: int) -> dict:
        a = af.audio
        return {"format": TAG, "audio": {**a.__dict__, "duration": a.duration}, "model": af.model, "code": af.code,
                "payload_kbps": af.config.kbps(af.code.get("codebooks"), af.code.get("bits")), **bitrate(size, af),
                **integrity(af), "encode": af.encode}

    def summary(self, af: AEFile, size: int) -> list[tuple[str, str]]:
        a, c, e = af.audio, af.config, af.encode
        kbps = size * 8 / a.duration / 1000
        code = (f"{af.code['codebooks']} of {c.codebooks} codebooks x {c.codebook_size} entries ({c.code_bits} bits each)"
                if c.quantized else f"{c.latent} latents at {af.code['bits']} bits")
        rows = [
            ("audio", f"{a.duration:.2f} s, {a.channels} ch, {a.sample_rate} Hz (coded at {a.model_sr} Hz)"),
            ("model", f"{af.model['name']} ({c.kind}, {c.layer} layers, SHA-256 {af.model['sha256'][:12]}…)"),
            ("code", f"{code} per {c.hop}-sample hop, {a.steps} frames; payload "
                     f"{c.kbps(af.code.get('codebooks'), af.code.get('bits')):.2f} kbps"),
            ("size", f"{size:,} bytes: {kbps:.2f} kbps ({af.pcm_kbps() / kbps:.1f}x smaller than 16-bit PCM)"),
        ]
        if "snr_db" in e:
            rows.append(("quality", f"SNR {fact(e, 'snr_db', '.2f')} dB, SI-SNR {fact(e, 'si_snr_db', '.2f')} dB "
                                    f"(decoded vs input at {a.model_sr} Hz)"))
        return rows + integrity_rows(af)

    def brief(self, af: AEFile) -> dict:
        c = af.config
        code = f"{af.code['codebooks']} codebooks" if "codebooks" in af.code else f"{af.code['bits']}-bit latents"
        return {"label": f"{c.kind} autoencoder {af.model['name']}, {code}", "ae": c.kind, "model": af.model["name"],
                **af.code}


#: bounds of the integer fields of an autoencoder's config (:func:`kancodec.schema.dataclass_values`)
CONFIG_BOUNDS = {"sample_rate": schema.RATES, "frame": (8, 1 << 16), "hop": (1, 1 << 16), "grid": (1, 256),
                 "order": (1, 5), "codebooks": (1, 1024), "codebook_size": (2, 1 << 16), "latent_bits": (2, 32)}


def _from_container(meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> AEFile:
    """Check an autoencoder file's metadata (:mod:`kancodec.schema`) and tensors -> :class:`AEFile`."""
    model = schema.obj(where, "kancodec.model", container.field(meta, "model", where), ("name", "sha256", "config"))
    name, sha = model["name"], model["sha256"]
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise schema.bad(where, "kancodec.model.name", name, "is not a model name (letters, digits, . _ + -)")
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        raise schema.bad(where, "kancodec.model.sha256", sha, "is not a SHA-256")
    values = schema.dataclass_values(where, "kancodec.model.config", aemod.AEConfig, model["config"], CONFIG_BOUNDS)
    a = schema.audio_facts(where, container.field(meta, "audio", where),
                           ("sample_rate", "channels", "frames", "model_sr", "model_frames", "steps"))
    for key in ("model_sr", "model_frames", "steps"):
        schema.integer(where, f"kancodec.audio.{key}", a[key], 1, schema.MAX_SECONDS * schema.RATES[1])
    audio = AEAudio(**a)
    code = container.field(meta, "code", where)
    try:
        config = aemod.AEConfig(**values)
    except KanError as e:
        raise FormatError(f"{where}: metadata kancodec.model.config is not a valid autoencoder ({e}); "
                          "re-encode the audio") from None
    c, a = config, audio
    n_frames = math.ceil((a.model_frames + c.frame - c.hop) / c.hop)
    if a.model_sr != c.sample_rate:
        raise schema.bad(where, "kancodec.audio.model_sr", a.model_sr, f"is not the model's rate ({c.sample_rate} Hz)")
    if abs(a.model_frames - a.frames * a.model_sr / a.sample_rate) > 2:
        raise schema.bad(where, "kancodec.audio.model_frames", a.model_frames,
                         f"does not match {a.frames:,} frames at {a.sample_rate} Hz")
    if a.steps != n_frames:
        raise schema.bad(where, "kancodec.audio.steps", a.steps, f"does not match the model's hop ({n_frames} frames)")
    if c.quantized:
        n = schema.integer(where, "kancodec.code.codebooks", schema.obj(where, "kancodec.code", code, ("codebooks",))
                           ["codebooks"], 1, c.codebooks)
        expected = {"codes": ((a.channels * n, packed_size(a.steps, c.code_bits)), "uint8")}
    else:
        bits = schema.choice(where, "kancodec.code.bits", schema.obj(where, "kancodec.code", code, ("bits",))["bits"],
                             BITS_CHOICES)
        n_values = c.latent * a.steps
        expected = {"q.latent": ((a.channels, n_values), "float32") if bits == 32
                    else ((a.channels, packed_size(n_values, bits)), "uint8")}
        if bits != 32:
            expected.update({f"{k}.latent": ((a.channels, c.latent), "float32") for k in ("lo", "step")})
    expected["gain"] = ((a.channels,), "float32")
    for key, (shape, dtype) in expected.items():
        t = tensors.get(key)
        if t is None or tuple(t.shape) != shape or t.dtype != np.dtype(dtype):
            got = "missing" if t is None else f"{t.dtype}{list(t.shape)}"
            raise FormatError(f"{where}: tensor {key} is {got}, the model needs {dtype}{list(shape)}; "
                              "the file is damaged, re-encode it")
        if dtype == "float32":
            schema.values(where, key, t, nonnegative=key == "gain" or key.startswith("step."))
    return AEFile(model, audio, code, tensors, container.field(meta, "encode", where))


def mix(x: np.ndarray, y: np.ndarray, sr: int, ratio: float = 0.5, *, model: str | Path = DEFAULT_MODEL,
        device: torch.device) -> np.ndarray:
    """Blend two sounds in latent space: decode ``(1 - ratio) z_x + ratio z_y``.

    Both ``(C, T)`` at ``sr`` with the same channel count; the shorter is padded with
    silence. For vq models the blended continuous latents are decoded without quantising.
    Returns ``(C, max(T)) float32`` at ``sr``.
    """
    if not 0.0 <= ratio <= 1.0:
        raise OptionError(f"{{ratio}} {ratio}: must be between 0 (all of A) and 1 (all of B)", "ratio")
    if x.shape[0] != y.shape[0]:
        raise InputError(f"mix: the inputs have {x.shape[0]} and {y.shape[0]} channels; convert one to match first")
    n = max(x.shape[1], y.shape[1])
    x, y = (np.pad(v, ((0, 0), (0, n - v.shape[1]))) for v in (x, y))
    m = aemod.load(model, device)[0]
    za, ga, xm = _latents(m, x, sr, device)
    zb, gb, _ = _latents(m, y, sr, device)
    with torch.inference_mode():
        out = m.decode((1 - ratio) * za + ratio * zb, xm.shape[1]).cpu().numpy()
    out = out * ((1 - ratio) * ga + ratio * gb)[:, None]
    return fit_length(resample(out, m.config.sample_rate, sr), n).astype(np.float32)


CODEC = AECodec()
