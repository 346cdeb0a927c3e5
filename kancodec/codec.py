"""The codec seam: what every way of coding audio provides, and the file object they share.

A codec (the fitted or predicted INRs of :mod:`kancodec.inrcodec`, the autoencoders of
:mod:`kancodec.aecodec`) turns audio into an :class:`Encoded` and back. Each ``Encoded`` is
stored in the one :mod:`~kancodec.container`, under the format tag of its codec; the
registry in :mod:`kancodec.kanfile` maps a file's tag to its codec, so decode, info, eval
and the benchmarks each have one path whatever made the file. A new codec is one module
that implements :class:`Codec` and one line in that registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

from . import container
from .audio import atomic_path
from .loss import si_snr, snr


class Encoded:
    """What every encoded clip is: audio facts, tensors, how it was encoded, and bytes.

    Subclasses (dataclasses) have ``audio`` (with ``sample_rate``, ``channels``, ``frames``,
    ``duration``), ``tensors`` and ``encode``, and say what else goes in the file
    (:meth:`fields`).
    """

    TAG: ClassVar[str]
    VERSION: ClassVar[int] = 5  # 2: the checksum covers the metadata too; 3: compact container; 4: INR post-filter; 5: its gains over time
    #: False for a clip read from a version 1 file, whose checksum covered the tensors only
    metadata_checked = True
    audio: object
    tensors: dict[str, np.ndarray]
    encode: dict

    def fields(self) -> dict:
        """The metadata entries of this kind, ``name -> JSON-able value`` (``encode`` last)."""
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return container.write_compact(self.TAG, self.VERSION, {**self.fields(), "encode": self.encode}, self.tensors)

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


@runtime_checkable
class Codec(Protocol):
    """One way of coding audio. Implementations are stateless singletons."""

    #: the container format tag of its files
    tag: str
    #: the :class:`Encoded` subclass it reads and writes
    file_type: type

    def encode(self, audio: np.ndarray, sr: int, **options) -> Encoded:
        """``(C, T)`` float32 audio at ``sr`` -> an encoded clip."""

    def decode(self, encoded: Encoded, sr: int, *, device: torch.device, **options) -> np.ndarray:
        """An encoded clip -> ``(C, round(frames × sr / sample_rate))`` float32 at ``sr``."""

    def stream(self, encoded: Encoded, sr: int, *, device: torch.device, **options) -> Iterator[np.ndarray]:
        """The samples of :meth:`decode` as ``(C, n)`` blocks in order (bounded memory where the codec can)."""

    def from_container(self, meta: dict[str, str], tensors: dict[str, np.ndarray], where: str) -> Encoded:
        """Check a container's metadata and tensors (its tag is this codec's) -> the clip; FormatError otherwise."""

    def describe(self, encoded: Encoded, size: int) -> dict:
        """Everything about a clip as JSON-able values (``kancodec info --json``); ``size`` is its file's bytes."""

    def summary(self, encoded: Encoded, size: int) -> list[tuple[str, str]]:
        """The same for people: ``(label, text)`` rows (``kancodec info`` and encode's summary)."""

    def brief(self, encoded: Encoded) -> dict:
        """A few facts for a score line (``kancodec eval``): at least ``label``, a short description."""


def bitrate(size: int, encoded: Encoded) -> dict:
    """The size facts every ``describe`` shares."""
    kbps = size * 8 / encoded.audio.duration / 1000
    return {"bytes": size, "kbps": round(kbps, 3), "pcm16_kbps": encoded.pcm_kbps(),
            "ratio_to_pcm16": round(encoded.pcm_kbps() / kbps, 3)}


def integrity(encoded: Encoded) -> dict:
    """What the file's checksum covered, for ``describe``."""
    return {"checksum": "metadata and tensors" if encoded.metadata_checked else "tensors only (version 1 file)"}


def integrity_rows(encoded: Encoded) -> list[tuple[str, str]]:
    """A ``summary`` row warning that a version 1 file's metadata was not checked (none otherwise)."""
    if encoded.metadata_checked:
        return []
    return [("checksum", "tensors only: a version 1 file, its metadata is not covered; re-encode to protect it")]


def fact(record: object, path: str, spec: str = "") -> str:
    """A value from a file's free-form ``encode`` record for a summary row: a number formatted
    with ``spec``, a string as it is (cut to 60 characters), anything else as its ``repr``
    (cut), and ``?`` where the record has no such entry. Never raises: ``info`` shows odd
    values as they are."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return "?"
        value = value[key]
    if type(value) in (int, float):
        try:
            return format(value, spec)
        except (OverflowError, ValueError):  # an integer too large to format as a float
            pass
    if isinstance(value, str):
        return value[:60]
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python prints
        return "(a number too long to show)"
    return text if len(text) <= 60 else text[:57] + "..."


def measure(out: np.ndarray, ref: np.ndarray) -> dict:
    """What an encode reached, stored in the file: SNR and SI-SNR (dB, mean over channels)
    of the decoded ``out`` against ``ref``, both ``(C, T)`` at the same rate."""
    o, r = torch.from_numpy(out), torch.from_numpy(ref)
    return {"snr_db": round(float(snr(o, r).mean()), 3), "si_snr_db": round(float(si_snr(o, r).mean()), 3)}


def measure_blocks(blocks: Iterable[np.ndarray], ref: np.ndarray) -> dict:
    """:func:`measure` over the decode given as ``(C, n)`` blocks in order, so a long file is
    never held whole: running float64 sums per channel (SNR, and SI-SNR with the means
    removed, both as :mod:`kancodec.loss` defines them)."""
    c = ref.shape[0]
    so, sr, soo, srr, sor, sdd = (np.zeros(c) for _ in range(6))
    n = 0
    for block in blocks:
        o, r = block.astype(np.float64), ref[:, n:n + block.shape[1]].astype(np.float64)
        so += o.sum(1); sr += r.sum(1); soo += (o * o).sum(1); srr += (r * r).sum(1)
        sor += (o * r).sum(1); sdd += ((o - r) ** 2).sum(1)
        n += block.shape[1]
    n = max(n, 1)
    snr_db = 10 * np.log10((srr + 1e-12) / (sdd + 1e-12))
    cov, vr, vo = sor - so * sr / n, srr - sr * sr / n, soo - so * so / n
    alpha = cov / (vr + 1e-8)
    target, noise = alpha * alpha * vr, np.maximum(vo - 2 * alpha * cov + alpha * alpha * vr, 0.0)
    si_snr_db = 10 * np.log10((target + 1e-8) / (noise + 1e-8))
    return {"snr_db": round(float(snr_db.mean()), 3), "si_snr_db": round(float(si_snr_db.mean()), 3)}


def fit_length(y: np.ndarray, n: int) -> np.ndarray:
    """``(C, T)`` padded with zeros or cut to ``(C, n)``: resampling rounds lengths."""
    return np.pad(y, ((0, 0), (0, max(0, n - y.shape[1]))))[:, :n]
