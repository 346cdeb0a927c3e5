"""The ``.kan`` file format, version 1: the one place where it is defined.

A ``.kan`` file is a safetensors file (a JSON header, then raw little-endian tensors; no
pickle). Its metadata holds strings under the ``kancodec.`` prefix; nested values are
JSON with sorted keys:

=====================  ==========================================================
``kancodec.format``    ``"kancodec-inr"``: the tag, also the magic a reader checks
``kancodec.version``   format version (``"1"``), independent of the package version
``kancodec.inr``       the INR config (``config.to_dict()``; its ``arch`` names the family:
                       kan, nerf, siren, rff, wire or finer)
``kancodec.audio``     ``sample_rate`` (the input's), ``fit_sr``, ``channels``,
                       ``frames`` (at ``sample_rate``), ``fit_frames``, ``chunk``,
                       ``overlap``, ``windows`` (per channel)
``kancodec.quant``     ``{"scheme": "affine-per-row", "bits": B}``
``kancodec.encode``    how it was encoded: fit settings, preset, device, seconds, SNR
``kancodec.sha256``    SHA-256 over every tensor (sorted by name: name, dtype, shape, bytes)
=====================  ==========================================================

Tensors, with ``B = channels × windows`` networks in channel-major order: ``gain``
``(B,)`` float32 (each window's peak; 0 for a silent window), and for every stored INR
parameter ``q.<name>`` (``B`` rows of bit-packed integers, little-endian bit order, or
float32 at 32 bits) with ``lo.<name>`` and ``step.<name>`` ``(B, R)`` float32, one affine
step per network and row ``R`` (the parameter's first axis, a layer input):
value = lo + q × step (see ``quant.quantise``). The parameters a family lists in its
``keep_float`` (the first layer of ``siren``, ``finer`` and ``wire``; none for ``kan``) are
always stored as float32 ``q.<name>`` without ``lo``/``step``.

Autoencoder codes (``kancodec encode --ae``) use the same container with the tag
``"kancodec-ae"`` (same version numbering) and, instead of ``inr``/``quant``:

=====================  ==========================================================
``kancodec.model``     the model's ``name``, the ``sha256`` of its file and its ``config``
                       (``ae.AEConfig``): decoding needs that exact model
``kancodec.audio``     ``sample_rate``, ``channels``, ``frames``, ``model_sr``,
                       ``model_frames`` (at ``model_sr``), ``steps`` (latent frames)
``kancodec.code``      ``{"codebooks": n}`` (vq kinds) or ``{"bits": B}`` (stored latents)
=====================  ==========================================================

Tensors: ``gain`` ``(channels,)`` float32 (each channel's peak), and ``codes``
``(channels × n, bytes)``: each row one codebook's indices over time, bit-packed at
``ceil(log2(codebook_size))`` bits; or ``q.latent``/``lo.latent``/``step.latent`` as above
with one affine step per channel and latent dimension (rows of ``(latent, steps)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from . import inr
from .audio import atomic_path
from .errors import FormatError, InputError, KanError
from .quant import BITS_CHOICES, dequantise, packed_size

TAG = "kancodec-inr"
AE_TAG = "kancodec-ae"
VERSION = 1
PREFIX = "kancodec."


@dataclass(frozen=True)
class AudioInfo:
    """Facts about the encoded audio needed to decode it."""

    sample_rate: int
    fit_sr: int
    channels: int
    frames: int
    fit_frames: int
    chunk: int
    overlap: int
    windows: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class KanFile:
    """An encoded clip: config, audio facts, quantised parameters and window gains."""

    config: inr.INR
    audio: AudioInfo
    bits: int
    tensors: dict[str, np.ndarray]
    encode: dict = field(default_factory=dict)

    @property
    def gains(self) -> np.ndarray:
        return self.tensors["gain"]

    def params(self) -> dict[str, torch.Tensor]:
        """Dequantised, expanded parameters: ``name -> (channels × windows, …)`` float32."""
        return inr.expand(self.config, dequantise(self.tensors, inr.stored_shapes(self.config), self.bits,
                                                  self.config.keep_float))

    def metadata(self) -> dict[str, str]:
        dumps = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
        return {
            PREFIX + "format": TAG,
            PREFIX + "version": str(VERSION),
            PREFIX + "inr": dumps(self.config.to_dict()),
            PREFIX + "audio": dumps(asdict(self.audio)),
            PREFIX + "quant": dumps({"scheme": "affine-per-row", "bits": self.bits}),
            PREFIX + "encode": dumps(self.encode),
            PREFIX + "sha256": checksum(self.tensors),
        }

    def to_bytes(self) -> bytes:
        return st_save({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, metadata=self.metadata())

    def save(self, path: str | Path, force: bool = False) -> int:
        """Write atomically (temporary file, then rename). Returns the file size in bytes."""
        data = self.to_bytes()
        with atomic_path(path, force) as tmp:
            tmp.write_bytes(data)
        return len(data)

    def size_bytes(self) -> int:
        return len(self.to_bytes())

    def kbps(self) -> float:
        """Whole-file bitrate: file size in bits over the audio's duration."""
        return self.size_bytes() * 8 / self.audio.duration / 1000

    def pcm_kbps(self) -> float:
        """Bitrate of the same audio as 16-bit PCM at its input rate."""
        return self.audio.sample_rate * self.audio.channels * 16 / 1000


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
class AEFile:
    """Audio coded by an autoencoder: the model's identity, codes or latents, gains."""

    model: dict  # {"name", "sha256", "config"}
    audio: AEAudio
    code: dict  # {"codebooks": n} or {"bits": B}
    tensors: dict[str, np.ndarray]
    encode: dict = field(default_factory=dict)

    @property
    def config(self):
        from .ae import AEConfig

        return AEConfig(**self.model["config"])

    def metadata(self) -> dict[str, str]:
        dumps = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
        return {PREFIX + "format": AE_TAG, PREFIX + "version": str(VERSION), PREFIX + "model": dumps(self.model),
                PREFIX + "audio": dumps(asdict(self.audio)), PREFIX + "code": dumps(self.code),
                PREFIX + "encode": dumps(self.encode), PREFIX + "sha256": checksum(self.tensors)}

    to_bytes, save, size_bytes, kbps, pcm_kbps = (KanFile.to_bytes, KanFile.save, KanFile.size_bytes, KanFile.kbps,
                                                  KanFile.pcm_kbps)


def _ae_from(meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> AEFile:
    try:
        model = _json(meta, "model", where)
        audio = AEAudio(**_json(meta, "audio", where))
        code = _json(meta, "code", where)
        config = AEFile(model, audio, code, tensors).config
        name, sha = str(model["name"]), str(model["sha256"])
    except (TypeError, KeyError, ValueError) as e:
        raise FormatError(f"{where}: metadata does not describe a valid encoding ({e}); re-encode the audio") from None
    except KanError as e:
        raise FormatError(f"{where}: {e}") from None
    c, a = config, audio
    try:
        n_frames = math.ceil((a.model_frames + c.frame - c.hop) / c.hop)
        plausible = (a.model_sr == c.sample_rate and a.steps == n_frames and a.channels >= 1 and a.frames >= 1
                     and abs(a.model_frames - a.frames * a.model_sr / a.sample_rate) <= 2 and len(sha) == 64 and name)
    except (TypeError, ZeroDivisionError):
        plausible = False
    if not plausible:
        raise FormatError(f"{where}: impossible audio or model facts; the file is damaged, re-encode it")
    if c.quantized:
        n = code.get("codebooks")
        if not isinstance(n, int) or not 1 <= n <= c.codebooks:
            raise FormatError(f"{where}: {n} codebooks, the model has {c.codebooks}; the file is damaged, re-encode it")
        expected = {"codes": ((a.channels * n, packed_size(a.steps, c.code_bits)), "uint8")}
    else:
        bits = code.get("bits")
        if bits not in BITS_CHOICES:
            raise FormatError(f"{where}: latents at {bits} bits are not supported; the file is damaged, re-encode it")
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
    return AEFile(model, audio, code, tensors, _json(meta, "encode", where))


def checksum(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json(meta: dict[str, str], key: str, where: str) -> dict:
    if PREFIX + key not in meta:
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is missing; the file is damaged, re-encode it")
    try:
        value = json.loads(meta[PREFIX + key])
    except json.JSONDecodeError:
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is not valid JSON; the file is damaged, re-encode it") from None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is not an object; the file is damaged, re-encode it")
    return value


def from_bytes(data: bytes, where: str = "<bytes>") -> "KanFile | AEFile":
    """Parse and validate a ``.kan`` file's bytes (INR or autoencoder codes); every problem
    raises FormatError."""
    if len(data) < 8:
        raise FormatError(f"{where}: too short to be a .kan file ({len(data)} bytes); it is truncated or not a .kan file")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > 100_000_000:
        raise FormatError(f"{where}: header runs past the end of the file; it is truncated or not a .kan file")
    try:
        header = json.loads(data[8:8 + header_len])
        tensors = st_load(data)
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, ValueError) as e:
        raise FormatError(f"{where}: not a readable .kan file ({str(e).splitlines()[0][:80]}); "
                          "it is truncated, damaged or of another format") from None
    meta = header.get("__metadata__") or {}
    tag = meta.get(PREFIX + "format")
    if tag not in (TAG, AE_TAG):
        raise FormatError(f"{where}: not a kancodec file (format tag {tag!r}, "
                          f"expected {TAG!r} or {AE_TAG!r}); give a file written by 'kancodec encode'")
    version = meta.get(PREFIX + "version")
    if version != str(VERSION):
        raise FormatError(f"{where}: .kan format version {version} is not supported (this kancodec reads version "
                          f"{VERSION}); upgrade kancodec or re-encode the audio")
    if meta.get(PREFIX + "sha256") != checksum(tensors):
        raise FormatError(f"{where}: checksum mismatch, the file was modified or damaged; re-encode the audio")
    if tag == AE_TAG:
        return _ae_from(meta, tensors, where)
    try:
        config = inr.config_from_dict(_json(meta, "inr", where))
        audio = AudioInfo(**_json(meta, "audio", where))
        bits = int(_json(meta, "quant", where)["bits"])
    except (TypeError, KeyError, ValueError) as e:
        raise FormatError(f"{where}: metadata does not describe a valid encoding ({e}); re-encode the audio") from None
    except KanError as e:  # bad config values
        raise FormatError(f"{where}: {e}") from None
    if bits not in BITS_CHOICES:
        raise FormatError(f"{where}: quantisation to {bits} bits is not supported; re-encode the audio")
    kf = KanFile(config, audio, bits, tensors, _json(meta, "encode", where))
    _check_shapes(kf, where)
    return kf


def _check_shapes(kf: KanFile, where: str) -> None:
    a = kf.audio
    batch = a.channels * a.windows
    expected: dict[str, tuple[tuple[int, ...], str]] = {"gain": ((batch,), "float32")}
    for name, shape in inr.stored_shapes(kf.config).items():
        n = int(np.prod(shape))
        if kf.bits == 32 or name in kf.config.keep_float:
            expected[f"q.{name}"] = ((batch, n), "float32")
        else:
            expected[f"q.{name}"] = ((batch, packed_size(n, kf.bits)), "uint8")
            expected[f"lo.{name}"] = ((batch, shape[0]), "float32")
            expected[f"step.{name}"] = ((batch, shape[0]), "float32")
    missing = sorted(set(expected) - set(kf.tensors))
    if missing:
        raise FormatError(f"{where}: tensors missing: {', '.join(missing[:4])}; the file is damaged, re-encode it")
    for name, (shape, dtype) in expected.items():
        t = kf.tensors[name]
        if tuple(t.shape) != shape or t.dtype != np.dtype(dtype):
            raise FormatError(f"{where}: tensor {name} is {t.dtype}{list(t.shape)}, the config needs {dtype}{list(shape)}; "
                              "the file is damaged, re-encode it")
    if a.windows < 1 or a.channels < 1 or a.frames < 1 or a.overlap >= a.chunk:
        raise FormatError(f"{where}: impossible audio facts {asdict(a)}; the file is damaged, re-encode it")


def load(path: str | Path) -> "KanFile | AEFile":
    """Read a ``.kan`` file; InputError if it is missing, FormatError if it is not valid."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    return from_bytes(path.read_bytes(), str(path))


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)
