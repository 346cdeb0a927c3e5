"""``kancodec bench rd``: rate–distortion of the INR codec against Opus, MP3, μ-law and FLAC.

Clips are loaded as ``bench quality`` loads them (:func:`kancodec.quality.load_clips`: mono,
resampled to ``sr``, cropped to ``length`` samples from the first sound). Every point is one
codec at one requested bitrate, run on every clip on its own:

- **INR**: ``kancodec.encode(clip, sr=sr, kbps=K, steps=steps, device=device)``, decoded with
  ``kancodec.decode``; its size is the whole ``.kan`` file (``len(encoded.to_bytes())``,
  header included).
- **Opus**: soundfile's OGG/Opus at 24 kHz, at the compression level whose file is nearest
  the request (:func:`kancodec.quality._opus`).
- **MP3**: libsndfile's MPEG Layer III writer (LAME) at ``sr`` (or the next rate MP3 has),
  at the ``bitrate_mode`` (average or constant) and ``compression_level`` whose file is
  nearest the request, found by bisection on the measured sizes (:func:`_mp3`).
- **μ-law**: 8-bit μ-law WAV (one point, ~8 bits × sr).
- **FLAC**: the 16-bit lossless size only (no distortion to measure).

kbps is always measured: encoded bytes × 8 / clip seconds / 1000 (the whole file, headers
included); a codec that cannot reach the request lands where it can, and the table says
where. Each clip is scored with :func:`kancodec.metrics.score` on PESQ, STOI, SI-SNR and LSD.

Rows go to ``OUT/results.jsonl`` (one per point and clip, as they finish), so an interrupted
run resumes where it stopped (:func:`kancodec.quality._resume`); the report is written as
``rd.json`` (every point: codec, requested and real kbps, metrics per clip and mean),
``rd.md`` and, when matplotlib is installed, ``rd.png`` (PESQ against kbps).
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from . import metrics
from .api import decode, encode
from .audio import atomic_path, resample
from .errors import KanError, OptionError
from .quality import Clip, Variant, _cell, _mulaw, _opus, _row_json, open_results, summarise

RD_METRICS = ("pesq", "stoi", "si_snr", "lsd")
#: rates an MP3 stream can have (MPEG-1, -2 and 2.5 Layer III)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
MP3_TOP = 0.999  # libsndfile refuses compression_level 1.0 for MP3
MP3_MODES = ("AVERAGE", "CONSTANT")
SEARCH_STEPS = 10
CODECS = ("inr", "opus", "mp3", "mulaw", "flac")
TICKS = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536)


@dataclass
class RdPlan:
    points: list[Variant]
    steps: int
    sr: int
    length: int
    skipped: list[str] = field(default_factory=list)

    def settings(self) -> dict:
        """What a resumed run must share (``bench`` keeps ``bench quality`` rows out)."""
        return {"bench": "rd", "steps": self.steps, "sr": self.sr, "length": self.length}


def make_points(kbps: list[float], opus: list[float], mp3: list[float], mulaw: bool = True,
                flac: bool = True) -> list[Variant]:
    """The points to measure, INR first; repeated bitrates once. KanError when a codec asked
    for cannot be written by this soundfile/libsndfile."""
    if opus and "OPUS" not in sf.available_subtypes("OGG"):
        raise KanError(f"--opus: this libsndfile ({sf.__libsndfile_version__}) cannot write OGG/Opus "
                       "(needs libsndfile 1.0.29+); pass --opus ''")
    if mp3 and "MP3" not in sf.available_formats():
        raise KanError(f"--mp3: this libsndfile ({sf.__libsndfile_version__}) cannot write MP3 (needs libsndfile "
                       "1.1+ built with LAME and mpg123); pass --mp3 ''")
    for option, values in (("--kbps", kbps), ("--opus", opus), ("--mp3", mp3)):
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise KanError(f"{option} {bad[0]}: give bitrates in kbps above 0, e.g. 24,48")
    from .rate import check_kbps

    for k in kbps:
        check_kbps(k)  # the INR codec's own range (OptionError naming kbps: --kbps on the command line)
    out = [Variant(f"{codec} {k:g} kbps", codec=codec, kbps=float(k))
           for codec, values in (("inr", kbps), ("opus", opus), ("mp3", mp3)) for k in dict.fromkeys(values)]
    if mulaw:
        out.append(Variant("mu-law 8 bit", codec="mulaw"))
    if flac:
        out.append(Variant("flac", codec="flac"))
    return out


def _kbps(size: int, seconds: float) -> float:
    return size * 8 / seconds / 1000


def _mp3_rate(sr: int) -> int:
    return next((r for r in MP3_RATES if r >= sr), MP3_RATES[-1])


def mp3_bytes(y: np.ndarray, rate: int, mode: str, level: float) -> bytes:
    """``(n,)`` at an MP3 rate -> the MP3 file libsndfile writes with these settings."""
    buf = io.BytesIO()
    sf.write(buf, y, rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=level, bitrate_mode=mode)
    return buf.getvalue()


def _mp3(x: np.ndarray, sr: int, kbps: float) -> tuple[np.ndarray, int, dict]:
    """Round trip through MP3 at the setting whose file is nearest ``kbps``.

    libsndfile's MP3 writer takes ``bitrate_mode`` and a ``compression_level`` 0-1 (higher =
    fewer bits: constant bitrate steps through MPEG's bitrate table, average moves
    smoothly); each mode is bisected on the measured file size and the nearest file kept.
    -> (audio at ``sr``, file bytes, the setting).
    """
    rate = _mp3_rate(sr)
    y = x if rate == sr else resample(x[None], sr, rate)[0]
    seconds = len(x) / sr
    best: tuple[float, bytes, dict] | None = None
    for mode in MP3_MODES:
        lo, hi = 0.0, MP3_TOP
        for _ in range(SEARCH_STEPS):
            mid = (lo + hi) / 2
            data = mp3_bytes(y, rate, mode, mid)
            real = _kbps(len(data), seconds)
            if best is None or abs(real - kbps) < abs(best[0] - kbps):
                best = (real, data, {"bitrate_mode": mode, "compression_level": mid, "rate": rate})
            lo, hi = (mid, hi) if real > kbps else (lo, mid)
    real, data, setting = best
    dec, got = sf.read(io.BytesIO(data), dtype="float32")
    dec = dec if dec.ndim == 1 else dec.mean(1)
    return (dec if got == sr else resample(dec[None], got, sr)[0]), len(data), setting


def _flac(x: np.ndarray, sr: int) -> int:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC", subtype="PCM_16")
    return len(buf.getvalue())  # not tell(): libsndfile seeks back to finish FLAC's header


def run_point(p: Variant, c: Clip, plan: RdPlan, device: str | None = None, progress=None) -> dict:
    """One point on one clip -> its row (real kbps from the encoded bytes, and the metrics)."""
    x, sr = c.audio, plan.sr
    seconds = len(x) / sr
    setting: dict = {}
    t0 = time.perf_counter()
    if p.codec == "inr":
        kf = encode(x, sr=sr, kbps=p.kbps, steps=plan.steps, device=device, progress=progress)
        size = len(kf.to_bytes())
        y, _ = decode(kf, device=device)
        y = y[0]
        bits = getattr(kf, "bits", None)
        setting = {"bits": bits} if isinstance(bits, (int, float)) else {}
    elif p.codec == "opus":
        y, size = _opus(x, sr, p.kbps)
    elif p.codec == "mp3":
        y, size, setting = _mp3(x, sr, p.kbps)
    elif p.codec == "mulaw":
        y, size = _mulaw(x, sr)
    elif p.codec == "flac":
        y, size = None, _flac(x, sr)
    else:
        raise KanError(f"unknown codec {p.codec!r}; choose one of: {', '.join(CODECS)}")
    row = {"variant": p.name, "codec": p.codec, "kbps_target": p.kbps, "clip": c.name, "bytes": size,
           "seconds": seconds, "kbps": _kbps(size, seconds), "params": 0, "fit_s": time.perf_counter() - t0,
           "setting": setting}
    if y is None:
        return {**row, "lossless": True}
    y = np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)]
    return {**row, **metrics.score(x, y, sr, RD_METRICS)}


def run_rd(out: Path, plan: RdPlan, clips: list[Clip], device: str | None = None, fresh: bool = False,
           on_start: Callable[[str, int], None] | None = None, on_fit=None,
           on_done: Callable[[str, int], None] | None = None) -> tuple[dict, list[Path]]:
    """Every point on every clip (skipping rows already in ``out/results.jsonl``); writes the
    reports -> (:func:`report`'s dict, the report files written).

    An INR point whose bitrate the codec refuses (OptionError: too low for the network)
    is reported with its error and not saved, so a later run tries it again.
    """
    results, done = open_results(out, plan.settings(), fresh)
    rows = [r for r in done.values() if any(p.name == r["variant"] for p in plan.points)]
    failed: dict[str, str] = {}
    for p in plan.points:
        todo = [c for c in clips if (p.name, c.name) not in done]
        if on_start:
            on_start(p.name, len(clips) - len(todo))
        for i, c in enumerate(todo):
            try:
                row = run_point(p, c, plan, device, on_fit)
            except OptionError as e:
                if p.codec != "inr":
                    raise
                failed[p.name] = str(e)  # the same request fails on every clip: skip the rest
                if on_done:
                    on_done(p.name, len(todo) - i)
                break
            with open(results, "a") as f:
                f.write(_row_json(row) + "\n")
            rows.append(row)
            if on_done:
                on_done(p.name, 1)
    result = report(rows, plan, clips, failed)
    return result, write_reports(out, result)


def report(rows: list[dict], plan: RdPlan, clips: list[Clip], failed: dict[str, str] | None = None) -> dict:
    """Rows -> ``{"settings", "clips", "skipped", "points": [...]}``, one point per codec and
    requested bitrate: real kbps (mean over clips of each file's), mean/std/n of every metric,
    the rows per clip, and ``error`` where the point could not run."""
    failed = failed or {}
    summary = {s["variant"]: s for s in summarise(rows, plan.points)}
    points = []
    for p in plan.points:
        s = summary.get(p.name)
        mine = [json.loads(_row_json(r)) for r in rows if r["variant"] == p.name]  # NotAvailable, inf as text
        point = {"name": p.name, "codec": p.codec, "kbps_requested": p.kbps, "clips": len(mine),
                 "kbps": s["kbps"] if s else None, "kbps_std": s["kbps_std"] if s else None,
                 "bytes": float(np.mean([r["bytes"] for r in mine])) if mine else None,
                 "lossless": p.codec == "flac", "per_clip": mine}
        if p.codec != "flac":
            for part in ("mean", "std", "n"):
                suffix = "" if part == "mean" else "_" + part
                point[part] = {m: s[m + suffix] if s else None for m in RD_METRICS}
        if p.name in failed:
            point["error"] = failed[p.name]
        points.append(point)
    return {"settings": plan.settings(), "clips": [c.name for c in clips], "skipped": plan.skipped,
            "metrics": list(RD_METRICS), "points": points}


COLUMNS = [("name", "codec"), ("kbps_requested", "asked kbps"), ("kbps", "real kbps"), ("pesq", "PESQ ↑"),
           ("stoi", "STOI ↑"), ("si_snr", "SI-SNR dB ↑"), ("lsd", "LSD ↓")]


def table_cells(point: dict) -> list[str]:
    """A point as the cells of :data:`COLUMNS` (mean ± std; ``lossless`` for FLAC)."""
    asked = "-" if point["kbps_requested"] is None else f"{point['kbps_requested']:g}"
    real = "n/a" if point["kbps"] is None else f"{point['kbps']:.2f}"
    if point["lossless"]:
        return [point["name"], asked, real, *["lossless"] * len(RD_METRICS)]
    if "error" in point and not point["clips"]:
        return [point["name"], asked, real, *["failed"] * len(RD_METRICS)]
    s = {"clips": point["clips"]}
    for m in RD_METRICS:
        s[m], s[m + "_std"], s[m + "_n"] = point["mean"][m], point["std"][m], point["n"][m]
    return [point["name"], asked, real, *(_cell(s, m) for m in RD_METRICS)]


def title(result: dict) -> str:
    st = result["settings"]
    return (f"kancodec bench rd: {len(result['clips'])} clips of {st['length']} samples at {st['sr']} Hz, "
            f"INR {st['steps']} steps; kbps measured on each encoded file (mean ± std)")


def write_reports(out: Path, result: dict) -> list[Path]:
    """``rd.json``, ``rd.md`` and (with matplotlib) ``rd.png`` in ``out`` -> the paths written."""
    head = [label for _, label in COLUMNS]
    md = [title(result), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(table_cells(p)) + " |" for p in result["points"]]
    errors = [f"- {p['name']}: {p['error']}" for p in result["points"] if "error" in p]
    if errors:
        md += ["", "Points that could not run:", *errors]
    with atomic_path(out / "rd.md", force=True) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    with atomic_path(out / "rd.json", force=True) as tmp:
        tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    written = [out / "rd.json", out / "rd.md"]
    if plot_rd(result, out / "rd.png"):
        written.append(out / "rd.png")
    return written


def can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_rd(result: dict, path: Path) -> bool:
    """PESQ against real kbps, one line per codec, FLAC's lossless rate as a vertical line.
    False (nothing written) without matplotlib (``pip install 'kancodec[plot]'``)."""
    if not can_plot():
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"inr": ("INR (kancodec)", "o-"), "opus": ("Opus", "s-"), "mp3": ("MP3", "^-"),
              "mulaw": ("μ-law 8 bit", "D")}
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    drawn = False
    for codec, (label, style) in styles.items():
        pts = sorted((p["kbps"], p["mean"]["pesq"], p["kbps_requested"]) for p in result["points"]
                     if p["codec"] == codec and p["kbps"] is not None and p["mean"]["pesq"] is not None)
        if pts:
            ax.plot([k for k, _, _ in pts], [q for _, q, _ in pts], style, label=label)
            drawn = True
    for p in result["points"]:
        if p["codec"] == "flac" and p["kbps"] is not None:
            ax.axvline(p["kbps"], color="grey", linestyle="--", label=f"FLAC lossless ({p['kbps']:.0f} kbps)")
            drawn = True
    if drawn:  # a log axis with plain numbers at bitrates people name
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([t for t in TICKS if lo <= t <= hi])
        ax.set_xticklabels([f"{t:g}" for t in TICKS if lo <= t <= hi])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("kbps (measured on the encoded files)")
    ax.set_ylabel("PESQ (wide band) ↑")
    st = result["settings"]
    ax.set_title(f"{len(result['clips'])} clips, {st['length'] / st['sr']:.2f} s at {st['sr']} Hz")
    ax.grid(True, which="both", alpha=0.3)
    if drawn:
        ax.legend()
    with atomic_path(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return True
