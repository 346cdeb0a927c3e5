"""Training the FewSound hypernetwork (``kancodec train-hyper``) and the autoencoders (``train-ae``).

AdamW with a one-cycle learning rate, the codec's loss (L1 + mel-STFT, as in fitting),
random crops of a cached corpus (:mod:`kancodec.corpus`). Cheaper signal on CPU: the loss
is taken on a random ``loss_window``-sample stretch of each predicted network (the whole
window is still encoded and the whole network predicted; only its evaluation is cut), which
makes a step several times cheaper. Checkpoints (model + AdamW state) are written atomically
every ``checkpoint_every`` steps and on Ctrl-C; ``resume`` continues one exactly (the crops
of step ``s`` are drawn from a generator seeded with ``(seed, rank, s)``). Under ``torchrun``
with several processes it trains with DistributedDataParallel (NCCL on GPUs, gloo on CPU);
rank 0 validates, logs and saves.

The loop is shared: a *task* (:class:`_HyperTask`, :class:`_AETask`) builds the model and
gives the loss of a batch, the validation scores and the saving. Autoencoders train on
``loss_window``-sample crops (``--crop``) decoded whole, with the commitment (vq kinds) or
KL (kvae) term added; validation decodes 1.5 s clips with all codebooks.

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

from . import __version__, inr, metrics, threads
from .audio import check_writable
from .corpus import load_corpus, crop, val_crops
from .errors import InputError, Interrupted, KanError, OptionError
from .fit import time_grid
from .hyper import HyperConfig, HyperNetwork, save
from .loss import SpectralLoss, fit_loss, si_snr, snr
from .modelfile import read_model, save_model, user_models_dir
from .runtime import Event, resolve_device, want_compile


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


#: defaults of ``train-ae`` (autoencoder steps are cheap: bigger batches, shorter crops). Measured
#: on the corpus (default sizes, batch 16, validation SI-SNR of 16 held-out clips): kae after 200
#: of 300 steps at lr 1e-3: mel weight 1.0 -14.33 dB, 0.1 -8.24 dB; 1000 steps at lr 3e-3 and
#: mel weight 0.1: kae 7.56 dB (PESQ 1.75), krvq with all 8 codebooks 4.22 dB (PESQ 1.52).
AE_TRAIN = TrainSettings(steps=2000, batch=16, lr=3e-3, loss_window=8192, spectral_weight=0.1, val_every=250,
                         checkpoint_every=250)


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def log_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".safetensors") + ".train.jsonl")


def _save_checkpoint(path: Path, kind: str, model: torch.nn.Module, opt: torch.optim.Optimizer, step: int,
                     settings: TrainSettings, seconds: float) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for name, p in zip(names, opt.param_groups[0]["params"]):
        for key, value in opt.state.get(p, {}).items():
            if not isinstance(value, torch.Tensor):  # SGD without momentum keeps None
                continue
            tensors[f"opt.{name}.{key}"] = value.reshape(-1) if value.ndim == 0 else value
    save_model(path, f"{kind}-checkpoint", model.config.to_dict(), tensors,
               {"step": step, "seconds": round(seconds, 1), "settings": asdict(settings)}, force=True)


def _load_checkpoint(path: Path, kind: str, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     settings: TrainSettings) -> tuple[int, float]:
    """Restore model and optimiser -> ``(step, seconds trained so far)``."""
    config, tensors, info = read_model(path, f"{kind}-checkpoint")
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
        if state and "step" in state:
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


class _HyperTask:
    """What the training loop needs to train a hypernetwork."""

    kind = "hyper"

    def __init__(self, config: HyperConfig, settings: TrainSettings, dev: torch.device, use_compile: bool):
        self.model = HyperNetwork(config, seed=settings.seed).to(dev)
        self.settings, self.crop, self.val_length = settings, config.window, config.window
        self.feats = config.inr.features(time_grid(config.window, dev))
        self.spectral = SpectralLoss(config.sample_rate)
        self.fwd = inr.forward_fn(use_compile)
        self.amp = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else torch.autocast("cpu", enabled=False))

    def loss(self, net: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        s, window = self.settings, self.crop
        off = int(rng.integers(0, window - s.loss_window + 1))
        with self.amp:
            params = net(x)
        pred = inr.forward_chunked(self.model.config.inr, params, self.feats[off:off + s.loss_window], self.fwd)
        return fit_loss(pred, x[:, off:off + s.loss_window], self.spectral, 1.0, s.spectral_weight) / s.batch, {}

    def validate(self, val: torch.Tensor) -> dict:
        return validate(self.model, val, self.feats, self.model.config.sample_rate, self.settings.val_pesq)

    def save(self, path: Path, summary: dict) -> int:
        return save(self.model, path, summary, force=True)


class _AETask:
    """What the training loop needs to train an autoencoder (``kancodec.ae``): crops of
    ``loss_window`` samples, reconstruction loss (L1 + mel-STFT) plus commitment or KL;
    for krvq a random number of codebooks in ``quantizer_dropout`` of the steps."""

    kind = "ae"

    def __init__(self, config, settings: TrainSettings, dev: torch.device, use_compile: bool):
        from .ae import AutoEncoder

        self.model = AutoEncoder(config, seed=settings.seed).to(dev)
        self.settings, self.crop, self.val_length = settings, settings.loss_window, AE_VAL_LENGTH
        self.spectral = SpectralLoss(config.sample_rate)
        self.step = 0  # the loop sets it before each loss

    def loss(self, net: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        c, s = self.model.config, self.settings
        n = None
        if c.kind == "krvq":  # every process must use the same levels (their statistics are summed): no rank here
            pick = np.random.default_rng([s.seed, self.step, 2])
            n = int(pick.integers(1, c.codebooks + 1)) if pick.random() < c.quantizer_dropout else None
        y, extra, stats = net(x, n)
        return (fit_loss(y, x, self.spectral, 1.0, s.spectral_weight) + extra) / s.batch, stats

    @torch.no_grad()
    def validate(self, val: torch.Tensor) -> dict:
        self.model.eval()
        pred = torch.cat([self.model(chunk)[0] for chunk in val.split(8)])
        self.model.train()
        return clip_scores(pred, val, self.model.config.sample_rate, self.settings.val_pesq)

    def save(self, path: Path, summary: dict) -> int:
        from .ae import save as save_ae

        return save_ae(self.model, path, summary, force=True)


AE_VAL_LENGTH = 32768  # validation clips of autoencoders: 1.5 s, decoded whole


class _ThetaTask:
    """What the training loop needs to meta-learn a start θ (:mod:`kancodec.theta`): the
    "loss" is Reptile's surrogate after an inner fit of each crop from θ; plain SGD (the
    learning rate is Reptile's step ε), no gradient clipping (it would shrink ε)."""

    kind = "theta"
    clip = None

    def __init__(self, config, settings: TrainSettings, dev: torch.device, use_compile: bool):
        from .theta import Theta, inner_settings

        self.model = Theta(config, seed=settings.seed).to(dev)
        self.settings, self.crop, self.val_length = settings, config.window, config.window
        self.inner = inner_settings(config, settings.spectral_weight)
        self.feats = config.inr.features(time_grid(config.window, dev))
        self.spectral = SpectralLoss(config.sample_rate)
        self.fwd = inr.forward_fn(use_compile)
        self.use_compile = use_compile

    def optimizer(self, params) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)

    def loss(self, net: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        from .theta import adapt

        fitted = adapt(self.model.config, self.model.params(len(x)), x, self.inner, self.settings.loss_window, rng,
                       self.fwd, self.feats, self.spectral)
        return net(fitted), {}

    def validate(self, val: torch.Tensor) -> dict:
        from .theta import fit_from

        result = fit_from(self.model, val, self.model.config.inner_steps, self.settings.spectral_weight,
                          self.use_compile)
        with torch.no_grad():
            pred = inr.forward_chunked(self.model.config.inr, result.params, self.feats)
        return clip_scores(pred, val, self.model.config.sample_rate, self.settings.val_pesq)

    def save(self, path: Path, summary: dict) -> int:
        from .theta import save as save_theta

        return save_theta(self.model, path, summary, force=True)


#: defaults of ``train-theta``: Reptile's step ε = 0.5 at its peak, batches of 8 crops, the
#: presets' mel weight
THETA_TRAIN = TrainSettings(steps=400, batch=8, lr=0.5, weight_decay=0.0, loss_window=8192, spectral_weight=0.3,
                            val_every=50, val_clips=8, val_pesq=4, checkpoint_every=50)


def default_output(config) -> Path:
    from .theta import ThetaConfig

    if isinstance(config, ThetaConfig):
        return user_models_dir() / f"theta-{config.target['arch']}.safetensors"
    if isinstance(config, HyperConfig):
        return user_models_dir() / f"fewsound-{config.target['arch']}.safetensors"
    return user_models_dir() / (config.kind + ("" if config.layer == "kan" else f"-{config.layer}") + ".safetensors")


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
    if not 256 <= settings.loss_window <= config.window:
        raise OptionError(f"{{loss_window}} {settings.loss_window}: must be between 256 and the window ({config.window})",
                          "loss_window")
    return _train(_HyperTask, config, data, output, settings, device, resume, force, compile, progress)


def train_theta(data: str | Path, output: str | Path | None = None, config=None,
                settings: TrainSettings | None = None, device: str | None = None, resume: bool = False,
                force: bool = False, compile: bool | str = "auto",
                progress: Callable[[Event], None] | None = None) -> dict:
    """Meta-learn a start θ (:class:`kancodec.theta.ThetaConfig`) on the audio under ``data``;
    as :func:`train_hyper`, with ``loss_window`` the stretch each inner step's loss sees."""
    from .theta import ThetaConfig

    config = config or ThetaConfig()
    settings = settings or THETA_TRAIN
    if not 256 <= settings.loss_window <= config.window:
        raise OptionError(f"{{loss_window}} {settings.loss_window}: must be between 256 and the window ({config.window})",
                          "loss_window")
    return _train(_ThetaTask, config, data, output, settings, device, resume, force, compile, progress)


def train_ae(data: str | Path, output: str | Path | None = None, config=None,
             settings: TrainSettings | None = None, device: str | None = None, resume: bool = False,
             force: bool = False, progress: Callable[[Event], None] | None = None) -> dict:
    """Train an autoencoder (:class:`kancodec.ae.AEConfig`) on the audio under ``data``;
    as :func:`train_hyper`, with ``loss_window`` the length of the training crops."""
    from .ae import AEConfig

    config = config or AEConfig()
    settings = settings or TrainSettings()
    if not config.frame <= settings.loss_window <= AE_VAL_LENGTH:
        raise OptionError(f"{{crop}} {settings.loss_window}: must be between the frame ({config.frame}) and "
                          f"{AE_VAL_LENGTH}", "crop")
    return _train(_AETask, config, data, output, settings, device, resume, force, False, progress)


def _train(task_type, config, data, output, settings: TrainSettings, device, resume: bool, force: bool,
           compile: bool | str, progress) -> dict:
    """The training loop shared by hypernetworks and autoencoders (see the module docstring)."""
    if settings.steps < 1 or settings.batch < 1:
        raise OptionError(f"{{steps}} {settings.steps} / {{batch}} {settings.batch}: both must be at least 1", "steps", "batch")
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
    use_compile = want_compile(compile, settings.steps)
    task = task_type(config, settings, dev, use_compile)
    corpus = load_corpus(data, config.sample_rate, task.crop, settings.val_fraction, settings.split,
                         progress=(lambda i, n, name: report(Event("data", i, n, {"file": name}))) if report else None)
    model = task.model
    opt = (task.optimizer(model.parameters()) if hasattr(task, "optimizer")
           else torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay))
    start, seconds_before = _load_checkpoint(ckpt, task.kind, model, opt, settings) if resume else (0, 0.0)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    val = torch.from_numpy(val_crops(corpus.val, task.val_length, settings.val_clips)).to(dev)
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
            if dev.type == "cpu":
                threads.update()
            rng = np.random.default_rng([settings.seed, rank, step])
            # torch's randomness (kvae sampling, codebook restarts) is a function of the step too
            torch.manual_seed(int(np.random.default_rng([settings.seed, rank, step, 1]).integers(2**62)))
            batch = np.stack([crop(corpus.train[i], task.crop, rng)
                              for i in rng.integers(0, len(corpus.train), settings.batch)])
            x = torch.from_numpy(batch).to(dev)
            for group in opt.param_groups:
                group["lr"] = settings.lr_at(step)
            task.step = step
            loss, stats = task.loss(net, x, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip = getattr(task, "clip", 1.0)
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            updating = True  # a Ctrl-C inside the update would leave it half done: not saved then
            opt.step()
            done, updating = step + 1, False
            loss_value = loss.item()
            if report:
                report(Event("train", done, settings.steps, {"loss": loss_value, "lr": settings.lr_at(step), **stats}))
            if rank == 0 and (done % settings.val_every == 0 or done == settings.steps):
                scores = task.validate(val)
                elapsed = seconds_before + time.perf_counter() - t0
                with open(log, "a") as f:
                    f.write(json.dumps({"step": done, "loss": loss_value, "lr": settings.lr_at(step),
                                        "seconds": round(elapsed, 1), **stats, **scores}) + "\n")
                if report:
                    report(Event("val", done, settings.steps, scores))
            if rank == 0 and done % settings.checkpoint_every == 0 and done < settings.steps:
                _save_checkpoint(ckpt, task.kind, model, opt, done, settings, seconds_before + time.perf_counter() - t0)
                if report:
                    report(Event("checkpoint", done, settings.steps, {"path": str(ckpt)}))
    except KeyboardInterrupt:
        if rank == 0 and done > start and not updating:
            _save_checkpoint(ckpt, task.kind, model, opt, done, settings, seconds_before + time.perf_counter() - t0)
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
        summary["val"] = task.validate(val)
        summary["bytes"] = task.save(output, summary)
        summary["output"] = str(output)
        if ckpt.exists():
            ckpt.unlink()
    return summary

