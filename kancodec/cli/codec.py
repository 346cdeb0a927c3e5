"""The codec commands: ``encode``, ``decode``, ``info``, ``mix``, ``demo``, ``models``."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import api, batch
from ..aecodec import DEFAULT_MODEL
from ..audio import check_output_format, check_writable, read_stdin_audio, write_audio
from ..codec import Encoded
from ..errors import KanError
from ..fit import PRESETS
from ..inr import INR_CONFIGS, make_config
from ..inrcodec import REFINE_LR
from ..kanfile import codec_for, file_size, from_bytes, load
from ..modelfile import available_models
from ..runtime import Event
from .common import (DEVICE, THREADS, FORCE, HYPER_DEFAULT, QUIET, Reporter, app, compile_choice, err, errors, message,
                     parse_hidden, printable,
                     rows_table)


def _arch_help() -> str:
    """``--arch``'s help, from the registry: each family with its parameters per window."""
    sizes = ", ".join(f"{a} ({c().n_params / 1000:.0f}k)" for a, c in INR_CONFIGS.items() if a != "kan")
    return (f"The network family: kan (the paper's KAN, {make_config('kan').n_params:,} params per window) or a "
            f"baseline from the paper: {sizes}. All decode and eval the same way.")


class FitReporter(Reporter):
    """Renders encode's progress events: the plan, a bar with loss and SNR, the estimate."""

    def render(self, ev: Event) -> None:
        if ev.stage == "plan":
            i = ev.info
            if i.get("hyper"):
                self.console.print(f"predicting {i['active']} of {i['windows']} windows at {i['fit_sr']} Hz with "
                                   f"{i['hyper']}" + (f", then {i['steps']} refining steps" if i["steps"] else ""),
                                   markup=False, highlight=False)
            if i["steps"] or not i.get("hyper"):
                self.console.print(f"fitting {i['active']} of {i['windows']} windows at {i['fit_sr']} Hz, "
                                   f"{i['steps']} steps" + (f" from {i['start']}" if i.get("start") else "") + ", "
                                   f"{i['batches']} batch(es) of up to {i['batch']} on {i['device']}, "
                                   f"~{i['memory_gb']:.1f} GB"
                                   + (" (compiling the model first, ~10-30 s)" if i["compile"] else ""))
                if i.get("tiled"):
                    self.console.print(f"(fitting rate lowered from {i['sr']} Hz so that {i['windows']} window(s) hold "
                                       f"the whole file; --fit-sr {i['sr']} keeps it)", markup=False, highlight=False)
            if ev.total:
                self.open_bar("fit", ev.total)
        elif ev.stage == "estimate":
            self.console.print(f"estimated time left: {ev.info['seconds'] / 60:.1f} min (timed after the first steps)")
        elif ev.stage == "fit" and self.bar is not None:
            self.bar.update(self.task, completed=ev.done, stats=f"loss {ev.info['loss']:.4f} SNR {ev.info['snr']:.1f} dB")
            if ev.done >= ev.total:
                self.close()


def summary(kf: Encoded, size: int, path: Path | str | None = None) -> Table:
    """The table encode, demo and info print: the file, then the codec's own rows."""
    return rows_table([("file", str(path) if path else "-"), *codec_for(kf).summary(kf, size)])


@app.command()
def encode(
    inputs: List[Path] = typer.Argument(..., metavar="INPUT...", help="Audio files to encode (WAV, FLAC or OGG; any "
                                        "rate 8-192 kHz), folders of them (searched recursively), or - for "
                                        "standard input."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The .kan file to write (default: INPUT with "
                                          ".kan; - for standard output), or with several inputs or a folder, the "
                                          "folder to write them into (made if missing; default: next to each input)."),
    preset: str = typer.Option("auto", "--preset", "-p", help="auto (standard on CUDA, fast on CPU), fast (200 steps), "
                               "standard (2000), paper (10000, the paper's loss weights). Time grows with steps."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Fitting steps (overrides the preset). More steps: better quality, linear time."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (overrides the preset's; by default "
                                       + ", ".join(f"{a} {c.lr:g}" for a, c in INR_CONFIGS.items()) + ")."),
    bits: Optional[float] = typer.Option(None, "--bits", "-b", help="Quantisation depth of the weights, 1-16 "
                                         "(default 8; fractions allowed; 32 = float). Each bit less halves the step: "
                                         "smaller file, more noise. The fit's last steps train for it. With --ae: "
                                         "bits per stored latent (kae/kvae)."),
    kbps: Optional[float] = typer.Option(None, "--kbps", "-k", help="Target bitrate: the KAN's width (and below 64 kbps "
                                         "a half-length window) and the depth are chosen so the file lands within 10% of "
                                         "it (the summary says what it chose). Instead of --bits."),
    fit_sr: Optional[int] = typer.Option(None, "--fit-sr", help="Fit at this rate. Lower = fewer windows and bits, less "
                                         "bandwidth. Default: the input's, or up to 20% lower when that saves a nearly "
                                         "empty last window (give the input's rate to keep it)."),
    chunk: Optional[int] = typer.Option(None, "--chunk", help="Window length in samples at the fitting rate "
                                        "(default 32768; 16384 with --kbps below 64)."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Cross-fade between windows, in samples (default 1024)."),
    arch: str = typer.Option("kan", "--arch", help=_arch_help()),
    n_freqs: Optional[int] = typer.Option(None, "--n-freqs", help="Positional encoding length L, 2L inputs "
                                          f"(kan: {make_config('kan').n_freqs}, nerf: {make_config('nerf').n_freqs}). "
                                          "More: finer detail, more params."),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="Hidden layer widths, comma-separated "
                                         "(kan: 48,24,12). Wider: better quality, more bits and time."),
    grid: Optional[int] = typer.Option(None, "--grid", help="kan only: B-spline grid intervals G (default 10)."),
    order: Optional[int] = typer.Option(None, "--order", help="kan only: B-spline order k, 1-5 (default 2)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0); the same seed and settings give the same file."),
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the model (10-30 s once, then ~3x faster steps)."),
    hyper: Optional[str] = typer.Option(None, "--hyper", metavar="[MODEL]", help="Predict the networks in one shot "
                                        "with a FewSound hypernetwork instead of fitting: --hyper alone uses "
                                        f"{HYPER_DEFAULT} (yours from train-hyper, else the bundled one); or give a "
                                        "model name or .safetensors path. Fits at 22.05 kHz in the model's windows."),
    refine: Optional[int] = typer.Option(None, "--refine", help="With --hyper: then fit this many steps from the "
                                         f"prediction (e.g. 300), at --lr (default {REFINE_LR:g}). Better than one shot; "
                                         "how it compares with fitting from scratch: models/README.md."),
    start: str = typer.Option("random", "--start", metavar="random|auto|MODEL", help="Where fitting starts: random "
                              "weights (default), auto (the learned start θ-kan from train-theta when it was learned "
                              "for this network, rate and window; else random), or a θ model name or path."),
    postfilter: bool = typer.Option(True, "--postfilter/--no-postfilter", help="Store 16 band gains every 93 ms "
                                    "that the decoder applies, measured against the input: they turn down the bands "
                                    "the networks only fill with noise (8 bytes per 93 ms, 0.69 kbps; see README, "
                                    "Bits)."),
    ae: Optional[str] = typer.Option(None, "--ae", metavar="MODEL", help="Code with a KAN autoencoder instead of "
                                     f"fitting: {DEFAULT_MODEL} (bundled; the model train-ae saves by default), another "
                                     "model name, or a .safetensors path. Low bitrate; the .kan file needs the same "
                                     "model to decode."),
    codebooks: Optional[int] = typer.Option(None, "--codebooks", help="With --ae and a kvq/krvq model: codebooks to "
                                            "keep, 1 to the model's (default all). Each adds log2(codebook size) bits "
                                            "per frame (0.86 kbps at the defaults)."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Fit KAN networks (or a baseline INR, --arch) to audio and write .kan files.

    With --hyper, a pretrained hypernetwork predicts the networks in one pass (seconds),
    optionally refined with --refine N fitting steps. With --ae, a KAN autoencoder codes
    the audio as codebook indices (or latents) at a few kbps.

    Several inputs or a folder are encoded in one process, windows of different files fitted
    together; existing outputs are skipped unless --force; a file that fails does not stop
    the others, and the exit code is non-zero if any failed. Under torchrun the files are
    shared among the processes (one GPU each). - reads audio from standard input; -o -
    writes the .kan file to standard output."""
    console = Console(stderr=True, quiet=quiet)
    with errors():
        use_compile = compile_choice(compile)
        if preset not in ("auto", *PRESETS):
            raise KanError(f"--preset {preset!r}: choose one of: auto, {', '.join(PRESETS)}")
        shaped = arch != "kan" or any(v is not None for v in (n_freqs, hidden, grid, order))
        config = make_config(arch, n_freqs=n_freqs, hidden=parse_hidden(hidden) if hidden else None,
                             grid=grid, order=order) if shaped else None
        options = dict(preset_name=None if preset == "auto" else preset, steps=steps, lr=lr,
                       bits=int(bits) if ae and bits is not None and bits.is_integer() else bits, kbps=kbps,
                       config=config, fit_sr=fit_sr, chunk=chunk, overlap=overlap, seed=seed, hyper=hyper,
                       refine=refine, start=start, postfilter=None if postfilter else False, ae=ae,
                       codebooks=codebooks)
        if len(inputs) == 1 and not inputs[0].is_dir() and batch.distributed()[1] == 1:
            return _encode_one(inputs[0], output, options, console, quiet, device, use_compile, force)
        _encode_many(inputs, output, options, console, quiet, device, use_compile, force)


def _encode_one(source: Path, output: Optional[Path], options: dict, console: Console, quiet: bool, device: str,
                use_compile, force: bool) -> None:
    """One input: its own progress bar and summary table; ``-`` in and out are the standard streams."""
    stdin, stdout = str(source) == "-", output is not None and str(output) == "-"
    if stdin and output is None:
        raise KanError("reading audio from standard input (-): give the .kan file to write with -o FILE, or -o -")
    out = output or source.with_suffix(".kan")
    if not stdout and (out.is_dir() or str(output).endswith(("/", os.sep))):
        out = out / (("stdin" if stdin else source.stem) + ".kan")
    if not stdout:
        check_writable(out, force, inputs=() if stdin else (source,))
    data = read_stdin_audio() if stdin else source
    rep = FitReporter(console, quiet)
    try:
        kf = api.encode(*data if stdin else (data,), device=device,
                        compile=None if use_compile == "auto" else use_compile, progress=rep, **options)
    finally:
        rep.close()
    if stdout:
        blob = kf.to_bytes()
        sys.stdout.buffer.write(blob)
        sys.stdout.buffer.flush()
        size = len(blob)
    else:
        size = kf.save(out, force)
    console.print(summary(kf, size, "-" if stdout else out))


class BatchReporter(Reporter):
    """One bar for a batch encode: files done, and the batch being fitted."""

    def render(self, ev: Event) -> None:
        if ev.stage == "file":
            if self.bar is None:
                self.open_bar("encoding", ev.total)
            self.bar.update(self.task, completed=ev.done)
        elif ev.stage == "fit" and self.bar is not None:
            self.bar.update(self.task, stats=f"fit step {ev.done}, loss {ev.info['loss']:.4f}, SNR {ev.info['snr']:.1f} dB")


def _encode_many(inputs: list[Path], output: Optional[Path], options: dict, console: Console, quiet: bool,
                 device: str, use_compile, force: bool) -> None:
    """Several inputs or folders (or torchrun): one queue, one bar, one summary table."""
    if output is not None and (str(output) == "-" or output.exists() and not output.is_dir()):
        raise KanError(f"-o {output}: with several inputs or a folder, -o is the folder to write the .kan files into")
    items = batch.collect(inputs, output, force)
    rank, world = batch.distributed()
    rep = BatchReporter(console, quiet or rank > 0)
    if rank == 0:
        skipped = sum(it.status == "skipped" for it in items)
        console.print(f"{len(items)} files" + (f" ({skipped} skipped: their outputs exist; --force overwrites)"
                                               if skipped else "")
                      + (f", shared among {world} processes" if world > 1 else ""), markup=False, highlight=False)
    compile_arg = "auto" if use_compile == "auto" else use_compile
    try:
        if world > 1:
            items = batch.run_distributed(items, options, device=device, compile=compile_arg, batch=None, force=force,
                                          progress=rep, report=lambda done: (rep.close(), _report(done, console)))
        else:
            batch.encode_many(items, options, device=device, compile=compile_arg, force=force, progress=rep)
            rep.close()
            _report(items, console)
    finally:
        rep.close()
    code = batch.batch_exit_code(items)
    if code:
        raise typer.Exit(code)


def _report(items: list, console: Console) -> None:
    """A batch encode's summary: one table row per file, then one error line per failure."""
    t = Table("file", "result", "audio s", "kbps", "SI-SNR dB", "encode s", title="kancodec encode")
    for it in items:
        result = {"encoded": printable(it.output, lines=False), "skipped": "skipped (exists)"}.get(
            it.status, "failed (below)")
        t.add_row(escape(printable(it.source, lines=False)), escape(result),
                  *((f"{it.seconds:.2f}", f"{it.kbps:.1f}",
                     "-" if it.si_snr_db is None else f"{it.si_snr_db:.2f}", f"{it.encode_s:.1f}")
                    if it.status == "encoded" else ("", "", "", "")))
    console.print(t)
    counts = {s: sum(it.status == s for it in items) for s in ("encoded", "skipped", "failed")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), markup=False, highlight=False)
    for it in items:
        if it.status == "failed":
            named = it.error if it.error.startswith(it.source) else f"{it.source}: {it.error}"
            err.print(f"[bold red]error:[/] {escape(message(named))}", highlight=False, soft_wrap=True)


@app.command()
def decode(
    input: Path = typer.Argument(..., help="The .kan file to decode (- for standard input)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="WAV or FLAC to write (default: INPUT with .wav; "
                                          "- writes WAV to standard output)."),
    sr: Optional[int] = typer.Option(None, "--sr", help="Output sample rate (default: the original's). Any rate: "
                                     "above the fitted one the networks are evaluated on a finer grid, below it "
                                     "the output is low-passed so nothing aliases."),
    model: Optional[Path] = typer.Option(None, "--model", help="Autoencoder files only: the model file to decode "
                                         "with, when it is not where kancodec looks (it must be the same model)."),
    max_seconds: float = typer.Option(api.MAX_SECONDS, "--max-seconds", help="Refuse files holding more audio than "
                                      "this (a guard against crafted files); raise it to decode longer ones. "
                                      "Decoding streams into the output, so length costs disk, not memory."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Decode a .kan file to WAV or FLAC at any sample rate."""
    console = Console(stderr=True, quiet=quiet)
    with errors():
        stdin, stdout = str(input) == "-", output is not None and str(output) == "-"
        if stdin and output is None:
            raise KanError("reading the .kan file from standard input (-): give the audio file to write with -o FILE, "
                           "or -o -")
        kan = from_bytes(sys.stdin.buffer.read(), "<stdin>") if stdin else input
        if stdout:  # decoded whole into a temporary WAV first: a failed decode writes nothing
            with tempfile.TemporaryDirectory() as tmp:
                wav = Path(tmp) / "out.wav"
                frames, channels, rate = api.decode_to(kan, wav, sr=sr, device=device, model=model,
                                                       max_seconds=max_seconds)
                with open(wav, "rb") as f:
                    shutil.copyfileobj(f, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            console.print(f"wrote WAV to standard output: {frames / rate:.2f} s, {channels} ch, {rate} Hz",
                          markup=False, highlight=False)
            return
        out = output or input.with_suffix(".wav")
        check_output_format(out)
        check_writable(out, force, inputs=() if stdin else (input,))
        frames, channels, rate = api.decode_to(kan, out, sr=sr, force=force, device=device, model=model,
                                               max_seconds=max_seconds)
        console.print(f"wrote {out}: {frames / rate:.2f} s, {channels} ch, {rate} Hz", markup=False, highlight=False)


@app.command()
def info(
    input: Path = typer.Argument(..., help="The .kan file to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of a table."),
    quiet: bool = QUIET,
) -> None:
    """Show what a .kan file holds: audio, codec, model, bits or codebooks, kbps, encode settings."""
    with errors():
        kf = load(input)
        size = file_size(input)
        if as_json:
            typer.echo(json.dumps(codec_for(kf).describe(kf, size), indent=2, sort_keys=True))
        elif not quiet:
            Console().print(summary(kf, size, input))


@app.command()
def mix(
    a: Path = typer.Argument(..., help="First audio file."),
    b: Path = typer.Argument(..., help="Second audio file (same sample rate and channels)."),
    output: Path = typer.Option(..., "--output", "-o", help="WAV or FLAC to write."),
    ratio: float = typer.Option(0.5, "--ratio", help="0 = all A, 1 = all B; in between blends the latents."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Autoencoder (name or path); a kae/kvae one blends "
                              "most smoothly, vq models decode the blend without quantising."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Blend two sounds in an autoencoder's latent space and decode the mix."""
    console = Console(stderr=True, quiet=quiet)
    with errors():
        check_output_format(output)
        check_writable(output, force, inputs=(a, b))
        y, rate = api.mix(a, b, ratio, model=model, device=device)
        write_audio(output, y, rate, force=force)
        console.print(f"wrote {output}: {y.shape[1] / rate:.2f} s, {y.shape[0]} ch, {rate} Hz, "
                      f"{1 - ratio:g} x {a.name} + {ratio:g} x {b.name} in latent space", markup=False, highlight=False)


@app.command()
def demo(
    steps: Optional[int] = typer.Option(None, "--steps", help="Fitting steps (default: the fast preset's 200)."),
    bits: Optional[float] = typer.Option(None, "--bits", "-b", help="Quantisation depth of the weights (default 8)."),
    kbps: Optional[float] = typer.Option(None, "--kbps", "-k", help="Target bitrate instead of --bits."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also keep the decoded WAV here."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Encode, decode and score a bundled 3 s real speech clip (tuxpaint-stamps, GPL-2)."""
    console = Console(stderr=True, quiet=quiet)
    with errors():
        if output:
            check_output_format(output)
            check_writable(output, force)
        clip = resources.files("kancodec") / "data" / "demo_speech.flac"
        with resources.as_file(clip) as path, tempfile.TemporaryDirectory() as tmp:
            console.print(f"demo clip: {path.name} (French speech from Debian's tuxpaint-stamps-default, GPL-2)")
            rep = FitReporter(console, quiet)
            try:
                kf = api.encode(path, preset_name="fast", steps=steps, bits=bits, kbps=kbps, device=device,
                                progress=rep)
            finally:
                rep.close()
            kan_path = Path(tmp) / "demo.kan"
            size = kf.save(kan_path)
            y, rate = api.decode(kan_path, device=device)
            if output:
                write_audio(output, y, rate, force=force)
            console.print(summary(kf, size, "(temporary, not kept)"))
            if output:
                console.print(f"decoded audio: {output}", markup=False, highlight=False)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the models kancodec can find by name (--hyper, --ae, mix): yours, then the bundled ones."""
    with errors():
        rows = available_models()
        if as_json:
            typer.echo(json.dumps(rows, indent=2, sort_keys=True))
            return
        t = Table("name", "kind", "MB", "SHA-256", "where", "path")
        for r in rows:
            note = " (hidden by your model of the same name)" if r["shadowed"] else ""
            kind = r["kind"] or f"unreadable: {r['error']}"
            t.add_row(*map(escape, (r["name"], kind, f"{r['bytes'] / 1e6:.1f}", (r["sha256"] or "-")[:16],
                                    r["where"] + note, r["path"])))
        Console().print(t)
