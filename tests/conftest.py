"""Shared fixtures: tiny models and short signals so the suite runs on 2 CPU cores in minutes."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from kancodec.audio import read_audio, resample
from kancodec.inr import KANConfig

TINY = KANConfig(n_freqs=6, hidden=(12, 8), grid=5, order=2)
# A tiny encode: short windows, few steps, eager (no compile), fixed seed.
TINY_ENCODE = dict(config=TINY, chunk=2048, overlap=128, steps=30, compile=False, device="cpu", seed=0)


def has_cuda() -> bool:
    return torch.cuda.is_available()


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
