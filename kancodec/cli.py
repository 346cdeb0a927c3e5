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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__, api
from .audio import check_output_format, check_writable, write_audio
from .errors import DeviceError, FormatError, InputError, KanError, OutputError
from .fit import PRESETS
from .inr import KANConfig
from .kanfile import KanFile

EXIT_CODES = {InputError: 3, FormatError: 4, OutputError: 5, DeviceError: 6, KanError: 2}

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Audio as the weights of small Kolmogorov-Arnold networks (KAN implicit neural "
                       "representations). encode fits networks to a WAV/FLAC/OGG file and stores their "
                       "quantised weights in a .kan file; decode evaluates them at any sample rate.")
err = Console(stderr=True)

QUIET = typer.Option(False, "--quiet", "-q", help="Print nothing but errors.")
FORCE = typer.Option(False, "--force", "-f", help="Overwrite the output if it exists.")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA when available, else CPU), cpu or cuda.")


def _fail(e: KanError) -> None:
    code = next(c for t, c in EXIT_CODES.items() if isinstance(e, t))
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
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
            self.console.print(f"fitting {i['active']} of {i['windows']} windows at {i['fit_sr']} Hz, "
                               f"{i['steps']} steps, {i['batches']} batch(es) of up to {i['batch']} on {i['device']}"
                               + (" (compiling the model first, ~10-30 s)" if i["compile"] else ""))
            if ev.total:
                self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=self.console, transient=True)
                self.task = self.bar.add_task("fit", total=ev.total, stats="")
                self.bar.start()
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
        ("model", f"KAN L={kf.config.n_freqs} hidden={list(kf.config.hidden)} G={kf.config.grid} k={kf.config.order}, "
                  f"{kf.config.n_params:,} params x {a.channels * a.windows} windows"),
        ("size", f"{size:,} bytes at {kf.bits} bits: {size * 8 / a.duration / 1000:.1f} kbps "
                 f"({kf.pcm_kbps() / (size * 8 / a.duration / 1000):.2f}x smaller than 16-bit PCM at {kf.pcm_kbps():.0f} kbps)"),
    ]
    e = kf.encode
    if "snr_db" in e:
        rows.append(("quality", f"SNR {e['snr_db']:.2f} dB, SI-SNR {e['si_snr_db']:.2f} dB (decoded file vs input at {a.fit_sr} Hz)"))
    if "settings" in e:
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
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (overrides the preset; 5e-3 to 2e-2 work)."),
    bits: int = typer.Option(8, "--bits", "-b", help="Bits per stored weight: 16, 12, 10, 8, 6, 4 (also 2-7, 32 = float). "
                             "Fewer bits: smaller file, more quantisation noise."),
    fit_sr: Optional[int] = typer.Option(None, "--fit-sr", help="Fit at this rate (default: the input's). Lower = fewer windows "
                                         "and bits, less bandwidth."),
    chunk: int = typer.Option(32768, "--chunk", help="Window length in samples at the fitting rate."),
    overlap: int = typer.Option(1024, "--overlap", help="Cross-fade between windows, in samples."),
    n_freqs: int = typer.Option(10, "--n-freqs", help="Positional encoding length L (2L inputs)."),
    hidden: str = typer.Option("48,24,12", "--hidden", help="Hidden layer widths, comma-separated."),
    grid: int = typer.Option(10, "--grid", help="B-spline grid intervals G."),
    order: int = typer.Option(2, "--order", help="B-spline order k (1-5)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed and settings give the same file."),
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the model (10-30 s once, then ~3x faster steps)."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Fit KAN networks to an audio file and write a .kan file."""
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        out = output or input.with_suffix(".kan")
        check_writable(out, force)
        if compile not in ("auto", "yes", "no"):
            raise KanError(f"--compile {compile!r}: choose one of: auto, yes, no")
        if preset not in ("auto", *PRESETS):
            raise KanError(f"--preset {preset!r}: choose one of: auto, {', '.join(PRESETS)}")
        config = KANConfig(n_freqs=n_freqs, hidden=_parse_hidden(hidden), grid=grid, order=order)
        rep = _Reporter(console, quiet)
        try:
            kf = api.encode(input, preset_name=preset, steps=steps, lr=lr, bits=bits, config=config, fit_sr=fit_sr,
                            chunk=chunk, overlap=overlap, seed=seed, device=device,
                            compile={"auto": "auto", "yes": True, "no": False}[compile], progress=rep)
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
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Decode a .kan file to WAV or FLAC at any sample rate."""
    console = Console(stderr=True, quiet=quiet)
    with _errors():
        out = output or input.with_suffix(".wav")
        check_output_format(out)
        check_writable(out, force)
        y, rate = api.decode(input, sr=sr, device=device)
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


@app.command()
def bench(
    what: str = typer.Argument("speed", help="speed: fit steps/s and decode samples/s for one 32,768-sample window."),
    steps: int = typer.Option(20, "--steps", help="Timed fit steps (after warm-up)."),
    windows: str = typer.Option("1", "--windows", help="Comma-separated batch sizes to time, e.g. 1,8,64 on a GPU."),
    compile: str = typer.Option("both", "--compile", help="yes, no or both."),
    device: str = DEVICE,
) -> None:
    """Benchmarks that print numbers (speed targets live here, not in tests)."""
    with _errors():
        if what != "speed":
            raise KanError(f"bench {what!r}: choose one of: speed")
        modes = {"both": [False, True], "yes": [True], "no": [False]}
        if compile not in modes:
            raise KanError(f"--compile {compile!r}: choose one of: {', '.join(modes)}")
        try:
            batches = [int(v) for v in windows.split(",") if v.strip()]
        except ValueError:
            batches = []
        if not batches or min(batches) < 1:
            raise KanError(f"--windows {windows!r}: give comma-separated positive batch sizes, e.g. 1,8,64")
        from .bench import run_speed

        run_speed(device=device, steps=steps, batches=batches, modes=modes[compile],
                  console=Console() if sys.stdout.isatty() else Console(width=160))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kancodec {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version.")) -> None:
    """kancodec: KAN implicit neural representations as an audio codec."""


def run() -> None:
    app(prog_name="kancodec")


