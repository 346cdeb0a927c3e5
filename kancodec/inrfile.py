"""``.kan`` files of INR weights (format tag ``"kancodec-inr"``, version 1).

The container (:mod:`kancodec.container`) holds, besides its own tag, version and checksum:

=====================  ==========================================================
``kancodec.inr``       the INR config (``config.to_dict()``; its ``arch`` names the family:
                       kan, nerf, siren, rff, wire or finer)
``kancodec.audio``     ``sample_rate`` (the input's), ``fit_sr``, ``channels``,
                       ``frames`` (at ``sample_rate``), ``fit_frames``, ``chunk``,
                       ``overlap``, ``windows`` (per channel)
``kancodec.quant``     ``{"scheme": "affine-per-row", "bits": B}``
``kancodec.encode``    how it was encoded: fit settings, preset, device, seconds, SNR
=====================  ==========================================================

Tensors, with ``B = channels × windows`` networks in channel-major order: ``gain``
``(B,)`` float32 (each window's peak; 0 for a silent window), and for every stored INR
parameter ``q.<name>`` (``B`` rows of bit-packed integers, little-endian bit order, or
float32 at 32 bits) with ``lo.<name>`` and ``step.<name>`` ``(B, R)`` float32, one affine
step per network and row ``R`` (the parameter's first axis, a layer input):
value = lo + q × step (see ``quant.quantise``). The parameters a family lists in its
``keep_float`` (the first layer of ``siren``, ``finer`` and ``wire``; none for ``kan``) are
always stored as float32 ``q.<name>`` without ``lo``/``step``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import container, inr
from .codec import Encoded
from .errors import FormatError, KanError
from .quant import BITS_CHOICES, dequantise, packed_size

TAG = "kancodec-inr"


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
class KanFile(Encoded):
    """An encoded clip: config, audio facts, quantised parameters and window gains."""

    TAG = TAG
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

    def fields(self) -> dict:
        return {"inr": self.config.to_dict(), "audio": asdict(self.audio),
                "quant": {"scheme": "affine-per-row", "bits": self.bits}}


def from_container(meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> KanFile:
    """Check an INR file's metadata and tensors -> :class:`KanFile`; FormatError on any problem."""
    try:
        config = inr.config_from_dict(container.field(meta, "inr", where))
        audio = AudioInfo(**container.field(meta, "audio", where))
        bits = int(container.field(meta, "quant", where)["bits"])
    except (TypeError, KeyError, ValueError) as e:
        raise FormatError(f"{where}: metadata does not describe a valid encoding ({e}); re-encode the audio") from None
    except FormatError:
        raise
    except KanError as e:  # bad config values
        raise FormatError(f"{where}: {e}") from None
    if bits not in BITS_CHOICES:
        raise FormatError(f"{where}: quantisation to {bits} bits is not supported; re-encode the audio")
    kf = KanFile(config, audio, bits, tensors, container.field(meta, "encode", where))
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
