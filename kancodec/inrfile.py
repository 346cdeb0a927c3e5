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

from . import container, inr, schema
from .codec import Encoded
from .errors import FormatError
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

    def params(self, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Dequantised, expanded parameters: ``name -> (channels × windows, …)`` float32, or
        only the networks ``rows`` (indices into that axis) so a long file dequantises a
        batch at a time."""
        stored = self.tensors if rows is None else {k: v[rows] for k, v in self.tensors.items()}
        return inr.expand(self.config, dequantise(stored, inr.stored_shapes(self.config), self.bits,
                                                  self.config.keep_float))

    def fields(self) -> dict:
        return {"inr": self.config.to_dict(), "audio": asdict(self.audio),
                "quant": {"scheme": "affine-per-row", "bits": self.bits}}


def from_container(meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> KanFile:
    """Check an INR file's metadata (:mod:`kancodec.schema`) and tensors -> :class:`KanFile`;
    FormatError naming the field and value on any problem."""
    config = schema.inr_config(where, container.field(meta, "inr", where))
    audio = AudioInfo(**schema.inr_audio(where, container.field(meta, "audio", where)))
    quant = schema.obj(where, "kancodec.quant", container.field(meta, "quant", where), ("scheme", "bits"))
    schema.choice(where, "kancodec.quant.scheme", quant["scheme"], ("affine-per-row",))
    bits = schema.choice(where, "kancodec.quant.bits", quant["bits"], BITS_CHOICES)
    work = schema.decode_work(config, audio.chunk, audio.fit_sr, audio.sample_rate)
    if work > schema.MAX_WORK_BYTES:
        raise schema.bad(where, "kancodec.audio.chunk", audio.chunk, f"with this network needs {work / 2**30:.1f} GiB "
                         f"per window to decode at {audio.sample_rate} Hz (at most {schema.MAX_WORK_BYTES >> 30} GiB)")
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
    for name, (_, dtype) in expected.items():
        if dtype == "float32":
            schema.values(where, name, kf.tensors[name], nonnegative=name == "gain" or name.startswith("step."))
