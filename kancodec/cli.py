"""The ``kancodec`` command line: a thin Typer layer over :mod:`kancodec.api`.

Every user-fixable problem is a :class:`~kancodec.errors.KanError`; it is printed as one
line and mapped to an exit code: 2 bad option value, 3 bad input, 4 bad ``.kan`` file,
5 output problem, 6 device unavailable.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, api
from .audio import check_output_format, check_writable, write_audio
from .corpus import AUDIO_EXT
from .errors import DeviceError, FormatError, InputError, Interrupted, KanError, OutputError
from .fit import PRESETS
from .inr import ARCHS, INR_CONFIGS, make_config
from .kanfile import KanFile
from .train import TrainSettings

EXIT_CODES = {Interrupted: 130, InputError: 3, FormatError: 4, OutputError: 5, DeviceError: 6, KanError: 2}

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Audio as the weights of small Kolmogorov-Arnold networks (KAN implicit neural "
                       "representations). encode fits networks to a WAV/FLAC/OGG file and stores their "
                       "quantised weights in a .kan file; decode evaluates them at any sample rate.")
err = Console(stderr=True)

QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")
HYPER_DEFAULT = "fewsound-kan"
FORCE = typer.Option(False, "--force", "-f", help="Overwrite the output if it exists.")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda.")


def _fail(e: KanError) -> None:
    code = next(c for t, c in EXIT_CODES.items() if isinstance(e, t))
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except KanError as e:
        _fail(e)
    except KeyboardInterrupt:
        err.print("interrupted; nothing was written")
        raise typer.Exit(130)


def _progress_bar(console: Console, description: str, total: int, done: int = 0) -> tuple[Progress, int]:
    """A started transient Rich bar with a ``stats`` text field -> ``(bar, task)``."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = bar.add_task(description, total=total, completed=done, stats="")
    bar.start()
    return bar, task


def _compile_choice(compile: str) -> bool | str:
    """``--compile auto|yes|no`` -> what the library takes."""
    choices = {"auto": "auto", "yes": True, "no": False}
    if compile not in choices:
        raise KanError(f"--compile {compile!r}: choose one of: auto, yes, no")
    return choices[compile]


class _Reporter:
    """Renders api progress events with Rich (nothing when quiet)."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task = None

    def __call__(self, ev: api.Event) -> None:
        if self.quiet:
            return
        if ev.stage == "plan":
            i = ev.info
            if i.get("hyper"):
                self.console.print(f"predicting {i['active']} of {i['windows']} windows at {i['fit_sr']} Hz with "
                                   f"{i['hyper']}" + (f", then {i['steps']} refining steps" if i["steps"] else ""))
            if i["steps"] or not i.get("hyper"):
                self.console.print(f"fitting {i['active']} of {i['windows']} windows at {i['fit_sr']} Hz, "
                                   f"{i['steps']} steps, {i['batches']} batch(es) of up to {i['batch']} on {i['device']}"
                                   + (" (compiling the model first, ~10-30 s)" if i["compile"] else ""))
            if ev.total:
                self.bar, self.task = _progress_bar(self.console, "fit", ev.total)
        elif ev.stage == "estimate":
            self.console.print(f"estimated time left: {ev.info['seconds'] / 60:.1f} min (measured on the first steps)")
        elif ev.stage == "fit" and self.bar is not None:
            self.bar.update(self.task, completed=ev.done, stats=f"loss {ev.info['loss']:.4f} SNR {ev.info['snr']:.1f} dB")
            if ev.done >= ev.total:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _parse_hidden(hidden: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in hidden.split(",") if v.strip())
    except ValueError:
        raise KanError(f"--hidden {hidden!r}: give comma-separated widths, e.g. 48,24,12") from None


def _summary(kf: KanFile, size: int, path: Path | str | None = None) -> Table:
    a = kf.audio
    t = Table(show_header=False, box=None)
    rows = [
        ("file", str(path) if path else "-"),
        ("audio", f"{a.duration:.2f} s, {a.channels} ch, {a.sample_rate} Hz (fitted at {a.fit_sr} Hz)"),
        ("model", f"{kf.config.describe()}, {kf.config.n_params:,} params x {a.channels * a.windows} windows"),
        ("size", f"{size:,} bytes at {kf.bits} bits: {size * 8 / a.duration / 1000:.1f} kbps "
                 f"({kf.pcm_kbps() / (size * 8 / a.duration / 1000):.2f}x smaller than 16-bit PCM at {kf.pcm_kbps():.0f} kbps)"),
    ]
    e = kf.encode
    if "snr_db" in e:
        rows.append(("quality", f"SNR {e['snr_db']:.2f} dB, SI-SNR {e['si_snr_db']:.2f} dB (decoded file vs input at {a.fit_sr} Hz)"))
    if "hyper" in e:
        h, s = e["hyper"], e["settings"]
        rows.append(("encoded", f"one shot with {escape(h['model'])} ({h['mode']}, {h['encoder']} encoder)"
                                + (f" + {s['steps']} refining steps, lr {s['lr']}" if s["steps"] else "")
                                + f", {e.get('device')}, {e.get('seconds', 0):.1f} s"))
    elif "settings" in e:
        s = e["settings"]
        rows.append(("encoded", f"preset {e.get('preset')}, {s['steps']} steps, lr {s['lr']}, seed {s['seed']}, "
                                f"{e.get('device')}, {e.get('seconds', 0):.1f} s"))
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    return t


@app.command()
def encode(
    input: Path = typer.Argument(..., help="Audio file to encode (WAV, FLAC or OGG; any rate 8-192 kHz)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The .kan file to write (default: INPUT with .kan)."),
    preset: str = typer.Option("auto", "--preset", "-p", help="auto (standard on CUDA, fast on CPU), fast (200 steps), "
                               "standard (2000), paper (10000, the paper's loss weights). Time grows with steps."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fitting steps (overrides the preset). More steps: better quality, linear time."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (overrides the preset's; by default "
                                       + ", ".join(f"{a} {c.lr:g}" for a, c in INR_CONFIGS.items()) + ")."),
    bits: int = typer.Option(8, "--bits", "-b", help="Bits per stored weight: 16, 12, 10, 8, 6, 4 (also 2-7, 32 = float). "
                             "Fewer bits: smaller file, more quantisation noise."),
    fit_sr: Optional[int] = typer.Option(None, "--fit-sr", help="Fit at this rate (default: the input's). Lower = fewer windows "
                                         "and bits, less bandwidth."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Window length in samples at the fitting rate "
                                        "(default 32768)."),
    overlap: int = typer.Option(1024, "--overlap", help="Cross-fade between windows, in samples."),
    arch: str = typer.Option("kan", "--arch", help="The network family: kan (the paper's KAN, 33,768 params per "
                             "window) or a baseline from the paper: nerf (~33k), siren (~31k), rff (~39k), "
                             "wire (~31k), finer (~31k). All decode and eval the same way."),
    n_freqs: Optional[int] = typer.Option(None, "--n-freqs", help="Positional encoding length L, 2L inputs "
                                          f"(kan: {make_config('kan').n_freqs}, nerf: {make_config('nerf').n_freqs}). "
                                          "More: finer detail, more params."),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="Hidden layer widths, comma-separated "
                                         "(kan: 48,24,12). Wider: better quality, more bits and time."),
    grid: Optional[int] = typer.Option(None, "--grid", help="kan only: B-spline grid intervals G (default 10)."),
    order: Optional[int] = typer.Option(None, "--order", help="kan only: B-spline order k, 1-5 (default 2)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed and settings give the same file."),
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the model (10-30 s once, then ~3x faster steps)."),
    hyper: Optional[str] = typer.Option(None, "--hyper", metavar="[MODEL]", help="Predict the networks in one shot "
                                        "with a FewSound hypernetwork instead of fitting: --hyper alone uses "
                                        f"{HYPER_DEFAULT} (yours from train-hyper, else the bundled one); or give a "
                                        "model name or .safetensors path. Fits at 22.05 kHz in the model's windows."),
    refine: Optional[int] = typer.Option(None, "--refine", help="With --hyper: then fit this many steps from the "
                                         "prediction (e.g. 300), at --lr (default "
                                         f"{api.REFINE_LR:g}). Better than one shot; how it compares with fitting from scratch: models/README.md."),
    ae: Optional[str] = typer.Option(None, "--ae", metavar="MODEL", help="Code with a KAN autoencoder instead of "
                                     "fitting: krvq (the model train-ae saves by default), another model "
                                     "name, or a .safetensors path. Low bitrate; the .kan file needs the same model to decode."),
    codebooks: Optional[int] = typer.Option(None, "--codebooks", help="With --ae and a kvq/krvq model: codebooks to "
                                            "keep, 1 to the model's (default all). Each adds log2(codebook size) bits per frame (0.86 kbps at the defaults)."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Fit KAN networks (or a baseline INR, --arch) to an audio file and write a .kan file.

    With --hyper, a pretrained hypernetwork predicts the networks in one pass (seconds),
    optionally refined with --refine N fitting steps. With --ae, a KAN autoencoder codes
    the audio as codebook indices (or latents) at a few kbps."""
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        out = output or input.with_suffix(".kan")
        check_writable(out, force)
        if ae is not None or codebooks is not None:
            from .cli_ae import encode_ae

            given = {"--hyper": hyper, "--refine": refine, "--steps": steps, "--lr": lr, "--fit-sr": fit_sr,
                     "--chunk": chunk, "--n-freqs": n_freqs, "--hidden": hidden, "--grid": grid, "--order": order,
                     "--arch": None if arch == "kan" else arch, "--preset": None if preset == "auto" else preset}
            encode_ae(console, input, out, ae, codebooks, bits, device, force, [k for k, v in given.items() if v is not None])
            return
        use_compile = _compile_choice(compile)
        if preset not in ("auto", *PRESETS):
            raise KanError(f"--preset {preset!r}: choose one of: auto, {', '.join(PRESETS)}")
        shaped = arch != "kan" or any(v is not None for v in (n_freqs, hidden, grid, order))
        config = make_config(arch, n_freqs=n_freqs, hidden=_parse_hidden(hidden) if hidden else None,
                             grid=grid, order=order) if shaped or hyper is None else None
        if hyper is not None and steps is not None:
            raise KanError("--steps with --hyper: use --refine N to fit N steps from the prediction")
        rep = _Reporter(console, quiet)
        try:
            kf = api.encode(input, preset_name=preset, steps=steps, lr=lr, bits=bits, config=config, fit_sr=fit_sr,
                            chunk=chunk, overlap=overlap, seed=seed, device=device,
                            compile=use_compile, hyper=hyper,
                            refine=refine, progress=rep)
        finally:
            rep.close()
        size = kf.save(out, force)
        console.print(_summary(kf, size, out))


@app.command()
def decode(
    input: Path = typer.Argument(..., help="The .kan file to decode."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="WAV or FLAC to write (default: INPUT with .wav)."),
    sr: Optional[int] = typer.Option(None, "--sr", help="Output sample rate (default: the original's). Any rate: "
                                     "above the fitted one the networks are evaluated on a finer grid, below it "
                                     "the output is low-passed so nothing aliases."),
    model: Optional[Path] = typer.Option(None, "--model", help="Autoencoder files only: the model file to decode "
                                         "with, when it is not where kancodec looks (it must be the same model)."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Decode a .kan file to WAV or FLAC at any sample rate."""
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        out = output or input.with_suffix(".wav")
        check_output_format(out)
        check_writable(out, force)
        y, rate = api.decode(input, sr=sr, device=device, model=model)
        write_audio(out, y, rate, force=force)
        console.print(f"wrote {out}: {y.shape[1] / rate:.2f} s, {y.shape[0]} ch, {rate} Hz")


@app.command()
def info(
    input: Path = typer.Argument(..., help="The .kan file to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    quiet: bool = QUIET,
) -> None:
    """Show what a .kan file holds: audio, architecture, parameters, bits, kbps, encode settings."""
    with _errors():
        from .kanfile import file_size, load

        kf = load(input)
        size = file_size(input)
        if not isinstance(kf, KanFile):
            from .cli_ae import info_ae

            return info_ae(kf, size, input, as_json, quiet)
        if as_json:
            a = kf.audio
            kbps = size * 8 / a.duration / 1000
            doc = {"format": "kancodec-inr", "audio": {**a.__dict__, "duration": a.duration},
                   "inr": kf.config.to_dict(), "params_per_window": kf.config.n_params,
                   "networks": a.channels * a.windows, "bits": kf.bits, "bytes": size, "kbps": round(kbps, 3),
                   "pcm16_kbps": kf.pcm_kbps(), "ratio_to_pcm16": round(kf.pcm_kbps() / kbps, 3), "encode": kf.encode}
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
        elif not quiet:
            Console().print(_summary(kf, size, input))


_METRIC_LABELS = {"mse": "MSE", "psnr": "PSNR (dB)", "snr": "SNR (dB)", "si_snr": "SI-SNR (dB)", "lsd": "LSD",
                  "pesq": "PESQ", "stoi": "STOI", "wasserstein": "spectral Wasserstein", "visqol": "ViSQOL MOS-LQO",
                  "cdpam": "CDPAM"}


def _fmt(value) -> str:
    from .metrics import NotAvailable

    if isinstance(value, NotAvailable):
        return f"n/a ({value})"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.3f}"


def _json_value(value):
    from .metrics import NotAvailable

    if isinstance(value, NotAvailable):
        return {"n/a": str(value)}
    return value if value == value and abs(value) != float("inf") else str(value)


@app.command("eval")
def eval_(
    reference: Path = typer.Argument(..., help="The original audio (WAV, FLAC or OGG)."),
    output: Path = typer.Argument(..., help="What to score: audio, or a .kan file (decoded at the reference's rate; "
                                  "its kbps is reported too)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (per channel and mean) instead of a table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw both spectrograms and their difference "
                                        "to this PNG/PDF/SVG (needs: pip install 'kancodec[plot]')."),
    visqol: bool = typer.Option(False, "--visqol", help="Add ViSQOL MOS-LQO, speech mode at 16 kHz "
                                "(needs: pip install visqol-python)."),
    cdpam: bool = typer.Option(False, "--cdpam", help="Add CDPAM, a learned perceptual distance (lower is better; needs: pip install 'kancodec[cdpam]')."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Score OUTPUT against REFERENCE: MSE, PSNR, SNR, SI-SNR, LSD, PESQ, STOI, spectral Wasserstein.

    Definitions (kancodec/metrics.py): PSNR uses the reference's peak. SI-SNR removes means
    and any gain. LSD = mean over frames of sqrt(mean over bins of log10(|R|^2/|O|^2)^2),
    Hann STFT, n_fft 2048*sr/44100, hop sr/100 (lower is better). PESQ is wide band at
    16 kHz (narrow band for 8 kHz references; 1-4.6). STOI 0-1. Spectral Wasserstein: the
    |FFT|s as distributions over squared bin indices, 1-Wasserstein distance / clip length
    (lower is better). OUTPUT at another rate is resampled to the reference's; different
    lengths compare the common part; each channel is scored, then the mean. A metric that
    cannot run (silence, too short) shows n/a and why.
    """
    with _errors():
        if plot:
            from .plot import check_plot_path

            check_plot_path(plot)
            check_writable(plot, force)
        from .metrics import CORE

        metrics = CORE + (("visqol",) if visqol else ()) + (("cdpam",) if cdpam else ())
        result = api.evaluate(reference, output, metrics=metrics, device=device, keep_signals=bool(plot))
        if plot:
            from .plot import spectrograms

            ref, out = result.pop("signals")  # what was scored: no second read or decode
            spectrograms(ref[0], out[0], result["sample_rate"], plot, force, (reference.name, output.name))
        if as_json:
            doc = dict(result)
            doc["channels"] = [{k: _json_value(v) for k, v in ch.items()} for ch in result["channels"]]
            doc["mean"] = {k: _json_value(v) for k, v in result["mean"].items()}
            typer.echo(json.dumps(doc, indent=2, sort_keys=True))
            return
        if quiet:
            return
        console = Console()
        multi = len(result["channels"]) > 1
        table = Table(title=f"{output.name} vs {reference.name} ({result['frames'] / result['sample_rate']:.2f} s "
                            f"at {result['sample_rate']} Hz)")
        table.add_column("metric")
        from .metrics import HIGHER_IS_BETTER

        table.add_column("better", justify="center")
        for c in range(len(result["channels"]) if multi else 0):
            table.add_column(f"ch {c}", justify="right")
        table.add_column("mean" if multi else "value", justify="right")
        for m in metrics:
            vals = [ch[m] for ch in result["channels"]] if multi else []
            table.add_row(_METRIC_LABELS[m], "higher" if HIGHER_IS_BETTER[m] else "lower",
                          *map(_fmt, vals), _fmt(result["mean"][m]))
        console.print(table)
        if "kan" in result:
            k = result["kan"]
            console.print(f"{output.name}: {k['arch']}, {k['bits']} bits, {k['bytes']:,} bytes = {k['kbps']:.1f} kbps "
                          f"({k['ratio_to_pcm16']:.2f}x smaller than 16-bit PCM at {k['pcm16_kbps']:.0f} kbps)")
        for note in result["notes"]:
            console.print(f"note: {note}")
        if plot:
            console.print(f"spectrograms: {plot}")


@app.command()
def demo(
    steps: Optional[int] = typer.Option(None, "--steps", help="Fitting steps (default: the fast preset's 200)."),
    bits: int = typer.Option(8, "--bits", "-b", help="Bits per stored weight."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also keep the decoded WAV here."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Encode, decode and score a bundled 3 s real speech clip (tuxpaint-stamps, GPL-2)."""
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        if output:
            check_output_format(output)
            check_writable(output, force)
        clip = resources.files("kancodec") / "data" / "demo_speech.flac"
        with resources.as_file(clip) as path, tempfile.TemporaryDirectory() as tmp:
            console.print(f"demo clip: {path.name} (French speech from Debian's tuxpaint-stamps-default, GPL-2)")
            rep = _Reporter(console, quiet)
            try:
                kf = api.encode(path, preset_name="fast", steps=steps, bits=bits, device=device, progress=rep)
            finally:
                rep.close()
            kan_path = Path(tmp) / "demo.kan"
            size = kf.save(kan_path)
            y, rate = api.decode(kan_path, device=device)
            if output:
                write_audio(output, y, rate, force=force)
            console.print(_summary(kf, size, "(temporary, not kept)"))
            if output:
                console.print(f"decoded audio: {output}")


class _TrainReporter:
    """Renders training events: a progress bar with the loss, a line per validation."""

    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.bar: Progress | None = None
        self.task = None

    def _bar(self, description: str, total: int, done: int = 0) -> None:
        self.close()
        self.bar, self.task = _progress_bar(self.console, description, total, done)

    def __call__(self, ev: api.Event) -> None:
        if self.quiet:
            return
        i = ev.info
        if ev.stage == "data":
            if self.bar is None:
                self._bar("reading and caching audio", ev.total)
            self.bar.update(self.task, completed=ev.done, stats=escape(i.get("file", "")[-40:]))
        elif ev.stage == "plan":
            self.close()
            self.console.print(
                f"{i['train_files']} training clips, {i['val_files']} held out (split by {i['split']}); "
                f"{i['padded']} shorter than one window are padded with silence"
                + (f"; skipped {i['skipped']}: {escape(', '.join(i['skipped_names']))}" + (", ..." if i['skipped'] > 5 else "")
                   if i["skipped"] else ""), highlight=False)
            s = i["settings"]
            self.console.print(f"training {i['params']:,} parameters on {i['device']}: steps {ev.done + 1}-{ev.total}, "
                               f"batch {s['batch']}, peak lr {s['lr']:g}, loss L1 + {s['spectral_weight']:g} x mel-STFT on "
                               f"{s['loss_window']} samples"
                               + (" (compiling the target network first, ~30 s)" if i["compile"] else ""))
            self._bar("train", ev.total, ev.done)
        elif ev.stage == "train" and self.bar is not None:
            self.bar.update(self.task, completed=ev.done, stats=f"loss {i['loss']:.4f} lr {i['lr']:.2g}")
        elif ev.stage == "val":
            pesq = f"{i['pesq']:.2f}" if i["pesq"] is not None else "n/a"
            self.console.print(f"step {ev.done}: validation SI-SNR {i['si_snr']:.2f} dB, LSD {i['lsd']:.3f}, PESQ {pesq}")
        elif ev.stage == "checkpoint":
            self.console.print(f"step {ev.done}: checkpoint {escape(i['path'])}", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command("train-hyper")
def train_hyper(
    data: Path = typer.Option(..., "--data", help="Folder of speech (WAV, FLAC, OGG; searched recursively), e.g. "
                              "VCTK's wav48_silence_trimmed or the corpus from models/build_corpus.sh."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model file to write (default: "
                                          "fewsound-<target>.safetensors in your kancodec data folder, where "
                                          "encode --hyper finds it)."),
    target: str = typer.Option("kan", "--target", help="INR the model predicts: kan (the paper's default KAN) or nerf."),
    encoder: str = typer.Option("conv", "--encoder", help="Audio encoder E: conv (SoundStream-style, raw waveform) "
                                "or spectral (log-mel frames)."),
    mode: str = typer.Option("fewsound", "--mode", help="fewsound (θ' = θ + H(E(x), G(θ))) or hypersound "
                             "(H predicts the weights directly)."),
    steps: int = typer.Option(TrainSettings.steps, "--steps", help="Optimiser steps (one-cycle schedule over all of them)."),
    batch: int = typer.Option(TrainSettings.batch, "--batch", help="Windows per step (per process)."),
    lr: float = typer.Option(TrainSettings.lr, "--lr", help="Peak learning rate of the one-cycle schedule."),
    loss_window: int = typer.Option(TrainSettings.loss_window, "--loss-window", help="Samples of each predicted network "
                                    "the loss is computed on (random stretch; 32768 = all). Smaller: cheaper steps."),
    spectral_weight: float = typer.Option(TrainSettings.spectral_weight, "--spectral-weight", help="Weight of the "
                                          "mel-STFT term next to L1 (the paper's 1.0; see kancodec/train.py)."),
    val_every: int = typer.Option(TrainSettings.val_every, "--val-every", help="Validate (SI-SNR, LSD, PESQ) every N steps."),
    checkpoint_every: int = typer.Option(TrainSettings.checkpoint_every, "--checkpoint-every",
                                         help="Save a resumable checkpoint every N steps (and on Ctrl-C)."),
    val_fraction: float = typer.Option(TrainSettings.val_fraction, "--val-fraction", help="Share held out for validation."),
    split: str = typer.Option("auto", "--split", help="Hold out whole folders (speakers) or single files: auto "
                              "(folders when there are 4 or more), folder, file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint beside the output."),
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the target network."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Train a FewSound hypernetwork: audio window in, INR weights out (see encode --hyper).

    Audio is resampled once to 22.05 kHz and cached; 32,768-sample crops are
    peak-normalised. Validation metrics go to <output>.train.jsonl. Several GPUs:
    torchrun --nproc_per_node N -m kancodec train-hyper ..."""
    from .hyper import HyperConfig
    from .train import train_hyper as run_training

    console = Console(stderr=True, quiet=quiet)
    with _errors():
        use_compile = _compile_choice(compile)
        config = HyperConfig(target=make_config(target).to_dict(), encoder=encoder, mode=mode)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, loss_window=loss_window,
                                 spectral_weight=spectral_weight, val_every=val_every,
                                 checkpoint_every=checkpoint_every, val_fraction=val_fraction, split=split, seed=seed)
        rep = _TrainReporter(console, quiet)
        try:
            summary = run_training(data, output, config, settings, device=device, resume=resume, force=force,
                                   compile=use_compile, progress=rep)
        finally:
            rep.close()
        _trained(console, summary)


def _trained(console: Console, summary: dict) -> None:
    if "bytes" in summary:
        v = summary["val"]
        pesq = f"{v['pesq']:.2f}" if v["pesq"] is not None else "n/a"
        console.print(f"wrote {escape(str(summary['output']))} ({summary['bytes'] / 1e6:.1f} MB) after "
                      f"{summary['seconds'] / 60:.1f} min: validation SI-SNR {v['si_snr']:.2f} dB, "
                      f"LSD {v['lsd']:.3f}, PESQ {pesq}", highlight=False)


bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Benchmarks that print numbers (speed and quality targets live here, not in tests).")
app.add_typer(bench_app, name="bench")


@bench_app.command("speed")
def bench_speed(
    steps: int = typer.Option(20, "--steps", help="Timed fit steps (after warm-up)."),
    windows: str = typer.Option("1", "--windows", help="Comma-separated batch sizes to time, e.g. 1,8,64 on a GPU."),
    compile: str = typer.Option("both", "--compile", help="yes, no or both."),
    device: str = DEVICE,
) -> None:
    """Fit steps/s and decode samples/s of the default KAN on 32,768-sample windows."""
    with _errors():
        modes = {"both": [False, True], "yes": [True], "no": [False]}
        if compile not in modes:
            raise KanError(f"--compile {compile!r}: choose one of: {', '.join(modes)}")
        batches = _int_list(windows, "--windows", "1,8,64")
        from .bench import run_speed

        run_speed(device=device, steps=steps, batches=batches, modes=modes[compile], console=_wide_console())


@bench_app.command("hyper")
def bench_hyper(
    data: Path = typer.Argument(..., help="The corpus the model was trained on (its held-out split is used) "
                                "or any folder of speech."),
    model: str = typer.Option(HYPER_DEFAULT, "--model", help="Model name or .safetensors path."),
    clips: int = typer.Option(4, "--clips", help="Held-out clips (one window each)."),
    refine: int = typer.Option(300, "--refine", help="Fitting steps after the one-shot prediction."),
    max_steps: int = typer.Option(1000, "--max-steps", help="Longest random-start fit tried for the steps-to-reach figure."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    device: str = DEVICE, force: bool = FORCE,
) -> None:
    """One-shot quality of a FewSound model, refine vs random start, encode time (CPU: ~15 min for 4 clips)."""
    with _errors():
        if min(clips, refine, max_steps) < 1:
            raise KanError("--clips, --refine and --max-steps must be at least 1")
        if out is not None:
            check_writable(out, force)
        from .hyperbench import run_hyper_bench

        console = _wide_console()
        result = run_hyper_bench(data, model, clips, refine, max_steps, device,
                                 log=lambda m: console.print(escape(m), highlight=False))
        _write_json(out, result, force)


def _write_json(out: Optional[Path], result: dict, force: bool) -> None:
    """Write a bench result to ``--json`` (atomically), when one was asked for."""
    if out is not None:
        from .audio import atomic_path

        with atomic_path(out, force) as tmp:
            tmp.write_text(json.dumps(result, indent=1))


def _wide_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=200)


def _int_list(text: str, option: str, example: str, kind=int) -> list:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise KanError(f"{option} {text!r}: give comma-separated positive numbers, e.g. {example}")
    return values


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
                                        "with NAME n_freqs, hidden (48x24x12), grid, order, lr, omega_first, sigma, "
                                        "scale or first_bias, e.g. --sweep grid=1,5,10,12,17 (families without the setting are left out)."),
    opus: str = typer.Option("12,24", "--opus", help="Opus bitrates in kbps to compare against ('' for none)."),
    mulaw: bool = typer.Option(True, "--mulaw/--no-mulaw", help="Also compare 8-bit mu-law."),
    out: Path = typer.Option(Path("bench-quality"), "--out", help="Folder for results.jsonl (resumable) and "
                             "summary.md/.csv/.json."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore results already in --out and start over."),
    device: str = DEVICE, quiet: bool = QUIET,
) -> None:
    """The paper's Table 1 protocol on your audio: every INR fitted to every clip, then every metric.

    Prints mean ± std per INR and codec baseline. An interrupted run resumes from
    OUT/results.jsonl when started again with the same settings.
    """
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        from .quality import COLUMNS, Plan, check_resume, load_clips, make_variants, run_quality, table_cells
        from .quant import check_bits

        check_bits(bits)
        if steps < 1 or (limit is not None and limit < 1) or length < 256 or not 1000 <= sr <= 192000:
            raise KanError("--steps and --limit must be >= 1, --length >= 256 and --sr 1000-192000 Hz")
        archs = [a.strip() for a in arch.split(",") if a.strip()]
        for a in archs:
            make_config(a)  # names the valid families on a typo
        variants = make_variants(archs, sweep, _int_list(opus, "--opus", "6,12,24", float) if opus.strip() else [], mulaw)
        api.resolve_device(device)
        clips, skipped = load_clips(data, sr, length, limit)
        plan = Plan(variants, steps, bits, sr, length, seed, skipped)
        check_resume(out, plan, fresh)
        console.print(f"{len(clips)} clips of {length / sr:.2f} s from {data}" +
                      (f" ({len(skipped)} skipped: shorter than {length} samples or silent)" if skipped else "") +
                      f"; {len(variants)} variants, {steps} steps; results in {out}/")
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fit]}"),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True, disable=quiet)
        task = bar.add_task("clips x variants", total=len(clips) * len(variants), fit="")

        def on_start(name: str, already: int) -> None:
            bar.update(task, advance=already, description=name)

        def on_fit(ev: api.Event) -> None:
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
            _wide_console().print(table)
        console.print(f"wrote {out}/summary.md, summary.csv, summary.json and results.jsonl")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kancodec {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """kancodec: KAN implicit neural representations as an audio codec."""


def _optional_values(argv: list[str]) -> list[str]:
    """Let ``--hyper`` stand alone (Click has no optional option values): give it the
    default model when the next word is missing, another option, or the audio input."""
    out = list(argv)
    for i, word in enumerate(out):
        if word == "--hyper":
            nxt = out[i + 1] if i + 1 < len(out) else None
            if nxt is None or nxt.startswith("-") or Path(nxt).suffix.lower() in AUDIO_EXT:
                out[i] = f"--hyper={HYPER_DEFAULT}"
    return out


from . import cli_ae  # noqa: E402,F401  (registers train-ae, mix, bench ae, bench toy)


def run() -> None:
    app(args=_optional_values(sys.argv[1:]), prog_name="kancodec")


