"""Training commands: ``train-hyper`` (FewSound hypernetworks) and ``train-ae`` (KAN autoencoders)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..inr import make_config
from ..runtime import Event
from ..train import AE_TRAIN, THETA_TRAIN, TrainSettings
from .common import DEVICE, THREADS, FORCE, QUIET, Reporter, app, compile_choice, errors, parse_hidden


def _val_every(default: int):
    return typer.Option(default, "--val-every", help="Validate (SI-SNR, LSD, PESQ) every N steps.")


def _checkpoint_every(default: int):
    return typer.Option(default, "--checkpoint-every", help="Save a resumable checkpoint every N steps (and on Ctrl-C).")


def _val_fraction(default: float):
    return typer.Option(default, "--val-fraction", help="Share held out for validation.")


SEED = typer.Option(0, "--seed", help="Seed of the initial weights and the crops.")
RESUME = typer.Option(False, "--resume", help="Continue from the checkpoint beside the output.")


class TrainReporter(Reporter):
    """Renders training events: a progress bar with the loss, a line per validation."""

    def render(self, ev: Event) -> None:
        i = ev.info
        if ev.stage == "data":
            if self.bar is None:
                self.open_bar("reading and caching audio", ev.total)
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
            self.open_bar("train", ev.total, ev.done)
        elif ev.stage == "train" and self.bar is not None:
            self.bar.update(self.task, completed=ev.done, stats=f"loss {i['loss']:.4f} lr {i['lr']:.2g}")
        elif ev.stage == "val":
            pesq = f"{i['pesq']:.2f}" if i["pesq"] is not None else "n/a"
            self.console.print(f"step {ev.done}: validation SI-SNR {i['si_snr']:.2f} dB, LSD {i['lsd']:.3f}, PESQ {pesq}")
        elif ev.stage == "checkpoint":
            self.console.print(f"step {ev.done}: checkpoint {escape(i['path'])}", highlight=False)


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
    val_every: int = _val_every(TrainSettings.val_every),
    checkpoint_every: int = _checkpoint_every(TrainSettings.checkpoint_every),
    val_fraction: float = _val_fraction(TrainSettings.val_fraction),
    split: str = typer.Option("auto", "--split", help="Hold out whole folders (speakers) or single files: auto "
                              "(folders when there are 4 or more), folder, file."),
    seed: int = SEED, resume: bool = RESUME,
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the target network."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Train a FewSound hypernetwork: audio window in, INR weights out (see encode --hyper).

    Audio is resampled once to 22.05 kHz and cached; 32,768-sample crops are
    peak-normalised. Validation metrics go to <output>.train.jsonl. Several GPUs:
    torchrun --nproc_per_node N -m kancodec train-hyper ..."""
    from ..hyper import HyperConfig
    from ..train import train_hyper as run_training

    console = Console(stderr=True, quiet=quiet)
    with errors():
        use_compile = compile_choice(compile)
        config = HyperConfig(target=make_config(target).to_dict(), encoder=encoder, mode=mode)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, loss_window=loss_window,
                                 spectral_weight=spectral_weight, val_every=val_every,
                                 checkpoint_every=checkpoint_every, val_fraction=val_fraction, split=split, seed=seed)
        report(console, quiet, run_training, data, output, config, settings, device=device, resume=resume,
               force=force, compile=use_compile)


@app.command("train-theta")
def train_theta(
    data: Path = typer.Option(..., "--data", help="Folder of speech (WAV, FLAC, OGG; searched recursively), e.g. the "
                              "corpus from models/build_corpus.sh."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Model file to write (default: "
                                          "theta-<target>.safetensors in your kancodec data folder, where encode "
                                          "finds it)."),
    target: str = typer.Option("kan", "--target", help="INR to learn a start for (its default sizes): kan or a "
                               "baseline (nerf, siren, ...)."),
    inner_steps: int = typer.Option(16, "--inner-steps", help="Fitting steps from θ per meta-step (the codec's "
                                    "schedule over that many steps)."),
    inner_lr: float = typer.Option(5e-2, "--inner-lr", help="Peak learning rate of those steps (the presets': 0.05)."),
    steps: int = typer.Option(THETA_TRAIN.steps, "--steps", help="Meta-steps (Reptile updates of θ)."),
    batch: int = typer.Option(THETA_TRAIN.batch, "--batch", help="Windows fitted per meta-step (per process)."),
    lr: float = typer.Option(THETA_TRAIN.lr, "--lr", help="Reptile's step ε at its peak (one-cycle schedule): θ moves "
                             "this share of the way to the mean of the fitted networks."),
    loss_window: int = typer.Option(THETA_TRAIN.loss_window, "--loss-window", help="Samples each inner step's loss "
                                    "sees (a random stretch per step; 32768 = all)."),
    spectral_weight: float = typer.Option(THETA_TRAIN.spectral_weight, "--spectral-weight", help="Weight of the "
                                          "mel-STFT term next to L1 (the presets' 0.3)."),
    val_every: int = _val_every(THETA_TRAIN.val_every),
    checkpoint_every: int = _checkpoint_every(THETA_TRAIN.checkpoint_every),
    val_fraction: float = _val_fraction(THETA_TRAIN.val_fraction),
    split: str = typer.Option("auto", "--split", help="Hold out whole folders (speakers) or single files: auto, "
                              "folder, file."),
    seed: int = SEED, resume: bool = RESUME,
    compile: str = typer.Option("auto", "--compile", help="auto, yes or no: torch.compile the target network."),
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Meta-learn a start θ for fitting (Reptile): encode then fits from θ, not from random
    weights. Validation (SI-SNR after --inner-steps fitting steps from θ on held-out windows)
    goes to <output>.train.jsonl. Several processes: torchrun --nproc_per_node N -m kancodec
    train-theta ..."""
    from ..theta import ThetaConfig
    from ..train import train_theta as run_training

    console = Console(stderr=True, quiet=quiet)
    with errors():
        use_compile = compile_choice(compile)
        config = ThetaConfig(target=make_config(target).to_dict(), inner_steps=inner_steps, inner_lr=inner_lr)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, weight_decay=0.0, loss_window=loss_window,
                                 spectral_weight=spectral_weight, val_every=val_every, val_clips=THETA_TRAIN.val_clips,
                                 checkpoint_every=checkpoint_every, val_fraction=val_fraction, split=split, seed=seed)
        report(console, quiet, run_training, data, output, config, settings, device=device, resume=resume,
               force=force, compile=use_compile)


def report(console: Console, quiet: bool, run_training, *args, **kwargs) -> None:
    """Run one of kancodec.train's trainings with a progress display, then say what it wrote."""
    rep = TrainReporter(console, quiet)
    try:
        summary = run_training(*args, progress=rep, **kwargs)
    finally:
        rep.close()
    trained(console, summary)


def trained(console: Console, summary: dict) -> None:
    if "bytes" in summary:
        v = summary["val"]
        pesq = f"{v['pesq']:.2f}" if v["pesq"] is not None else "n/a"
        console.print(f"wrote {escape(str(summary['output']))} ({summary['bytes'] / 1e6:.1f} MB) after "
                      f"{summary['seconds'] / 60:.1f} min: validation SI-SNR {v['si_snr']:.2f} dB, "
                      f"LSD {v['lsd']:.3f}, PESQ {pesq}", highlight=False)


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
    val_every: int = _val_every(AE_TRAIN.val_every),
    checkpoint_every: int = _checkpoint_every(AE_TRAIN.checkpoint_every),
    val_fraction: float = _val_fraction(AE_TRAIN.val_fraction),
    split: str = typer.Option("auto", "--split", help="Hold out whole folders or single files: auto, folder, file."),
    seed: int = SEED, resume: bool = RESUME,
    device: str = DEVICE, threads: str = THREADS, force: bool = FORCE, quiet: bool = QUIET,
) -> None:
    """Train a KAN autoencoder codec (see encode --ae): frames of audio -> latents or codebook
    indices -> audio, overlap-added. Validation metrics go to <output>.train.jsonl."""
    from ..ae import AEConfig
    from ..train import train_ae as run_training

    console = Console(stderr=True, quiet=quiet)
    with errors():
        config = AEConfig(kind=kind, layer=layer, frame=frame, hop=hop, hidden=parse_hidden(hidden), latent=latent,
                          grid=grid, codebooks=codebooks, codebook_size=codebook_size, kl_weight=kl_weight)
        settings = TrainSettings(steps=steps, batch=batch, lr=lr, loss_window=crop, spectral_weight=spectral_weight,
                                 val_every=val_every, checkpoint_every=checkpoint_every, val_fraction=val_fraction,
                                 split=split, seed=seed)
        report(console, quiet, run_training, data, output, config, settings, device=device, resume=resume,
               force=force)
