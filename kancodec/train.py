"""Training the FewSound hypernetwork (``kancodec train-hyper``).

AdamW with a one-cycle learning rate, the codec's loss (L1 + mel-STFT, as in fitting),
random crops of a cached corpus (:mod:`kancodec.corpus`). Cheaper signal on CPU: the loss
is taken on a random ``loss_window``-sample stretch of each predicted network (the whole
window is still encoded and the whole network predicted; only its evaluation is cut), which
makes a step several times cheaper. Checkpoints (model + AdamW state) are written atomically
every ``checkpoint_every`` steps and on Ctrl-C; ``resume`` continues one exactly (the crops
of step ``s`` are drawn from a generator seeded with ``(seed, rank, s)``). Under ``torchrun``
with several processes it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU);
rank 0 validates, logs and saves.

Choices, measured on the corpus of ``models/build_corpus.sh`` (batch 8, CPU):

- Mel-STFT weight. 240 steps at peak lr 1e-3: weight 0.01 (as in fitting) and 1.0 (the
  paper's) gave validation SI-SNR -41.0 / -40.0 dB, LSD 2.38 / 2.32, PESQ 1.04 / 1.06. Over a
  3000-step schedule, weight 0.01 let the predicted networks die by step 250: every output
  exactly 0 (the hidden activations pushed outside the spline grid, where both SiLU and the
  basis vanish), LSD 7.04. Overfitting 8 fixed windows with a tiny model the other way
  round: 0.01 reached +1.8 dB SI-SNR in 200 steps, 1.0 stayed near -20 dB. The L1 term alone
  pulls a model that cannot yet read the phase towards silence; the mel term keeps energy
  in the output. Default 1.0.
- Peak learning rate: 3e-3 killed the networks within 60 steps (SI-SNR 0.0, LSD 7.04);
  1e-3 trained; 5e-4 is the default (the bundled model).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__, inr, metrics
from .api import Event, _want_compile, resolve_device
from .audio import check_writable
from .corpus import load_corpus, crop, val_crops
from .errors import InputError, Interrupted, KanError
from .fit import time_grid
from .hyper import HyperConfig, HyperNetwork, save
from .loss import SpectralLoss, fit_loss, si_snr, snr
from .modelfile import read_model, save_model, user_models_dir

CHECKPOINT_KIND = "hyper-checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """How ``train-hyper`` runs; saved with checkpoints (a resume must match) and models."""

    steps: int = 2000
    batch: int = 8
    lr: float = 5e-4  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    loss_window: int = 8192  # samples of each crop the loss sees (the window: all of it)
    spectral_weight: float = 1.0  # the paper's 1:1; 0.01 (as in fitting) let the networks die (see above)
    val_every: int = 100
    val_clips: int = 16
    val_pesq: int = 4  # PESQ is slow: computed on the first few validation clips
    checkpoint_every: int = 100
    val_fraction: float = 0.05
    split: str = "auto"
    seed: int = 0

    def lr_at(self, step: int) -> float:
        """One-cycle: cosine rise over the first 10% from lr/25 to lr, cosine fall to lr/1e4."""
        rise = max(1, int(0.1 * self.steps))
        if step < rise:
            lo, hi, frac = self.lr / 25, self.lr, step / rise
        else:
            lo, hi, frac = self.lr, self.lr / 1e4, (step - rise) / max(1, self.steps - rise)
        return hi + (lo - hi) * 0.5 * (1 + math.cos(math.pi * frac))


def default_output(config: HyperConfig) -> Path:
    return user_models_dir() / f"fewsound-{config.target['arch']}.safetensors"


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def log_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + ".train.jsonl")


def _save_checkpoint(path: Path, model: HyperNetwork, opt: torch.optim.Optimizer, step: int,
                     settings: TrainSettings, seconds: float) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for name, p in zip(names, opt.param_groups[0]["params"]):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"opt.{name}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
    save_model(path, CHECKPOINT_KIND, model.config.to_dict(), tensors,
               {"step": step, "seconds": round(seconds, 1), "settings": asdict(settings)}, force=True)


def _load_checkpoint(path: Path, model: HyperNetwork, opt: torch.optim.Optimizer,
                     settings: TrainSettings) -> tuple[int, float]:
    """Restore model and optimiser -> ``(step, seconds trained so far)``."""
    config, tensors, info = read_model(path, CHECKPOINT_KIND)
    if config != model.config.to_dict() or info.get("settings") != json.loads(json.dumps(asdict(settings))):
        theirs = {**config, **info.get("settings", {})}
        ours = {**model.config.to_dict(), **asdict(settings)}
        diff = sorted(k for k in set(theirs) | set(ours)
                      if json.dumps(theirs.get(k), sort_keys=True) != json.dumps(ours.get(k), sort_keys=True))
        raise KanError(f"{path}: the checkpoint was made with other settings ({', '.join(diff)}); "
                       "resume with the same options, or pass --force to start over")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    names = [n for n, _ in model.named_parameters()]
    for name, p in zip(names, opt.param_groups[0]["params"]):
        state = {k.split(".")[-1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
        if state:
            state["step"] = state["step"].reshape(())
            opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in state.items()}
    return int(info["step"]), float(info.get("seconds", 0.0))


@torch.no_grad()
def validate(model: HyperNetwork, val: torch.Tensor, feats: torch.Tensor, sr: int, n_pesq: int) -> dict:
    """One-shot quality of the predicted networks on ``(V, window)`` validation crops."""
    model.eval()
    target = model.config.inr
    preds = []
    for chunk in val.split(8):
        params = model(chunk)
        preds.append(inr.forward_chunked(target, params, feats))
    model.train()
    pred = torch.cat(preds)
    # spread: how much the prediction depends on the input (0: one network for every clip)
    spread = float(((pred - pred.mean(0)).square().mean() / pred.square().mean().clamp_min(1e-12)).sqrt())
    return {**clip_scores(pred, val, sr, n_pesq), "spread": spread}


def clip_scores(pred: torch.Tensor, ref: torch.Tensor, sr: int, n_pesq: int) -> dict:
    """Mean SI-SNR, SNR and LSD of ``(V, N)`` predictions against references, and mean PESQ
    over the first ``n_pesq`` (None when it cannot be computed there)."""
    p, r = pred.float().cpu(), ref.float().cpu()
    pesq = [metrics.pesq(a, b, sr) for a, b in zip(r.numpy()[:n_pesq], p.numpy()[:n_pesq])]
    pesq = [v for v in pesq if isinstance(v, float)]
    return {"si_snr": float(si_snr(p, r).mean()), "snr": float(snr(p, r).mean()),
            "lsd": float(np.mean([metrics.lsd(a, b, sr) for a, b in zip(r.numpy(), p.numpy())])),
            "pesq": float(np.mean(pesq)) if pesq else None}


def train_hyper(data: str | Path, output: str | Path | None = None, config: HyperConfig | None = None,
                settings: TrainSettings | None = None, device: str | None = None, resume: bool = False,
                force: bool = False, compile: bool | str = "auto",
                progress: Callable[[Event], None] | None = None) -> dict:
    """Train a hypernetwork on the audio under ``data`` and save it to ``output``.

    Returns the training summary that is also stored in the model file. Progress events:
    ``"data"`` (files cached), ``"plan"``, ``"train"`` (step, loss), ``"val"`` (metrics),
    ``"checkpoint"``.
    """
    config = config or HyperConfig()
    settings = settings or TrainSettings()
    if settings.steps < 1 or settings.batch < 1:
        raise KanError(f"--steps {settings.steps} / --batch {settings.batch}: both must be at least 1")
    if not 256 <= settings.loss_window <= config.window:
        raise KanError(f"--loss-window {settings.loss_window}: must be between 256 and the window ({config.window})")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() and device != "cpu" else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    else:
        dev = resolve_device(device)
    output = Path(output) if output else default_output(config)
    ckpt = checkpoint_path(output)
    if rank == 0:
        if output == default_output(config):
            output.parent.mkdir(parents=True, exist_ok=True)
        check_writable(output, force)
        if ckpt.exists() and not resume and not force:
            raise KanError(f"{ckpt}: a checkpoint of an earlier run is there; pass --resume to continue it "
                           "or --force to start over")
        if resume and not ckpt.exists():
            raise InputError(f"{ckpt}: no checkpoint to resume; run without --resume")
    report = progress if rank == 0 else None
    corpus = load_corpus(data, config.sample_rate, config.window, settings.val_fraction, settings.split,
                         progress=(lambda i, n, name: report(Event("data", i, n, {"file": name}))) if report else None)
    model = HyperNetwork(config, seed=settings.seed).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start, seconds_before = _load_checkpoint(ckpt, model, opt, settings) if resume else (0, 0.0)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    target = config.inr
    feats = target.features(time_grid(config.window, dev))
    val = torch.from_numpy(val_crops(corpus.val, config.window, settings.val_clips)).to(dev)
    spectral = SpectralLoss(config.sample_rate)
    use_compile = _want_compile(compile, settings.steps)
    fwd = inr.forward_fn(use_compile)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    log = log_path(output)
    if rank == 0 and not resume and log.exists():
        log.unlink()
    summary = {"kancodec": __version__, "data": str(data), "train_files": len(corpus.train),
               "val_files": len(corpus.val), "split": corpus.split, "padded": corpus.padded,
               "skipped": len(corpus.skipped), "device": str(dev), "world_size": world,
               "settings": asdict(settings), "compile": use_compile}
    if report:
        report(Event("plan", start, settings.steps, {**summary, "skipped_names": corpus.skipped[:5],
                                                     "params": sum(p.numel() for p in model.parameters())}))
    t0 = time.perf_counter()
    done, loss_value, updating = start, float("nan"), False
    try:
        for step in range(start, settings.steps):
            rng = np.random.default_rng([settings.seed, rank, step])
            batch = np.stack([crop(corpus.train[i], config.window, rng)
                              for i in rng.integers(0, len(corpus.train), settings.batch)])
            x = torch.from_numpy(batch).to(dev)
            off = int(rng.integers(0, config.window - settings.loss_window + 1))
            for group in opt.param_groups:
                group["lr"] = settings.lr_at(step)
            with amp:
                params = net(x)
            pred = inr.forward_chunked(target, params, feats[off:off + settings.loss_window], fwd)
            loss = fit_loss(pred, x[:, off:off + settings.loss_window], spectral, 1.0,
                            settings.spectral_weight) / settings.batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            updating = True  # a Ctrl-C inside the update would leave it half done: not saved then
            opt.step()
            done, updating = step + 1, False
            loss_value = loss.item()
            if report:
                report(Event("train", done, settings.steps, {"loss": loss_value, "lr": settings.lr_at(step)}))
            if rank == 0 and (done % settings.val_every == 0 or done == settings.steps):
                scores = validate(model, val, feats, config.sample_rate, settings.val_pesq)
                elapsed = seconds_before + time.perf_counter() - t0
                with open(log, "a") as f:
                    f.write(json.dumps({"step": done, "loss": loss_value, "lr": settings.lr_at(step),
                                        "seconds": round(elapsed, 1), **scores}) + "\n")
                if report:
                    report(Event("val", done, settings.steps, scores))
            if rank == 0 and done % settings.checkpoint_every == 0 and done < settings.steps:
                _save_checkpoint(ckpt, model, opt, done, settings, seconds_before + time.perf_counter() - t0)
                if report:
                    report(Event("checkpoint", done, settings.steps, {"path": str(ckpt)}))
    except KeyboardInterrupt:
        if rank == 0 and done > start and not updating:
            _save_checkpoint(ckpt, model, opt, done, settings, seconds_before + time.perf_counter() - t0)
            raise Interrupted(f"interrupted at step {done}; checkpoint saved to {ckpt}; "
                              "run the same command with --resume to continue") from None
        if ckpt.exists():
            raise Interrupted(f"interrupted at step {done}; the last checkpoint ({ckpt}) is intact; "
                              "run the same command with --resume to continue from it") from None
        raise Interrupted("interrupted before the first checkpoint; nothing saved") from None
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    summary["seconds"] = round(seconds_before + time.perf_counter() - t0, 1)
    summary["steps_done"] = settings.steps
    summary["final_loss"] = loss_value
    if rank == 0:
        summary["val"] = validate(model, val, feats, config.sample_rate, settings.val_pesq)
        summary["bytes"] = save(model, output, summary, force=True)
        summary["output"] = str(output)
        if ckpt.exists():
            ckpt.unlink()
    return summary

