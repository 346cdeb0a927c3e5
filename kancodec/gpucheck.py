"""``kancodec bench gpu``: the figures a GPU machine is lent for, in one command.

``bench speed`` at 1, 8 and 64 windows (eager and compiled), then a 60 s speech file (the
bundled clip repeated, each repeat at a slightly different level so no two windows are
equal) encoded at the ``standard`` preset, with its real-time factor (encode seconds over
audio seconds; below 1 is faster than real time) and the windows per batch, decoded and
scored. ``tests/gpu/run.sh`` runs the GPU-marked tests, then this. ``dry_run``: the same
path on the CPU at toy sizes (1 window, 2 steps, 4 s), so the script is tested without a GPU.
"""

from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from . import api
from .audio import read_audio, write_audio
from .bench import run_speed
from .runtime import Event, resolve_device


def long_speech(seconds: float) -> tuple[np.ndarray, int]:
    """The bundled speech clip repeated to ``seconds``, each repeat scaled a little (0.6-1.0)."""
    with resources.as_file(resources.files("kancodec") / "data" / "demo_speech.flac") as path:
        x, sr = read_audio(path)
    n = int(seconds * sr)
    reps = -(-n // x.shape[1])
    gains = np.linspace(1.0, 0.6, reps, dtype=np.float32)
    return np.concatenate([x * g for g in gains], axis=1)[:, :n], sr


def run_gpu_check(device: str = "auto", dry_run: bool = False, console: Console | None = None) -> dict:
    """Speed rows and the long-file encode -> a JSON-able dict (also printed)."""
    console = console or Console()
    dev = resolve_device("cpu" if dry_run else device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    console.print(f"kancodec GPU check on {name}" + (" (dry run: CPU, toy sizes)" if dry_run else ""))
    speed = run_speed(device=str(dev), steps=2 if dry_run else 10, batches=[1] if dry_run else [1, 8, 64],
                      modes=[False] if dry_run else [False, True], console=console)
    seconds = 4.0 if dry_run else 60.0
    x, sr = long_speech(seconds)
    plan: dict = {}

    def progress(ev: Event) -> None:
        if ev.stage == "plan":
            plan.update(ev.info)
    with tempfile.TemporaryDirectory() as tmp:
        wav, kan = Path(tmp) / "long.wav", Path(tmp) / "long.kan"
        write_audio(wav, x, sr)
        t0 = time.perf_counter()
        kf = api.encode(wav, preset_name="standard", device=dev, progress=progress, **({"steps": 2} if dry_run else {}))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        enc = time.perf_counter() - t0
        size = kf.save(kan)
        t0 = time.perf_counter()
        y, _ = api.decode(kan, device=dev)
        dec = time.perf_counter() - t0
    encode = {"seconds_of_audio": seconds, "preset": "standard", "steps": kf.encode["settings"]["steps"],
              "encode_s": enc, "real_time_factor": enc / seconds, "windows": plan.get("windows"),
              "batch": plan.get("batch"), "batches": plan.get("batches"), "compiled": plan.get("compile"),
              "kbps": size * 8 / seconds / 1000, "si_snr_db": kf.encode.get("si_snr_db"), "decode_s": dec,
              "peak_gpu_gb": torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None}
    console.print(f"{seconds:.0f} s at the standard preset ({encode['steps']} steps): encode {enc:.1f} s, real-time "
                  f"factor {enc / seconds:.3f} ({'faster' if enc < seconds else 'slower'} than real time), "
                  f"{plan.get('windows')} windows in {plan.get('batches')} batch(es) of up to {plan.get('batch')}, "
                  f"{encode['kbps']:.1f} kbps, SI-SNR {encode['si_snr_db']} dB; decode {dec:.2f} s", highlight=False)
    return {"device": name, "dry_run": dry_run, "torch": torch.__version__, "speed": speed, "encode": encode}
