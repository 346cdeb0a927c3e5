"""Training data: find audio under a folder, resample once into a cache, split, crop.

Every file is read once, mixed to mono, resampled to the model's rate (soxr) and cached as
int16 ``.npy`` under ``platformdirs.user_cache_dir("kancodec")/audio<sr>/``, keyed by the
file's path, size and modification time, so later runs start in seconds and a changed file is
read again. Crops are ``window`` samples, peak-normalised; a clip shorter than one window
is padded with silence at a random place, and one shorter than ``min_seconds`` is skipped
(both are reported by name).

The validation split holds out whole folders (one folder per speaker, level or prompt set
in the corpus that ``models/build_corpus.sh`` writes) when the data has several folders,
otherwise single files; the choice is a hash of the relative path, so it is stable across
runs and machines.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import platformdirs

from .audio import read_audio, resample
from .errors import InputError, KanError

AUDIO_EXT = (".wav", ".flac", ".ogg")
SPLITS = ("auto", "folder", "file")


def find_audio(data: str | Path) -> list[Path]:
    """Every WAV/FLAC/OGG file under ``data`` (symlinked folders followed, each once), sorted;
    InputError if there is none."""
    data = Path(data)
    if not data.is_dir():
        raise InputError(f"{data}: not a directory; give a folder of WAV/FLAC/OGG files (searched recursively)")
    files, seen = [], set()
    for root, dirs, names in os.walk(data, followlinks=True):  # a corpus of symlinked folders works too
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree: walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()  # which name a folder reached twice keeps must not depend on the listing order
        files += [Path(root) / n for n in names if Path(n).suffix.lower() in AUDIO_EXT]
    files = sorted(p for p in files if p.is_file())
    if not files:
        raise InputError(f"{data}: no .wav, .flac or .ogg files in it (searched recursively)")
    return files


def sound_start(x: np.ndarray) -> int:
    """Index of the first sample of ``(n,)`` above 1% of its peak (0 for silence)."""
    a = np.abs(x)
    return int(np.argmax(a > 0.01 * a.max()))


def cache_dir(sr: int) -> Path:
    return Path(os.environ.get("KANCODEC_CACHE") or platformdirs.user_cache_dir("kancodec")) / f"audio{sr}"


def _key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _hash01(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass
class Corpus:
    """Cached clips (``(n,)`` int16 arrays, memory-mapped) split into train and validation."""

    sr: int
    train: list[np.ndarray]
    val: list[np.ndarray]
    train_names: list[str]
    val_names: list[str]
    skipped: list[str]
    padded: int
    split: str


def load_corpus(data: str | Path, sr: int, window: int, val_fraction: float = 0.05, split: str = "auto",
                min_seconds: float = 0.25, progress: Callable[[int, int, str], None] | None = None) -> Corpus:
    """Read (or reuse the cache of) every clip under ``data`` and split it.

    ``progress(done, total, name)`` is called per file. Unreadable files are skipped and
    named in ``Corpus.skipped``, like too-short ones.
    """
    if split not in SPLITS:
        raise KanError(f"--split {split!r}: choose one of: {', '.join(SPLITS)}")
    if not 0 < val_fraction < 1:
        raise KanError(f"--val-fraction {val_fraction}: must be between 0 and 1 (e.g. 0.05)")
    data = Path(data)
    files = find_audio(data)
    cache = cache_dir(sr)
    cache.mkdir(parents=True, exist_ok=True)
    folders = {p.parent for p in files}
    if split == "auto":
        split = "folder" if len(folders) >= 4 else "file"
    out = Corpus(sr, [], [], [], [], [], 0, split)
    for i, path in enumerate(files):
        name = str(path.relative_to(data))
        if progress:
            progress(i, len(files), name)
        target = cache / f"{_key(path)}.npy"
        if not target.exists():
            try:
                x, rate = read_audio(path)
            except InputError:
                out.skipped.append(f"{name} (unreadable)")
                continue
            y = resample(x.mean(0, keepdims=True), rate, sr)[0]
            peak = float(np.abs(y).max())
            q = np.round(np.clip(y / max(peak, 1.0), -1, 1) * 32767).astype(np.int16)
            tmp = target.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, q)
            os.replace(tmp, target)
        clip = np.load(target, mmap_mode="r")
        if len(clip) < min_seconds * sr or not np.any(clip):
            out.skipped.append(f"{name} ({'silent' if len(clip) >= min_seconds * sr else 'too short'})")
            continue
        out.padded += len(clip) < window
        held = _hash01(str(path.parent.relative_to(data)) if split == "folder" else name) < val_fraction
        (out.val if held else out.train).append(clip)
        (out.val_names if held else out.train_names).append(name)
    if progress:
        progress(len(files), len(files), "")
    if not out.train:
        raise InputError(f"{data}: no usable clip for training ({len(out.skipped)} skipped: "
                         f"{', '.join(out.skipped[:3])}); give longer or readable files")
    if not out.val:  # tiny data sets: hold out the last clip rather than validate on nothing
        out.val.append(out.train.pop())
        out.val_names.append(out.train_names.pop())
    return out


def crop(clip: np.ndarray, window: int, rng: np.random.Generator, tries: int = 4) -> np.ndarray:
    """A random ``(window,)`` float32 crop, peak-normalised; short clips are padded with
    silence at a random place. Nearly silent crops are redrawn up to ``tries`` times."""
    for _ in range(tries):
        if len(clip) >= window:
            start = int(rng.integers(0, len(clip) - window + 1))
            x = np.asarray(clip[start:start + window], dtype=np.float32)
        else:
            x = np.zeros(window, np.float32)
            start = int(rng.integers(0, window - len(clip) + 1))
            x[start:start + len(clip)] = clip
        peak = np.abs(x).max()
        if peak > 0.02 * 32767:
            break
    return x / max(peak, 1.0)


def val_crops(clips: list[np.ndarray], window: int, n: int) -> np.ndarray:
    """``(min(n, len(clips)), window)`` fixed validation crops, the same every run: ``n``
    clips spread evenly over the (sorted) validation set, preferring clips of at least one
    window, each cut from where the sound starts (first sample above 1% of the peak) and
    peak-normalised."""
    long = [c for c in clips if len(c) >= window]
    pool = long if len(long) >= n else clips
    picks = [pool[i * len(pool) // min(n, len(pool))] for i in range(min(n, len(pool)))]
    out = []
    for clip in picks:
        x = np.asarray(clip, dtype=np.float32)
        start = max(0, min(sound_start(x), len(x) - window))
        y = np.zeros(window, np.float32)
        seg = x[start:start + window]
        y[:len(seg)] = seg
        out.append(y / max(np.abs(y).max(), 1.0))
    return np.stack(out)
