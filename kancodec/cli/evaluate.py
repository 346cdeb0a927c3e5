"""``kancodec eval``: score audio (or a ``.kan`` file) against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .. import api
from ..audio import check_writable
from .common import DEVICE, THREADS, FORCE, QUIET, app, errors


_METRIC_LABELS = {"mse": "MSE", "psnr": "PSNR (dB)", "snr": "SNR (dB)", "si_snr": "SI-SNR (dB)", "lsd": "LSD",
                  "pesq": "PESQ", "stoi": "STOI", "wasserstein": "spectral Wasserstein", "visqol": "ViSQOL MOS-LQO",
                  "cdpam": "CDPAM"}


def _fmt(value) -> str:
    from ..metrics import NotAvailable

    if isinstance(value, NotAvailable):
        return f"n/a ({value})"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.3f}"


def _json_value(value):
    from ..metrics import NotAvailable

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
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Score OUTPUT against REFERENCE: MSE, PSNR, SNR, SI-SNR, LSD, PESQ, STOI, spectral Wasserstein.

    Definitions (kancodec/metrics.py; PSNR and LSD as the paper's code): PSNR = 10
    log10(range^2/MSE), range = the reference's max - min counted from 0. SI-SNR removes
    means and any gain. LSD = mean over frames of sqrt(mean over bins of
    log10(|R|^2/(|O|+1e-12)^2 + 1e-12)^2), Hann STFT with zero-padded centred frames, n_fft
    int(2048/(44100/sr)), hop int(sr/100), float32 (lower is better). PESQ is wide band at
    16 kHz (narrow band for 8 kHz references; 1-4.6). STOI 0-1. Spectral Wasserstein: the
    |FFT|s as distributions over squared bin indices, 1-Wasserstein distance / clip length
    (lower is better). OUTPUT at another rate is resampled to the reference's; different
    lengths compare the common part; each channel is scored, then the mean. A metric that
    cannot run (silence, too short) shows n/a and why.
    """
    with errors():
        if plot:
            from ..plot import check_plot_path

            check_plot_path(plot)
            check_writable(plot, force)
        from ..metrics import CORE

        metrics = CORE + (("visqol",) if visqol else ()) + (("cdpam",) if cdpam else ())
        result = api.evaluate(reference, output, metrics=metrics, device=device, keep_signals=bool(plot))
        if plot:
            from ..plot import spectrograms

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
        from ..metrics import HIGHER_IS_BETTER

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
            console.print(f"{output.name}: {k['label']}, {k['bytes']:,} bytes = {k['kbps']:.1f} kbps "
                          f"({k['ratio_to_pcm16']:.2f}x smaller than 16-bit PCM at {k['pcm16_kbps']:.0f} kbps)",
                          markup=False, highlight=False)
        for note in result["notes"]:
            console.print(f"note: {note}")
        if plot:
            console.print(f"spectrograms: {plot}")
