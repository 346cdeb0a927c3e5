"""``.kan`` files of INR weights (format tag ``"kancodec-inr"``, version 5; 1 to 4 are read).

The container (:mod:`kancodec.container`) holds, besides its own tag, version and checksum:

=====================  ==========================================================
``kancodec.inr``       the INR config (``config.to_dict()``; its ``arch`` names the family:
                       kan, nerf, siren, rff, wire or finer)
``kancodec.audio``     ``sample_rate`` (the input's), ``fit_sr``, ``channels``,
                       ``frames`` (at ``sample_rate``), ``fit_frames``, ``chunk``,
                       ``overlap``, ``windows`` (per channel)
``kancodec.quant``     ``{"scheme": "laplace-ans", "bits": B}`` (version 3; ``B`` may be
                       fractional, see :mod:`kancodec.entropy`) or ``{"scheme":
                       "affine-per-row", "bits": B}`` (versions 1-2, and float32 files)
``kancodec.encode``    how it was encoded: fit settings, preset, device, seconds, SNR
=====================  ==========================================================

Tensors, with ``B = channels × windows`` networks in channel-major order: ``gain``
``(B,)`` float32 (each window's peak; 0 for a silent window). Scheme ``laplace-ans``:
``step`` ``(B, T)`` float32, ``side`` ``(B, T, 3)`` int16, ``size`` ``(B,)`` int32 and ``ans``
``(words,)`` uint32 for the ``T`` stored parameters not kept in float, in the config's
order (see :func:`kancodec.entropy.encode_networks`), and ``q.<name>`` ``(B, n)`` float32
for those kept in float. Scheme ``affine-per-row``: for every stored INR
parameter ``q.<name>`` (``B`` rows of bit-packed integers, little-endian bit order, or
float32 at 32 bits) with ``lo.<name>`` and ``step.<name>`` ``(B, R)`` float32, one affine
step per network and row ``R`` (the parameter's first axis, a layer input):
value = lo + q × step (see ``quant.quantise``). The parameters a family lists in its
``keep_float`` (the first layer of ``siren``, ``finer`` and ``wire``; none for ``kan``) are
always stored as float32 ``q.<name>`` without ``lo``/``step``.

Version 4 (the same as 3 otherwise) may hold ``post`` ``(B, 8)`` uint8, the post-filter's
16 band-gain codes of each network, two 4-bit codes per byte (:mod:`kancodec.postfilter`); without it the decoder applies
none. Version 5 stores them over time, ``post`` ``(B, nb, 8)`` for ``nb`` blocks per window (1 to
:data:`~kancodec.postfilter.MAX_BLOCKS`). Earlier versions have no post-filter, and a ``post`` tensor in one is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import container, entropy, inr, postfilter, schema
from .codec import Encoded
from .errors import FormatError
from .quant import BITS_CHOICES, dequantise, packed_size, quantise

AFFINE = "affine-per-row"

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
    bits: float
    tensors: dict[str, np.ndarray]
    encode: dict = field(default_factory=dict)
    scheme: str = entropy.SCHEME

    @property
    def gains(self) -> np.ndarray:
        return self.tensors["gain"]

    @property
    def post(self) -> np.ndarray | None:
        """The post-filter's codes ``(C × W, nb, BANDS)`` (:mod:`kancodec.postfilter`; ``nb`` = 1
        in version 4 files), or None."""
        packed = self.tensors.get("post")
        return None if packed is None else postfilter.unpack(packed)

    def params(self, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Dequantised, expanded parameters: ``name -> (channels × windows, …)`` float32, or
        only the networks ``rows`` (indices into that axis) so a long file dequantises a
        batch at a time."""
        shapes = inr.stored_shapes(self.config)
        if self.scheme == AFFINE:
            stored = self.tensors if rows is None else {k: v[rows] for k, v in self.tensors.items()}
            return inr.expand(self.config, dequantise(stored, shapes, self.bits, self.config.keep_float))
        rows = np.arange(self.gains.shape[0]) if rows is None else np.asarray(rows)
        coded = coded_names(self.config)
        try:
            values = entropy.decode_networks(self.tensors, [int(np.prod(shapes[n])) for n in coded], rows)
        except ValueError as e:
            raise FormatError(f"{e}; the file is damaged or crafted, re-encode the audio") from None
        out = {n: torch.from_numpy(v).reshape(len(rows), *shapes[n]) for n, v in zip(coded, values)}
        for n in self.config.keep_float:
            out[n] = torch.from_numpy(np.ascontiguousarray(self.tensors[f"q.{n}"][rows])).reshape(len(rows), *shapes[n])
        return inr.expand(self.config, {n: out[n] for n in shapes})

    def bits_per_weight(self) -> float:
        """Stored bits per weight of the networks that hold sound (their coded stream, or the
        packed integers; side information not counted)."""
        active = int((self.gains > 0).sum())
        if not active:
            return 0.0
        if self.scheme == AFFINE:
            return float(self.bits)
        return 32.0 * self.tensors["ans"].size / (active * max(1, coded_weights(self.config)))

    def fields(self) -> dict:
        return {"inr": self.config.to_dict(), "audio": asdict(self.audio),
                "quant": {"scheme": self.scheme, "bits": self.bits}}


def coded_names(config: inr.INR) -> list[str]:
    """The stored parameters the entropy coder codes, in order (all but ``keep_float``)."""
    return [n for n in inr.stored_shapes(config) if n not in config.keep_float]


def coded_weights(config: inr.INR) -> int:
    """Weights per network the entropy coder codes."""
    shapes = inr.stored_shapes(config)
    return sum(int(np.prod(shapes[n])) for n in coded_names(config))


def flatten(config: inr.INR, compact: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """The coded tensors of compact parameters as ``(B, n)`` float64 arrays, in coding order."""
    return [compact[n].detach().cpu().reshape(compact[n].shape[0], -1).double().numpy() for n in coded_names(config)]


def store(config: inr.INR, compact: dict[str, torch.Tensor], bits, active: np.ndarray,
          flat: list[np.ndarray] | None = None, scales: np.ndarray | None = None) -> tuple[dict, str]:
    """Quantise and code compact parameters ``name -> (B, …)`` at ``bits`` (one depth or one
    per network) -> ``(tensors, scheme)`` (without ``gain``): entropy-coded below 32 bits,
    float32 at 32. ``flat``: :func:`flatten` of them, when the caller has it already;
    ``scales``: the allocation between tensors ``(B, T)`` (:mod:`kancodec.allocate`; None: 1)."""
    if np.ndim(bits) == 0 and bits == 32:
        return quantise(compact, 32, config.keep_float), AFFINE
    tensors = entropy.encode_networks(flatten(config, compact) if flat is None else flat, bits, active, scales)
    for n in config.keep_float:
        tensors[f"q.{n}"] = compact[n].detach().cpu().reshape(compact[n].shape[0], -1).numpy().astype(np.float32)
    return tensors, entropy.SCHEME


def from_container(meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> KanFile:
    """Check an INR file's metadata (:mod:`kancodec.schema`) and tensors -> :class:`KanFile`;
    FormatError naming the field and value on any problem."""
    config = schema.inr_config(where, container.field(meta, "inr", where))
    audio = AudioInfo(**schema.inr_audio(where, container.field(meta, "audio", where)))
    quant = schema.obj(where, "kancodec.quant", container.field(meta, "quant", where), ("scheme", "bits"))
    v3 = meta.get(container.PREFIX + "version") not in ("1", "2")
    scheme = schema.choice(where, "kancodec.quant.scheme", quant["scheme"], (entropy.SCHEME, AFFINE) if v3 else (AFFINE,))
    if scheme == AFFINE:
        bits = schema.choice(where, "kancodec.quant.bits", quant["bits"], BITS_CHOICES if not v3 else (32,))
    else:
        bits = schema.number(where, "kancodec.quant.bits", quant["bits"], entropy.MIN_BITS, entropy.MAX_BITS)
        bits = int(bits) if bits.is_integer() else bits
    work = schema.decode_work(config, audio.chunk, audio.fit_sr, audio.sample_rate)
    if work > schema.MAX_WORK_BYTES:
        raise schema.bad(where, "kancodec.audio.chunk", audio.chunk, f"with this network needs {work / 2**30:.1f} GiB "
                         f"per window to decode at {audio.sample_rate} Hz (at most {schema.MAX_WORK_BYTES >> 30} GiB)")
    kf = KanFile(config, audio, bits, tensors, container.field(meta, "encode", where), scheme)
    _check_shapes(kf, where)
    if "post" in tensors:
        _check_post(kf, where, meta.get(container.PREFIX + "version"))
        if kf.tensors["post"].ndim == 2:  # version 4: one block per window, held as version 5 holds it
            kf.tensors["post"] = kf.tensors["post"][:, None]
    return kf


def _check_post(kf: KanFile, where: str, version: str | None) -> None:
    """The post-filter's codes: version 4, one row of :data:`~kancodec.postfilter.BANDS` 4-bit
    codes per network, two to a byte; version 5 on, ``nb`` such rows per network (1 to
    :data:`~kancodec.postfilter.MAX_BLOCKS`). Any byte is valid."""
    if version in ("1", "2", "3"):
        raise FormatError(f"{where}: a post-filter (tensor post) in a file of a version before 4, which has none; "
                          "the file is damaged or crafted, re-encode the audio")
    t = kf.tensors["post"]
    rows, half = kf.audio.channels * kf.audio.windows, postfilter.BANDS // 2
    if version == "4":
        ok, need = tuple(t.shape) == (rows, half), f"[{rows}, {half}]"
    else:
        ok = t.ndim == 3 and t.shape[0] == rows and 1 <= t.shape[1] <= postfilter.MAX_BLOCKS and t.shape[2] == half
        need = f"[{rows}, blocks (1 to {postfilter.MAX_BLOCKS}), {half}]"
    if not ok or t.dtype != np.uint8:
        raise FormatError(f"{where}: tensor post is {t.dtype}{list(t.shape)}, the file needs uint8{need}; "
                          "the file is damaged, re-encode it")


def _check_shapes(kf: KanFile, where: str) -> None:
    a = kf.audio
    batch = a.channels * a.windows
    expected: dict[str, tuple[tuple[int, ...], str]] = {"gain": ((batch,), "float32")}
    if kf.scheme == entropy.SCHEME:
        _check_coded(kf, where, expected)
        return
    for name, shape in inr.stored_shapes(kf.config).items():
        n = int(np.prod(shape))
        if kf.bits == 32 or name in kf.config.keep_float:
            expected[f"q.{name}"] = ((batch, n), "float32")
        else:
            expected[f"q.{name}"] = ((batch, packed_size(n, kf.bits)), "uint8")
            expected[f"lo.{name}"] = ((batch, shape[0]), "float32")
            expected[f"step.{name}"] = ((batch, shape[0]), "float32")
    _check_tensors(kf, where, expected)


def _check_coded(kf: KanFile, where: str, expected: dict) -> None:
    a = kf.audio
    batch, n_t = a.channels * a.windows, len(coded_names(kf.config))
    expected.update({"step": ((batch, n_t), "float32"), "side": ((batch, n_t, 3), "int16"),
                     "size": ((batch,), "int32")})
    for name in kf.config.keep_float:
        expected[f"q.{name}"] = ((batch, int(np.prod(inr.stored_shapes(kf.config)[name]))), "float32")
    size = kf.tensors.get("size")
    words = int(size.astype(np.int64).sum()) if isinstance(size, np.ndarray) and size.dtype == np.int32 else -1
    expected["ans"] = ((max(words, 0),), "uint32")
    _check_tensors(kf, where, expected)
    side = kf.tensors["side"].astype(np.int64)
    m, span, j = side[..., 0], side[..., 1], side[..., 2]
    if (size < 0).any() or (np.abs(m) > entropy.MAX_SPAN).any() or (span < 0).any() or (span > entropy.MAX_SPAN).any() \
            or (j < 0).any() or (j >= entropy.DECAY_ONE).any() or (kf.tensors["step"] <= 0).any() \
            or not ((np.abs(m) + span) * kf.tensors["step"].astype(np.float64) <= schema.MAX_VALUE).all():
        raise FormatError(f"{where}: the entropy coder's parameters (side, step, size) are out of range; "
                          "the file is damaged or crafted, re-encode the audio")
    live = np.flatnonzero(kf.tensors["size"] > 0)
    if live.size:  # one network decoded: a config that disagrees with the coded weights shows here
        kf.params(live[:1])


def _check_tensors(kf: KanFile, where: str, expected: dict) -> None:
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
