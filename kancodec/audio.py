"""Audio in and out: reading, resampling, windowing and overlap-add, atomic writes.

Arrays here are ``(channels, frames)`` float32 NumPy arrays.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from .errors import InputError, OptionError, OutputError

WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
MIN_SR, MAX_SR = 8000, 192000
#: output rates a decode can be asked for
OUT_SR = (1000, 384000)
#: windows (or channels) whose peak is below this are stored as silence (gain 0), not coded
SILENCE = 1e-6


def intake(source: str | Path | np.ndarray, sr: int | None, what: str = "encode") -> tuple[np.ndarray, int]:
    """An audio path or array -> ``((C, T) float32, sample rate)``.

    Arrays are ``(C, T)`` or ``(T,)`` and need ``sr``; InputError if empty or not finite.
    """
    if isinstance(source, (str, Path)):
        return read_audio(source)
    if sr is None:
        raise InputError(f"{what}: an array needs its sample rate; pass sr=")
    x = np.atleast_2d(np.asarray(source, dtype=np.float32))
    if x.size == 0 or not np.isfinite(x).all():
        raise InputError(f"{what}: the array is empty or holds NaN/infinite samples; clean it first")
    return x, int(sr)


def check_out_rate(sr: int) -> int:
    """An output sample rate a decode can give, or OptionError."""
    if not OUT_SR[0] <= sr <= OUT_SR[1]:
        raise OptionError(f"{{sr}} {sr}: must be between {OUT_SR[0]} and {OUT_SR[1]} Hz", "sr")
    return sr


def read_stdin_audio() -> tuple[np.ndarray, int]:
    """Audio from standard input (a whole WAV, FLAC or OGG stream) -> ``((C, T) float32, sample rate)``."""
    import io
    import sys

    data = sys.stdin.buffer.read()
    if not data:
        raise InputError("standard input is empty; pipe a WAV, FLAC or OGG stream into kancodec encode -")
    return read_audio(io.BytesIO(data), "<stdin>")


def read_audio(path: str | Path | BinaryIO, where: str | None = None) -> tuple[np.ndarray, int]:
    """Read any file soundfile can (WAV, FLAC, OGG, …) -> ``((C, T) float32, sample rate)``;
    ``path`` may be an open binary file (``where`` names it in errors).

    Raises InputError for a missing or unreadable file, no samples, or NaN/Inf samples.
    """
    if where is None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise InputError(f"{path}: is a directory; give an audio file (WAV, FLAC or OGG)")
    source, path = (path, where) if where is not None else (str(path), path)
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise InputError(f"{path}: not a readable audio file ({str(e).strip() or 'unknown format'}); "
                         "give a WAV, FLAC or OGG file") from None
    if data.shape[0] == 0:
        raise InputError(f"{path}: holds no samples (zero-length audio); nothing to encode")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: contains NaN or infinite samples; repair or re-export the file")
    if not MIN_SR <= sr <= MAX_SR:
        raise InputError(f"{path}: sample rate {sr} Hz is outside {MIN_SR}-{MAX_SR} Hz; resample it first")
    return np.ascontiguousarray(data.T), int(sr)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of ``(C, T)`` -> ``(C, T')``.

    Output length is ``round(T * sr_out / sr_in)``. Going down, soxr's low-pass removes
    everything above the new Nyquist frequency, so nothing aliases.
    """
    if sr_in == sr_out:
        return x
    n_out = round(x.shape[1] * sr_out / sr_in)
    y = soxr.resample(x.T, sr_in, sr_out, quality="HQ").T
    if y.shape[1] < n_out:
        y = np.pad(y, ((0, 0), (0, n_out - y.shape[1])))
    return np.ascontiguousarray(y[:, :n_out], dtype=np.float32)


def n_windows(frames: int, chunk: int, overlap: int) -> int:
    """How many windows of ``chunk`` samples, overlapping by ``overlap``, cover ``frames``."""
    if frames <= chunk:
        return 1
    hop = chunk - overlap
    return 1 + math.ceil((frames - chunk) / hop)


#: a last window holding less than this share of a hop of new audio is not fitted: the fitting
#: rate is lowered just enough for the windows before it to hold the whole file (see :func:`tile_rate`)
TILE_SPARE = 0.25


def tile_rate(frames: int, sr: int, chunk: int, overlap: int, spare: float = TILE_SPARE) -> int:
    """The fitting rate for ``frames`` samples at ``sr``: ``sr`` itself, unless the last window
    would hold less than ``spare`` of a hop of audio that the window before it does not
    already hold. Then the highest rate at which one window fewer covers the file.

    Every window costs one whole network, however little of it is audio: a 1.5 s file of
    33,075 samples at 22.05 kHz is two windows of 32,768, the second holding 1,331 new
    samples, so it costs twice the bits of a file of 32,768 samples. Fitted at 21,845 Hz it
    is one window; only the band from 10.92 to 11.03 kHz is lost. With ``spare`` = 0.25 the
    rate falls by at most 20 % (two windows to one), by at most 1/(4n) for n windows left.
    """
    n = n_windows(frames, chunk, overlap)
    hop = chunk - overlap
    if n < 2 or frames - ((n - 1) * hop + overlap) >= spare * hop:
        return sr
    room = (n - 2) * hop + chunk  # samples that n - 1 windows hold
    rate = math.floor(sr * room / frames)
    while n_windows(round(frames * rate / sr), chunk, overlap) > n - 1:  # rounding of the resampled length
        rate -= 1
    return rate


def split_windows(x: np.ndarray, chunk: int, overlap: int) -> np.ndarray:
    """``(C, T)`` -> ``(C, W, chunk)`` windows; the last one is zero-padded."""
    c, t = x.shape
    w = n_windows(t, chunk, overlap)
    hop = chunk - overlap
    padded = np.zeros((c, (w - 1) * hop + chunk), dtype=np.float32)
    padded[:, :t] = x
    idx = np.arange(w)[:, None] * hop + np.arange(chunk)[None, :]
    return padded[:, idx]


def crossfade_weights(pos: np.ndarray, chunk: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Weight of one window at positions ``pos`` (in fitted samples from its start).

    Fade-in over ``[0, overlap)`` is ``sin²``, fade-out over the last ``overlap`` samples is
    ``cos²`` of the same phase, so a window's fade-out plus the next one's fade-in is 1 at
    every position, on any output grid.
    """
    w = np.ones_like(pos, dtype=np.float64)
    if overlap <= 0:
        return w
    if not first:
        a = np.clip(pos / overlap, 0.0, 1.0)
        w *= np.sin(0.5 * np.pi * a) ** 2
    if not last:
        hop = chunk - overlap
        a = np.clip((pos - hop) / overlap, 0.0, 1.0)
        w *= np.cos(0.5 * np.pi * a) ** 2
    return w


def _open_temp(dest: Path, force: bool, inputs: tuple = ()) -> tuple[int, str]:
    if dest.exists() or dest.is_symlink():
        if not force:
            raise OutputError(f"{dest}: already exists; pass --force to overwrite or choose another -o")
        if dest.is_dir():
            raise OutputError(f"{dest}: is a directory; give a file name")
        if not dest.is_file():
            raise OutputError(f"{dest}: is not a regular file (a device, pipe or socket); kancodec replaces only "
                              "regular files, choose another -o")
        for source in inputs:
            if Path(source).exists() and os.path.samefile(dest, source):
                raise OutputError(f"{dest}: is the input; writing it would destroy the input, choose another -o")
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{folder}: no such directory; create it or choose another -o")
    try:
        return tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part" + dest.suffix, dir=folder)
    except OSError as e:
        raise OutputError(f"{folder}: cannot write here ({e.strerror}); choose another -o") from None


def check_writable(dest: str | Path, force: bool = False, inputs: tuple = ()) -> None:
    """Raise OutputError now, before long work, if ``dest`` could not be written later:
    it exists (without ``force``), is not a regular file, or is one of the ``inputs``."""
    fd, tmp = _open_temp(Path(dest), force, inputs)
    os.close(fd)
    os.unlink(tmp)


@contextmanager
def atomic_path(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success.

    Raises OutputError if ``dest`` exists and ``force`` is false, or its folder is not writable.
    """
    dest = Path(dest)
    fd, tmp = _open_temp(dest, force)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        if dest.exists() and not dest.is_file():  # became a device, pipe or directory meanwhile
            raise OutputError(f"{dest}: is not a regular file; kancodec replaces only regular files, choose another -o")
        os.replace(tmp_path, dest)
    except OSError as e:  # a full disk, a quota, a vanished folder: one line, and the temporary file goes
        raise OutputError(f"{dest}: cannot write ({e.strerror or e}); free some space or choose another -o") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def check_output_format(path: str | Path) -> str:
    """The soundfile format for an output path, or OutputError listing the choices."""
    ext = Path(path).suffix.lower()
    if ext not in WRITE_FORMATS:
        raise OutputError(f"{path}: cannot write {ext or 'files without an extension'}; "
                          f"use one of: {', '.join(WRITE_FORMATS)}")
    return WRITE_FORMATS[ext]


def write_audio(path: str | Path, x: np.ndarray, sr: int, force: bool = False, subtype: str | None = None) -> None:
    """Write ``(C, T)`` float audio to WAV or FLAC (by extension), atomically.

    Samples are clipped to [-1, 1]; WAV is 16-bit PCM unless ``subtype`` says otherwise.
    """
    write_blocks(path, [x], sr, x.shape[0], force=force, subtype=subtype)


def write_blocks(path: str | Path, blocks: Iterable[np.ndarray], sr: int, channels: int, force: bool = False,
                 subtype: str | None = None) -> int:
    """Write ``(C, n)`` float blocks one after another to WAV or FLAC, atomically, so a long
    decode never holds its whole output; samples clipped as :func:`write_audio`. Returns the
    frames written."""
    fmt = check_output_format(path)
    if fmt == "FLAC" and channels > 8:
        raise OutputError(f"{path}: FLAC holds at most 8 channels and this audio has {channels}; write a .wav instead")
    frames = 0
    with atomic_path(path, force) as tmp:
        try:
            with sf.SoundFile(str(tmp), "w", samplerate=sr, channels=channels, format=fmt,
                              subtype=subtype or "PCM_16") as f:
                for block in blocks:
                    f.write(np.clip(block, -1.0, 1.0).T)
                    frames += block.shape[1]
        except sf.LibsndfileError as e:  # libsndfile reports a full disk as its own error, not OSError
            raise OSError(str(e)) from None
    return frames
