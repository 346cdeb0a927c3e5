"""``kancodec bench``: speed, quality (the paper's table), rate–distortion, FewSound, autoencoders, toy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..aecodec import DEFAULT_MODEL
from ..audio import check_writable
from ..errors import KanError
from ..inr import ARCHS, make_config
from ..quality import SWEEPABLE
from ..runtime import Event, resolve_device
from .common import (DEVICE, THREADS, FORCE, HYPER_DEFAULT, QUIET, bench_app, errors, message, number_list, wide_console,
                     write_json)

#: bench ae's Opus targets (libsndfile's lowest Opus setting gives ~8.7 kbps files of 3 s)
OPUS_KBPS = "8,10,12"


def clip_progress(console: Console, quiet: bool, data: Path, clips: list, skipped: list, length: int, sr: int,
                  out: Path, what: str, label: str, per_clip: int) -> tuple[Progress, int]:
    """Say which clips a folder bench runs on, and make its progress bar (``per_clip`` steps
    per clip, a ``fit`` field for the current fit) -> ``(bar, task)``."""
    console.print(f"{len(clips)} clips of {length / sr:.2f} s from {data}" +
                  (f" ({len(skipped)} skipped: shorter than {length} samples or silent)" if skipped else "") +
                  f"; {what}; results in {out}/")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fit]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=quiet)
    return bar, bar.add_task(label, total=len(clips) * per_clip, fit="")


@bench_app.command("speed")
def bench_speed(
    steps: int = typer.Option(20, "--steps", help="Timed fit steps (after warm-up)."),
    windows: str = typer.Option("1", "--windows", help="Comma-separated batch sizes to time, e.g. 1,8,64 on a GPU."),
    compile: str = typer.Option("both", "--compile", help="yes, no or both."),
    busy: str = typer.Option("0", "--busy", help="Conditions to measure, as cores kept busy by other processes "
                             "that the benchmark starts itself: 0,1 = idle, then with one core taken (the "
                             "'x idle' columns compare the two)."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE,
) -> None:
    """Fit steps/s and decode samples/s of the default KAN on 32,768-sample windows, against a
    plain KAN forward timed in the same run; idle and with cores kept busy (--busy)."""
    with errors():
        modes = {"both": [False, True], "yes": [True], "no": [False]}
        if compile not in modes:
            raise KanError(f"--compile {compile!r}: choose one of: {', '.join(modes)}")
        batches = number_list(windows, "--windows", "1,8,64")
        try:
            levels = sorted({int(v) for v in busy.split(",") if v.strip()})
        except ValueError:
            levels = []
        if not levels or not 0 <= levels[0] <= levels[-1] <= 64:
            raise KanError(f"--busy {busy!r}: give comma-separated numbers of busy cores from 0 to 64, e.g. 0,1")
        if out is not None:
            check_writable(out, force)
        from ..bench import run_speed

        rows = run_speed(device=device, steps=steps, batches=batches, modes=modes[compile], busy=levels,
                         console=wide_console())
        write_json(out, {"rows": rows}, force)


@bench_app.command("gpu")
def bench_gpu(
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    dry_run: bool = typer.Option(False, "--dry-run", help="The same path on the CPU at toy sizes (checks the command)."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE,
) -> None:
    """What to run when a GPU is lent: bench speed at 1, 8, 64 windows and a 60 s file at the standard
    preset with its real-time factor (~5 min on one GPU; tests/gpu/run.sh adds the GPU tests)."""
    with errors():
        if out is not None:
            check_writable(out, force)
        if not dry_run and resolve_device(device).type != "cuda":
            raise KanError("bench gpu needs a CUDA GPU (none here); --dry-run runs the same path on the CPU at toy sizes")
        from ..gpucheck import run_gpu_check

        write_json(out, run_gpu_check(device, dry_run, console=wide_console()), force)


@bench_app.command("hyper")
def bench_hyper(
    data: Path = typer.Argument(..., help="The corpus the model was trained on (its held-out split is used) "
                                "or any folder of speech."),
    model: str = typer.Option(HYPER_DEFAULT, "--model", help="Model name or .safetensors path."),
    clips: int = typer.Option(4, "--clips", help="Held-out clips (one window each)."),
    refine: int = typer.Option(300, "--refine", help="Fitting steps after the one-shot prediction."),
    max_steps: int = typer.Option(1000, "--max-steps", help="Longest random-start fit tried for the steps-to-reach "
                                  "figure (0: skip it)."),
    curve: str = typer.Option("", "--curve", help="Steps at which to score fits from each start (random, θ, θ + H), "
                              "comma-separated, e.g. 0,10,30,100,300 (empty: no curves)."),
    theta: str = typer.Option("auto", "--theta", help="The learned start for the θ curve: auto (the one encode would "
                              "use), a model name or path, or none."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE,
) -> None:
    """One-shot quality of a FewSound model, refine vs random start, curves of quality against
    steps from each start, encode time (CPU: ~15 min for 4 clips without curves)."""
    with errors():
        if min(clips, refine) < 1 or max_steps < 0:
            raise KanError("--clips and --refine must be at least 1, --max-steps at least 0")
        try:
            steps = tuple(int(v) for v in curve.split(",") if v.strip())
        except ValueError:
            raise KanError(f"--curve {curve!r}: give whole step counts separated by commas, e.g. 0,10,30,100,300") from None
        if any(n < 0 for n in steps):
            raise KanError(f"--curve {curve!r}: step counts must be 0 or more")
        if out is not None:
            check_writable(out, force)
        from ..hyperbench import run_hyper_bench

        console = wide_console()
        result = run_hyper_bench(data, model, clips, refine, max_steps, device,
                                 log=lambda m: console.print(escape(m), highlight=False), curve=steps, theta=theta)
        write_json(out, result, force)


@bench_app.command("quality")
def bench_quality(
    data: Path = typer.Argument(..., help="Folder of audio files (searched recursively for WAV, FLAC, OGG)."),
    arch: str = typer.Option(",".join(ARCHS), "--arch", help="Comma-separated INR families to compare."),
    steps: int = typer.Option(10000, "--steps", help="Fitting steps per INR (the paper's 10,000; on a CPU "
                              "try 200-500: time grows linearly)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many files (sorted by path)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of every fit."),
    bits: int = typer.Option(8, "--bits", "-b", help="Bits per stored weight (sets kbps and quantisation noise)."),
    sr: int = typer.Option(22050, "--sr", help="Rate every clip is resampled to."),
    length: int = typer.Option(32768, "--length", help="Samples per clip (32768 = 1.5 s; the paper's 3 s table: 65536)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="An ablation instead of the family defaults: NAME=V1,V2,... "
                                        f"with NAME one of {', '.join(SWEEPABLE)} (hidden as 48x24x12), e.g. --sweep "
                                        "grid=1,5,10,12,17 (families without the setting are left out)."),
    opus: str = typer.Option("12,24", "--opus", help="Opus bitrates in kbps to compare against ('' for none)."),
    mulaw: bool = typer.Option(True, "--mulaw/--no-mulaw", help="Also compare 8-bit mu-law."),
    out: Path = typer.Option(Path("bench-quality"), "--out", help="Folder for results.jsonl (resumable) and "
                             "summary.md/.csv/.json."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore results already in --out and start over."),
    device: str = DEVICE, threads: str = THREADS, quiet: bool = QUIET,
) -> None:
    """The paper's Table 1 protocol on your audio: every INR fitted to every clip, then every metric.

    Prints mean ± std per INR and codec baseline. An interrupted run resumes from
    OUT/results.jsonl when started again with the same settings.
    """
    console = Console(stderr=True, quiet=quiet)
    with errors():
        from ..quality import COLUMNS, Plan, check_resume, load_clips, make_variants, run_quality, table_cells
        from ..quant import check_bits

        check_bits(bits)
        if steps < 1 or (limit is not None and limit < 1) or length < 256 or not 1000 <= sr <= 192000:
            raise KanError("--steps and --limit must be >= 1, --length >= 256 and --sr 1000-192000 Hz")
        archs = [a.strip() for a in arch.split(",") if a.strip()]
        for a in archs:
            make_config(a)  # names the valid families on a typo
        variants = make_variants(archs, sweep, number_list(opus, "--opus", "6,12,24", float) if opus.strip() else [], mulaw)
        resolve_device(device)
        clips, skipped = load_clips(data, sr, length, limit)
        plan = Plan(variants, steps, bits, sr, length, seed, skipped)
        check_resume(out, plan, fresh)
        bar, task = clip_progress(console, quiet, data, clips, skipped, length, sr, out,
                                  f"{len(variants)} variants, {steps} steps", "clips x variants", len(variants))

        def on_start(name: str, already: int) -> None:
            bar.update(task, advance=already, description=name)

        def on_fit(ev: Event) -> None:
            if ev.stage == "fit":
                bar.update(task, fit=f"step {ev.done}/{ev.total} SNR {ev.info['snr']:.1f} dB")

        with bar:
            summary = run_quality(data, out, plan, clips, device, fresh, on_start, on_fit,
                                  lambda name, n: bar.update(task, advance=n, fit=""))
        table = Table(title=f"{len(clips)} clips, {length} samples at {sr} Hz, {steps} steps, {bits}-bit weights "
                            "(mean ± std)")
        for key, label in COLUMNS:
            table.add_column(label, justify="left" if key == "variant" else "right")
        for s in summary:
            table.add_row(*table_cells(s))
        if not quiet:
            wide_console().print(table)
        console.print(f"wrote {out}/summary.md, summary.csv, summary.json and results.jsonl")


@bench_app.command("rd")
def bench_rd(
    data: Path = typer.Argument(..., help="Folder of audio files (searched recursively for WAV, FLAC, OGG)."),
    kbps: str = typer.Option("24,48,96", "--kbps", help="INR codec bitrates (kbps) to encode at, comma-separated; "
                             "'' for none."),
    opus: str = typer.Option("12,24,48", "--opus", help="Opus bitrates (kbps), comma-separated; '' for none."),
    mp3: str = typer.Option("32,64", "--mp3", help="MP3 bitrates (kbps), comma-separated; '' for none."),
    mulaw: bool = typer.Option(True, "--mulaw/--no-mulaw", help="Also measure 8-bit mu-law."),
    flac: bool = typer.Option(True, "--flac/--no-flac", help="Also measure FLAC's lossless size."),
    steps: int = typer.Option(2000, "--steps", help="Fitting steps per INR clip (on a CPU try 200-500: time grows "
                              "linearly)."),
    clips: Optional[int] = typer.Option(None, "--clips", help="Use at most this many files (sorted by path)."),
    sr: int = typer.Option(22050, "--sr", help="Rate every clip is resampled to."),
    length: int = typer.Option(32768, "--length", help="Samples per clip (32768 = 1.5 s at 22.05 kHz)."),
    out: Path = typer.Option(Path("bench-rd"), "--out", "-o", help="Folder for results.jsonl (resumable), rd.json, "
                             "rd.md and rd.png."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore results already in --out and start over."),
    device: str = DEVICE, threads: str = THREADS, quiet: bool = QUIET,
) -> None:
    """Rate-distortion: PESQ, STOI, SI-SNR, LSD against real kbps for the INR codec, Opus, MP3, mu-law, FLAC.

    kbps is measured on every encoded file (headers included); Opus and MP3 use the
    setting whose file lands nearest each bitrate asked for. An interrupted run resumes
    from OUT/results.jsonl when started again with the same settings.
    """
    console = Console(stderr=True, quiet=quiet)
    with errors():
        from ..quality import check_resume, load_clips
        from ..rdbench import COLUMNS, RdPlan, make_points, run_rd, table_cells, title

        if steps < 1 or (clips is not None and clips < 1) or length < 256 or not 1000 <= sr <= 192000:
            raise KanError("--steps and --clips must be >= 1, --length >= 256 and --sr 1000-192000 Hz")
        rates = {name: number_list(text, name, example, float) if text.strip() else []
                 for name, text, example in (("--kbps", kbps, "24,48,96"), ("--opus", opus, "12,24,48"),
                                             ("--mp3", mp3, "32,64"))}
        points = make_points(rates["--kbps"], rates["--opus"], rates["--mp3"], mulaw, flac)
        if not points:
            raise KanError("nothing to measure: give --kbps, --opus or --mp3 bitrates, or --mulaw or --flac")
        resolve_device(device)
        loaded, skipped = load_clips(data, sr, length, clips)
        plan = RdPlan(points, steps, sr, length, skipped)
        check_resume(out, plan, fresh)
        bar, task = clip_progress(console, quiet, data, loaded, skipped, length, sr, out,
                                  f"{len(points)} points, INR {steps} steps", "clips x points", len(points))

        def on_fit(ev: Event) -> None:
            if ev.stage == "fit" and "snr" in ev.info:
                bar.update(task, fit=f"step {ev.done}/{ev.total} SNR {ev.info['snr']:.1f} dB")

        with bar:
            result, written = run_rd(out, plan, loaded, device, fresh,
                            lambda name, already: bar.update(task, advance=already, description=name), on_fit,
                            lambda name, n: bar.update(task, advance=n, fit=""))
        table = Table(title=title(result))
        for key, label in COLUMNS:
            table.add_column(label, justify="left" if key == "name" else "right")
        for p in result["points"]:
            table.add_row(*(escape(cell) for cell in table_cells(p)))
        if not quiet:
            wide_console().print(table)
        for p in result["points"]:
            if "error" in p:
                console.print(f"{escape(p['name'])}: could not run: {escape(message(p['error']))}",
                              highlight=False)
        plotted = any(w.name == "rd.png" for w in written)
        console.print(f"wrote {out}/{', '.join(w.name for w in written)} and results.jsonl" +
                      ("" if plotted else " (no rd.png: pip install 'kancodec[plot]' for the plot)"))


@bench_app.command("ae")
def bench_ae(
    data: Path = typer.Argument(..., help="The corpus the models were trained on (its held-out split is used)."),
    model: list[str] = typer.Option([DEFAULT_MODEL], "--model", help="Autoencoder name or path; repeat to compare "
                                    "(e.g. --model krvq --model my-krvq-mlp.safetensors)."),
    clips: int = typer.Option(8, "--clips", help="Held-out clips."),
    length: int = typer.Option(65536, "--length", help="Samples per clip at 22.05 kHz (65536: ~3 s)."),
    opus: str = typer.Option(OPUS_KBPS, "--opus", help="Opus bitrates (kbps) to compare with, comma-separated; "
                             "'' for none (libsndfile's lowest Opus setting gives ~8.7 kbps files of 3 s)."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE,
) -> None:
    """Rate–distortion table: kbps vs PESQ, STOI, SI-SNR, LSD for 1…N codebooks of each model, and Opus."""
    from ..aebench import run_ae_bench

    with errors():
        if clips < 1 or length < 4096:
            raise KanError("--clips must be at least 1 and --length at least 4096")
        rates = number_list(opus, "--opus", OPUS_KBPS, float) if opus.strip() else []
        if out is not None:
            check_writable(out, force)
        console = wide_console()
        result = run_ae_bench(data, model, clips, length, tuple(rates), device,
                              log=lambda m: console.print(escape(str(m)), highlight=False))
        t = Table("codec", "codebooks", "payload kbps", "file kbps", "PESQ", "STOI", "SI-SNR dB", "LSD")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        for r in result["rows"]:
            t.add_row(r["codec"], fmt(r["codebooks"], "d"), fmt(r["payload_kbps"], ".2f"), fmt(r["file_kbps"], ".2f"),
                      fmt(r["pesq"], ".3f"), fmt(r["stoi"], ".3f"), fmt(r["si_snr"], ".2f"), fmt(r["lsd"], ".3f"))
        console.print(t)
        write_json(out, result, force)


@bench_app.command("toy")
def bench_toy(
    steps: int = typer.Option(3000, "--steps", help="Training steps per model and seed."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="Seeds (positive), comma-separated."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    force: bool = FORCE,
) -> None:
    """KAN vs MLP autoencoder on 128-sample random sinusoids through 5 latents (test MSE; CPU: ~1 min per 1000 steps)."""
    from ..aebench import run_toy

    with errors():
        if steps < 1:
            raise KanError("--steps must be at least 1")
        chosen = tuple(number_list(seeds, "--seeds", "1,2,3"))
        if out is not None:
            check_writable(out, force)
        console = wide_console()
        result = run_toy(steps, chosen, log=lambda m: console.print(m, highlight=False))
        for layer in ("kan", "mlp"):
            v = result[layer]
            console.print(f"{layer}: test MSE {np.mean(v):.5f} ± {np.std(v):.5f} over {len(v)} seeds "
                          f"({result['params'][layer]:,} params)")
        write_json(out, result, force)
