"""``kancodec bench quality``: the paper's Table 1 protocol on any folder of audio.

Each file is mixed to mono, resampled to ``sr`` (22.05 kHz) and cropped to ``length``
samples (32,768; 65,536 for the paper's 3 s table) starting where the sound first
exceeds 1% of its peak, so leading silence is skipped; files that are too short are
skipped and counted. Every variant (an INR family, or one value of a ``--sweep``) is fitted
to all clips through the real codec (``kancodec.encode``: the clips are fitted as one
batch of networks, quantised, stored, decoded), then scored with :mod:`kancodec.metrics`.
Codec baselines run on the same clips: Opus (soundfile's OGG/Opus writer, at 24 kHz) at
the bitrates asked for, and 8-bit μ-law WAV.

kbps of an INR counts what each clip's networks take in the file (bit-packed weights,
their scales, the gain), not the file header (~2 kB per file, shared by all its
windows); Opus and μ-law kbps are the whole encoded file. Results go to
``OUT/results.jsonl`` one row per (variant, clip) as they finish, so an interrupted run
resumes where it stopped; the summary (mean ± std) is written as Markdown, CSV and JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from . import inr, metrics
from .audio import atomic_path, read_audio, resample
from .corpus import find_audio, sound_start
from .errors import InputError, KanError, OutputError



def _sweepable() -> dict:
    """Every INR setting a sweep can vary, from the configs themselves: numbers as their type,
    ``hidden`` as widths; and the learning rate."""
    out: dict = {}
    for cls in inr.INR_CONFIGS.values():
        default = cls()
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            if f.init and f.name != "seed" and (f.name == "hidden" or type(value) in (int, float)):
                out.setdefault(f.name, "widths" if f.name == "hidden" else type(value))
    return {**out, "lr": float}


SWEEPABLE = _sweepable()
SHOWN = ("pesq", "lsd", "si_snr", "stoi", "snr", "psnr", "mse", "wasserstein")


@dataclass(frozen=True)
class Variant:
    """One row of the table: an INR config (and learning rate), or a codec baseline."""

    name: str
    config: inr.INR | None = None
    lr: float | None = None
    codec: str | None = None  # "opus" or "mulaw"
    kbps: float | None = None


@dataclass
class Clip:
    name: str
    audio: np.ndarray  # (length,) float32 at the bench rate


@dataclass
class Plan:
    variants: list[Variant]
    steps: int
    bits: int
    sr: int
    length: int
    seed: int
    skipped: list[str] = field(default_factory=list)

    def settings(self) -> dict:
        return {"steps": self.steps, "bits": self.bits, "sr": self.sr, "length": self.length, "seed": self.seed}


def crop(x: np.ndarray, length: int) -> np.ndarray | None:
    """``(n,)`` -> ``(length,)`` from the first sample above 1% of the peak, or None if too short."""
    start = max(0, min(sound_start(x), len(x) - length))
    return x[start:start + length] if len(x) >= length else None


def load_clips(data: Path, sr: int, length: int, limit: int | None) -> tuple[list[Clip], list[str]]:
    clips, skipped = [], []
    for path in find_audio(data):
        if limit and len(clips) >= limit:
            break
        x, rate = read_audio(path)
        y = crop(resample(x.mean(0, keepdims=True), rate, sr)[0], length)
        name = str(path.relative_to(data))
        if y is None or not np.any(y):
            skipped.append(name)
            continue
        clips.append(Clip(name, np.ascontiguousarray(y, dtype=np.float32)))
    if not clips:
        raise InputError(f"{data}: no file has {length} samples ({length / sr:.2f} s) of sound at {sr} Hz; "
                         "use shorter --length or longer files")
    return clips, skipped


def parse_sweep(sweep: str) -> tuple[str, list]:
    """``"grid=1,5,10"`` -> ``("grid", [1, 5, 10])``; widths as ``48x24x12``."""
    key, sep, values = sweep.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in SWEEPABLE or not values.strip():
        raise KanError(f"--sweep {sweep!r}: give NAME=V1,V2,… with NAME one of: {', '.join(SWEEPABLE)} "
                       "(e.g. grid=1,5,10,12,17 or hidden=32x16x8,48x24x12)")
    kind = SWEEPABLE[key]
    try:
        parsed = [tuple(int(w) for w in v.split("x")) if kind == "widths" else kind(v) for v in values.split(",") if v]
    except ValueError:
        raise KanError(f"--sweep {sweep!r}: values must be {'widths like 48x24x12' if kind == 'widths' else kind.__name__}s") from None
    return key, parsed


def make_variants(archs: list[str], sweep: str | None, opus: list[float], mulaw: bool) -> list[Variant]:
    out = []
    if sweep:
        key, values = parse_sweep(sweep)
        fits = [a for a in archs if key == "lr" or key in {f.name for f in dataclasses.fields(inr.INR_CONFIGS[a])}]
        if not fits:
            raise KanError(f"--sweep {key} applies to none of --arch {','.join(archs)}; "
                           f"it is a setting of: {', '.join(a for a in inr.ARCHS if key in {f.name for f in dataclasses.fields(inr.INR_CONFIGS[a])})}")
        for arch in fits:  # families without the setting are left out of a sweep
            for v in values:
                label = "x".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}"
                if key == "lr":
                    out.append(Variant(f"{arch} lr={label}", inr.make_config(arch), lr=v))
                else:
                    out.append(Variant(f"{arch} {key}={label}", inr.make_config(arch, **{key: v})))
    else:
        out = [Variant(arch, inr.make_config(arch)) for arch in archs]
    out += [Variant(f"opus {k:g} kbps", codec="opus", kbps=k) for k in opus]
    if mulaw:
        out.append(Variant("mu-law 8 bit", codec="mulaw"))
    return out


def _opus(x: np.ndarray, sr: int, kbps: float) -> tuple[np.ndarray, int]:
    """Round trip through OGG/Opus at 24 kHz, at the libsndfile compression level (0-1, higher
    = fewer bits; the only bitrate control it offers for Opus) whose file is nearest ``kbps``,
    found by bisection. -> (audio at ``sr``, file bytes)."""
    y = resample(x[None], sr, 24000)[0]
    seconds = len(x) / sr

    def encode(level: float) -> io.BytesIO:
        buf = io.BytesIO()
        sf.write(buf, y, 24000, format="OGG", subtype="OPUS", compression_level=level)
        return buf

    lo, hi = 0.0, 1.0
    best = encode(1.0)
    for _ in range(12):
        mid = (lo + hi) / 2
        buf = encode(mid)
        rate = buf.tell() * 8 / seconds / 1000
        if abs(rate - kbps) < abs(best.tell() * 8 / seconds / 1000 - kbps):
            best = buf
        lo, hi = (mid, hi) if rate > kbps else (lo, mid)
    size = best.tell()
    best.seek(0)
    dec, rate = sf.read(best, dtype="float32")
    return resample(dec[None], rate, sr)[0][: len(x)], size


def _mulaw(x: np.ndarray, sr: int) -> tuple[np.ndarray, int]:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="ULAW")
    size = buf.tell()
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0], size


def _run_codec(v: Variant, clips: list[Clip], sr: int) -> list[dict]:
    rows = []
    for c in clips:
        t0 = time.perf_counter()
        y, size = _opus(c.audio, sr, v.kbps) if v.codec == "opus" else _mulaw(c.audio, sr)
        secs = time.perf_counter() - t0
        y = np.pad(y, (0, max(0, len(c.audio) - len(y))))[: len(c.audio)]
        rows.append({"variant": v.name, "clip": c.name, "params": 0, "kbps": size * 8 / (len(c.audio) / sr) / 1000,
                     "fit_s": secs, **metrics.score(c.audio, y, sr)})
    return rows


def _run_inr(v: Variant, clips: list[Clip], plan: Plan, device: str | None, progress) -> list[dict]:
    from .api import encode

    x = np.stack([c.audio for c in clips])  # clips as channels: one network each, fitted as one batch
    kf = encode(x, plan.sr, steps=plan.steps, lr=v.lr, bits=plan.bits, config=v.config, chunk=plan.length,
                overlap=0, seed=plan.seed, device=device, progress=progress)
    from .api import decode

    y, _ = decode(kf, device=device)
    payload = sum(t.nbytes for t in kf.tensors.values()) / len(clips)
    kbps = payload * 8 / (plan.length / plan.sr) / 1000
    secs = kf.encode["seconds"] / len(clips)
    return [{"variant": v.name, "clip": c.name, "params": v.config.n_params, "kbps": kbps, "fit_s": secs,
             **metrics.score(c.audio, y[i], plan.sr)} for i, c in enumerate(clips)]


def _row_json(row: dict) -> str:
    return json.dumps({k: (str(v) if isinstance(v, metrics.NotAvailable) or (isinstance(v, float) and not math.isfinite(v))
                           else v) for k, v in row.items()}, sort_keys=True)


def _resume(path: Path, settings: dict, fresh: bool) -> dict[tuple[str, str], dict]:
    """Rows already in ``results.jsonl`` with the same settings (or none when ``fresh``)."""
    if fresh or not path.exists():
        return {}
    lines = path.read_text().splitlines()
    head = json.loads(lines[0]) if lines else {}
    if head.get("settings") != settings:
        raise OutputError(f"{path} holds results made with other settings ({head.get('settings')}); "
                          "pass --fresh to start over or choose another --out")
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interruption
        done[(row["variant"], row["clip"])] = row
    return done


def check_resume(out: Path, plan, fresh: bool) -> int:
    """How many finished rows ``out`` holds for ``plan`` (anything with ``settings()``: a
    :class:`Plan`, ``bench rd``'s plan); OutputError if they were made with other settings."""
    return len(_resume(out / "results.jsonl", plan.settings(), fresh))


def open_results(out: Path, settings: dict, fresh: bool) -> tuple[Path, dict[tuple[str, str], dict]]:
    """Create ``out`` and its ``results.jsonl`` (its first line the settings) unless it is
    being resumed -> ``(the file, the rows already done)``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"--out {out}: cannot create it ({e.strerror}); choose another folder") from None
    results = out / "results.jsonl"
    done = _resume(results, settings, fresh)
    if fresh or not results.exists():
        results.write_text(json.dumps({"settings": settings}, sort_keys=True) + "\n")
    return results, done


def summarise(rows: list[dict], variants: list[Variant]) -> list[dict]:
    """Mean and std of every metric per variant (n/a values left out, their count kept)."""
    out = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v.name]
        if not mine:
            continue
        s = {"variant": v.name, "clips": len(mine), "params": mine[0]["params"]}
        for key in ("kbps", "fit_s", *SHOWN):
            vals = [r[key] for r in mine if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            s[key] = float(np.mean(vals)) if vals else None
            s[f"{key}_std"] = float(np.std(vals)) if vals else None
            s[f"{key}_n"] = len(vals)
        out.append(s)
    return out


def _cell(s: dict, key: str) -> str:
    if s[key] is None:
        return "n/a"
    digits = 2 if key in ("kbps", "fit_s", "si_snr", "snr", "psnr") else 3
    if key in ("mse", "wasserstein"):
        return f"{s[key]:.3g} ± {s[key + '_std']:.2g}"
    text = f"{s[key]:.{digits}f} ± {s[key + '_std']:.{digits}f}"
    return text + (f" (n={s[key + '_n']})" if s[key + "_n"] < s["clips"] else "")


COLUMNS = [("variant", "INR / codec"), ("params", "params"), ("kbps", "kbps"), ("pesq", "PESQ ↑"), ("lsd", "LSD ↓"),
           ("si_snr", "SI-SNR dB ↑"), ("stoi", "STOI ↑"), ("snr", "SNR dB ↑"), ("psnr", "PSNR dB ↑"), ("mse", "MSE ↓"),
           ("wasserstein", "spec. Wasserstein ↓"), ("fit_s", "fit s/clip")]


def table_cells(s: dict) -> list[str]:
    return [s["variant"], f"{s['params']:,}" if s["params"] else "-", *(_cell(s, k) for k, _ in COLUMNS[2:])]


def write_reports(out: Path, summary: list[dict], plan: Plan, n_clips: int) -> None:
    head = [label for _, label in COLUMNS]
    md = [f"kancodec bench quality: {n_clips} clips of {plan.length} samples at {plan.sr} Hz, {plan.steps} steps, "
          f"{plan.bits}-bit weights, seed {plan.seed} (mean ± std)", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(table_cells(s)) + " |" for s in summary]
    with atomic_path(out / "summary.md", force=True) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with atomic_path(out / "summary.json", force=True) as tmp:
        tmp.write_text(json.dumps({"settings": plan.settings(), "clips": n_clips, "skipped": plan.skipped,
                                   "summary": summary}, indent=2, sort_keys=True))
    with atomic_path(out / "summary.csv", force=True) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)


def run_quality(data: Path, out: Path, plan: Plan, clips: list[Clip], device: str | None = None, fresh: bool = False,
                on_start: Callable[[str, int], None] | None = None, on_fit=None,
                on_done: Callable[[str, int], None] | None = None) -> list[dict]:
    """Fit/encode every variant on every clip (skipping rows already in ``out/results.jsonl``).

    Returns the summary rows (see :func:`summarise`).
    """
    from .runtime import batch_size, resolve_device

    group = batch_size(resolve_device(device), plan.length)
    results, done = open_results(out, plan.settings(), fresh)
    rows = list(done.values())
    for v in plan.variants:
        todo = [c for c in clips if (v.name, c.name) not in done]
        if on_start:
            on_start(v.name, len(clips) - len(todo))
        if not todo:
            continue
        for i in range(0, len(todo), group):  # saved group by group, so a stop loses one group at most
            part = todo[i:i + group]
            new = _run_codec(v, part, plan.sr) if v.codec else _run_inr(v, part, plan, device, on_fit)
            with open(results, "a") as f:
                f.writelines(_row_json(r) + "\n" for r in new)
            rows += new
            if on_done:
                on_done(v.name, len(part))
    summary = summarise(rows, plan.variants)  # n/a and infinite values are left out there
    write_reports(out, summary, plan, len(clips))
    return summary
