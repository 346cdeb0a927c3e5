"""Shared fixtures: tiny models and short signals so the suite runs on 2 CPU cores in minutes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import json
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import load as st_load
from typer.testing import CliRunner

from kancodec import container
from kancodec.audio import read_audio, resample
from kancodec.cli import app
from kancodec.inr import KANConfig

TINY = KANConfig(n_freqs=6, hidden=(12, 8), grid=5, order=2)
# A tiny encode: short windows, few steps, eager (no compile), fixed seed.
TINY_ENCODE = dict(config=TINY, chunk=2048, overlap=128, steps=30, compile=False, device="cpu", seed=0)
# The same tiny model as encode options, so each CLI encode takes about a second on CPU.
TINY_ARGS = ["--n-freqs", "6", "--hidden", "12,8", "--grid", "5", "--chunk", "2048", "--overlap", "128",
             "--steps", "5", "--compile", "no", "--device", "cpu"]


def has_cuda() -> bool:
    return torch.cuda.is_available()


runner = CliRunner()


def cli(*args):
    """Run the ``kancodec`` command line in-process with these arguments (any type; made strings)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(res, code: int, *words: str):
    """The command failed with exit ``code`` and printed exactly one ``error:`` line naming ``words``."""
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def interrupt_at(step: int):
    """A training progress callback that presses Ctrl-C when training step ``step`` is done."""
    def stop(ev):
        if ev.stage == "train" and ev.done == step:
            raise KeyboardInterrupt
    return stop


def leftovers(folder):
    """Temporary or partial files left in a folder."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or ".part" in p.name]


def rewrite_metadata(data: bytes, change, rehash: bool = True) -> bytes:
    """The file with its metadata changed; ``rehash``: and its checksum recomputed, as a
    crafter would, so that the checks behind the checksum are what is tested. ``change``
    sees the metadata strings of either container (compact files: as a reader sees them)."""
    if container.is_compact(data):
        return rewrite_compact(data, lambda meta, tensors: change(meta), rehash)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header["__metadata__"])
    if rehash:
        meta = header["__metadata__"]
        meta["kancodec.sha256"] = container.checksum(st_load(data), meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n:]


def version2(kf) -> bytes:
    """An INR clip as kancodec 0.1 wrote it: a version 2 safetensors file, 8-bit affine-per-row."""
    from kancodec import inr
    from kancodec.inrfile import AFFINE, KanFile
    from kancodec.quant import quantise

    compact = inr.compact(kf.config, kf.params())
    bits = 32 if kf.bits == 32 else 8
    old = KanFile(kf.config, kf.audio, bits, {**quantise(compact, bits, kf.config.keep_float), "gain": kf.gains},
                  kf.encode, AFFINE)
    return container.write(old.TAG, 2, {**old.fields(), "encode": old.encode}, old.tensors)


def rewrite_compact(data: bytes, change, rehash: bool = True) -> bytes:
    """A compact (version 3) file rewritten after ``change(meta strings, tensors)`` edits its
    metadata strings and/or tensors in place (``rehash``: with a valid checksum)."""
    meta, tensors, _ = container._read_compact(data, "test", None)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    change(meta, tensors)
    fields = {}
    for key, value in meta.items():
        short = key[len(container.PREFIX):] if key.startswith(container.PREFIX) else key
        try:
            parsed = json.loads(value) if short not in ("format", "version") else value
        except (ValueError, TypeError, RecursionError):  # kept as the string it is
            parsed = value
        fields[short] = parsed
    out = container.write_compact(str(fields.get("format", "")), 3, fields, tensors)  # fields' own tag/version win
    if not rehash:
        out = out[:-8] + data[-8:]
    return out


@pytest.fixture(scope="session")
def speech() -> tuple[np.ndarray, int]:
    """The bundled demo clip (real speech), mono float32 at 22.05 kHz."""
    with resources.as_file(resources.files("kancodec") / "data" / "demo_speech.flac") as p:
        x, sr = read_audio(p)
    return x, sr


@pytest.fixture()
def tone_wav(tmp_path: Path) -> Path:
    """0.5 s of a 440 Hz tone at 8 kHz, mono WAV."""
    sr = 8000
    t = np.arange(sr // 2) / sr
    p = tmp_path / "tone.wav"
    sf.write(p, 0.5 * np.sin(2 * np.pi * 440 * t), sr)
    return p


@pytest.fixture()
def speech_wav(tmp_path: Path, speech) -> Path:
    """0.4 s of real speech resampled to 8 kHz, mono WAV."""
    x, sr = speech
    y = resample(x[:, 22050:22050 + 8820], sr, 8000)
    p = tmp_path / "speech.wav"
    sf.write(p, y.T, 8000)
    return p


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KANCODEC_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def corpus(tmp_path, speech, cache) -> Path:
    """Pieces of the demo clip in 4 speaker folders, plus one clip too short to use."""
    x, sr = speech
    root = tmp_path / "corpus"
    for i in range(4):
        (root / f"spk{i}").mkdir(parents=True)
        for j in range(2):
            start = (2 * i + j) * 6000
            sf.write(root / f"spk{i}" / f"c{j}.wav", x[0, start:start + 9000 - 3000 * j], sr)
    sf.write(root / "spk0" / "blip.wav", x[0, 30000:30500], sr)
    return root
