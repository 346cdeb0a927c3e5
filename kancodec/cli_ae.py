"""Command-line commands of the KAN autoencoders: ``train-ae``, ``mix``, ``bench ae``, ``bench toy``,
and the ``encode --ae`` / ``info`` parts for their files (a thin layer over :mod:`kancodec.aecodec`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .aecodec import DEFAULT_MODEL
from .audio import check_output_format, check_writable, write_audio
from .cli import DEVICE, FORCE, QUIET, _errors, _trained, _TrainReporter, _wide_console, _write_json, app, bench_app
from .errors import KanError
from .kanfile import AEFile
from .train import AE_TRAIN, TrainSettings

#: bench ae's Opus targets (libsndfile's lowest Opus setting gives ~8.7 kbps files of 3 s)
OPUS_KBPS = "8,10,12"


def ae_summary(af: AEFile, size: int, path: Path | str | None = None) -> Table:
    a, c, e = af.audio, af.config, af.encode
    kbps = size * 8 / a.duration / 1000
    code = (f"{af.code['codebooks']} of {c.codebooks} codebooks x {c.codebook_size} entries ({c.code_bits} bits each)"
            if c.quantized else f"{c.latent} latents at {af.code['bits']} bits")
    rows = [
        ("file", str(path) if path else "-"),
        ("audio", f"{a.duration:.2f} s, {a.channels} ch, {a.sample_rate} Hz (coded at {a.model_sr} Hz)"),
        ("model", f"{af.model['name']} ({c.kind}, {c.layer} layers, SHA-256 {af.model['sha256'][:12]}…)"),
        ("code", f"{code} per {c.hop}-sample hop, {a.steps} frames; payload {c.kbps(af.code.get('codebooks'), af.code.get('bits')):.2f} kbps"),
        ("size", f"{size:,} bytes: {kbps:.2f} kbps ({af.pcm_kbps() / kbps:.1f}x smaller than 16-bit PCM)"),
    ]
    if "snr_db" in e:
        rows.append(("quality", f"SNR {e['snr_db']:.2f} dB, SI-SNR {e['si_snr_db']:.2f} dB (decoded vs input at {a.model_sr} Hz)"))
    t = Table(show_header=False, box=None)
    for k, v in rows:
        t.add_row(f"[bold]{k}[/]", v)
    return t


def encode_ae(console: Console, input: Path, out: Path, model: str | None, codebooks: int | None, bits: int,
              device: str, force: bool, conflicts: list[str]) -> None:
    from .aecodec import encode

    if model is None:
        raise KanError("--codebooks needs --ae MODEL (e.g. --ae krvq)")
    if conflicts:
        raise KanError(f"--ae codes with a trained autoencoder; drop {', '.join(conflicts)} (they are for fitting)")
    af = encode(input, model=model, codebooks=codebooks, bits=bits, device=device)
    size = af.save(out, force)
    console.print(ae_summary(af, size, out))


def info_ae(af: AEFile, size: int, path: Path, as_json: bool, quiet: bool) -> None:
    if as_json:
        a = af.audio
        kbps = size * 8 / a.duration / 1000
        doc = {"format": "kancodec-ae", "audio": {**a.__dict__, "duration": a.duration}, "model": af.model,
               "code": af.code, "payload_kbps": af.config.kbps(af.code.get("codebooks"), af.code.get("bits")), "bytes": size,
               "kbps": round(kbps, 3), "pcm16_kbps": af.pcm_kbps(), "ratio_to_pcm16": round(af.pcm_kbps() / kbps, 3),
               "encode": af.encode}
        typer.echo(json.dumps(doc, indent=2, sort_keys=True))
    elif not quiet:
        Console().print(ae_summary(af, size, path))


@app.command("train-ae")
def train_ae(
    data: Path = typer.Option(..., "--data", help="Folder of audio (WAV, FLAC, OGG; searched recursively), e.g. the "
                              "corpus from models/build_corpus.sh."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model file to write (default: <kind>.safetensors "
                                          "in your kancodec data folder, where encode --ae <kind> finds it)."),
    kind: str = typer.Option("krvq", "--kind", help="kae (plain), kvae (variational), kvq (one codebook) or krvq "
                             "(residual codebooks, several bitrates in one model)."),
    layer: str = typer.Option("kan", "--layer", help="kan, or mlp: the baseline with hidden widths scaled to the same "
                              "parameter count."),
    frame: int = typer.Option(512, "--frame", help="Samples per coded frame (22.05 kHz)."),
    hop: int = typer.Option(256, "--hop", help="Samples between frames (frame/hop: 2, 3, …). Sets the bitrate: "
                            "frames per second = 22050/hop."),
    hidden: str = typer.Option("128", "--hidden", help="Hidden widths of the encoder (the decoder mirrors them), comma-separated."),
    latent: int = typer.Option(32, "--latent", help="Numbers per frame in the latent."),
    grid: int = typer.Option(8, "--grid", help="KAN B-spline grid intervals."),
    codebooks: int = typer.Option(8, "--codebooks", help="krvq: residual codebooks (the most encode can use)."),
    codebook_size: int = typer.Option(1024, "--codebook-size", help="Entries per codebook (bits per code: log2 of it)."),
    kl_weight: float = typer.Option(1e-3, "--kl-weight", help="kvae: weight of the KL term."),
    steps: int = typer.Option(AE_TRAIN.steps, "--steps", help="Optimiser steps (one-cycle schedule over all of them)."),
    batch: int = typer.Option(AE_TRAIN.batch, "--batch", help="Crops per step."),
    lr: float = typer.Option(AE_TRAIN.lr, "--lr", help="Peak learning rate."),
    crop: int = typer.Option(AE_TRAIN.loss_window, "--crop", help="Samples per training crop."),
    spectral_weight: float = typer.Option(AE_TRAIN.spectral_weight, "--spectral-weight", help="Weight of the mel-STFT "
                                          "term next to L1."),
    val_every: int = typer.Option(AE_TRAIN.val_every, "--val-every", help="Validate (SI-SNR, LSD, PESQ) every N steps."),
    checkpoint_every: int = typer.Option(AE_TRAIN.checkpoint_every, "--checkpoint-every",
                                         help="Save a resumable checkpoint every N steps (and on Ctrl-C)."),
    val_fraction: float = typer.Option(AE_TRAIN.val_fraction, "--val-fraction", help="Share held out for validation."),
    split: str = typer.Option("auto", "--split", help="Hold out whole folders or single files: auto, folder, file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial weights and the crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint beside the output."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Train a KAN autoencoder codec (see encode --ae): frames of audio -> latents or codebook
    indices -> audio, overlap-added. Validation metrics go to <output>.train.jsonl."""
    from .ae import AEConfig
    from .cli import _parse_hidden
    from .train import train_ae as run_training

    console = Console(stderr=True, quiet=quiet)
    with _errors():
        config = AEConfig(kind=kind, layer=layer, frame=frame, hop=hop, hidden=_parse_hidden(hidden), latent=latent,
                          grid=grid, codebooks=codebooks, codebook_size=codebook_size, kl_weight=kl_weight)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, loss_window=crop, spectral_weight=spectral_weight,
                                 val_every=val_every, checkpoint_every=checkpoint_every, val_fraction=val_fraction,
                                 split=split, seed=seed)
        rep = _TrainReporter(console, quiet)
        try:
            summary = run_training(data, output, config, settings, device=device, resume=resume, force=force, progress=rep)
        finally:
            rep.close()
        _trained(console, summary)


@app.command()
def mix(
    a: Path = typer.Argument(..., help="First audio file."),
    b: Path = typer.Argument(..., help="Second audio file (same sample rate and channels)."),
    output: Path = typer.Option(..., "--output", "-o", help="WAV or FLAC to write."),
    ratio: float = typer.Option(0.5, "--ratio", help="0 = all A, 1 = all B; in between blends the latents."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Autoencoder (name or path); a kae/kvae one blends "
                              "most smoothly, vq models decode the blend without quantising."),
    device: str = DEVICE, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Blend two sounds in an autoencoder's latent space and decode the mix."""
    from .aecodec import mix as run_mix

    console = Console(stderr=True, quiet=quiet)
    with _errors():
        check_output_format(output)
        check_writable(output, force)
        y, rate = run_mix(a, b, ratio, model=model, device=device)
        write_audio(output, y, rate, force=force)
        console.print(f"wrote {output}: {y.shape[1] / rate:.2f} s, {y.shape[0]} ch, {rate} Hz, "
                      f"{1 - ratio:g} x {a.name} + {ratio:g} x {b.name} in latent space")



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
    device: str = DEVICE, force: bool = FORCE,
) -> None:
    """Rate–distortion table: kbps vs PESQ, STOI, SI-SNR, LSD for 1…N codebooks of each model, and Opus."""
    from .aebench import run_ae_bench
    from .cli import _int_list

    with _errors():
        if clips < 1 or length < 4096:
            raise KanError("--clips must be at least 1 and --length at least 4096")
        rates = _int_list(opus, "--opus", OPUS_KBPS, float) if opus.strip() else []
        if out is not None:
            check_writable(out, force)
        console = _wide_console()
        result = run_ae_bench(data, model, clips, length, tuple(rates), device,
                              log=lambda m: console.print(escape(str(m)), highlight=False))
        t = Table("codec", "codebooks", "payload kbps", "file kbps", "PESQ", "STOI", "SI-SNR dB", "LSD")
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        for r in result["rows"]:
            t.add_row(r["codec"], fmt(r["codebooks"], "d"), fmt(r["payload_kbps"], ".2f"), fmt(r["file_kbps"], ".2f"),
                      fmt(r["pesq"], ".3f"), fmt(r["stoi"], ".3f"), fmt(r["si_snr"], ".2f"), fmt(r["lsd"], ".3f"))
        console.print(t)
        _write_json(out, result, force)


@bench_app.command("toy")
def bench_toy(
    steps: int = typer.Option(3000, "--steps", help="Training steps per model and seed."),
    seeds: str = typer.Option("1,2,3", "--seeds", help="Seeds (positive), comma-separated."),
    out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    force: bool = FORCE,
) -> None:
    """KAN vs MLP autoencoder on 128-sample random sinusoids through 5 latents (test MSE; CPU: ~1 min per 1000 steps)."""
    from .aebench import run_toy
    from .cli import _int_list

    with _errors():
        if steps < 1:
            raise KanError("--steps must be at least 1")
        chosen = tuple(_int_list(seeds, "--seeds", "1,2,3"))
        if out is not None:
            check_writable(out, force)
        console = _wide_console()
        result = run_toy(steps, chosen, log=lambda m: console.print(m, highlight=False))
        for layer in ("kan", "mlp"):
            v = result[layer]
            console.print(f"{layer}: test MSE {np.mean(v):.5f} ± {np.std(v):.5f} over {len(v)} seeds "
                          f"({result['params'][layer]:,} params)")
        _write_json(out, result, force)

